/**
 * Trusting the platform's access tokens in another service's HTTP API with
 * the SDK: offline verification against the identity service's JWKS, and
 * the revocations it publishes, on the process's one NATS connection. A
 * refused token is answered 401, or 503 while the identity service's keys
 * cannot be fetched. See docs/integrate.md.
 */
import type { IncomingMessage, RequestListener, ServerResponse } from "node:http";
import {
  createEventVerifier,
  createRevocationList,
  createTokenVerifier,
  type Logger,
  type Principal,
  type RevocationList,
  TokenError,
  type TokenVerifier,
} from "@customer-platform/sdk";
import type { NatsConnection } from "@nats-io/transport-node";

export interface OrdersAuthOptions {
  /** The identity service's IDENTITY_ISSUER, e.g. http://127.0.0.1:8081 */
  issuer: string;
  /** Your service's audience: tokens must be asked for it (RFC 8707 `audience`) by clients allowed it. */
  audience: string;
  /** Default `<issuer>/.well-known/jwks.json`. */
  jwksUrl?: string;
  /** The identity service's event keys, which sign its revocations; default `<issuer>/.well-known/event-keys.json`. */
  eventKeysUrl?: string;
  /** Your process's NATS connection (reconnecting forever), for the revocations. */
  nats: NatsConnection;
  /** The identity service's stream and subject prefix; default `IDENTITY` and `identity`. */
  identityStream?: string;
  identitySubjectPrefix?: string;
  /** pino, or anything with the same debug/info/warn/error/child. */
  logger: Logger;
}

/** A token verifier that honours revocations; start() the revocations with the process, stop() them at the end. */
export function createOrdersAuth(opts: OrdersAuthOptions): { tokens: TokenVerifier; revocations: RevocationList } {
  const revocations = createRevocationList({
    nats: opts.nats,
    stream: opts.identityStream ?? "IDENTITY",
    subjectPrefix: opts.identitySubjectPrefix ?? "identity",
    // The identity service's access-token lifetime (IDENTITY_ACCESS_TOKEN_TTL, 15 minutes).
    lookbackMs: 15 * 60_000,
    // Only revocations the identity service signed count.
    verifier: createEventVerifier({
      trust: { "identity-service": opts.eventKeysUrl ?? `${opts.issuer}/.well-known/event-keys.json` },
    }),
    logger: opts.logger,
  });
  const tokens = createTokenVerifier({
    jwksUrl: opts.jwksUrl ?? `${opts.issuer}/.well-known/jwks.json`,
    issuer: opts.issuer,
    audience: opts.audience,
    revocations,
  });
  return { tokens, revocations };
}

/**
 * Wraps a request handler: it runs only with a verified principal; a request
 * without one is answered here.
 */
export function withPrincipal(
  tokens: TokenVerifier,
  handler: (req: IncomingMessage, res: ServerResponse, principal: Principal) => void | Promise<void>,
): RequestListener {
  return async (req, res) => {
    let principal: Principal;
    try {
      principal = await tokens.verifyAuthorizationHeader(req.headers.authorization);
    } catch (err) {
      if (!(err instanceof TokenError)) {
        res.writeHead(500).end();
        return;
      }
      // keys_unavailable: the identity service is unreachable, which is not the caller's fault.
      const status = err.reason === "keys_unavailable" ? 503 : 401;
      const challenge = err.reason === "missing" ? "Bearer" : 'Bearer error="invalid_token"';
      res.writeHead(status, {
        "content-type": "application/json",
        ...(status === 401 && { "www-authenticate": challenge }),
      });
      res.end(JSON.stringify({ error: err.message }));
      return;
    }
    await handler(req, res, principal);
  };
}
