import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq } from "drizzle-orm";
import { refreshTokens, revokedAccessTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { emitTokensRevoked, TokenRevocationReason } from "../events.js";
import { revokeSession, tokenOwner } from "../sessions.js";
import { hashToken, looksLikeJwt, verifyIssuedAccessToken } from "../tokens.js";

/**
 * What revoking a token did: `revoked` (now, or already before), `ignored`
 * (no token of ours: RFC 7009 answers it like a success), or `other-client`
 * (a refresh token of another client than the one named, left alone).
 */
export type RevocationOutcome = "revoked" | "ignored" | "other-client";

/**
 * RFC 7009 revocation, shared by RevokeToken and POST /oauth2/revoke
 * (oauth/): a refresh token revokes its whole family (the session, and with
 * it every access token carrying its `sid`); an access token is denied by
 * its `jti` until it expires. Either emits TokensRevoked in the same
 * transaction; revoking again emits nothing. An invalid token is ignored.
 * With `clientId`, a refresh token is revoked only if it was issued to that
 * client (RFC 7009 §2.1); an access token is named, not presented, so
 * whoever holds it may revoke it, as with the RPC.
 */
export function tokenRevoker(
  deps: AuthServiceDeps,
): (token: string, opts?: { clientId?: string }) => Promise<RevocationOutcome> {
  return async (token, opts = {}) => {
    const now = deps.now();
    if (looksLikeJwt(token)) {
      // Whatever its audience: the token is named, not presented.
      const principal = (await verifyIssuedAccessToken(deps.keys, deps.tokens, token))?.principal;
      if (!principal) return "ignored";
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
      return "revoked";
    }
    const [row] = await deps.db
      .select({
        familyId: refreshTokens.familyId,
        customerId: refreshTokens.customerId,
        clientId: refreshTokens.clientId,
      })
      .from(refreshTokens)
      .where(eq(refreshTokens.tokenHash, hashToken(token)));
    if (!row) return "ignored";
    if (opts.clientId !== undefined && row.clientId !== opts.clientId) return "other-client";
    await revokeSession(deps, row, now);
    return "revoked";
  };
}

/** RevokeToken (RFC 7009): see tokenRevoker; the RPC names no client, so any token it is given. */
export function revokeToken(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "revokeToken"> {
  const revoke = tokenRevoker(deps);
  return {
    async revokeToken(req) {
      await revoke(req.token);
      return {};
    },
  };
}
