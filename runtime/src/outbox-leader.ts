/**
 * Leadership of an outbox: one relay per database holds the outbox's
 * advisory lock (advisory-lock.ts), and whatever it reads or marks is fenced
 * by it, so a relay that lost its session (and with it the lock) can neither
 * read nor mark rows another leader now owns.
 */
import { createAdvisoryLock, type LeaderLock, LOCK_ALIVE, type LockDatabase } from "./advisory-lock.js";
import type { Logger } from "./logger.js";
import type { Outbox } from "./outbox.js";
import type { OutboxRecord } from "./outbox-publisher.js";

/** The lock-holding session, identified the way pg_stat_activity shows it. */
export type OutboxLock = LeaderLock;

/** The database calls leadership makes. */
export type LeaderDatabase = LockDatabase;

export interface OutboxLeadership {
  /**
   * Tries the lock once on a new session: the lock when won, undefined when
   * another session holds it. Throws when the database cannot be reached.
   */
  tryAcquire(): Promise<OutboxLock | undefined>;
  /** True while the lock's session lives (and so holds the lock). */
  isAlive(lock: OutboxLock): Promise<boolean>;
  /** Marks the rows sent; false (marking nothing) once the lock is gone. */
  markSent(lock: OutboxLock, ids: readonly string[]): Promise<boolean>;
  /**
   * Marks `sentIds` sent and reads the unsent rows after them in id order,
   * at most `limit`, in one statement: one round trip per batch instead of
   * two. `alive` false (nothing marked, nothing read) once the lock is gone.
   */
  markAndRead(
    lock: OutboxLock,
    sentIds: readonly string[],
    limit: number,
  ): Promise<{ alive: boolean; marked: number; rows: OutboxRecord[] }>;
  /** Unlocks and returns the session, if it still lives. Never throws. */
  release(lock: OutboxLock): Promise<void>;
}

// Explicit ids, never a range: a row with an id inside the range may have been
// invisible (uncommitted) when the batch was read.
const MARK_SENT = `with sent as (
  update outbox set published_at = now() where id = any($3::bigint[]) and ${LOCK_ALIVE} returning 1
) select count(*)::int as n from sent`;

// MARK_SENT and the read of the unsent rows in one statement, with the lock
// checked once; ordered by the bigint column, not by its text alias.
// Every part of a statement sees the same snapshot, so the read still sees
// the rows it marks as unsent: they are left out by id. One row with nulls
// when nothing is unsent, so that `alive` and `marked` always come back.
const MARK_AND_READ = `with lock as materialized (select ${LOCK_ALIVE} as alive),
sent as (
  update outbox set published_at = now() where id = any($3::bigint[]) and (select alive from lock) returning 1
),
unsent as (
  select id, event_id, subject, type, source, ce_subject, payload, occur_time from outbox
  where published_at is null and (select alive from lock) and id <> all($3::bigint[]) order by id limit $4
)
select lock.alive, (select count(*)::int from sent) as marked, u.id::text as id, u.event_id::text as event_id,
  u.subject, u.type, u.source, u.ce_subject, u.payload, u.occur_time
from lock left join unsent u on true order by u.id`;

/** Leadership of `outbox` on `database`. */
export function createOutboxLeadership(opts: {
  outbox: Outbox;
  database: LeaderDatabase;
  logger: Logger;
}): OutboxLeadership {
  const { database } = opts;
  const advisory = createAdvisoryLock({ database, lockKey: opts.outbox.lockKey, logger: opts.logger, what: "outbox" });
  const { fence } = advisory;

  return {
    tryAcquire: advisory.tryAcquire,
    isAlive: advisory.isAlive,
    release: advisory.release,
    async markSent(lock, ids) {
      const [marked] = await database.query<{ n: number }>(MARK_SENT, [...fence(lock), `{${ids.join(",")}}`]);
      return (marked?.n ?? 0) > 0;
    },
    async markAndRead(lock, sentIds, limit) {
      const result = await database.query<OutboxRecord & { alive: boolean; marked: number }>(MARK_AND_READ, [
        ...fence(lock),
        `{${sentIds.join(",")}}`,
        limit,
      ]);
      const first = result[0];
      const rows: OutboxRecord[] = first?.id == null ? [] : result;
      return { alive: first?.alive === true, marked: first?.marked ?? 0, rows };
    },
  };
}
