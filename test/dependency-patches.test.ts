/**
 * The fixes scripts/patch-dependencies.mjs applies after every install: they
 * are applied, and the patched code still does its job (postgres.js's pool
 * Queue: first in, first out; remove() finds what is queued and nothing
 * else; its holes are compacted, which a long busy stretch relies on).
 */
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

interface Queue<T> {
  readonly length: number;
  push(x: T): T;
  shift(): T | undefined;
  remove(x: T): T | null;
}
type QueueFactory = <T>(initial?: T[]) => Queue<T>;

it("every patch is applied to the installed dependencies", () => {
  // Exits 1 (and says which) if a file lacks its patch or the installed version is not the patched one.
  expect(() =>
    execFileSync(process.execPath, ["scripts/patch-dependencies.mjs", "--check"], { cwd: ROOT, stdio: "pipe" }),
  ).not.toThrow();
});

describe.each([
  ["ESM", async () => (await import(`${ROOT}node_modules/postgres/src/queue.js`)).default as QueueFactory],
  [
    "CommonJS",
    async () => createRequire(import.meta.url)(`${ROOT}node_modules/postgres/cjs/src/queue.js`) as QueueFactory,
  ],
])("postgres.js's pool Queue (%s), patched", (_, load) => {
  it("is first in, first out, and remove() takes only what is queued", async () => {
    const Queue = await load();
    const q = Queue(["a", "b"]);
    q.push("c");
    q.push("d");
    expect(q.length).toBe(4);
    expect(q.shift()).toBe("a");
    expect(q.remove("a")).toBeNull();
    expect(q.remove("c")).toBe("c");
    expect(q.remove("x")).toBeNull();
    expect([q.length, q.shift(), q.shift(), q.length]).toEqual([2, "b", "d", 0]);
    q.push("e");
    expect([q.length, q.shift()]).toEqual([1, "e"]);
  });

  it("keeps its order through a long busy stretch (shift, a missed remove, push), across compactions", async () => {
    const Queue = await load();
    // The pool's pattern while every connection is busy: take the first, move it back to the end.
    const q = Queue<number>();
    for (let i = 0; i < 10; i++) q.push(i);
    const seen: number[] = [];
    for (let n = 0; n < 50_000; n++) {
      const c = q.shift() as number;
      seen.push(c);
      expect(q.remove(c)).toBeNull();
      q.push(c);
      if (n % 997 === 996) {
        // A connection in the middle leaves the busy queue and comes back, as when its query ends.
        const middle = (c + 5) % 10;
        expect(q.remove(middle)).toBe(middle);
        q.push(middle);
      }
    }
    expect(q.length).toBe(10);
    const rest = Array.from({ length: 10 }, () => q.shift());
    expect(new Set(rest)).toEqual(new Set([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]));
    expect(q.length).toBe(0);
    // Round robin until the first remove in the middle: 0..9, 0..9, …
    expect(seen.slice(0, 10)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });
});
