/**
 * AuthService end to end: the real identity server on port 0 over PostgreSQL
 * and JetStream, called with generated clients (Connect and gRPC). After
 * every test, its log lines and every error its calls received are scanned
 * for every password, token and secret sent or issued and every hash stored
 * (test/support/secrets.ts).
 */
import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { decodeJwt, decodeProtectedHeader } from "jose";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { bearer, CORE_PROTOCOLS, type CoreProtocol, rpcError } from "../../test/support/clients.js";
import { holdLock } from "../../test/support/postgres.js";
import { createSecretScanner } from "../../test/support/secrets.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { runCli } from "../src/cli.js";

let svc: RunningIdentityService;
let sql: postgres.Sql;

beforeAll(async () => {
  svc = await startIdentityService({ IDENTITY_THROTTLE_BASE_DELAY_MS: "60000" });
  sql = svc.database.sql;
});

afterAll(async () => {
  secrets.close();
  await svc?.close();
});

const secrets = createSecretScanner();

afterEach(async () => {
  await secrets.addStored(sql);
  secrets.expectClean({ identity: svc.logs.lines });
});

const auth = (protocol: CoreProtocol = "connect-http1") => svc.clients.client(AuthService, protocol);
const email = () => `user.${randomUUID().slice(0, 8)}@example.com`;
const PASSWORD = "correct horse battery staple";

/** The identity service's own audience: its issuer. */
const ISSUER = "https://identity.test";

/** Signs up; `audience` as in the request (default: the first-party default, the customer service). */
async function signUp(protocol: CoreProtocol = "connect-http1", audience: string[] = []) {
  const address = email();
  const res = await auth(protocol).createCredentials({ email: address, password: PASSWORD, audience });
  return { email: address, ...res };
}

/** Creates a service client with the CLI, as an operator would, and returns its credentials. */
async function createClient(scopes: string, audiences?: string): Promise<{ clientId: string; secret: string }> {
  const clientId = `svc-${randomUUID().slice(0, 8)}`;
  const out: string[] = [];
  const args = ["clients", "create", clientId, "--scopes", scopes, ...(audiences ? ["--audiences", audiences] : [])];
  const code = await runCli(args, svc.env, (l) => out.push(l));
  expect(code).toBe(0);
  const printed = JSON.parse(out[0] ?? "{}") as { client_secret: string };
  secrets.add("a client secret", printed.client_secret);
  return { clientId, secret: printed.client_secret };
}

