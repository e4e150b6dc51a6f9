/**
 * Rate limits per client address (sign-in, sign-up; recovery when it comes),
 * kept in the database so every instance shares them.
 *
 * Each limit is a GCRA (generic cell rate algorithm, a token bucket with one
 * timestamp): `points` requests per `durationMs`, in bursts of up to `points`.
 * Every request moves the key's theoretical arrival time (`tat`) on by
 * durationMs/points in one atomic upsert, unless that would put it more than
 * durationMs ahead of now: then the request is refused with
 * RESOURCE_EXHAUSTED and RetryInfo (when one more request would fit).
 * Works on PostgreSQL and PGlite alike (plain SQL, no advisory locks).
 */
import { createHash } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import type { Db } from "@customer-platform/runtime/db";
import { eq, sql } from "drizzle-orm";
import type * as schema from "./db/schema.js";
import { rateLimits } from "./db/schema.js";

export interface RateLimit {
  /** Requests allowed per duration (and the largest burst); 0 turns the limit off. */
  points: number;
  durationMs: number;
}

export interface RateLimiter {
  /** Counts one request for key, or throws RESOURCE_EXHAUSTED with RetryInfo. */
  consume(key: string): Promise<void>;
}

/**
 * A limiter over the rate_limits table. name separates limits that share
 * keys (e.g. "sign-in" and "sign-up" for one address).
 */
export function createRateLimiter(db: Db<typeof schema>, name: string, limit: RateLimit): RateLimiter {
  const digest = (key: string) => createHash("sha256").update(`${name}\0${key}`, "utf8").digest();
  const emissionMs = limit.durationMs / Math.max(1, limit.points);
  const step = `${emissionMs} milliseconds`;
  const burst = `${limit.durationMs} milliseconds`;
  return {
    async consume(key) {
      if (limit.points === 0) return;
      const k = digest(key);
      const rows = await db.execute<{ tat: Date }>(sql`
        insert into rate_limits as t (key, tat)
        values (${k}, now() + ${step}::interval)
        on conflict (key) do update set tat = greatest(t.tat, now()) + ${step}::interval
        where greatest(t.tat, now()) + ${step}::interval <= now() + ${burst}::interval
        returning tat`);
      if (rowsOf(rows).length > 0) return;
      const [row] = await db.select({ tat: rateLimits.tat }).from(rateLimits).where(eq(rateLimits.key, k));
      // The next request fits once tat + step − burst has passed.
      const waitMs = (row?.tat.getTime() ?? Date.now()) + emissionMs - limit.durationMs - Date.now();
      const seconds = Math.max(1, Math.ceil(waitMs / 1000));
      throw new ConnectError(
        `too many requests from this address, retry in ${seconds}s`,
        Code.ResourceExhausted,
        undefined,
        [{ desc: RetryInfoSchema, value: create(RetryInfoSchema, { retryDelay: durationFromMs(seconds * 1000) }) }],
      );
    },
  };
}

// postgres.js returns an array; PGlite returns { rows }.
function rowsOf<T>(result: unknown): T[] {
  return Array.isArray(result) ? (result as T[]) : ((result as { rows?: T[] }).rows ?? []);
}
