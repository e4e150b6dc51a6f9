/**
 * The supervised loop on real timers: pauses as long as a step asks and
 * wake() ends them (a wake-up during a step is not lost); failures back off
 * exponentially, not cut short by wake(), and are logged once per outage;
 * stop() aborts the step's signal, waits for it, and says when it did not
 * end in time.
 */
import { afterEach, describe, expect, it } from "vitest";
import { sleep } from "../../test/support/timing.js";
import { createSupervisedLoop, type LoopLogger, type StepResult, type SupervisedLoop } from "../src/background.js";

const loops: SupervisedLoop[] = [];
afterEach(async () => {
  await Promise.all(loops.splice(0).map((l) => l.stop(1_000)));
});

function captureLogger() {
  const lines: Array<{ level: "debug" | "info" | "warn" | "error"; msg: string; obj: object }> = [];
  const at =
    (level: (typeof lines)[number]["level"]) =>
    (obj: object, msg = "") =>
      void lines.push({ level, msg, obj });
  const logger: LoopLogger = { debug: at("debug"), info: at("info"), warn: at("warn"), error: at("error") };
  return { logger, lines };
}

/** A loop whose steps run `body` and are timestamped. */
function loopOf(
  body: (n: number, signal: AbortSignal) => Promise<StepResult>,
  backoff: { minBackoffMs: number; maxBackoffMs: number } = { minBackoffMs: 40, maxBackoffMs: 160 },
) {
  const { logger, lines } = captureLogger();
  const starts: number[] = [];
  const loop = createSupervisedLoop({
    name: "test loop",
    logger,
    ...backoff,
    step: (signal) => {
      starts.push(performance.now());
      return body(starts.length, signal);
    },
  });
  loops.push(loop);
  return { loop, lines, starts };
}

