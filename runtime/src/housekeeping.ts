/**
 * Periodic deletion of rows nobody needs any more (published outbox rows,
 * expired tokens, stale throttle counters), so tables do not grow forever.
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

/** Runs every task shortly after start and then every intervalMs; returns the function that stops it. */
export function startHousekeeping(
  database: Queryable,
  tasks: HousekeepingTask[],
  intervalMs: number,
  logger: Logger,
): () => void {
  let stopped = false;
  const run = () => runHousekeeping(database, tasks, logger, () => stopped);
  const timer = setInterval(() => void run(), intervalMs).unref();
  const first = setTimeout(() => void run(), 5_000).unref();
  return () => {
    stopped = true;
    clearInterval(timer);
    clearTimeout(first);
  };
}

/** Deletes published outbox rows older than days (they stay a while for inspection and replay). */
export const outboxCleanup = (days: number): HousekeepingTask => ({
  name: "outbox",
  sql: `delete from outbox where id in (select id from outbox where published_at < now() - interval '${days} days' limit 10000)`,
});
