import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { and, eq, exists, gt, isNull, or, sql } from "drizzle-orm";
import { identities, refreshTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { TokenRevocationReason } from "../events.js";
import { issueCustomerTokens, revokeSessions, type TokenSetInit } from "../sessions.js";
import { hashToken, invalidRefreshToken } from "../tokens.js";

/**
 * RefreshToken: rotation. One `UPDATE … RETURNING` marks the presented token
 * rotated only if it is still live (not rotated, not revoked, not expired,
 * its session not ended, its identity active); the successor is inserted in
 * the same transaction. Two parallel uses of one token cannot both succeed:
 * the second waits for the first's row lock, then matches nothing. A token
 * that matched nothing is looked at once more: a rotated one is reuse,
 * which revokes the family (RFC 9700), with a TokensRevoked event for the
 * family's access tokens. The new tokens
 * keep the session's audiences (the access token may ask for fewer, RFC
 * 8707) and its end (sign-in + the absolute session lifetime).
 */
export function refreshToken(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "refreshToken"> {
  return {
    async refreshToken(req) {
      const hash = hashToken(req.refreshToken);
      const now = deps.now();
      const outcome = await deps.db.transaction(async (tx): Promise<TokenSetInit | "invalid" | "reused"> => {
        const [token] = await tx
          .update(refreshTokens)
          .set({ rotatedAt: now })
          .where(
            and(
              eq(refreshTokens.tokenHash, hash),
              isNull(refreshTokens.rotatedAt),
              isNull(refreshTokens.revokedAt),
              gt(refreshTokens.expiresAt, now),
              or(isNull(refreshTokens.sessionExpiresAt), gt(refreshTokens.sessionExpiresAt, now)),
              exists(
                tx
                  .select({ one: sql`1` })
                  .from(identities)
                  .where(and(eq(identities.customerId, refreshTokens.customerId), eq(identities.status, "active"))),
              ),
            ),
          )
          .returning({
            id: refreshTokens.id,
            familyId: refreshTokens.familyId,
            customerId: refreshTokens.customerId,
            audiences: refreshTokens.audiences,
            sessionExpiresAt: refreshTokens.sessionExpiresAt,
          });
        if (!token) {
          // The rare path: why it was not rotated. Reuse of a rotated token wins over its expiry, as it must.
          const [presented] = await tx
            .select({
              customerId: refreshTokens.customerId,
              familyId: refreshTokens.familyId,
              rotatedAt: refreshTokens.rotatedAt,
              revokedAt: refreshTokens.revokedAt,
            })
            .from(refreshTokens)
            .where(eq(refreshTokens.tokenHash, hash))
            .for("update");
          if (!presented || presented.revokedAt || !presented.rotatedAt) return "invalid";
          await revokeSessions(tx, deps, presented, TokenRevocationReason.REFRESH_TOKEN_REUSED, now);
          return "reused";
        }
        // A session from before audiences has the first-party default.
        const audiences = token.audiences.length > 0 ? token.audiences : [...deps.firstPartyAudiences.default];
        const narrowed = req.audience.filter((a) => !audiences.includes(a));
        if (narrowed.length > 0) {
          // Thrown, the transaction rolls back: the token stays unrotated.
          throw new ConnectError(`audience not allowed for this session: ${narrowed.join(" ")}`, Code.PermissionDenied);
        }
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