describe.each(CORE_PROTOCOLS)("sign-up and sign-in over %s", (protocol) => {
  it("creates credentials and returns a customer id with tokens", async () => {
    const res = await signUp(protocol);
    expect(res.customerId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(res.tokens).toMatchObject({ tokenType: "Bearer", expiresIn: 900 });
    expect(res.tokens?.refreshToken).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const header = decodeProtectedHeader(res.tokens?.accessToken ?? "");
    expect(header).toMatchObject({ alg: "EdDSA", typ: "at+jwt", kid: expect.any(String) });
    const claims = decodeJwt(res.tokens?.accessToken ?? "");
    expect(claims).toMatchObject({
      iss: "https://identity.test",
      sub: res.customerId,
      // The first-party default: the customer service only, not the identity service (RFC 8707).
      aud: ["customer-service"],
      client_id: "first-party",
      scope: "openid profile customer:self",
      // The sign-in session (refresh-token family): revoking it revokes this token.
      sid: expect.stringMatching(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/),
    });
    expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(900);
    expect(claims.jti).toEqual(expect.any(String));
  });

  it("signs in with the right password", async () => {
    const user = await signUp(protocol);
    const res = await auth(protocol).authenticateCustomer({ email: user.email.toUpperCase(), password: PASSWORD });
    expect(res.customerId).toBe(user.customerId);
    expect(res.tokens?.accessToken).not.toBe(user.tokens?.accessToken);
  });

  it("answers ALREADY_EXISTS for a taken email", async () => {
    const user = await signUp(protocol);
    await expect(
      auth(protocol).createCredentials({ email: user.email, password: "another password" }),
    ).rejects.toMatchObject(rpcError("email already has credentials", Code.AlreadyExists));
  });

  it("answers the same UNAUTHENTICATED for an unknown email and a wrong password", async () => {
    const user = await signUp(protocol);
    const wrong = await auth(protocol)
      .authenticateCustomer({ email: user.email, password: "wrong password!" })
      .catch((e: unknown) => ConnectError.from(e));
    const unknown = await auth(protocol)
      .authenticateCustomer({ email: email(), password: "wrong password!" })
      .catch((e: unknown) => ConnectError.from(e));
    expect(wrong).toMatchObject(rpcError("invalid email or password", Code.Unauthenticated));
    // Whole-object equality would compare response headers such as `date`, which can tick.
    const answer = (e: unknown) => {
      const err = e as ConnectError;
      return { code: err.code, message: err.rawMessage, details: err.details };
    };
    expect(answer(unknown)).toEqual(answer(wrong));
    expect((unknown as ConnectError).metadata.get("www-authenticate")).toBe(
      (wrong as ConnectError).metadata.get("www-authenticate"),
    );
  });
});

describe("CreateCredentials rules", () => {
  it("rejects a password equal to the email", async () => {
    const address = email();
    const err = await auth()
      .createCredentials({ email: address, password: address.toUpperCase() })
      .catch((e: unknown) => ConnectError.from(e));
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
  });
  it("rejects a password of 7 characters and accepts 8", async () => {
    await expect(auth().createCredentials({ email: email(), password: "1234567" })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
    await expect(auth().createCredentials({ email: email(), password: "k7#mQ2vx" })).resolves.toBeDefined();
  });
  it("stores only an argon2id hash with the configured parameters", async () => {
    const user = await signUp();
    const [row] = await sql<
      [{ password_hash: string }]
    >`select password_hash from identities where customer_id = ${user.customerId}`;
    expect(row.password_hash).toMatch(/^\$argon2id\$v=19\$m=1024,t=1,p=1\$/);
    expect(row.password_hash).not.toContain(PASSWORD);
  });
});

describe("throttling", () => {
  it("blocks a login after repeated failures with RESOURCE_EXHAUSTED and a retry delay, known or not", async () => {
    for (const address of [(await signUp()).email, email()]) {
      const attempts = await Promise.all(
        Array.from({ length: 12 }, () =>
          auth()
            .authenticateCustomer({ email: address, password: "wrong password!" })
            .then(
              () => "ok",
              (e: unknown) => ConnectError.from(e),
            ),
        ),
      );
      const codes = attempts.map((a) => (a instanceof ConnectError ? Code[a.code] : a));
      // Five attempts are free: exactly those reach the password check, whatever the concurrency.
      expect(codes.filter((c) => c === "Unauthenticated").length).toBe(5);
      expect(codes.filter((c) => c === "ResourceExhausted").length).toBe(7);
      const blocked = attempts.find(
        (a) => a instanceof ConnectError && a.code === Code.ResourceExhausted,
      ) as ConnectError;
      const [retry] = blocked.findDetails(RetryInfoSchema);
      expect(Number(retry?.retryDelay?.seconds)).toBeGreaterThan(50);
      expect(Number(retry?.retryDelay?.seconds)).toBeLessThanOrEqual(60);
    }
  });

  it("blocks even the right password while the delay runs", async () => {
    const user = await signUp();
    for (let i = 0; i < 5; i++) {
      await auth()
        .authenticateCustomer({ email: user.email, password: "wrong password!" })
        .catch(() => {});
    }
    await expect(auth().authenticateCustomer({ email: user.email, password: PASSWORD })).rejects.toMatchObject({
      code: Code.ResourceExhausted,
    });
  });
});

describe("refresh tokens", () => {
  it("rotates: a refresh token works once, reuse revokes the whole family", async () => {
    const user = await signUp();
    const first = user.tokens?.refreshToken ?? "";
    const second = await auth().refreshToken({ refreshToken: first });
    expect(second.tokens?.refreshToken).not.toBe(first);
    const third = await auth().refreshToken({ refreshToken: second.tokens?.refreshToken ?? "" });
    await expect(auth().refreshToken({ refreshToken: first })).rejects.toMatchObject(
      rpcError("invalid refresh token", Code.Unauthenticated),
    );
    // The family is gone: even the newest token no longer works.
    await expect(auth().refreshToken({ refreshToken: third.tokens?.refreshToken ?? "" })).rejects.toMatchObject(
      rpcError("invalid refresh token", Code.Unauthenticated),
    );
  });

  it("lets only one of two parallel uses of one token win", async () => {
    const user = await signUp();
    const results = await Promise.allSettled([
      auth().refreshToken({ refreshToken: user.tokens?.refreshToken ?? "" }),
      auth().refreshToken({ refreshToken: user.tokens?.refreshToken ?? "" }),
    ]);
    expect(results.filter((r) => r.status === "fulfilled").length).toBe(1);
  });

  it("rejects an unknown refresh token", async () => {
    await expect(auth().refreshToken({ refreshToken: "not-a-token" })).rejects.toMatchObject(
      rpcError("invalid refresh token", Code.Unauthenticated),
    );
  });

  it("stores only a hash of the refresh token", async () => {
    const user = await signUp();
    const rows =
      await sql`select encode(token_hash, 'hex') as h from refresh_tokens where customer_id = ${user.customerId}`;
    expect(rows.length).toBe(1);
    expect(JSON.stringify(rows)).not.toContain(user.tokens?.refreshToken);
  });
});

describe("client credentials, introspection and revocation", () => {
  it("issues a service token with the granted scopes only", async () => {
    const c = await createClient("customer:read customer:write");
    const all = await auth().authenticateClient({ clientId: c.clientId, clientSecret: c.secret, scope: "" });
    expect(all.tokens?.scope).toBe("customer:read customer:write");
    expect(all.tokens?.refreshToken).toBe("");
    expect(decodeJwt(all.tokens?.accessToken ?? "")).toMatchObject({ sub: c.clientId, client_id: c.clientId });
    expect(decodeJwt(all.tokens?.accessToken ?? "").sid).toBeUndefined();
    const narrow = await auth().authenticateClient({
      clientId: c.clientId,
      clientSecret: c.secret,
      scope: "customer:read",
    });
    expect(narrow.tokens?.scope).toBe("customer:read");
    await expect(
      auth().authenticateClient({ clientId: c.clientId, clientSecret: c.secret, scope: "customer:read admin" }),
    ).rejects.toMatchObject(rpcError("scope not allowed for this client: admin", Code.PermissionDenied));
  });

  it("rejects a wrong secret and an unknown client alike", async () => {
    const c = await createClient("customer:read");
    const expected = rpcError("invalid client credentials", Code.Unauthenticated);
    await expect(
      auth().authenticateClient({ clientId: c.clientId, clientSecret: "wrong", scope: "" }),
    ).rejects.toMatchObject(expected);
    await expect(
      auth().authenticateClient({ clientId: "nobody", clientSecret: c.secret, scope: "" }),
    ).rejects.toMatchObject(expected);
  });

  it("introspects access and refresh tokens for a service, and revocation makes them inactive", async () => {
    const c = await createClient("customer:read identity:introspect", ISSUER);
    const service = await auth().authenticateClient({ clientId: c.clientId, clientSecret: c.secret, scope: "" });
    const callAs = bearer(service.tokens?.accessToken ?? "");
    const user = await signUp();
    const access = user.tokens?.accessToken ?? "";
    const refresh = user.tokens?.refreshToken ?? "";
    const a = await auth().introspectToken({ token: access }, callAs);
    expect(a).toMatchObject({ active: true, sub: user.customerId, clientId: "first-party", tokenType: "access_token" });
    expect(Number(a.exp) - Number(a.iat)).toBe(900);
    // A refresh token is described only to the client it was issued to (first-party), never to a service.
    const r = await auth().introspectToken({ token: refresh }, callAs);
    expect(r).toMatchObject({ active: false, sub: "" });
    await auth().revokeToken({ token: access });
    await auth().revokeToken({ token: refresh });
    expect((await auth().introspectToken({ token: access }, callAs)).active).toBe(false);
    expect((await auth().introspectToken({ token: refresh }, callAs)).active).toBe(false);
    await expect(auth().refreshToken({ refreshToken: refresh })).rejects.toMatchObject({ code: Code.Unauthenticated });
    // Revoking garbage is not an error (RFC 7009).
    await expect(auth().revokeToken({ token: "garbage" })).resolves.toBeDefined();
  });

  it("answers inactive for every access token of a revoked session, by its sid", async () => {
    const c = await createClient("customer:read identity:introspect", ISSUER);
    const service = await auth().authenticateClient({ clientId: c.clientId, clientSecret: c.secret, scope: "" });
    const callAs = bearer(service.tokens?.accessToken ?? "");
    const user = await signUp();
    const first = user.tokens?.accessToken ?? "";
    const rotated = await auth().refreshToken({ refreshToken: user.tokens?.refreshToken ?? "" });
    const second = rotated.tokens?.accessToken ?? "";
    expect(decodeJwt(second).sid).toBe(decodeJwt(first).sid);
    const other = (await auth().authenticateCustomer({ email: user.email, password: PASSWORD })).tokens?.accessToken;
    expect(decodeJwt(other ?? "").sid).not.toBe(decodeJwt(first).sid);
    // Only the current refresh token is revoked; no access token is named.
    await auth().revokeToken({ token: rotated.tokens?.refreshToken ?? "" });
    for (const token of [first, second]) {
      expect(await auth().introspectToken({ token }, callAs)).toMatchObject({ active: false, sub: "" });
    }
    expect(await auth().introspectToken({ token: other ?? "" }, callAs)).toMatchObject({ active: true });
  });

  it("answers inactive for a tampered or foreign token", async () => {
    const c = await createClient("customer:read identity:introspect", ISSUER);
    const service = await auth().authenticateClient({ clientId: c.clientId, clientSecret: c.secret, scope: "" });
    const user = await signUp();
    const [h, p, s] = (user.tokens?.accessToken ?? "").split(".");
    const claims = JSON.parse(Buffer.from(p ?? "", "base64url").toString()) as Record<string, unknown>;
    const forgedPayload = Buffer.from(JSON.stringify({ ...claims, scope: "customer:write" })).toString("base64url");
    const res = await auth().introspectToken(
      { token: `${h}.${forgedPayload}.${s}` },
      bearer(service.tokens?.accessToken ?? ""),
    );
    expect(res).toMatchObject({ active: false, sub: "" });
  });

  it("denies introspection to customers and to callers without a token", async () => {
    const user = await signUp("connect-http1", [ISSUER]);
    await expect(auth().introspectToken({ token: "x" }, bearer(user.tokens?.accessToken ?? ""))).rejects.toMatchObject(
      rpcError("only a service token may introspect tokens", Code.PermissionDenied),
    );
    await expect(auth().introspectToken({ token: "x" })).rejects.toMatchObject(
      rpcError("missing bearer token", Code.Unauthenticated),
    );
  });
});

describe("ChangePassword", () => {
  it("needs the current password, revokes refresh tokens and returns new tokens", async () => {
    const user = await signUp("connect-http1", [ISSUER]);
    const callAs = bearer(user.tokens?.accessToken ?? "");
    await expect(
      auth().changePassword({ currentPassword: "wrong password!", newPassword: "a new password" }, callAs),
    ).rejects.toMatchObject(rpcError("current password is wrong", Code.Unauthenticated));
    const res = await auth().changePassword({ currentPassword: PASSWORD, newPassword: "a new password" }, callAs);
    expect(res.tokens?.refreshToken).toBeTruthy();
    await expect(auth().refreshToken({ refreshToken: user.tokens?.refreshToken ?? "" })).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    await expect(auth().authenticateCustomer({ email: user.email, password: PASSWORD })).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    await expect(auth().authenticateCustomer({ email: user.email, password: "a new password" })).resolves.toBeDefined();
  });

  it("rejects a service token and a missing token", async () => {
    const c = await createClient("customer:read", ISSUER);
    const service = await auth().authenticateClient({ clientId: c.clientId, clientSecret: c.secret, scope: "" });
    await expect(
      auth().changePassword(
        { currentPassword: "whatever1", newPassword: "whatever2" },
        bearer(service.tokens?.accessToken ?? ""),
      ),
    ).rejects.toMatchObject(rpcError("only a customer token can change a password", Code.PermissionDenied));
    await expect(
      auth().changePassword({ currentPassword: "whatever1", newPassword: "whatever2" }),
    ).rejects.toMatchObject(rpcError("missing bearer token", Code.Unauthenticated));
  });
});

describe("well-known documents", () => {
  it("serves public keys only, with cache headers, and discovery metadata", async () => {
    const res = await fetch(`${svc.url}/.well-known/jwks.json`);
    expect(res.status).toBe(200);
    expect(res.headers.get("cache-control")).toBe("public, max-age=300");
    const jwks = (await res.json()) as { keys: Record<string, unknown>[] };
    expect(jwks.keys.length).toBeGreaterThan(0);
    for (const k of jwks.keys) {
      expect(k).toMatchObject({ kty: "OKP", crv: "Ed25519", alg: "EdDSA", use: "sig", kid: expect.any(String) });
      expect(k).not.toHaveProperty("d");
    }
  });

  it.each(["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"])(
    "%s advertises only what exists: the authorization (code + S256 PKCE), token, userinfo, logout, revocation and introspection endpoints, their grants and client authentication, ID tokens; no implicit grant, request objects or profile claims",
    async (path) => {
      const res = await fetch(`${svc.url}${path}`);
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toBe("application/json");
      // The whole document: anything added must be true, and added here.
      expect(await res.json()).toEqual({
        issuer: "https://identity.test",
        authorization_endpoint: "https://identity.test/oauth2/authorize",
        token_endpoint: "https://identity.test/oauth2/token",
        userinfo_endpoint: "https://identity.test/oauth2/userinfo",
        end_session_endpoint: "https://identity.test/oauth2/logout",
        jwks_uri: "https://identity.test/.well-known/jwks.json",
        revocation_endpoint: "https://identity.test/oauth2/revoke",
        introspection_endpoint: "https://identity.test/oauth2/introspect",
        scopes_supported: [
          "openid",
          "customer:self",
          "customer:read",
          "customer:write",
          "identity:introspect",
          "identity:admin",
          "email",
        ],
        response_types_supported: ["code"],
        response_modes_supported: ["query"],
        grant_types_supported: ["authorization_code", "client_credentials", "refresh_token"],
        code_challenge_methods_supported: ["S256"],
        authorization_response_iss_parameter_supported: true,
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: ["EdDSA"],
        claims_supported: ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "sid", "email", "email_verified"],
        token_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post", "none"],
        revocation_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post", "none"],
        introspection_endpoint_auth_methods_supported: ["client_secret_basic", "client_secret_post"],
        access_token_signing_alg_values_supported: ["EdDSA"],
      });
      // Each endpoint named is served (a form POST with no client is answered, not 404).
      for (const endpoint of ["/oauth2/token", "/oauth2/revoke", "/oauth2/introspect"]) {
        const answer = await fetch(`${svc.url}${endpoint}`, {
          method: "POST",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: "grant_type=client_credentials&token=x",
        });
        expect(answer.status, endpoint).toBe(401);
        expect(await answer.json(), endpoint).toMatchObject({ error: "invalid_client" });
      }
      // The Connect RPCs are not OAuth form endpoints: a form POST there is refused.
      const form = await fetch(`${svc.url}/identity.v1.AuthService/AuthenticateClient`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded" },
        body: "grant_type=client_credentials&client_id=a&client_secret=b",
      });
      expect(form.status).toBe(415);
    },
  );
});

