import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService, IntrospectTokenResponseSchema } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { SCOPE_IDENTITY_INTROSPECT } from "@customer-platform/sdk/scopes";
import { eq } from "drizzle-orm";
import { identities, refreshTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { isAccessTokenRevoked } from "../sessions.js";
import { hashToken, looksLikeJwt, verifyIssuedAccessToken } from "../tokens.js";

const seconds = (d: Date) => BigInt(Math.floor(d.getTime() / 1000));

/** An introspection's answer (RFC 7662 §2.2), as IntrospectTokenResponse holds it. */
export type Introspection = MessageInitShape<typeof IntrospectTokenResponseSchema>;

/**
 * RFC 7662 introspection, shared by IntrospectToken and POST
 * /oauth2/introspect (oauth/), for a caller already known to hold
 * `identity:introspect`: an inactive token (invalid, expired, revoked by its
 * `jti`, with its session, its signing key or its client's cut-off, of a
 * disabled client or identity) is just `active: false`. A refresh token is
 * described only to the client it was issued to (RFC 7662 §4: a server may
 * limit which tokens a caller may learn about).
 */
export function tokenIntrospector(
  deps: AuthServiceDeps,
): (token: string, callerClientId: string) => Promise<Introspection> {
  return async (token, callerClientId) => {
    const now = deps.now();
    if (looksLikeJwt(token)) {
      const issued = await verifyIssuedAccessToken(deps.keys, deps.tokens, token);
      if (!issued || (await isAccessTokenRevoked(deps.db, issued.principal))) return { active: false };
      const p = issued.principal;
      return {
        active: true,
        sub: p.subject,
        clientId: p.clientId,
        scope: [...p.scopes].join(" "),
        exp: seconds(p.expiresAt),
        iat: seconds(p.issuedAt),
        tokenType: "access_token",
        aud: issued.audience,
      };
    }
    const [t] = await deps.db
      .select({ token: refreshTokens, status: identities.status })
      .from(refreshTokens)
      .innerJoin(identities, eq(identities.customerId, refreshTokens.customerId))
      .where(eq(refreshTokens.tokenHash, hashToken(token)));
    if (
      !t ||
      t.token.clientId !== callerClientId ||
      t.token.revokedAt ||
      t.token.rotatedAt ||
      t.token.expiresAt <= now ||
      (t.token.sessionExpiresAt && t.token.sessionExpiresAt <= now) ||
      t.status !== "active"
    ) {
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
      aud: t.token.audiences.length > 0 ? t.token.audiences : [...deps.firstPartyAudiences.default],
    };
  };
}

/**
 * IntrospectToken (RFC 7662), for services holding `identity:introspect` in
 * a token for the identity service (see tokenIntrospector).
 */
export function introspectToken(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "introspectToken"> {
  const introspect = tokenIntrospector(deps);
  return {
    async introspectToken(req, ctx) {
      const caller = await deps.auth.authenticate(ctx);
      if (caller.kind !== "service") {
        throw new ConnectError("only a service token may introspect tokens", Code.PermissionDenied);
      }
      if (!caller.scopes.has(SCOPE_IDENTITY_INTROSPECT)) {
        throw new ConnectError(`introspection requires the scope ${SCOPE_IDENTITY_INTROSPECT}`, Code.PermissionDenied);
      }
      return introspect(req.token, caller.clientId);
    },
  };
}
