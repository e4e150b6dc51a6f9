import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { and, eq } from "drizzle-orm";
import { refreshTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { authenticateCustomerCall, revokeSession as endSession } from "../sessions.js";

/**
 * RevokeSession: ends one of the caller's sessions as RevokeToken of its
 * refresh token does (TokensRevoked with its `sid`, reason REVOKED). A
 * session that already ended answers the same; an id the caller has no
 * session under (another customer's included) is NOT_FOUND.
 */
export function revokeSession(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "revokeSession"> {
  return {
    async revokeSession(req, ctx) {
      const principal = await authenticateCustomerCall(deps, ctx, "revoke a session");
      const session = { customerId: principal.subject, familyId: req.sessionId };
      const [owned] = await deps.db
        .select({ familyId: refreshTokens.familyId })
        .from(refreshTokens)
        .where(and(eq(refreshTokens.familyId, session.familyId), eq(refreshTokens.customerId, session.customerId)))
        .limit(1);
      if (!owned) throw new ConnectError("session not found", Code.NotFound);
      await endSession(deps, session, deps.now());
      return {};
    },
  };
}
