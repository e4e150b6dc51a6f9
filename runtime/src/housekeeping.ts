/**
 * Periodic deletion of rows nobody needs any more (published outbox rows,
 * expired tokens, stale throttle counters), so tables do not grow forever;
 * and the periodic timer it runs on, which the service host also uses.
 */
import type { Logger } from "./logger.js";

export interface HousekeepingTask {
  /** For logs. */
  name: string;
  /** One DELETE statement; it should be cheap and bounded (e.g. `… limit`). */
  sql: string;
}

type Queryable = { query(text: string): Promise<unknown[]> };

/** Runs each task once; a failing task is logged and the others still run. */
export async function runHousekeeping(
  database: Queryable,
  tasks: HousekeepingTask[],
  logger: Logger,
  stopped: () => boolean = () => false,
): Promise<void> {
  for (const task of tasks) {
    if (stopped()) return;
    try {
      await database.query(task.sql);
    } catch (err) {
      logger.warn({ err, task: task.name }, "housekeeping failed");
    }
  }
}

/**
 * Calls `run` after `firstMs`, then every `intervalMs` after the previous
 * call ended (calls never overlap); `run` must not throw. The timers do not
 * keep the process alive. Returns the function that stops it, which resolves
 * once a call under way has ended, so nothing runs on a resource being closed.
 */
export function startPeriodic(
  run: (stopped: () => boolean) => Promise<void>,
  opts: { firstMs: number; intervalMs: number },
): () => Promise<void> {
  let stopped = false;
  let running: Promise<void> | undefined;
  let timer: NodeJS.Timeout | undefined;
  const schedule = (ms: number) => {
    timer = setTimeout(() => {
      running = run(() => stopped).finally(() => {
        running = undefined;
        if (!stopped) schedule(opts.intervalMs);
      });
    }, ms).unref();
  };
  schedule(opts.firstMs);
  return async () => {
    stopped = true;
    clearTimeout(timer);
    await running;
  };
}

/**
 * Runs every task 5 s after start and then every intervalMs; returns the
 * function that stops it (resolving once a run under way has ended).
 */
export function startHousekeeping(
  database: Queryable,
  tasks: HousekeepingTask[],
  intervalMs: number,
  logger: Logger,
): () => Promise<void> {
  return startPeriodic((stopped) => runHousekeeping(database, tasks, logger, stopped), {
    firstMs: 5_000,
    intervalMs,
  });
}

/** Deletes published outbox rows older than days (they stay a while for inspection and replay). */
export const outboxCleanup = (days: number): HousekeepingTask => ({
  name: "outbox",
  sql: `delete from outbox where id in (select id from outbox where published_at < now() - interval '${days} days' limit 10000)`,
});
