import { type HousekeepingTask, outboxCleanup } from "@customer-platform/runtime/housekeeping";
import type { IdentityConfig } from "./config.js";

/** What the user directory can forget: sent events, stale throttle counters, dead tokens. */
export function identityHousekeeping(config: Pick<IdentityConfig, "throttle">): HousekeepingTask[] {
  return [
    outboxCleanup(7),
    {
      name: "login_throttles",
      sql: `delete from login_throttles where last_failure_at < now() - interval '${config.throttle.windowMs} milliseconds' and (blocked_until is null or blocked_until < now())`,
    },
    { name: "revoked_access_tokens", sql: "delete from revoked_access_tokens where expires_at < now()" },
    {
      name: "refresh_tokens",
      sql: "delete from refresh_tokens where id in (select id from refresh_tokens where expires_at < now() - interval '7 days' limit 10000)",
    },
  ];
}