describe("logs and errors", () => {
  it("the scan finds every kind of secret it looks for, in every form it looks for", async () => {
    const user = await signUp();
    // Neither the secret nor the refresh token below was handed to the scanner: the database's hashes tell.
    const c = await createClient("customer:read");
    const unseen = await auth().authenticateCustomer({ email: user.email, password: PASSWORD });
    const lookup = createSecretScanner({ observe: false });
    lookup.add("the password", PASSWORD);
    await lookup.addStored(sql);
    const [row] = await sql<[{ password_hash: string; token_hash: Buffer }]>`
      select password_hash, token_hash from identities join refresh_tokens using (customer_id)
      where customer_id = ${user.customerId} limit 1`;
    for (const leak of [
      PASSWORD,
      Buffer.from(PASSWORD).toString("base64"),
      JSON.stringify({ pw: `${PASSWORD}\n` }),
      c.secret,
      unseen.tokens?.refreshToken ?? "",
      user.tokens?.accessToken ?? "",
      row.password_hash,
      JSON.stringify({ params: row.token_hash }),
    ]) {
      expect(lookup.find(`{"msg":"x","v":"${leak}"}`), leak).not.toEqual([]);
    }
    expect(lookup.find(`{"msg":"rpc","customerId":"${user.customerId}"}`)).toEqual([]);
    lookup.close();
  });

  it("a statement that fails is logged with its text, never its parameters (hashes, token hashes, emails)", async () => {
    // A server of its own whose statements time out after 300 ms, so a held lock makes them fail.
    const failing = await startIdentityService({ DATABASE_STATEMENT_TIMEOUT_MS: "300" });
    try {
      const failingAuth = failing.clients.client(AuthService);
      const user = await failingAuth.createCredentials({ email: email(), password: PASSWORD, audience: [ISSUER] });
      const newEmail = email();
      // EXCLUSIVE lets reads through and blocks writes and SELECT … FOR UPDATE.
      const lock = await holdLock(
        failing.database.sql,
        (tx) => tx`lock table identities, refresh_tokens in exclusive mode`,
      );
      const internal = rpcError("internal error", Code.Internal);
      await expect(failingAuth.createCredentials({ email: newEmail, password: PASSWORD })).rejects.toMatchObject(
        internal,
      );
      await expect(failingAuth.refreshToken({ refreshToken: user.tokens?.refreshToken ?? "" })).rejects.toMatchObject(
        internal,
      );
      await expect(
        failingAuth.changePassword(
          { currentPassword: PASSWORD, newPassword: "a new password" },
          bearer(user.tokens?.accessToken ?? ""),
        ),
      ).rejects.toMatchObject(internal);
      await lock.release();

      const failed = failing.logs.lines.filter((l) => l.includes("rpc: internal error"));
      expect(failed.length).toBe(3);
      // The cause is there for the operator: statement (placeholders only), SQLSTATE and PostgreSQL's reason.
      expect(failed[0]).toContain(String.raw`"query":"insert into \"identities\"`);
      for (const line of failed) expect(line).toContain('"code":"57014"');
      for (const line of failed) expect(line).toContain("canceling statement due to statement timeout");
      await secrets.addStored(failing.database.sql);
      secrets.expectClean({ failing: failing.logs.lines });
      expect(failing.logs.lines.join("\n")).not.toContain(newEmail);
    } finally {
      await failing.close();
    }
  });
});
