/**
 * The authorization code flow with PKCE and the hosted sign-in page, as a
 * relying party sees it: openid-client, unmodified, configured from the
 * discovery document, drives the flow; the page is driven with fetch (GET
 * the page, post its form back with the cookie it set, consent for a
 * third-party client). The tokens are the RPCs': the same sessions (`sid`),
 * rotation, revocation and TokensRevoked. A real browser on the same
 * endpoints: test/e2e/browser-sign-in.test.ts.
 */
import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { TokenRevocationReason } from "@customer-platform/gen/identity/v1/events_pb.js";
import { decodeJwt, decodeProtectedHeader } from "jose";
import * as oidc from "openid-client";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  authorizationUrl as authorizationUrlFor,
  openPage,
  type Page,
  type Pending,
  postPage,
  type RegisteredClient,
  registerClient,
} from "../../test/support/hosted-pages.js";
import { identityCli, writtenEvents } from "../../test/support/identity-admin.js";
import { type Platform, type SignedUp, startPlatform } from "../../test/support/platform.js";
import { createSecretScanner } from "../../test/support/secrets.js";
import { startIdentityService } from "../../test/support/services.js";

const PASSWORD = "correct horse battery staple";
const APP = "http://127.0.0.1:9/app";
const CALLBACK = `${APP}/callback`;
const SIGNED_OUT = `${APP}/signed-out`;

let platform: Platform;
let customer: SignedUp;
const secrets = createSecretScanner();

beforeAll(async () => {
  // Info level: the endpoints' request lines are scanned for secrets too.
  // A throttle delay of a minute: the test of the shared throttle does not race a one-second block.
  platform = await startPlatform({ identityEnv: { LOG_LEVEL: "info", IDENTITY_THROTTLE_BASE_DELAY_MS: "60000" } });
  customer = await platform.signUp(PASSWORD, "code-flow");
  secrets.add("customer tokens", customer.accessToken, customer.refreshToken);
}, 60_000);
afterAll(() => platform?.close());
afterEach(async () => {
  await secrets.addStored(platform.identity.database.sql);
  secrets.expectClean({ identity: platform.identity.logs.lines });
});

/** A client registered with the CLI (and its secret watched in the logs), openid-client from discovery. */
async function register(...flags: string[]): Promise<RegisteredClient> {
  const client = await registerClient(
    { issuer: platform.issuer, env: platform.identity.env },
    CALLBACK,
    "--post-logout-redirect-uris",
    SIGNED_OUT,
    "--description",
    "An app of a partner",
    ...flags,
  );
  if (client.secret) secrets.add("client secret", client.secret);
  return client;
}

const authorizationUrl = (client: RegisteredClient, scope?: string) => authorizationUrlFor(client, CALLBACK, scope);
const post = (page: Page, fields: Record<string, string>, cookie?: string) =>
  postPage(platform.issuer, page, fields, cookie);

const signIn = (page: Page, password = PASSWORD) => post(page, { email: customer.email, password, action: "sign_in" });

/** Through the page to the callback URL: sign in, and consent when asked. */
async function callback(pending: Pending): Promise<URL> {
  let page = await signIn(await openPage(pending.url));
  if (page.status === 200 && page.html.includes('value="allow"')) page = await post(page, { action: "allow" });
  expect(page.status).toBe(303);
  return new URL(page.location ?? "");
}

async function exchange(client: RegisteredClient, pending: Pending, url: URL) {
  const tokens = await oidc.authorizationCodeGrant(client.config, url, {
    pkceCodeVerifier: pending.verifier,
    expectedState: pending.state,
    expectedNonce: pending.nonce,
    idTokenExpected: true,
  });
  secrets.add("code flow tokens", tokens.access_token, tokens.refresh_token ?? "", tokens.id_token ?? "");
  return tokens;
}

/** The OAuth error openid-client reports for an error answer. */
async function oauthError(call: Promise<unknown>): Promise<{ error: string; status: number }> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (err instanceof oidc.ResponseBodyError) return { error: err.error, status: err.status };
  throw new Error(`expected an OAuth error answer, got ${String(err)}`);
}

async function tokensRevoked() {
  return (await writtenEvents(platform.identity.database.sql, customer.customerId)).filter(
    (e) => e.type === "identity.v1.TokensRevoked",
  );
}