describe("supervised loop", () => {
  it("pauses as long as the step asks, and wake() ends the pause", async () => {
    const { loop, starts } = loopOf(async (n) => (n === 1 ? 0 : 60_000));
    loop.start();
    await expect.poll(() => starts.length).toBe(2);
    await sleep(200);
    expect(starts).toHaveLength(2);
    const woken = performance.now();
    loop.wake();
    await expect.poll(() => starts.length).toBe(3);
    expect((starts[2] as number) - woken).toBeLessThan(50);
  });

  it("does not lose a wake-up that comes while a step runs", async () => {
    let release = () => {};
    const { loop, starts } = loopOf(async (n) => {
      if (n === 1) await new Promise<void>((r) => (release = r));
      return 60_000;
    });
    loop.start();
    await expect.poll(() => starts.length).toBe(1);
    loop.wake();
    release();
    await expect.poll(() => starts.length).toBe(2);
    await sleep(200);
    // The wake-up was used up by the second step: the third waits for the next one.
    expect(starts).toHaveLength(2);
  });

  it("backs off exponentially on failure, logs the outage once and its end once", async () => {
    const { loop, lines, starts } = loopOf(async (n) => {
      if (n <= 4) throw new Error(`broken ${n}`);
      return 60_000;
    });
    loop.start();
    await expect.poll(() => starts.length, { timeout: 5_000 }).toBe(5);
    // Backoffs of 40, 80, 160, 160 ms, each jittered to between half and all of it.
    const gaps = starts.slice(1).map((t, i) => t - (starts[i] as number));
    for (const [i, nominal] of [40, 80, 160, 160].entries()) {
      expect(gaps[i]).toBeGreaterThanOrEqual(nominal / 2 - 5);
      expect(gaps[i]).toBeLessThan(nominal + 100);
    }
    await expect.poll(() => lines.filter((l) => l.level === "info")).toHaveLength(1);
    expect(lines.map((l) => [l.level, l.msg])).toEqual([
      ["warn", "test loop failed; retrying"],
      ["debug", "test loop failed; retrying"],
      ["debug", "test loop failed; retrying"],
      ["debug", "test loop failed; retrying"],
      ["info", "test loop recovered"],
    ]);
    expect(lines[0]?.obj).toEqual({ err: "broken 1" });
    expect(lines[4]?.obj).toMatchObject({ failures: 4 });
    expect(loop.failures).toBe(0);
  });

  it("takes its messages from the options, and can recover silently", async () => {
    const { logger, lines } = captureLogger();
    let n = 0;
    const loop = createSupervisedLoop({
      name: "quiet",
      logger,
      minBackoffMs: 10,
      failureMessage: (err) => `cannot do it (${(err as Error).message})`,
      recoveryMessage: false,
      step: async () => {
        n++;
        if (n === 1) throw new Error("first");
        return "done";
      },
    });
    loops.push(loop);
    loop.start();
    await loop.done;
    expect(lines.map((l) => [l.level, l.msg])).toEqual([["warn", "cannot do it (first)"]]);
  });

  it("does not let wake() cut a backoff short", async () => {
    const { loop, starts } = loopOf(
      async (n) => {
        if (n === 1) throw new Error("broken");
        return 60_000;
      },
      { minBackoffMs: 400, maxBackoffMs: 400 },
    );
    loop.start();
    await expect.poll(() => starts.length).toBe(1);
    for (let i = 0; i < 5; i++) {
      loop.wake();
      await sleep(20);
    }
    expect(starts).toHaveLength(1);
    await expect.poll(() => starts.length).toBe(2);
    expect((starts[1] as number) - (starts[0] as number)).toBeGreaterThanOrEqual(195);
    expect(loop.failures).toBe(0);
  });

  it("retryNow() ends a backoff, and one that comes during a step skips the next", async () => {
    let release = () => {};
    const { loop, starts } = loopOf(
      async (n) => {
        if (n === 2) await new Promise<void>((r) => (release = r));
        if (n <= 2) throw new Error("broken");
        return 60_000;
      },
      { minBackoffMs: 60_000, maxBackoffMs: 60_000 },
    );
    loop.start();
    await expect.poll(() => starts.length).toBe(1);
    loop.retryNow();
    await expect.poll(() => starts.length).toBe(2);
    loop.retryNow();
    release();
    await expect.poll(() => starts.length).toBe(3);
    expect(loop.failures).toBe(0);
  });

  it("recovered() ends an outage in the middle of a long step", async () => {
    let release = () => {};
    const { loop, lines, starts } = loopOf(async (n) => {
      if (n === 1) throw new Error("down");
      if (n === 2) {
        loop.recovered();
        await new Promise<void>((r) => (release = r));
        throw new Error("down again");
      }
      return 60_000;
    });
    loop.start();
    await expect.poll(() => starts.length).toBe(2);
    expect(loop.failures).toBe(0);
    release();
    await expect.poll(() => starts.length).toBe(3);
    // The second failure starts a new outage: a warning again, not a debug line.
    expect(lines.map((l) => [l.level, l.msg])).toEqual([
      ["warn", "test loop failed; retrying"],
      ["info", "test loop recovered"],
      ["warn", "test loop failed; retrying"],
      ["info", "test loop recovered"],
    ]);
  });

  it("ends when a step returns done", async () => {
    const { loop, starts } = loopOf(async (n) => (n === 3 ? "done" : 0));
    loop.start();
    await loop.done;
    await sleep(50);
    expect(starts).toHaveLength(3);
  });

  it("stop() aborts the running step's signal and waits for it to end", async () => {
    let aborted = false;
    let ended = false;
    const { loop, starts, lines } = loopOf(async (_n, signal) => {
      await new Promise<void>((resolve) =>
        signal.addEventListener("abort", () => {
          aborted = true;
          setTimeout(resolve, 100);
        }),
      );
      ended = true;
      throw new Error("aborted");
    });
    loop.start();
    await expect.poll(() => starts.length).toBe(1);
    expect(await loop.stop(2_000)).toBe(true);
    expect([aborted, ended]).toEqual([true, true]);
    expect(starts).toHaveLength(1);
    // A step failing because it was stopped is no outage.
    expect(lines).toEqual([]);
  });

  it("stop() ends a pause at once and is idempotent", async () => {
    const { loop, starts } = loopOf(async () => 60_000);
    loop.start();
    await expect.poll(() => starts.length).toBe(1);
    const t0 = performance.now();
    const first = loop.stop();
    expect(loop.stop(1)).toBe(first);
    expect(await first).toBe(true);
    expect(performance.now() - t0).toBeLessThan(100);
    await loop.done;
  });

  it("stop() reports a step that outlives its timeout", async () => {
    const { loop, starts } = loopOf(() => sleep(500).then(() => 0));
    loop.start();
    await expect.poll(() => starts.length).toBe(1);
    expect(await loop.stop(50)).toBe(false);
    await loop.done;
    expect(starts).toHaveLength(1);
  });

  it("stop() before start() runs nothing", async () => {
    const { loop, starts } = loopOf(async () => 0);
    expect(await loop.stop()).toBe(true);
    loop.start();
    await loop.done;
    expect(starts).toHaveLength(0);
  });
});
