/**
 * Bearer access tokens (RFC 9068 JWTs from the identity provider), verified
 * offline against its JWKS: signature with a pinned algorithm, `typ`,
 * issuer, audience, expiry; and, given a revocation list, not revoked.
 */
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { createRemoteJWKSet, errors, type JWTPayload, type JWTVerifyGetKey, jwtVerify } from "jose";

/** Who is calling: a customer (token subject is the customer id) or a service (client credentials). */
export interface Principal {
  readonly kind: "customer" | "service";
  /** The customer id, or the client id of a service. */
  readonly subject: string;
  readonly clientId: string;
  readonly scopes: ReadonlySet<string>;
  /** The token's `jti`. */
  readonly tokenId: string;
  /** The token's `sid`: the customer's sign-in session (refresh-token family); absent for a service. */
  readonly sessionId?: string;
  readonly expiresAt: Date;
  readonly issuedAt: Date;
}

/** Authenticates the caller of an RPC. */
export interface Authenticator {
  /** The caller's principal; UNAUTHENTICATED without a valid Bearer token. */
  authenticate(ctx: HandlerContext): Promise<Principal>;
}

/** The algorithms access tokens may be signed with; anything else (and `none`) is rejected. */
export const ACCESS_TOKEN_ALGORITHMS = ["EdDSA", "ES256"];

export interface JwtVerifyOptions {
  issuer: string;
  audience: string;
  /** Allowed clock skew in seconds. */
  clockToleranceSec?: number;
}

/** The Bearer token of a request, or UNAUTHENTICATED. */
export function bearerToken(ctx: HandlerContext): string {
  const header = ctx.requestHeader.get("authorization");
  if (!header) throw new ConnectError("missing bearer token", Code.Unauthenticated);
  const match = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(header);
  if (!match?.[1]) throw new ConnectError("malformed authorization header", Code.Unauthenticated);
  return match[1];
}

/** Verifies an access token JWT and turns its claims into a principal. */
export async function verifyAccessToken(
  token: string,
  keys: JWTVerifyGetKey,
  opts: JwtVerifyOptions,
): Promise<Principal> {
  let payload: JWTPayload;
  try {
    ({ payload } = await jwtVerify(token, keys, {
      issuer: opts.issuer,
      audience: opts.audience,
      algorithms: ACCESS_TOKEN_ALGORITHMS,
      typ: "at+jwt",
      requiredClaims: ["sub", "exp", "iat", "jti", "client_id"],
      clockTolerance: opts.clockToleranceSec ?? 5,
    }));
  } catch (err) {
    if (err instanceof errors.JWTExpired) throw new ConnectError("access token expired", Code.Unauthenticated);
    if (err instanceof errors.JOSEError) throw new ConnectError("invalid access token", Code.Unauthenticated);
    throw err;
  }
  return principalFromClaims(payload);
}

/** The principal a verified token's claims describe; a service token has `sub` equal to `client_id`. */
export function principalFromClaims(payload: JWTPayload): Principal {
  const sub = payload.sub;
  const clientId = payload.client_id;
  const scope = payload.scope ?? "";
  const sid = payload.sid;
  if (
    typeof sub !== "string" ||
    typeof clientId !== "string" ||
    typeof scope !== "string" ||
    !payload.jti ||
    (sid !== undefined && (typeof sid !== "string" || sid === ""))
  ) {
    throw new ConnectError("invalid access token", Code.Unauthenticated);
  }
  return {
    kind: sub === clientId ? "service" : "customer",
    subject: sub,
    clientId,
    scopes: new Set(scope.split(" ").filter(Boolean)),
    tokenId: payload.jti,
    ...(typeof sid === "string" && { sessionId: sid }),
    expiresAt: new Date((payload.exp ?? 0) * 1000),
    issuedAt: new Date((payload.iat ?? 0) * 1000),
  };
}

/** Tells whether a verified token was revoked before it expires (e.g. `createRevocationList`). */
export interface RevocationCheck {
  /** True when the token's `jti`, or its `sid`, is known to be revoked. */
  isRevoked(principal: Pick<Principal, "tokenId" | "sessionId">): boolean;
}

/** UNAUTHENTICATED for a genuine token that was revoked before it expires. */
export const revokedAccessToken = () => new ConnectError("access token revoked", Code.Unauthenticated);

export interface JwksAuthenticatorOptions extends JwtVerifyOptions {
  jwksUrl: string;
  /** How long fetched keys are trusted before a refetch (default 10 minutes). */
  cacheMaxAgeMs?: number;
  /** Minimum time between refetches triggered by an unknown `kid` (default 30 s). */
  cooldownMs?: number;
  /** Revocations to honour; without, a genuine token is accepted until it expires. */
  revocations?: RevocationCheck;
}

/**
 * An authenticator for a resource server: keys come from the identity
 * provider's JWKS URL, cached, and refetched when a token names an unknown
 * `kid` (key rotation). With `revocations`, a revoked token is answered
 * UNAUTHENTICATED like an invalid one.
 */
export function createJwksAuthenticator(opts: JwksAuthenticatorOptions): Authenticator {
  const keys = createRemoteJWKSet(new URL(opts.jwksUrl), {
    cacheMaxAge: opts.cacheMaxAgeMs ?? 600_000,
    cooldownDuration: opts.cooldownMs ?? 30_000,
    timeoutDuration: 5_000,
  });
  const getKey: JWTVerifyGetKey = async (header, input) => {
    try {
      return await keys(header, input);
    } catch (err) {
      // The identity provider being unreachable is not the caller's fault.
      if (err instanceof errors.JWKSTimeout || (err instanceof TypeError && !(err instanceof errors.JOSEError))) {
        throw new ConnectError("token keys unavailable", Code.Unavailable, undefined, undefined, err);
      }
      throw err;
    }
  };
  const revocations = opts.revocations;
  return {
    async authenticate(ctx) {
      const principal = await verifyAccessToken(bearerToken(ctx), getKey, opts);
      if (revocations?.isRevoked(principal)) throw revokedAccessToken();
      return principal;
    },
  };
}