describe("client registration (CLI)", () => {
  it.each([
    ["a relative URI", ["--redirect-uris", "/callback"], "is not an absolute URI"],
    ["a fragment", ["--redirect-uris", "https://app.example.com/cb#x"], "has a fragment"],
    ["plain http off loopback", ["--redirect-uris", "http://app.example.com/cb"], "must be https"],
    ["a custom scheme", ["--redirect-uris", "com.example.app:/cb"], "must be https"],
    ["a public client with client_credentials", ["--public"], "client_credentials is for confidential clients"],
    [
      "authorization_code without redirect URIs",
      ["--grant-types", "authorization_code"],
      "--redirect-uris: authorization_code needs at least one redirect URI",
    ],
    ["an unknown grant", ["--grant-types", "password"], "--grant-types: must name some of"],
  ])("refuses %s", async (_what, flags, message) => {
    const id = `bad-${randomUUID().slice(0, 8)}`;
    const args = ["clients", "create", id, "--scopes", "openid", ...flags];
    await expect(identityCli(platform.identity.env, ...args)).rejects.toThrow(message);
    const [row] = await platform.identity.database.sql`select 1 from clients where client_id = ${id}`;
    expect(row).toBeUndefined();
  });

  it("registers a public first-party client (no secret shown) and lists what it is registered for", async () => {
    const id = `spa-${randomUUID().slice(0, 8)}`;
    const created = await identityCli(
      platform.identity.env,
      ...["clients", "create", id, "--scopes", "openid email", "--public", "--first-party"],
      ...[
        "--redirect-uris",
        "http://localhost:3000/cb https://app.example.com/cb",
        "--post-logout-redirect-uris",
        SIGNED_OUT,
      ],
    );
    expect(created.code).toBe(0);
    expect(JSON.parse(created.out[0] ?? "{}")).toEqual({
      client_id: id,
      scopes: ["openid", "email"],
      audiences: ["customer-service"],
      default_audiences: ["customer-service"],
      grant_types: ["authorization_code", "refresh_token"],
      redirect_uris: ["http://localhost:3000/cb", "https://app.example.com/cb"],
      post_logout_redirect_uris: [SIGNED_OUT],
      token_endpoint_auth_method: "none",
      first_party: true,
    });
    expect(created.out).toHaveLength(1);
    await expect(identityCli(platform.identity.env, "clients", "rotate-secret", id)).rejects.toThrow(
      "is a public client: it has no secret",
    );
    const listed = await identityCli(platform.identity.env, "clients", "list");
    expect(listed.out.find((l) => l.startsWith(`${id}\t`))).toBe(
      `${id}\topenid email\tactive\t\taudiences customer-service (default customer-service)\t` +
        `grants authorization_code refresh_token\tpublic first-party\t` +
        `redirect http://localhost:3000/cb https://app.example.com/cb\tpost-logout ${SIGNED_OUT}`,
    );
  });
});

describe("discovery", () => {
  it("names the authorization, userinfo and logout endpoints and only what they serve", async () => {
    const { config } = await register("--public", "--first-party");
    expect(config.serverMetadata()).toMatchObject({
      authorization_endpoint: `${platform.issuer}/oauth2/authorize`,
      userinfo_endpoint: `${platform.issuer}/oauth2/userinfo`,
      end_session_endpoint: `${platform.issuer}/oauth2/logout`,
      response_types_supported: ["code"],
      code_challenge_methods_supported: ["S256"],
      grant_types_supported: ["authorization_code", "client_credentials", "refresh_token"],
      id_token_signing_alg_values_supported: ["EdDSA"],
      subject_types_supported: ["public"],
    });
    expect(config.serverMetadata().scopes_supported).toEqual(expect.arrayContaining(["openid", "email"]));
    expect(config.serverMetadata().scopes_supported).not.toContain("profile");
  });
});

