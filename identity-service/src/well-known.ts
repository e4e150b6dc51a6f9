/**
 * `GET /.well-known/jwks.json` (public keys only) and
 * `GET /.well-known/openid-configuration` (discovery metadata), both with
 * `cache-control: max-age` from IDENTITY_JWKS_MAX_AGE: a rotated key signs
 * only once every copy cached for that long has expired (keyActivationDelayMs).
 */

import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type { NodeHandlerFn } from "@customer-platform/runtime/health";
import type { KeyStore } from "./tokens.js";
import { SIGNING_ALG } from "./tokens.js";

/** Serves the well-known documents; anything else goes to next. */
export function wellKnownHandler(
  keys: KeyStore,
  config: { issuer: string; jwksMaxAgeSec: number },
  next: NodeHandlerFn,
): NodeHandlerFn {
  const { issuer } = config;
  const rpc = (m: string) => `${issuer}/${AuthService.typeName}/${m}`;
  const discovery = JSON.stringify({
    issuer,
    jwks_uri: `${issuer}/.well-known/jwks.json`,
    // Token endpoints are Connect RPCs, not OAuth form posts; listed for discovery.
    token_endpoint: rpc("AuthenticateClient"),
    revocation_endpoint: rpc("RevokeToken"),
    introspection_endpoint: rpc("IntrospectToken"),
    grant_types_supported: ["password", "refresh_token", "client_credentials"],
    token_endpoint_auth_methods_supported: ["client_secret_post"],
    id_token_signing_alg_values_supported: [SIGNING_ALG],
    access_token_signing_alg_values_supported: [SIGNING_ALG],
    scopes_supported: ["openid", "profile", "customer:self", "customer:read", "customer:write"],
    subject_types_supported: ["public"],
    response_types_supported: ["token"],
  });
  return (req, res) => {
    const path = req.url?.split("?")[0];
    if (path !== "/.well-known/jwks.json" && path !== "/.well-known/openid-configuration") return next(req, res);
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
