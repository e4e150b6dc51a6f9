/**
 * Throttling of password attempts per login identifier, known or not. Sign-in
 * and ChangePassword share one counter per login (`loginThrottleKey`).
 *
 * An attempt first reserves itself in one atomic statement: unless the key is
 * blocked or locked, its failure count goes up by one, and from the
 * `freeAttempts`-th attempt on the key is blocked for an exponentially
 * growing delay (capped) before the password is even checked. So parallel
 * attempts cannot exceed the limit, and the state lives in the database,
 * shared by every instance. Failures are kept until a successful attempt or
 * `windowMs` without any (default a day, so the back-off accumulates). The
 * `lockAfter`-th attempt in a row is the last one (NIST SP 800-63B 5.2.2: at
 * most 100 consecutive failures): if it fails too, the key is locked until an
 * operator runs `identity unlock <email>`. Unknown logins lock alike, so the
 * answer tells nothing about whether an account exists.
 */
import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import type { Db } from "@customer-platform/runtime/db";
import { eq, sql } from "drizzle-orm";
import type * as schema from "./db/schema.js";
import { loginThrottles } from "./db/schema.js";

export interface ThrottleSettings {
  /** Attempts allowed before delays start. */
  freeAttempts: number;
  /** Delay after the first throttled attempt; doubles with each further failure. */
  baseDelayMs: number;
  maxDelayMs: number;
  /** Failures are forgotten after this long without one (and at a success). */
  windowMs: number;
  /** The attempt in a row after which a failure locks the login (NIST: at most 100); 0 never locks. */
  lockAfter: number;
}

export const DEFAULT_THROTTLE: ThrottleSettings = {
  freeAttempts: 5,
  baseDelayMs: 1_000,
  maxDelayMs: 15 * 60_000,
  windowMs: 24 * 3_600_000,
  lockAfter: 100,
};

/** The throttle key of a login (an email, normalised): shared by sign-in and ChangePassword. */
export const loginThrottleKey = (email: string) => `login:${email}`;

/** The answer while a login is locked: the same whether or not the login exists. */
export const loginLocked = () =>
  new ConnectError(
    "sign-in locked after too many failed attempts, ask an operator to unlock it",
    Code.FailedPrecondition,
  );

export interface Throttle {
  /**
   * Reserves an attempt for key, or throws RESOURCE_EXHAUSTED with the delay
   * (RetryInfo), or FAILED_PRECONDITION while the key is locked.
   */
  reserve(key: string): Promise<void>;
  /** Forgets the failures of key after a successful attempt. */
  succeed(key: string): Promise<void>;
}

const digestKey = (key: string) => createHash("sha256").update(key, "utf8").digest();

/**
 * Forgets the failures and the lock of key (the `identity unlock` command; an
 * erasure, in its transaction); whether there was anything to forget.
 */
export async function unlockKey(db: Pick<Db<typeof schema>, "delete">, key: string): Promise<boolean> {
  const rows = await db
    .delete(loginThrottles)
    .where(eq(loginThrottles.key, digestKey(key)))
    .returning();
  return rows.length > 0;
}

/** A throttle over the login_throttles table. */
export function createThrottle(db: Db<typeof schema>, s: ThrottleSettings): Throttle {
  const digest = digestKey;
  // The attempt that reaches lockAfter still runs; the key is locked for the ones after it (cleared if it succeeds).
  const lockAt = s.lockAfter > 0 ? s.lockAfter : 2 ** 31 - 1;
  return {
    async reserve(key) {
      const k = digest(key);
      // failures is the count including this attempt; a stale count restarts at 1.
      const rows = await db.execute<{ failures: number }>(sql`
        insert into login_throttles as t (key, failures, blocked_until, last_failure_at, locked_at)
        values (${k}, 1, ${blockAfter(1, s)}, now(), ${lockAt <= 1 ? sql`now()` : null})
        on conflict (key) do update set
          failures = ${nextExpr(s)},
          blocked_until = ${blockExpr(s)},
          last_failure_at = now(),
          locked_at = case when ${nextExpr(s)} >= ${lockAt} then now() else null end
        where (t.blocked_until is null or t.blocked_until <= now()) and t.locked_at is null
        returning failures`);
      if (rowsOf(rows).length > 0) return;
      const [row] = await db
        .select({ blockedUntil: loginThrottles.blockedUntil, lockedAt: loginThrottles.lockedAt })
        .from(loginThrottles)
        .where(eq(loginThrottles.key, k));
      if (row?.lockedAt) throw loginLocked();
      const retryMs = Math.max(1000, (row?.blockedUntil?.getTime() ?? Date.now()) - Date.now());
      const seconds = Math.ceil(retryMs / 1000);
      throw new ConnectError(`too many attempts, retry in ${seconds}s`, Code.ResourceExhausted, undefined, [
        { desc: RetryInfoSchema, value: create(RetryInfoSchema, { retryDelay: durationFromMs(seconds * 1000) }) },
      ]);
    },
    async succeed(key) {
      await db.delete(loginThrottles).where(eq(loginThrottles.key, digest(key)));
    },
  };
}

// The first insert is attempt 1: blocked at once only if freeAttempts is 1.
function blockAfter(attempt: number, s: ThrottleSettings): Date | null {
  return attempt >= s.freeAttempts ? new Date(Date.now() + delayMs(attempt, s)) : null;
}

/** The block set after the n-th attempt in a row: none before freeAttempts, then base·2^(n−free), capped. */
export function delayMs(attempt: number, s: ThrottleSettings): number {
  if (attempt < s.freeAttempts) return 0;
  return Math.min(s.maxDelayMs, s.baseDelayMs * 2 ** Math.min(30, attempt - s.freeAttempts));
}

// The count including this attempt: a count quiet for windowMs restarts at 1.
function nextExpr(s: ThrottleSettings) {
  return sql`(case when t.last_failure_at < now() - ${`${s.windowMs} milliseconds`}::interval
                   then 1 else t.failures + 1 end)`;
}

function blockExpr(s: ThrottleSettings) {
  const next = nextExpr(s);
  return sql`case when ${next} >= ${s.freeAttempts}
    then now() + least(${s.maxDelayMs}::float8, ${s.baseDelayMs}::float8 * power(2, least(30, ${next} - ${s.freeAttempts}))) * interval '1 millisecond'
    else null end`;
}

// postgres.js returns an array; PGlite returns { rows }.
function rowsOf<T>(result: unknown): T[] {
  return Array.isArray(result) ? (result as T[]) : ((result as { rows?: T[] }).rows ?? []);
}