describe("authorization code + PKCE", () => {
  it("signs in a first-party public client's customer without consent: tokens, ID token, userinfo, refresh, logout", async () => {
    const client = await register("--public", "--first-party");
    const pending = await authorizationUrl(client);
    const page = await openPage(pending.url);
    expect(page.status).toBe(200);
    expect(page.html).toContain('<html lang="en">');
    expect(page.html).toMatch(/<label for="email">Email<\/label>/);
    expect(page.html).toMatch(/<label for="password">Password<\/label>/);
    expect(page.fields.csrf_token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(page.cookie).toMatch(/^authz-[0-9a-f-]{36}=/);

    const signedIn = await signIn(page);
    expect(signedIn.status).toBe(303);
    const url = new URL(signedIn.location ?? "");
    expect(`${url.origin}${url.pathname}`).toBe(CALLBACK);
    expect(url.searchParams.get("state")).toBe(pending.state);
    expect(url.searchParams.get("iss")).toBe(platform.issuer);

    const tokens = await exchange(client, pending, url);
    const claims = tokens.claims();
    const access = decodeJwt(tokens.access_token);
    expect(decodeProtectedHeader(tokens.id_token ?? "")).toMatchObject({ alg: "EdDSA", typ: "JWT" });
    expect(claims).toMatchObject({
      iss: platform.issuer,
      sub: customer.customerId,
      aud: client.clientId,
      nonce: pending.nonce,
      sid: access.sid,
      email: customer.email,
      email_verified: true,
    });
    expect(typeof claims?.auth_time).toBe("number");
    // The same access token as a sign-in's, for this client and the granted scope.
    expect(access).toMatchObject({
      sub: customer.customerId,
      client_id: client.clientId,
      scope: "openid email",
      aud: ["customer-service"],
      email: customer.email,
    });
    expect(tokens.scope).toBe("openid email");
    expect(tokens.refresh_token).toBeTruthy();

    const info = await oidc.fetchUserInfo(client.config, tokens.access_token, customer.customerId);
    expect(info).toEqual({ sub: customer.customerId, email: customer.email, email_verified: true });

    const refreshed = await oidc.refreshTokenGrant(client.config, tokens.refresh_token ?? "");
    secrets.add("refreshed", refreshed.access_token, refreshed.refresh_token ?? "");
    expect(decodeJwt(refreshed.access_token)).toMatchObject({ sid: access.sid, client_id: client.clientId });
    // Another client cannot use this client's refresh token (not even the first-party app).
    const other = await register("--public", "--first-party");
    await expect(oauthError(oidc.refreshTokenGrant(other.config, refreshed.refresh_token ?? ""))).resolves.toEqual({
      error: "invalid_grant",
      status: 400,
    });

    const logoutState = oidc.randomState();
    const logout = await fetch(
      oidc.buildEndSessionUrl(client.config, {
        id_token_hint: tokens.id_token ?? "",
        post_logout_redirect_uri: SIGNED_OUT,
        state: logoutState,
      }),
      { redirect: "manual" },
    );
    expect(logout.status).toBe(303);
    expect(logout.headers.get("location")).toBe(`${SIGNED_OUT}?state=${logoutState}`);
    await expect(oauthError(oidc.refreshTokenGrant(client.config, refreshed.refresh_token ?? ""))).resolves.toEqual({
      error: "invalid_grant",
      status: 400,
    });
    const revoked = await tokensRevoked();
    expect(revoked.at(-1)?.message).toMatchObject({ sessionIds: [access.sid], reason: TokenRevocationReason.REVOKED });
    // The session's access token is refused at userinfo from now on.
    await expect(oidc.fetchUserInfo(client.config, refreshed.access_token, customer.customerId)).rejects.toThrow();
  });

  it("asks a third-party confidential client's customer for consent, with the scopes and the client's description", async () => {
    const client = await register();
    expect(client.secret).toBeTruthy();
    const pending = await authorizationUrl(client, "openid customer:self");
    const consent = await signIn(await openPage(pending.url));
    expect(consent.status).toBe(200);
    expect(consent.html).toContain("An app of a partner");
    expect(consent.html).toContain("<code>customer:self</code>");
    expect(consent.location).toBeNull();
    const allowed = await post(consent, { action: "allow" });
    expect(allowed.status).toBe(303);
    const tokens = await exchange(client, pending, new URL(allowed.location ?? ""));
    // No email scope: no email in the ID token.
    expect(tokens.claims()).not.toHaveProperty("email");
    expect(tokens.scope).toBe("openid customer:self");
  });

  it("sends access_denied back with the state when the customer refuses", async () => {
    const client = await register();
    const pending = await authorizationUrl(client);
    const denied = await post(await signIn(await openPage(pending.url)), { action: "deny" });
    expect(denied.status).toBe(303);
    const url = new URL(denied.location ?? "");
    expect(Object.fromEntries(url.searchParams)).toMatchObject({ error: "access_denied", state: pending.state });
    expect(url.searchParams.has("code")).toBe(false);
  });
});

describe("failures", () => {
  it("keeps a wrong password on the form with a generic error, and issues no code", async () => {
    const client = await register("--public", "--first-party");
    const pending = await authorizationUrl(client);
    const page = await openPage(pending.url);
    const wrong = await signIn(page, "not the password");
    expect(wrong.status).toBe(401);
    expect(wrong.location).toBeNull();
    expect(wrong.html).toMatch(/Invalid email or password/);
    expect(wrong.html).toContain(`value="${customer.email}"`);
    // The same form works with the right password.
    expect((await signIn(wrong)).status).toBe(303);
  });

  it("answers an unknown email exactly as a wrong password", async () => {
    const client = await register("--public", "--first-party");
    const page = await openPage((await authorizationUrl(client)).url);
    const unknown = await post(page, { email: "nobody@example.com", password: PASSWORD, action: "sign_in" });
    expect(unknown.status).toBe(401);
    expect(unknown.html).toMatch(/Invalid email or password/);
  });

  it("lets openid-client refuse a tampered state", async () => {
    const client = await register("--public", "--first-party");
    const pending = await authorizationUrl(client);
    const url = await callback(pending);
    url.searchParams.set("state", "tampered");
    await expect(
      oidc.authorizationCodeGrant(client.config, url, {
        pkceCodeVerifier: pending.verifier,
        expectedState: pending.state,
        expectedNonce: pending.nonce,
      }),
    ).rejects.toMatchObject({ code: "OAUTH_INVALID_RESPONSE", cause: { message: expect.stringMatching(/state/) } });
  });

  it("shows an error page, never a redirect, for an unregistered redirect URI or an unknown client", async () => {
    const client = await register("--public", "--first-party");
    for (const [clientId, redirectUri] of [
      [client.clientId, "http://127.0.0.1:9/steal"],
      [client.clientId, `${CALLBACK}/`],
      ["no-such-client", CALLBACK],
    ]) {
      const url = new URL((await authorizationUrl(client)).url);
      url.searchParams.set("client_id", clientId ?? "");
      url.searchParams.set("redirect_uri", redirectUri ?? "");
      const page = await openPage(url);
      expect(page.status).toBe(400);
      expect(page.location).toBeNull();
      expect(page.html).not.toContain("<form");
    }
  });

  it("redirects other request errors back with error, error_description and state (RFC 6749 §4.1.2.1)", async () => {
    const client = await register("--public", "--first-party");
    const cases: [string, (u: URL) => void, string][] = [
      ["no PKCE", (u) => u.searchParams.delete("code_challenge"), "invalid_request"],
      ["plain PKCE", (u) => u.searchParams.set("code_challenge_method", "plain"), "invalid_request"],
      ["token response type", (u) => u.searchParams.set("response_type", "token"), "unsupported_response_type"],
      ["a service scope", (u) => u.searchParams.set("scope", "openid customer:read"), "invalid_scope"],
    ];
    for (const [, change, error] of cases) {
      const url = new URL((await authorizationUrl(client)).url);
      change(url);
      const page = await openPage(url);
      expect(page.status).toBe(303);
      const back = new URL(page.location ?? "");
      expect(`${back.origin}${back.pathname}`).toBe(CALLBACK);
      expect(back.searchParams.get("error")).toBe(error);
      expect(back.searchParams.get("error_description")).toBeTruthy();
      expect(back.searchParams.get("state")).toBe(url.searchParams.get("state"));
    }
  });

  it("refuses a form without the CSRF cookie or with a wrong token (403), and issues no code", async () => {
    const client = await register("--public", "--first-party");
    const page = await openPage((await authorizationUrl(client)).url);
    const noCookie = await post(page, { email: customer.email, password: PASSWORD, action: "sign_in" }, "");
    expect(noCookie.status).toBe(403);
    const noToken = await post(page, { email: customer.email, password: PASSWORD, action: "sign_in", csrf_token: "" });
    expect(noToken.status).toBe(403);
    const forged = "A".repeat(43);
    const wrongBoth = await post(
      page,
      { email: customer.email, password: PASSWORD, action: "sign_in", csrf_token: forged },
      `${page.cookie.split("=")[0]}=${forged}`,
    );
    expect(wrongBoth.status).toBe(403);
    for (const p of [noCookie, noToken, wrongBoth]) expect(p.location).toBeNull();
    // The untouched form still works.
    expect((await signIn(page)).status).toBe(303);
  });

  it("refuses a reused code (invalid_grant) and revokes the session it issued (TokensRevoked)", async () => {
    const client = await register("--public", "--first-party");
    const pending = await authorizationUrl(client);
    const url = await callback(pending);
    const tokens = await exchange(client, pending, url);
    const sid = decodeJwt(tokens.access_token).sid;
    await expect(oauthError(exchange(client, pending, url))).resolves.toEqual({ error: "invalid_grant", status: 400 });
    await expect(oauthError(oidc.refreshTokenGrant(client.config, tokens.refresh_token ?? ""))).resolves.toEqual({
      error: "invalid_grant",
      status: 400,
    });
    const revoked = await tokensRevoked();
    expect(revoked.some((e) => (e.message.sessionIds as string[] | undefined)?.includes(String(sid)))).toBe(true);
  });

  it("refuses a wrong code_verifier and a wrong redirect_uri at the token endpoint: invalid_grant", async () => {
    const client = await register("--public", "--first-party");
    const pending = await authorizationUrl(client);
    const url = await callback(pending);
    const code = url.searchParams.get("code") ?? "";
    const token = (fields: Record<string, string>) =>
      fetch(`${platform.issuer}/oauth2/token`, {
        method: "POST",
        body: new URLSearchParams({ grant_type: "authorization_code", client_id: client.clientId, code, ...fields }),
      }).then(async (r) => ({ status: r.status, body: await r.json() }));
    const wrongVerifier = await token({ redirect_uri: CALLBACK, code_verifier: oidc.randomPKCECodeVerifier() });
    expect(wrongVerifier).toMatchObject({ status: 400, body: { error: "invalid_grant" } });
    const noVerifier = await token({ redirect_uri: CALLBACK });
    expect(noVerifier).toMatchObject({ status: 400, body: { error: "invalid_grant" } });
    const wrongRedirect = await token({ redirect_uri: `${APP}/other`, code_verifier: pending.verifier });
    expect(wrongRedirect).toMatchObject({ status: 400, body: { error: "invalid_grant" } });
    // None of these used the code up.
    const ok = await exchange(client, pending, url);
    expect(ok.access_token).toBeTruthy();
  });
});

describe("the same limits and sessions as the RPCs", () => {
  it("shares the per-login throttle with AuthenticateCustomer: the page answers 429, the RPC RESOURCE_EXHAUSTED", async () => {
    const victim = await platform.signUp(PASSWORD, "throttled");
    const client = await register("--public", "--first-party");
    let page = await openPage((await authorizationUrl(client)).url);
    // Five free attempts, then a delay (a minute here) before the password is even looked at.
    for (let i = 0; i < 5; i++) {
      page = await post(page, { email: victim.email, password: "wrong password", action: "sign_in" });
      expect(page.status).toBe(401);
    }
    const blocked = await post(page, { email: victim.email, password: PASSWORD, action: "sign_in" });
    expect(blocked.status).toBe(429);
    expect(blocked.location).toBeNull();
    await expect(
      platform.auth().authenticateCustomer({ email: victim.email, password: PASSWORD }),
    ).rejects.toMatchObject({ code: Code.ResourceExhausted });
  });

  it("limits authorization requests per address (a page, never a redirect)", async () => {
    const svc = await startIdentityService({ IDENTITY_SIGN_IN_LIMIT: "2", IDENTITY_SIGN_IN_LIMIT_WINDOW_MS: "60000" });
    try {
      const clientId = `app-${randomUUID().slice(0, 8)}`;
      const created = await identityCli(
        svc.env,
        "clients",
        "create",
        clientId,
        "--scopes",
        "openid",
        "--public",
        "--redirect-uris",
        CALLBACK,
      );
      expect(created.code).toBe(0);
      const url = new URL(`${svc.url}/oauth2/authorize`);
      url.search = new URLSearchParams({
        response_type: "code",
        client_id: clientId,
        redirect_uri: CALLBACK,
        code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
        code_challenge_method: "S256",
      }).toString();
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await openPage(url)).status);
      expect(statuses).toEqual([200, 200, 429]);
    } finally {
      await svc.close();
    }
  });

  it("records the browser's sign-in on the session, as ListSessions shows it", async () => {
    const client = await register("--public", "--first-party");
    const pending = await authorizationUrl(client);
    const page = await openPage(pending.url);
    const res = await fetch(`${platform.issuer}/oauth2/authorize`, {
      method: "POST",
      redirect: "manual",
      headers: { cookie: page.cookie, "user-agent": "Test Browser/1.0" },
      body: new URLSearchParams({ ...page.fields, email: customer.email, password: PASSWORD, action: "sign_in" }),
    });
    const tokens = await exchange(client, pending, new URL(res.headers.get("location") ?? ""));
    const sid = String(decodeJwt(tokens.access_token).sid);
    const [row] = await platform.identity.database.sql<{ user_agent: string; ip_address: string; client_id: string }[]>`
      select user_agent, ip_address, client_id from refresh_tokens where id = ${sid}`;
    expect(row).toEqual({ user_agent: "Test Browser/1.0", ip_address: "127.0.0.1", client_id: client.clientId });
  });
});

