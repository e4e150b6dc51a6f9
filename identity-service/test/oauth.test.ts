/**
 * The OAuth 2.0 endpoints (token, revocation, introspection) as an
 * off-the-shelf client uses them: openid-client, unmodified, configured from
 * the discovery document alone (its documented allowInsecureRequests for
 * http on loopback). The tokens, sessions, revocations and events are the
 * RPCs': the same database, the same rotation, the same TokensRevoked.
 * The error shapes (RFC 6749 §5.2) with plain fetch: oauth-errors.test.ts.
 */
import { Code } from "@connectrpc/connect";
import { TokenRevocationReason } from "@customer-platform/gen/identity/v1/events_pb.js";
import { createRemoteJWKSet, decodeJwt, jwtVerify } from "jose";
import * as oidc from "openid-client";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { bearer, failure, rpcError } from "../../test/support/clients.js";
import {
  createServiceClient,
  identityCli,
  type ServiceClient,
  writtenEvents,
} from "../../test/support/identity-admin.js";
import { type Platform, startPlatform } from "../../test/support/platform.js";
import { createSecretScanner } from "../../test/support/secrets.js";

const PASSWORD = "correct horse battery staple";

let platform: Platform;
const secrets = createSecretScanner();

beforeAll(async () => {
  // Info level: the endpoints' request lines are scanned for secrets too.
  platform = await startPlatform({ identityEnv: { LOG_LEVEL: "info" } });
});
afterAll(() => platform?.close());
afterEach(async () => {
  await secrets.addStored(platform.identity.database.sql);
  secrets.expectClean({ identity: platform.identity.logs.lines });
});

/** openid-client, configured from the discovery document for a client and its authentication. */
function discover(clientId: string, auth: oidc.ClientAuth): Promise<oidc.Configuration> {
  return oidc.discovery(new URL(platform.issuer), clientId, undefined, auth, {
    execute: [oidc.allowInsecureRequests],
  });
}

/** A confidential client made with the CLI; its secret goes to the scanner. */
async function newClient(scopes: string, audiences = "customer-service"): Promise<ServiceClient> {
  const c = await createServiceClient(platform.identity.env, scopes, audiences);
  secrets.add("client secret", c.secret);
  return c;
}

/** A customer signed up through the RPCs; its tokens go to the scanner. */
async function customer(label: string, audience?: string[]) {
  const c = await platform.signUp(PASSWORD, label, audience);
  secrets.add("customer tokens", c.accessToken, c.refreshToken);
  return c;
}

const firstParty = () => discover("first-party", oidc.None());
const jwks = () => createRemoteJWKSet(new URL(`${platform.issuer}/.well-known/jwks.json`));

/**
 * The OAuth error openid-client reports for an error answer: the body's
 * `error` and the status, and the challenge scheme when it threw on a
 * `WWW-Authenticate` header (an invalid_client over HTTP Basic).
 */
async function oauthError(call: Promise<unknown>): Promise<{ error: string; status: number; challenge?: string }> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (err instanceof oidc.ResponseBodyError) return { error: err.error, status: err.status };
  if (err instanceof oidc.WWWAuthenticateChallengeError) {
    const body = (await err.response.json()) as { error: string };
    return { error: body.error, status: err.status, challenge: err.cause[0]?.scheme ?? "" };
  }
  throw new Error(`expected an OAuth error answer, got ${String(err)}`);
}

async function tokensRevoked(customerId: string) {
  return (await writtenEvents(platform.identity.database.sql, customerId)).filter(
    (e) => e.type === "identity.v1.TokensRevoked",
  );
}

describe("discovery", () => {
  it("tells openid-client where the endpoints are and what they serve", async () => {
    const config = await discover("any", oidc.None());
    expect(config.serverMetadata()).toMatchObject({
      issuer: platform.issuer,
      token_endpoint: `${platform.issuer}/oauth2/token`,
      revocation_endpoint: `${platform.issuer}/oauth2/revoke`,
      introspection_endpoint: `${platform.issuer}/oauth2/introspect`,
      authorization_endpoint: `${platform.issuer}/oauth2/authorize`,
      grant_types_supported: ["authorization_code", "client_credentials", "refresh_token"],
      token_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post", "none"],
      introspection_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post"],
    });
  });
});

