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

/** The median of xs. */
export const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};

/**
 * Half the width of the 95% confidence interval of the median of xs, from
 * order statistics (the sign test's interval): no assumption on the shape of
 * the distribution, which scheduling noise makes long-tailed.
 */
export function medianHalfWidth(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const k = Math.max(0, Math.floor(s.length / 2 - (1.96 * Math.sqrt(s.length)) / 2));
  return ((s[s.length - 1 - k] as number) - (s[k] as number)) / 2;
}

/**
 * known − unknown for each of pairs interleaved calls, the order within
 * a pair alternating so that drift and warm-up favour neither; between
 * runs after each pair.
 */
export async function pairedDifferences(
  pairs: number,
  known: (i: number) => Promise<number>,
  unknown: (i: number) => Promise<number>,
  between: () => Promise<unknown> = async () => {},
): Promise<number[]> {
  const diffs: number[] = [];
  for (let i = 0; i < pairs; i++) {
    if (i % 2 === 0) {
      const k = await known(i);
      diffs.push(k - (await unknown(i)));
    } else {
      const u = await unknown(i);
      diffs.push((await known(i)) - u);
    }
    await between();
  }
  return diffs;
}
