import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type { AuthServiceDeps } from "../deps.js";
import { TokenRevocationReason } from "../events.js";
import { authenticateCustomerCall, revokeSessions } from "../sessions.js";

/**
 * RevokeAllSessions: signs the caller out everywhere, the calling session
 * included: every session ends (one TokensRevoked with their `sid`s, reason
 * REVOKED; none when none was live).
 */
export function revokeAllSessions(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "revokeAllSessions"> {
  return {
    async revokeAllSessions(_req, ctx) {
      const principal = await authenticateCustomerCall(deps, ctx, "revoke sessions");
      const now = deps.now();
      await deps.db.transaction((tx) =>
        revokeSessions(tx, deps, { customerId: principal.subject }, TokenRevocationReason.REVOKED, now),
      );
      return {};
    },
  };
}