describe("client credentials grant", () => {
  it.each([
    ["client_secret_basic", oidc.ClientSecretBasic],
    ["client_secret_post", oidc.ClientSecretPost],
  ])("issues a service token with %s, the same as AuthenticateClient's", async (_method, auth) => {
    const svc = await newClient("customer:read customer:write");
    const config = await discover(svc.clientId, auth(svc.secret));
    const res = await oidc.clientCredentialsGrant(config, { scope: "customer:read" });
    secrets.add("access token", res.access_token);
    expect(res).toMatchObject({ token_type: "bearer", expires_in: 900, scope: "customer:read" });
    expect(res).not.toHaveProperty("refresh_token");
    const { payload, protectedHeader } = await jwtVerify(res.access_token, jwks(), {
      issuer: platform.issuer,
      audience: "customer-service",
      typ: "at+jwt",
    });
    expect(protectedHeader.alg).toBe("EdDSA");
    expect(payload).toMatchObject({
      sub: svc.clientId,
      client_id: svc.clientId,
      scope: "customer:read",
      aud: ["customer-service"],
    });
    // The RPC issues the same token for the same request.
    const rpc = await platform.auth().authenticateClient({
      clientId: svc.clientId,
      clientSecret: svc.secret,
      scope: "customer:read",
    });
    const { iat: _i, exp: _e, jti: _j, ...claims } = payload;
    expect(decodeJwt(rpc.tokens?.accessToken ?? "")).toMatchObject(claims);
  });

  it("binds the token to the audiences named by resource (RFC 8707), one or several", async () => {
    const svc = await newClient("customer:read", `customer-service ${platform.issuer}`);
    const config = await discover(svc.clientId, oidc.ClientSecretBasic(svc.secret));
    const one = await oidc.clientCredentialsGrant(config, { resource: platform.issuer });
    expect(decodeJwt(one.access_token).aud).toEqual([platform.issuer]);
    const both = new URLSearchParams([
      ["resource", "customer-service"],
      ["resource", platform.issuer],
    ]);
    const two = await oidc.clientCredentialsGrant(config, both);
    expect(decodeJwt(two.access_token).aud).toEqual(["customer-service", platform.issuer]);
    // None named: the client's default audiences.
    const none = await oidc.clientCredentialsGrant(config);
    expect(decodeJwt(none.access_token).aud).toEqual(["customer-service", platform.issuer]);
    secrets.add("access tokens", one.access_token, two.access_token, none.access_token);
  });

  it("refuses a resource or a scope the client may not have: invalid_target, invalid_scope", async () => {
    const svc = await newClient("customer:read");
    const config = await discover(svc.clientId, oidc.ClientSecretPost(svc.secret));
    await expect(oauthError(oidc.clientCredentialsGrant(config, { resource: "payments-service" }))).resolves.toEqual({
      error: "invalid_target",
      status: 400,
    });
    await expect(oauthError(oidc.clientCredentialsGrant(config, { scope: "customer:write" }))).resolves.toEqual({
      error: "invalid_scope",
      status: 400,
    });
  });

  it("gives a token the customer service accepts (GetCustomer), and only for its audience", async () => {
    const c = await platform.newCustomer(PASSWORD, "e2e");
    secrets.add("customer tokens", c.accessToken, c.refreshToken);
    const svc = await newClient("customer:read", `customer-service ${platform.issuer}`);
    const config = await discover(svc.clientId, oidc.ClientSecretBasic(svc.secret));
    const read = await oidc.clientCredentialsGrant(config, { scope: "customer:read", resource: "customer-service" });
    secrets.add("access token", read.access_token);
    const profile = await platform.customers().getCustomer({ customerId: c.customerId }, bearer(read.access_token));
    expect(profile.customer).toMatchObject({ customerId: c.customerId, email: c.email });
    // A token for the identity service only is no token for the customer service.
    const elsewhere = await oidc.clientCredentialsGrant(config, { scope: "customer:read", resource: platform.issuer });
    secrets.add("access token", elsewhere.access_token);
    await expect(
      platform.customers().getCustomer({ customerId: c.customerId }, bearer(elsewhere.access_token)),
    ).rejects.toMatchObject(rpcError("invalid access token", Code.Unauthenticated));
  });

  it("stops working for a disabled client: invalid_client", async () => {
    const svc = await newClient("customer:read");
    const config = await discover(svc.clientId, oidc.ClientSecretBasic(svc.secret));
    secrets.add("access token", (await oidc.clientCredentialsGrant(config)).access_token);
    const disabled = await identityCli(platform.identity.env, "clients", "disable", svc.clientId);
    expect(disabled.code).toBe(0);
    await expect(oauthError(oidc.clientCredentialsGrant(config))).resolves.toEqual({
      error: "invalid_client",
      status: 401,
      challenge: "basic",
    });
  });
});

