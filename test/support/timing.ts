/**
 * Waiting in tests. To wait until something holds, use vitest's
 * `vi.waitFor` / `vi.waitUntil` / `expect.poll` (expect.poll only inside a
 * test; until() below names what it waits for, in hooks too); sleep is for a span of time the test means: a load that runs
 * for a while, a period that must pass.
 */
import { vi } from "vitest";

/** Resolves after ms milliseconds. */
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Waits until check() returns true, asking every intervalMs (vi.waitFor, so
 * it works in hooks too; a check that throws is asked again); fails after
 * timeoutMs naming what it waited for.
 */
export async function until(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 15_000,
  intervalMs = 50,
): Promise<void> {
  await vi.waitFor(
    async () => {
      if (!(await check())) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    },
    { timeout: timeoutMs, interval: intervalMs },
  );
}

/** p, or a failure naming what took longer than ms. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
    }),
  ]);
}
