import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq } from "drizzle-orm";
import { identities, refreshTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { TokenRevocationReason } from "../events.js";
import { issueCustomerTokens, revokeSessions, type TokenSetInit } from "../sessions.js";
import { hashToken, invalidRefreshToken } from "../tokens.js";

/**
 * RefreshToken: rotation. The presented token is locked, checked and marked
 * rotated in one transaction, so two parallel uses of one token cannot both
 * succeed; the loser counts as reuse and revokes the family (RFC 9700),
 * with a TokensRevoked event for the family's access tokens. The new tokens
 * keep the session's audiences (the access token may ask for fewer, RFC
 * 8707) and its end (sign-in + the absolute session lifetime).
 */
export function refreshToken(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "refreshToken"> {
  return {
    async refreshToken(req) {
      const hash = hashToken(req.refreshToken);
      const now = deps.now();
      const outcome = await deps.db.transaction(async (tx): Promise<TokenSetInit | "invalid" | "reused"> => {
        const [token] = await tx.select().from(refreshTokens).where(eq(refreshTokens.tokenHash, hash)).for("update");
        if (!token || token.revokedAt) return "invalid";
        if (token.rotatedAt) {
          await revokeSessions(tx, deps, token, TokenRevocationReason.REFRESH_TOKEN_REUSED, now);
          return "reused";
        }
        if (token.expiresAt <= now || (token.sessionExpiresAt && token.sessionExpiresAt <= now)) return "invalid";
        // A session from before audiences has the first-party default.
        const audiences = token.audiences.length > 0 ? token.audiences : [...deps.firstPartyAudiences.default];
        const narrowed = req.audience.filter((a) => !audiences.includes(a));
        if (narrowed.length > 0) {
          throw new ConnectError(`audience not allowed for this session: ${narrowed.join(" ")}`, Code.PermissionDenied);
        }
        const [identity] = await tx
          .select({ status: identities.status })
          .from(identities)
          .where(eq(identities.customerId, token.customerId));
        if (identity?.status !== "active") return "invalid";
        await tx.update(refreshTokens).set({ rotatedAt: now }).where(eq(refreshTokens.id, token.id));
        return issueCustomerTokens(deps, tx, token.customerId, {
          audiences,
          accessAudiences: req.audience.length > 0 ? [...new Set(req.audience)] : audiences,
          familyId: token.familyId,
          parentId: token.id,
          sessionExpiresAt: token.sessionExpiresAt,
        });
      });
      // The family's revocation above is committed before the caller hears of it.
      if (typeof outcome === "string") throw invalidRefreshToken();
      return { tokens: outcome };
    },
  };
}
