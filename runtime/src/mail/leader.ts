/**
 * Leadership of the mail outbox: an advisory lock of its own (advisory-lock.ts;
 * not the event relay's), held by one deliverer per database. Every read and
 * mark is fenced by it, so a deliverer that lost its session (and the lock
 * with it) can neither pick up mail nor mark it, while another one leads.
 */
import { createAdvisoryLock, type LeaderLock, LOCK_ALIVE } from "../advisory-lock.js";
import type { Database } from "../db.js";
import type { Logger } from "../logger.js";

/** The lock the mail deliverer holds; the platform's others are listed in identity's outbox.ts. */
export const MAIL_LOCK_KEY = 7_310_004n;

/** The lock-holding session, identified the way pg_stat_activity shows it. */
export type MailLock = LeaderLock;

/** A pending mail as the deliverer reads it. */
export interface PendingMail {
  id: string;
  recipient: string;
  template: string;
  locale: string;
  data: Record<string, unknown> | null;
  created_at: Date | string;
  attempts: number;
}

/** The database calls the deliverer makes. */
export type MailDatabase = Pick<Database<Record<string, unknown>>, "query" | "listen" | "session">;

export interface MailLeadership {
  /** Tries the lock once on a new session: the lock when won, undefined when another session holds it. */
  tryAcquire(): Promise<MailLock | undefined>;
  /** True while the lock's session lives (and so holds the lock). */
  isAlive(lock: MailLock): Promise<boolean>;
  /** Mail due now, oldest due first, at most `limit`; none once the lock is gone. */
  readDue(lock: MailLock, limit: number): Promise<PendingMail[]>;
  /** Ms until the next pending mail is due (0 if one is due now), or undefined if none is pending. */
  nextDueInMs(): Promise<number | undefined>;
  /** Marks a mail sent (and erases its data); false once the lock is gone. */
  markSent(lock: MailLock, id: string): Promise<boolean>;
  /** Counts a failed attempt and sets the next one `delayMs` from now; false once the lock is gone. */
  markRetry(lock: MailLock, id: string, reason: string, delayMs: number): Promise<boolean>;
  /** Gives a mail up (and erases its data); `attempted` counts the attempt that ended it. False once the lock is gone. */
  markGivenUp(lock: MailLock, id: string, reason: string, attempted: boolean): Promise<boolean>;
  /** Unlocks and returns the session, if it still lives. Never throws. */
  release(lock: MailLock): Promise<void>;
}

const PENDING = "sent_at is null and given_up_at is null";

const SELECT_DUE = `select id::text as id, recipient, template, locale, data, created_at, attempts
  from mail_outbox where ${PENDING} and next_attempt_at <= now() and ${LOCK_ALIVE}
  order by next_attempt_at, id limit $3`;

// greatest() skips a null: with nothing pending, min() is null and so is the answer, not 0.
const NEXT_DUE = `select (select greatest(0, ceil(extract(epoch from (min(next_attempt_at) - now())) * 1000))::float8
  from mail_outbox where ${PENDING} having count(*) > 0) as ms`;

// Each mark touches only a pending row, so a mail is marked sent (or given up) at most once.
const counted = (update: string) => `with m as (${update} returning 1) select count(*)::int as n from m`;
const MARK_SENT = counted(
  `update mail_outbox set sent_at = now(), data = null, last_error = null where id = $3::uuid and ${PENDING} and ${LOCK_ALIVE}`,
);
const MARK_RETRY = counted(
  `update mail_outbox set attempts = attempts + 1, last_error = $4, next_attempt_at = now() + $5::int * interval '1 millisecond'
   where id = $3::uuid and ${PENDING} and ${LOCK_ALIVE}`,
);
const MARK_GIVEN_UP = counted(
  `update mail_outbox set attempts = attempts + $5::int, last_error = $4, given_up_at = now(), data = null
   where id = $3::uuid and ${PENDING} and ${LOCK_ALIVE}`,
);

/** Leadership of the mail outbox on `database` under `lockKey`. */
export function createMailLeadership(opts: {
  database: MailDatabase;
  lockKey: bigint;
  logger: Logger;
}): MailLeadership {
  const { database } = opts;
  const advisory = createAdvisoryLock({ database, lockKey: opts.lockKey, logger: opts.logger, what: "mail" });
  const { fence } = advisory;
  const mark = async (statement: string, params: unknown[]) => {
    const [row] = await database.query<{ n: number }>(statement, params);
    return (row?.n ?? 0) > 0;
  };

  return {
    tryAcquire: advisory.tryAcquire,
    isAlive: advisory.isAlive,
    release: advisory.release,
    readDue(lock, limit) {
      return database.query<PendingMail>(SELECT_DUE, [...fence(lock), limit]);
    },
    async nextDueInMs() {
      const [row] = await database.query<{ ms: number | null }>(NEXT_DUE);
      return row?.ms ?? undefined;
    },
    markSent(lock, id) {
      return mark(MARK_SENT, [...fence(lock), id]);
    },
    markRetry(lock, id, reason, delayMs) {
      return mark(MARK_RETRY, [...fence(lock), id, reason, Math.round(delayMs)]);
    },
    markGivenUp(lock, id, reason, attempted) {
      return mark(MARK_GIVEN_UP, [...fence(lock), id, reason, attempted ? 1 : 0]);
    },
  };
}
