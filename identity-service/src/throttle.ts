/**
 * Throttling of password attempts per login identifier, known or not.
 *
 * An attempt first reserves itself in one atomic statement: unless the key is
 * blocked, its failure count goes up by one, and from the `freeAttempts`-th
 * attempt on the key is blocked for an exponentially growing delay (capped)
 * before the password is even checked. So parallel attempts cannot exceed the
 * limit, and the state lives in the database, shared by every instance. A
 * successful attempt clears the key.
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
  /** Failures older than this are forgotten. */
  windowMs: number;
}

export const DEFAULT_THROTTLE: ThrottleSettings = {
  freeAttempts: 5,
  baseDelayMs: 1_000,
  maxDelayMs: 15 * 60_000,
  windowMs: 15 * 60_000,
};

export interface Throttle {
  /** Reserves an attempt for key, or throws RESOURCE_EXHAUSTED with the delay (RetryInfo). */
  reserve(key: string): Promise<void>;
  /** Forgets the failures of key after a successful attempt. */
  succeed(key: string): Promise<void>;
}

/** A throttle over the login_throttles table. */
export function createThrottle(db: Db<typeof schema>, s: ThrottleSettings): Throttle {
  const digest = (key: string) => createHash("sha256").update(key, "utf8").digest();
  return {
    async reserve(key) {
      const k = digest(key);
      // failures is the count including this attempt; a stale count restarts at 1.
      const rows = await db.execute<{ failures: number }>(sql`
        insert into login_throttles as t (key, failures, blocked_until, last_failure_at)
        values (${k}, 1, ${blockAfter(1, s)}, now())
        on conflict (key) do update set
          failures = case when t.last_failure_at < now() - ${`${s.windowMs} milliseconds`}::interval
                          then 1 else t.failures + 1 end,
          blocked_until = ${blockExpr(s)},
          last_failure_at = now()
        where t.blocked_until is null or t.blocked_until <= now()
        returning failures`);
      if (rowsOf(rows).length > 0) return;
      const [row] = await db
        .select({ blockedUntil: loginThrottles.blockedUntil })
        .from(loginThrottles)
        .where(eq(loginThrottles.key, k));
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

function blockExpr(s: ThrottleSettings) {
  const next = sql`(case when t.last_failure_at < now() - ${`${s.windowMs} milliseconds`}::interval then 1 else t.failures + 1 end)`;
  return sql`case when ${next} >= ${s.freeAttempts}
    then now() + least(${s.maxDelayMs}::float8, ${s.baseDelayMs}::float8 * power(2, least(30, ${next} - ${s.freeAttempts}))) * interval '1 millisecond'
    else null end`;
}

// postgres.js returns an array; PGlite returns { rows }.
function rowsOf<T>(result: unknown): T[] {
  return Array.isArray(result) ? (result as T[]) : ((result as { rows?: T[] }).rows ?? []);
}