describe("refresh token grant (the first-party public client)", () => {
  it("rotates: a new refresh token, an access token of the same session", async () => {
    const c = await customer("rotate");
    const config = await firstParty();
    const res = await oidc.refreshTokenGrant(config, c.refreshToken);
    secrets.add("tokens", res.access_token, res.refresh_token ?? "");
    expect(res).toMatchObject({ token_type: "bearer", expires_in: 900, scope: "openid profile customer:self" });
    expect(res.refresh_token).toEqual(expect.any(String));
    expect(res.refresh_token).not.toBe(c.refreshToken);
    const { payload } = await jwtVerify(res.access_token, jwks(), {
      issuer: platform.issuer,
      audience: "customer-service",
    });
    expect(payload).toMatchObject({ sub: c.customerId, client_id: "first-party", sid: decodeJwt(c.accessToken).sid });
    // The successor works with the RPC too: one implementation, one table.
    const next = await platform.auth().refreshToken({ refreshToken: res.refresh_token ?? "" });
    expect(decodeJwt(next.tokens?.accessToken ?? "").sid).toBe(payload.sid);
  });

  it("revokes the family when a rotated refresh token is used again: invalid_grant, TokensRevoked", async () => {
    const c = await customer("reuse");
    const config = await firstParty();
    const rotated = await oidc.refreshTokenGrant(config, c.refreshToken);
    secrets.add("tokens", rotated.access_token, rotated.refresh_token ?? "");
    const sid = decodeJwt(c.accessToken).sid;
    await expect(oauthError(oidc.refreshTokenGrant(config, c.refreshToken))).resolves.toEqual({
      error: "invalid_grant",
      status: 400,
    });
    // The whole family: the successor is dead too, and the session's access tokens are revoked by event.
    await expect(oauthError(oidc.refreshTokenGrant(config, rotated.refresh_token ?? ""))).resolves.toEqual({
      error: "invalid_grant",
      status: 400,
    });
    const events = await tokensRevoked(c.customerId);
    expect(events.map((e) => e.message)).toEqual([
      expect.objectContaining({
        customerId: c.customerId,
        sessionIds: [sid],
        reason: TokenRevocationReason.REFRESH_TOKEN_REUSED,
      }),
    ]);
  });

  it("narrows the access token's audiences with resource, never widens them", async () => {
    const c = await customer("narrow", ["customer-service", platform.issuer]);
    const config = await firstParty();
    const narrowed = await oidc.refreshTokenGrant(config, c.refreshToken, { resource: platform.issuer });
    secrets.add("tokens", narrowed.access_token, narrowed.refresh_token ?? "");
    expect(decodeJwt(narrowed.access_token).aud).toEqual([platform.issuer]);
    await expect(
      oauthError(oidc.refreshTokenGrant(config, narrowed.refresh_token ?? "", { resource: "payments-service" })),
    ).resolves.toEqual({ error: "invalid_target", status: 400 });
    // Refused before rotating: the token still works, and keeps the session's audiences.
    const again = await oidc.refreshTokenGrant(config, narrowed.refresh_token ?? "");
    secrets.add("tokens", again.access_token, again.refresh_token ?? "");
    expect(decodeJwt(again.access_token).aud).toEqual(["customer-service", platform.issuer]);
  });
});

