import { type HousekeepingTask, outboxCleanup } from "@customer-platform/runtime/housekeeping";
import { mailOutboxCleanup } from "@customer-platform/runtime/mail-schema";
import type { IdentityConfig } from "./config.js";

/** What the user directory can forget: sent events and mail, stale throttle counters, dead tokens and codes. */
export function identityHousekeeping(config: Pick<IdentityConfig, "throttle">): HousekeepingTask[] {
  return [
    outboxCleanup(7),
    // Sent or given-up mail (its data, the code, is erased at once); the address goes after a week.
    mailOutboxCleanup(7),
    // A used or expired code is worthless; a day of them is kept for operators.
    {
      name: "one_time_codes",
      sql: "delete from one_time_codes where coalesce(consumed_at, expires_at) < now() - interval '1 day'",
    },
    {
      name: "login_throttles",
      // A locked login stays locked until unlocked (`identity unlock`) or signed in.
      sql: `delete from login_throttles where last_failure_at < now() - interval '${config.throttle.windowMs} milliseconds' and (blocked_until is null or blocked_until < now()) and locked_at is null`,
    },
    // An authorization request (its sign-in page, its code) is worthless once expired.
    { name: "authorization_requests", sql: "delete from authorization_requests where expires_at < now()" },
    // A passed theoretical arrival time is the same as no row.
    { name: "rate_limits", sql: "delete from rate_limits where tat < now()" },
    { name: "revoked_access_tokens", sql: "delete from revoked_access_tokens where expires_at < now()" },
    {
      name: "refresh_tokens",
      // A row lives as long as its session could (rotated rows too): a stolen token replayed
      // up to then still finds its row and revokes the family. Rows from before the absolute
      // lifetime (no session_expires_at) go a week after they expire, as before.
      sql: "delete from refresh_tokens where id in (select id from refresh_tokens where coalesce(session_expires_at, expires_at) < now() - interval '7 days' limit 10000)",
    },
  ];
}
