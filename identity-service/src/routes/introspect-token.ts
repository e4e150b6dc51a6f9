import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq } from "drizzle-orm";
import { identities, refreshTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { isAccessTokenRevoked } from "../sessions.js";
import { hashToken, looksLikeJwt, verifyOwnAccessToken } from "../tokens.js";

const seconds = (d: Date) => BigInt(Math.floor(d.getTime() / 1000));

/**
 * IntrospectToken (RFC 7662), for services: an inactive token (invalid,
 * expired, revoked by its `jti` or with its session) is just `active: false`.
 */
export function introspectToken(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "introspectToken"> {
  return {
    async introspectToken(req, ctx) {
      const caller = await deps.auth.authenticate(ctx);
      if (caller.kind !== "service") {
        throw new ConnectError("only a service token may introspect tokens", Code.PermissionDenied);
      }
      const now = deps.now();
      if (looksLikeJwt(req.token)) {
        const p = await verifyOwnAccessToken(deps.keys, deps.tokens, req.token).catch(() => undefined);
        if (!p || (await isAccessTokenRevoked(deps.db, p))) return { active: false };
        return {
          active: true,
          sub: p.subject,
          clientId: p.clientId,
          scope: [...p.scopes].join(" "),
          exp: seconds(p.expiresAt),
          iat: seconds(p.issuedAt),
          tokenType: "access_token",
        };
      }
      const [t] = await deps.db
        .select({ token: refreshTokens, status: identities.status })
        .from(refreshTokens)
        .innerJoin(identities, eq(identities.customerId, refreshTokens.customerId))
        .where(eq(refreshTokens.tokenHash, hashToken(req.token)));
      if (!t || t.token.revokedAt || t.token.rotatedAt || t.token.expiresAt <= now || t.status !== "active") {
        return { active: false };
      }
      return {
        active: true,
        sub: t.token.customerId,
        clientId: t.token.clientId,
        scope: t.token.scope,
        exp: seconds(t.token.expiresAt),
        iat: seconds(t.token.createdAt),
        tokenType: "refresh_token",
      };
    },
  };
}
