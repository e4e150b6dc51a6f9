import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { and, eq, isNull } from "drizzle-orm";
import { refreshTokens, revokedAccessTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { hashToken, looksLikeJwt, verifyOwnAccessToken } from "../tokens.js";

/**
 * RevokeToken (RFC 7009): a refresh token revokes its whole family; an access
 * token is denied by its `jti` until it expires. An invalid token is ignored.
 */
export function revokeToken(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "revokeToken"> {
  return {
    async revokeToken(req) {
      const now = deps.now();
      if (looksLikeJwt(req.token)) {
        const principal = await verifyOwnAccessToken(deps.keys, deps.tokens, req.token).catch(() => undefined);
        if (principal) {
          await deps.db
            .insert(revokedAccessTokens)
            .values({ jti: principal.tokenId, expiresAt: principal.expiresAt, revokedAt: now })
            .onConflictDoNothing();
        }
        return {};
      }
      const [token] = await deps.db
        .select({ familyId: refreshTokens.familyId })
        .from(refreshTokens)
        .where(eq(refreshTokens.tokenHash, hashToken(req.token)));
      if (token) {
        await deps.db
          .update(refreshTokens)
          .set({ revokedAt: now, revokeReason: "revoked" })
          .where(and(eq(refreshTokens.familyId, token.familyId), isNull(refreshTokens.revokedAt)));
      }
      return {};
    },
  };
}
