/**
 * One leader per database: a session-level PostgreSQL advisory lock, held on
 * a dedicated session (the outbox relay's, the mail deliverer's, each under
 * its own key). What a leader reads or marks is fenced by the lock: its
 * statements check, with LOCK_ALIVE, that the lock's session still lives, so
 * a leader that lost its session (and with it the lock) can neither read nor
 * mark rows another leader now owns.
 */
import { type Database, isConnectionError, type SqlSession } from "./db.js";
import { errMessage, type Logger } from "./logger.js";

/** The lock-holding session, identified the way pg_stat_activity shows it. */
export interface LeaderLock {
  readonly session: SqlSession;
  readonly pid: number;
  readonly backendStart: string;
}

/** The database calls the lock makes. */
export type LockDatabase = Pick<Database<Record<string, unknown>>, "query" | "session">;

/**
 * A condition, true while the lock session ($1 its pid, $2 its backend start)
 * lives; a session-level advisory lock lives exactly as long as its session.
 * Checked from the pool rather than by querying the session itself:
 * postgres.js throws an uncaught TypeError (crashing the process) when a
 * reserved connection whose socket has closed is queried or released.
 */
export const LOCK_ALIVE = "exists (select 1 from pg_stat_activity where pid = $1 and backend_start = $2::timestamptz)";

const TRY_LOCK = `select pg_try_advisory_lock($1::bigint) as locked, pg_backend_pid() as pid,
  (select backend_start::text from pg_stat_activity where pid = pg_backend_pid()) as backend_start`;

export interface AdvisoryLock {
  /**
   * Tries the lock once on a new session: the lock when won, undefined when
   * another session holds it. Throws when the database cannot be reached.
   */
  tryAcquire(): Promise<LeaderLock | undefined>;
  /** True while the lock's session lives (and so holds the lock). */
  isAlive(lock: LeaderLock): Promise<boolean>;
  /** LOCK_ALIVE's two parameters for `lock`. */
  fence(lock: LeaderLock): [number, string];
  /** Unlocks and returns the session, if it still lives. Never throws. */
  release(lock: LeaderLock): Promise<void>;
}

/** The advisory lock `lockKey` on `database`; `what` names it in the log ("outbox", "mail"). */
export function createAdvisoryLock(opts: {
  database: LockDatabase;
  lockKey: bigint;
  logger: Logger;
  what: string;
}): AdvisoryLock {
  const { database, logger } = opts;
  const lockKey = opts.lockKey.toString();
  const fence = (lock: LeaderLock): [number, string] => [lock.pid, lock.backendStart];
  const isAlive = async (lock: LeaderLock) => {
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
    fence,
    async release(lock) {
      try {
        if (await isAlive(lock)) {
          await lock.session.query("select pg_advisory_unlock($1::bigint)", [lockKey]);
          await lock.session.release();
        }
      } catch (err) {
        logger.warn({ err: errMessage(err) }, `could not release the ${opts.what} lock; it goes with its connection`);
      }
    },
  };
}
