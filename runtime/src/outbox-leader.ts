/**
 * Leadership of an outbox: a session-level Postgres advisory lock, held by
 * one relay per database on a dedicated session. Whatever the leader reads
 * or marks is fenced by the lock: each statement checks that the lock's
 * session still lives, so a relay that lost its session (and with it the
 * lock) can neither read nor mark rows another leader now owns.
 */
import { type Database, isConnectionError, type SqlSession } from "./db.js";
import { errMessage, type Logger } from "./logger.js";
import type { Outbox } from "./outbox.js";
import type { OutboxRecord } from "./outbox-publisher.js";

/** The lock-holding session, identified the way pg_stat_activity shows it. */
export interface OutboxLock {
  readonly session: SqlSession;
  readonly pid: number;
  readonly backendStart: string;
}

/** The database calls leadership makes. */
export type LeaderDatabase = Pick<Database<Record<string, unknown>>, "query" | "session">;

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

// True while the lock session lives; a session-level advisory lock lives exactly
// as long as its session. Checked from the pool rather than by querying the
// session itself: postgres.js throws an uncaught TypeError (crashing the process)
// when a reserved connection whose socket has closed is queried or released.
const LOCK_ALIVE = "exists (select 1 from pg_stat_activity where pid = $1 and backend_start = $2::timestamptz)";

const TRY_LOCK = `select pg_try_advisory_lock($1::bigint) as locked, pg_backend_pid() as pid,
  (select backend_start::text from pg_stat_activity where pid = pg_backend_pid()) as backend_start`;

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
  const { database, logger } = opts;
  const lockKey = opts.outbox.lockKey.toString();
  const fence = (lock: OutboxLock) => [lock.pid, lock.backendStart];
  const isAlive = async (lock: OutboxLock) => {
    const [row] = await database.query<{ alive: boolean }>(`select ${LOCK_ALIVE} as alive`, fence(lock));
    return row?.alive === true;
  };

  return {
    async tryAcquire() {
      let session: SqlSession | undefined;
      try {
        session = await database.session();
        const [row] = await session.query<{ locked: boolean; pid: number; backend_start: string }>(TRY_LOCK, [lockKey]);
        if (row?.locked) return { session, pid: row.pid, backendStart: row.backend_start };
      } catch (err) {
        // A broken connection is left alone (see LOCK_ALIVE); the pool replaces it.
        if (!isConnectionError(err)) await session?.release().catch(() => {});
        throw err;
      }
      await session.release().catch(() => {});
      return undefined;
    },
    isAlive,
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
    async release(lock) {
      try {
        if (await isAlive(lock)) {
          await lock.session.query("select pg_advisory_unlock($1::bigint)", [lockKey]);
          await lock.session.release();
        }
      } catch (err) {
        logger.warn({ err: errMessage(err) }, "could not release the outbox lock; it goes with its connection");
      }
    },
  };
}