describe("erasure", () => {
  it("deletes the customer's authorization requests (their browser's address and User-Agent) with the account", async () => {
    const gone = await platform.signUp(PASSWORD, "erased");
    const client = await register("--public", "--first-party");
    const page = await openPage((await authorizationUrl(client)).url);
    expect((await post(page, { email: gone.email, password: PASSWORD, action: "sign_in" })).status).toBe(303);
    const count = async () =>
      (
        await platform.identity.database.sql<{ n: number }[]>`
          select count(*)::int as n from authorization_requests where customer_id = ${gone.customerId}`
      )[0]?.n;
    expect(await count()).toBe(1);
    expect((await identityCli(platform.identity.env, "identities", "delete", gone.customerId)).code).toBe(0);
    expect(await count()).toBe(0);
  });
});

describe("userinfo and logout", () => {
  it("refuses userinfo without a token, for a service token, and without openid", async () => {
    const userinfo = (authorization?: string) =>
      fetch(`${platform.issuer}/oauth2/userinfo`, { headers: authorization ? { authorization } : {} }).then(
        async (r) => ({ status: r.status, challenge: r.headers.get("www-authenticate"), body: await r.json() }),
      );
    expect(await userinfo()).toEqual({ status: 401, challenge: "Bearer", body: { error: "invalid_token" } });
    expect(await userinfo("Bearer not-a-token")).toMatchObject({ status: 401, body: { error: "invalid_token" } });
    const service = await platform.serviceToken("customer:read");
    secrets.add("service token", service);
    expect(await userinfo(`Bearer ${service}`)).toMatchObject({ status: 401, body: { error: "invalid_token" } });
    const client = await register("--public", "--first-party");
    const pending = await authorizationUrl(client, "customer:self");
    const tokens = await oidc.authorizationCodeGrant(client.config, await callback(pending), {
      pkceCodeVerifier: pending.verifier,
      expectedState: pending.state,
    });
    secrets.add("tokens", tokens.access_token, tokens.refresh_token ?? "");
    expect(tokens.id_token).toBeUndefined();
    expect(await userinfo(`Bearer ${tokens.access_token}`)).toEqual({
      status: 403,
      challenge: 'Bearer error="insufficient_scope"',
      body: { error: "insufficient_scope" },
    });
  });

  it("refuses a logout to an unregistered address or without an ID token, and ends nothing", async () => {
    const client = await register("--public", "--first-party");
    const pending = await authorizationUrl(client);
    const tokens = await exchange(client, pending, await callback(pending));
    for (const params of [
      { id_token_hint: tokens.id_token ?? "", post_logout_redirect_uri: "http://127.0.0.1:9/elsewhere" },
      { post_logout_redirect_uri: SIGNED_OUT },
      { id_token_hint: "x.y.z", post_logout_redirect_uri: SIGNED_OUT },
    ]) {
      const page = await openPage(`${platform.issuer}/oauth2/logout?${new URLSearchParams(params)}`);
      expect(page.status).toBe(400);
      expect(page.location).toBeNull();
    }
    const refreshed = await oidc.refreshTokenGrant(client.config, tokens.refresh_token ?? "");
    secrets.add("refreshed", refreshed.access_token, refreshed.refresh_token ?? "");
    // Without a post_logout_redirect_uri: the session ends and the page says so.
    const out = await openPage(`${platform.issuer}/oauth2/logout?id_token_hint=${tokens.id_token}`);
    expect(out.status).toBe(200);
    expect(out.html).toContain("signed out");
    await expect(oauthError(oidc.refreshTokenGrant(client.config, refreshed.refresh_token ?? ""))).resolves.toEqual({
      error: "invalid_grant",
      status: 400,
    });
  });

  it("answers prompt=none with login_required: there is no browser session to reuse", async () => {
    const client = await register("--public", "--first-party");
    const { url, state } = await authorizationUrl(client);
    url.searchParams.set("prompt", "none");
    const back = new URL((await openPage(url)).location ?? "");
    expect(Object.fromEntries(back.searchParams)).toMatchObject({ error: "login_required", state });
  });
});