describe("revocation (RFC 7009)", () => {
  it("revokes a refresh token's session for the first-party client: refresh fails, TokensRevoked", async () => {
    const c = await customer("logout");
    const config = await firstParty();
    await oidc.tokenRevocation(config, c.refreshToken, { token_type_hint: "refresh_token" });
    await expect(oauthError(oidc.refreshTokenGrant(config, c.refreshToken))).resolves.toEqual({
      error: "invalid_grant",
      status: 400,
    });
    const events = await tokensRevoked(c.customerId);
    expect(events.map((e) => e.message)).toEqual([
      expect.objectContaining({ sessionIds: [decodeJwt(c.accessToken).sid], reason: TokenRevocationReason.REVOKED }),
    ]);
    // Again, and an unknown token: 200, nothing more (RFC 7009 §2.2).
    await oidc.tokenRevocation(config, c.refreshToken);
    await oidc.tokenRevocation(config, "no-such-token");
    expect(await tokensRevoked(c.customerId)).toHaveLength(1);
  });

  it("revokes an access token by its jti; a refresh token only by its own client", async () => {
    const c = await customer("service-revokes");
    const svc = await newClient("customer:read");
    const config = await discover(svc.clientId, oidc.ClientSecretBasic(svc.secret));
    await expect(oauthError(oidc.tokenRevocation(config, c.refreshToken))).resolves.toEqual({
      error: "unauthorized_client",
      status: 400,
    });
    const still = await platform.auth().refreshToken({ refreshToken: c.refreshToken });
    secrets.add("tokens", still.tokens?.accessToken ?? "", still.tokens?.refreshToken ?? "");
    await oidc.tokenRevocation(config, c.accessToken, { token_type_hint: "access_token" });
    expect((await tokensRevoked(c.customerId)).map((e) => e.message)).toEqual([
      expect.objectContaining({ jwtIds: [decodeJwt(c.accessToken).jti], reason: TokenRevocationReason.REVOKED }),
    ]);
    // The customer service follows the event (asynchronously): the token is refused there moments later.
    await expect
      .poll(() => failure(platform.customers().getCustomer({ customerId: c.customerId }, bearer(c.accessToken))))
      .toMatchObject(rpcError("access token revoked", Code.Unauthenticated));
  });
});

describe("introspection (RFC 7662)", () => {
  it("describes a live access token to a client with identity:introspect, and a revoked one as inactive", async () => {
    const c = await customer("introspected");
    const svc = await newClient("identity:introspect");
    const config = await discover(svc.clientId, oidc.ClientSecretPost(svc.secret));
    const claims = decodeJwt(c.accessToken);
    await expect(oidc.tokenIntrospection(config, c.accessToken)).resolves.toEqual({
      active: true,
      iss: platform.issuer,
      sub: c.customerId,
      client_id: "first-party",
      scope: "openid profile customer:self",
      exp: claims.exp,
      iat: claims.iat,
      token_type: "access_token",
      aud: ["customer-service"],
    });
    await platform.auth().revokeToken({ token: c.accessToken });
    await expect(oidc.tokenIntrospection(config, c.accessToken)).resolves.toEqual({ active: false });
    await expect(oidc.tokenIntrospection(config, "not.a.token")).resolves.toEqual({ active: false });
  });

  it("says only active: false of a refresh token of another client", async () => {
    const c = await customer("private");
    const svc = await newClient("identity:introspect");
    const config = await discover(svc.clientId, oidc.ClientSecretBasic(svc.secret));
    await expect(oidc.tokenIntrospection(config, c.refreshToken)).resolves.toEqual({ active: false });
  });

  it("refuses a client without identity:introspect (403) and the public client (invalid_client)", async () => {
    const c = await customer("nosy");
    const svc = await newClient("customer:read");
    const config = await discover(svc.clientId, oidc.ClientSecretBasic(svc.secret));
    await expect(oauthError(oidc.tokenIntrospection(config, c.accessToken))).resolves.toEqual({
      error: "unauthorized_client",
      status: 403,
    });
    await expect(oauthError(oidc.tokenIntrospection(await firstParty(), c.accessToken))).resolves.toEqual({
      error: "invalid_client",
      status: 401,
    });
  });
});
