import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq } from "drizzle-orm";
import { refreshTokens, revokedAccessTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { emitTokensRevoked, TokenRevocationReason } from "../events.js";
import { revokeSession, tokenOwner } from "../sessions.js";
import { hashToken, looksLikeJwt, verifyIssuedAccessToken } from "../tokens.js";

/**
 * RevokeToken (RFC 7009): a refresh token revokes its whole family (the
 * session, and with it every access token carrying its `sid`); an access
 * token is denied by its `jti` until it expires. Either emits TokensRevoked
 * in the same transaction; revoking again emits nothing. An invalid token is
 * ignored.
 */
export function revokeToken(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "revokeToken"> {
  return {
    async revokeToken(req) {
      const now = deps.now();
      if (looksLikeJwt(req.token)) {
        // Whatever its audience: the token is named, not presented.
        const principal = (await verifyIssuedAccessToken(deps.keys, deps.tokens, req.token))?.principal;
        if (principal) {
          await deps.db.transaction(async (tx) => {
            const [inserted] = await tx
              .insert(revokedAccessTokens)
              .values({ jti: principal.tokenId, expiresAt: principal.expiresAt, revokedAt: now })
              .onConflictDoNothing()
              .returning({ jti: revokedAccessTokens.jti });
            if (!inserted) return;
            await emitTokensRevoked(
              tx,
              deps.events,
              {
                owner: tokenOwner(principal),
                jwtIds: [principal.tokenId],
                expireTime: principal.expiresAt,
                reason: TokenRevocationReason.REVOKED,
              },
              now,
            );
          });
        }
        return {};
      }
      const [token] = await deps.db
        .select({ familyId: refreshTokens.familyId, customerId: refreshTokens.customerId })
        .from(refreshTokens)
        .where(eq(refreshTokens.tokenHash, hashToken(req.token)));
      if (token) await revokeSession(deps, token, now);
      return {};
    },
  };
}
