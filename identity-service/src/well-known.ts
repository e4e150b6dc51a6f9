/**
 * `GET /.well-known/jwks.json` (public keys only) and the discovery metadata
 * at `GET /.well-known/oauth-authorization-server` (RFC 8414) and
 * `/.well-known/openid-configuration` (where most libraries look), all with
 * `cache-control: max-age` from IDENTITY_JWKS_MAX_AGE: a rotated key signs
 * only once every copy cached for that long has expired (keyActivationDelayMs).
 */

import type { NodeHandlerFn } from "@customer-platform/runtime/health";
import { SCOPE_PROFILE, SCOPES } from "@customer-platform/sdk/scopes";
import { SCOPE_EMAIL } from "./oauth/authorization.js";
import { BROWSER_PATHS, CLAIMS } from "./oauth/browser.js";
import { AUTH_METHODS, GRANT_TYPES, OAUTH_PATHS } from "./oauth/handler.js";
import type { KeyStore } from "./tokens.js";
import { SIGNING_ALG } from "./tokens.js";

/** Where the discovery document is served: RFC 8414's path and OpenID Connect's. */
export const DISCOVERY_PATHS = ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"];

/**
 * The discovery document: only what is true. The authorization endpoint
 * (the hosted sign-in page: response type `code` with S256 PKCE, query
 * response mode, `iss` in the response, RFC 9207), userinfo and
 * RP-initiated logout (oauth/browser.ts); the token, revocation and
 * introspection endpoints (oauth/handler.ts) with the grants they serve and
 * how clients authenticate there (`none`: public clients, by their
 * client_id). ID tokens are signed as access tokens are. No implicit or
 * password grant, no request objects, no `profile` claims: `profile` is
 * not listed among the scopes, since it grants nothing here.
 */
export function discoveryDocument(issuer: string): Record<string, unknown> {
  return {
    issuer,
    authorization_endpoint: `${issuer}${BROWSER_PATHS.authorization}`,
    token_endpoint: `${issuer}${OAUTH_PATHS.token}`,
    userinfo_endpoint: `${issuer}${BROWSER_PATHS.userinfo}`,
    end_session_endpoint: `${issuer}${BROWSER_PATHS.endSession}`,
    jwks_uri: `${issuer}/.well-known/jwks.json`,
    revocation_endpoint: `${issuer}${OAUTH_PATHS.revocation}`,
    introspection_endpoint: `${issuer}${OAUTH_PATHS.introspection}`,
    scopes_supported: [...SCOPES.filter((s) => s !== SCOPE_PROFILE), SCOPE_EMAIL],
    response_types_supported: ["code"],
    response_modes_supported: ["query"],
    grant_types_supported: [...GRANT_TYPES],
    code_challenge_methods_supported: ["S256"],
    authorization_response_iss_parameter_supported: true,
    subject_types_supported: ["public"],
    id_token_signing_alg_values_supported: [SIGNING_ALG],
    claims_supported: [...CLAIMS],
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
