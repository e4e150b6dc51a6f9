/**
 * Verifying the platform's access tokens in another service, offline,
 * against the identity service's JWKS: RFC 9068 JWTs (`typ: at+jwt`) signed
 * with EdDSA, with `iss`, `sub`, `aud`, `exp`, `iat`, `jti`, `client_id`,
 * `scope` and, on a customer's token, `sid`. See docs/integrate.md.
 */
import { createRemoteJWKSet, jwtVerify } from "jose";

export interface AccessTokenVerifierOptions {
  /** The identity service's IDENTITY_ISSUER, e.g. http://127.0.0.1:8081 */
  issuer: string;
  /** Your service's audience; it must be listed in the identity service's IDENTITY_AUDIENCES. */
  audience: string;
  /** Default `<issuer>/.well-known/jwks.json`. */
  jwksUrl?: string;
}

/** What a verified token says. */
export interface AccessToken {
  /** The customer id for a customer's token; the client id for a service's. */
  subject: string;
  /** `first-party` for customers signed in through the company's apps, else the service's client id. */
  clientId: string;
  scopes: string[];
  /** Token id (`jti`), for logs and revocation lists. */
  id: string;
  /** The customer's sign-in session (`sid`), for revocation lists; absent on a service's token. */
  sessionId?: string;
  expiresAt: Date;
}

/**
 * Returns a function that verifies an access token or throws (a jose error:
 * bad signature, wrong issuer, audience or type, expired). Keys are fetched
 * once, cached, and refetched when a token names an unknown `kid` (rotation).
 */
export function createAccessTokenVerifier(opts: AccessTokenVerifierOptions): (token: string) => Promise<AccessToken> {
  const jwks = createRemoteJWKSet(new URL(opts.jwksUrl ?? `${opts.issuer}/.well-known/jwks.json`));
  return async (token) => {
    const { payload } = await jwtVerify(token, jwks, {
      issuer: opts.issuer,
      audience: opts.audience,
      typ: "at+jwt",
      algorithms: ["EdDSA"],
      requiredClaims: ["sub", "exp", "iat", "jti", "client_id"],
    });
    return {
      subject: String(payload.sub),
      clientId: String(payload.client_id),
      scopes: typeof payload.scope === "string" ? payload.scope.split(" ").filter(Boolean) : [],
      id: String(payload.jti),
      ...(typeof payload.sid === "string" && { sessionId: payload.sid }),
      expiresAt: new Date((payload.exp ?? 0) * 1000),
    };
  };
}

/** The Bearer token of an Authorization header, or undefined. */
export function bearerToken(authorization: string | null | undefined): string | undefined {
  const m = authorization?.match(/^Bearer ([A-Za-z0-9._~+/-]+=*)$/i);
  return m?.[1];
}
