/**
 * Bearer access tokens for Connect handlers: the SDK's verifier
 * (`@customer-platform/sdk/tokens`), its TokenError mapped to ConnectError —
 * UNAVAILABLE when the identity provider's keys cannot be fetched,
 * UNAUTHENTICATED for anything wrong with the token, with the same message.
 */
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import {
  type AccessTokenOptions,
  createTokenVerifier,
  type Principal,
  type RevocationCheck,
  bearerToken as sdkBearerToken,
  verifyAccessToken as sdkVerifyAccessToken,
  TokenError,
  type TokenVerifierOptions,
} from "@customer-platform/sdk/tokens";
import type { JWTVerifyGetKey } from "jose";

export type { Principal, RevocationCheck };

/** Authenticates the caller of an RPC. */
export interface Authenticator {
  /** The caller's principal; UNAUTHENTICATED without a valid Bearer token. */
  authenticate(ctx: HandlerContext): Promise<Principal>;
}

/** Options of {@link verifyAccessToken}: issuer, audience, clock tolerance. */
export type JwtVerifyOptions = AccessTokenOptions;

/** The ConnectError to answer a refused token with, its message the TokenError's. */
export function tokenConnectError(err: TokenError): ConnectError {
  // The identity provider being unreachable is not the caller's fault.
  if (err.reason === "keys_unavailable") {
    return new ConnectError(err.message, Code.Unavailable, undefined, undefined, err.cause);
  }
  // No cause, as before: the message is all the caller learns, and all the log needs.
  return new ConnectError(err.message, Code.Unauthenticated);
}

function toConnectError(err: unknown): unknown {
  return err instanceof TokenError ? tokenConnectError(err) : err;
}

async function connectErrors<T>(run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (err) {
    throw toConnectError(err);
  }
}

/** The Bearer token of a request, or UNAUTHENTICATED. */
export function bearerToken(ctx: HandlerContext): string {
  try {
    return sdkBearerToken(ctx.requestHeader.get("authorization"));
  } catch (err) {
    throw toConnectError(err);
  }
}

/** Verifies an access token JWT with the given keys; UNAUTHENTICATED if it is not valid. */
export function verifyAccessToken(token: string, keys: JWTVerifyGetKey, opts: JwtVerifyOptions): Promise<Principal> {
  return connectErrors(() => sdkVerifyAccessToken(token, keys, opts));
}

/** UNAUTHENTICATED for a genuine token that was revoked before it expires. */
export const revokedAccessToken = () => tokenConnectError(new TokenError("revoked"));

export type JwksAuthenticatorOptions = TokenVerifierOptions;

/**
 * An authenticator for a resource server over the SDK's token verifier: keys
 * from the identity provider's JWKS URL, cached no longer than the response's
 * `cache-control: max-age` (so a rotated key is known before it signs) and
 * refetched on an unknown `kid`; with `revocations`, a revoked token is
 * answered UNAUTHENTICATED.
 */
export function createJwksAuthenticator(opts: JwksAuthenticatorOptions): Authenticator {
  const verifier = createTokenVerifier(opts);
  return {
    // Not connectErrors(() => …): no closure per call on the path every RPC takes.
    async authenticate(ctx) {
      try {
        return await verifier.verifyAuthorizationHeader(ctx.requestHeader.get("authorization"));
      } catch (err) {
        throw toConnectError(err);
      }
    },
  };
}
