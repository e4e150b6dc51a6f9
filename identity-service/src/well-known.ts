/**
 * `GET /.well-known/jwks.json` (public keys only) and the discovery metadata
 * at `GET /.well-known/oauth-authorization-server` (RFC 8414) and
 * `/.well-known/openid-configuration` (where most libraries look), all with
 * `cache-control: max-age` from IDENTITY_JWKS_MAX_AGE: a rotated key signs
 * only once every copy cached for that long has expired (keyActivationDelayMs).
 */

import type { NodeHandlerFn } from "@customer-platform/runtime/health";
import { SCOPE_OPENID, SCOPE_PROFILE, SCOPES } from "@customer-platform/sdk/scopes";
import { AUTH_METHODS, GRANT_TYPES, OAUTH_PATHS } from "./oauth/handler.js";
import type { KeyStore } from "./tokens.js";
import { SIGNING_ALG } from "./tokens.js";

/** Where the discovery document is served: RFC 8414's path and OpenID Connect's. */
export const DISCOVERY_PATHS = ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"];

/**
 * The discovery document: only what is true. The token, revocation and
 * introspection endpoints are the OAuth form endpoints (oauth/), with the
 * grants they serve (client credentials, refresh token) and how clients
 * authenticate there (`none`: the first-party app, a public client, by its
 * client_id). There is no authorization endpoint yet, so no response types,
 * no authorization code, implicit or password grant, and no ID token: no
 * OpenID Connect fields, and not the `openid` and `profile` scopes customer
 * tokens carry for compatibility, which grant nothing here.
 */
export function discoveryDocument(issuer: string): Record<string, unknown> {
  return {
    issuer,
    jwks_uri: `${issuer}/.well-known/jwks.json`,
    token_endpoint: `${issuer}${OAUTH_PATHS.token}`,
    revocation_endpoint: `${issuer}${OAUTH_PATHS.revocation}`,
    introspection_endpoint: `${issuer}${OAUTH_PATHS.introspection}`,
    scopes_supported: SCOPES.filter((s) => s !== SCOPE_OPENID && s !== SCOPE_PROFILE),
    response_types_supported: [],
    grant_types_supported: [...GRANT_TYPES],
    token_endpoint_auth_methods_supported: [...AUTH_METHODS.token],
    revocation_endpoint_auth_methods_supported: [...AUTH_METHODS.revocation],
    introspection_endpoint_auth_methods_supported: [...AUTH_METHODS.introspection],
    // Not RFC 8414 metadata, but true, and what a verifier of the access tokens needs to pin.
    access_token_signing_alg_values_supported: [SIGNING_ALG],
  };
}

/** Serves the well-known documents; anything else goes to next. */
export function wellKnownHandler(
  keys: KeyStore,
  config: { issuer: string; jwksMaxAgeSec: number },
  next: NodeHandlerFn,
): NodeHandlerFn {
  const { issuer } = config;
  const discovery = JSON.stringify(discoveryDocument(issuer));
  return (req, res) => {
    const path = req.url?.split("?")[0];
    if (path !== "/.well-known/jwks.json" && !DISCOVERY_PATHS.includes(path ?? "")) return next(req, res);
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" });
      res.end();
      return;
    }
    const isJwks = path === "/.well-known/jwks.json";
    const published = isJwks ? keys.published() : undefined;
    res.writeHead(200, {
      "content-type": isJwks ? "application/jwk-set+json" : "application/json",
      // The JWKS's max-age is the one key activation waits out (PublishedKeys); discovery shares the setting.
      "cache-control": `public, max-age=${published?.maxAgeSec ?? config.jwksMaxAgeSec}`,
      "access-control-allow-origin": "*",
    });
    if (req.method === "HEAD") res.end();
    else res.end(published ? JSON.stringify(published.jwks) : discovery);
  };
}
