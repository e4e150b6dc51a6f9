/**
 * A supervised background loop: runs one step after another until it is
 * stopped. Between steps it pauses as long as the step asks, and `wake()`
 * ends that pause early. A step that throws is retried after an exponential
 * backoff with jitter, and an outage is logged once: a warning at its first
 * failure, debug lines for the repeats, one info line when a step succeeds
 * again. `stop()` aborts the running step's signal and waits for it to end.
 *
 * ```ts
 * const loop = createSupervisedLoop({
 *   name: "outbox relay",
 *   logger,
 *   async step(signal) {
 *     const more = await relayBatch(signal);
 *     return more ? 0 : 5_000; // the pause before the next step; wake() ends it early
 *   },
 * });
 * loop.start();
 * onNotify(() => loop.wake());
 * await loop.stop();
 * ```
 */
import { settlesWithin } from "./async.js";
import { errMessage, type Logger } from "./logger.js";

/** Waits for a promise to settle, but at most a given time (for stop() with a timeout). */
export { settlesWithin };

/** The logging a loop does; a pino logger fits. */
export type LoopLogger = Pick<Logger, "debug" | "info" | "warn" | "error">;

/**
 * What a step asks for: the pause before the next step in ms (0: none; a
 * non-finite number: until woken or stopped), or "done" to end the loop.
 */
export type StepResult = number | "done";

export interface SupervisedLoopOptions {
  /** Names the loop in its default log lines, e.g. `outbox relay`. */
  readonly name: string;
  /** One round of work. `signal` aborts when stop() is called: the step should end soon. */
  readonly step: (signal: AbortSignal) => Promise<StepResult>;
  readonly logger: LoopLogger;
  /** The pause after a first failure; it doubles with each repeat, with jitter. Default 100. */
  readonly minBackoffMs?: number;
  /** The longest pause after a failure. Default 5000. */
  readonly maxBackoffMs?: number;
  /** The message for an outage's first failure (warn) and its repeats (debug). Default `<name> failed; retrying`. */
  readonly failureMessage?: (err: unknown) => string;
  /** Logged at info when a step succeeds after failures; false to say nothing. Default `<name> recovered`. */
  readonly recoveryMessage?: string | false;
}

export interface SupervisedLoop {
  /** Runs the first step at once; the next ones follow in the background. Never throws. */
  start(): void;
  /**
   * Ends the pause between two steps. Called while a step runs, it makes the
   * next pause end at once, so a wake-up during a step is never lost. It does
   * not cut short the backoff after a failure: more work is no reason to
   * retry sooner.
   */
  wake(): void;
  /** As wake(), and ends a backoff too: for when the cause of the failures is gone (a connection is back). */
  retryNow(): void;
  /**
   * Ends the current outage now, as a successful step would: for a long step
   * (a subscription) once it is up again. Logs the recovery; a later failure
   * starts a new outage.
   */
  recovered(): void;
  /**
   * Aborts the running step's signal, ends any pause and waits up to
   * `timeoutMs` (default 5000) for the running step to end: true if the loop
   * ended in time. Later calls return the first call's promise. Never throws.
   */
  stop(timeoutMs?: number): Promise<boolean>;
  /** Settles once the loop has ended: a step returned "done", or stop() was called. Never rejects. */
  readonly done: Promise<void>;
  /** Failed steps since the last success: 0 while healthy. */
  readonly failures: number;
}

// setTimeout fires at once for longer delays.
const MAX_TIMER_MS = 2 ** 31 - 1;

/** Creates a loop; nothing runs until start(). */
export function createSupervisedLoop(opts: SupervisedLoopOptions): SupervisedLoop {
  const minBackoffMs = opts.minBackoffMs ?? 100;
  const maxBackoffMs = opts.maxBackoffMs ?? 5_000;
  const failureMessage = opts.failureMessage ?? (() => `${opts.name} failed; retrying`);
  const recoveryMessage = opts.recoveryMessage ?? `${opts.name} recovered`;
  const log = opts.logger;
  const controller = new AbortController();
  const { signal } = controller;

  let started = false;
  let stopped: Promise<boolean> | undefined;
  let failures = 0;
  let outageStart = 0;
  // Set by wake() (and retryNow()); cleared as each step begins, so a wake-up
  // during a step skips the next pause (and a retryNow() the next backoff).
  let woken = false;
  let retrying = false;
  let pausing: { end: () => void; wakeable: boolean } | undefined;
  let finish = () => {};
  const done = new Promise<void>((resolve) => {
    finish = resolve;
  });

  const pause = (ms: number, wakeable: boolean) =>
    signal.aborted || ms <= 0 || Number.isNaN(ms) || (wakeable ? woken : retrying)
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          const timer = Number.isFinite(ms) ? setTimeout(() => end(), Math.min(ms, MAX_TIMER_MS)) : undefined;
          const end = () => {
            clearTimeout(timer);
            pausing = undefined;
            resolve();
          };
          pausing = { end, wakeable };
        });

  const backoff = () => {
    const ms = Math.min(maxBackoffMs, minBackoffMs * 2 ** (failures - 1));
    return ms / 2 + (Math.random() * ms) / 2;
  };

  function recovered(): void {
    if (failures === 0) return;
    if (recoveryMessage !== false) log.info({ failures, outageMs: Date.now() - outageStart }, recoveryMessage);
    failures = 0;
  }

  async function run(): Promise<void> {
    while (!signal.aborted) {
      woken = false;
      retrying = false;
      let result: StepResult;
      try {
        result = await opts.step(signal);
      } catch (err) {
        // Failing because it was told to stop is no outage.
        if (signal.aborted) return;
        failures++;
        if (failures === 1) {
          outageStart = Date.now();
          log.warn({ err: errMessage(err) }, failureMessage(err));
        } else {
          log.debug({ err: errMessage(err), failures }, failureMessage(err));
        }
        await pause(backoff(), false);
        continue;
      }
      recovered();
      if (result === "done") return;
      await pause(result, true);
    }
  }

  return {
    start() {
      if (started || signal.aborted) return;
      started = true;
      run()
        .catch((err: unknown) => log.error({ err: errMessage(err) }, `${opts.name} stopped unexpectedly`))
        .finally(finish);
    },
    wake() {
      woken = true;
      if (pausing?.wakeable) pausing.end();
    },
    retryNow() {
      woken = true;
      retrying = true;
      pausing?.end();
    },
    recovered,
    stop(timeoutMs = 5_000) {
      stopped ??= (async () => {
        controller.abort();
        pausing?.end();
        if (!started) {
          finish();
          return true;
        }
        return settlesWithin(done, timeoutMs);
      })();
      return stopped;
    },
    done,
    get failures() {
      return failures;
    },
  };
}
