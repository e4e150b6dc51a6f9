/**
 * The OAuth endpoints' refusals, byte by byte with plain fetch (RFC 6749
 * §5.2 JSON, RFC 8707's invalid_target): wrong credentials, grants that do
 * not exist here, malformed and oversized requests. What openid-client
 * sees of the working endpoints: oauth.test.ts.
 */
import { randomUUID } from "node:crypto";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createServiceClient, type ServiceClient } from "../../test/support/identity-admin.js";
import { signUpByMail } from "../../test/support/mailbox.js";
import { createSecretScanner } from "../../test/support/secrets.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { h2request } from "../../test/support/wire.js";
import { MAX_FORM_BYTES } from "../src/oauth/form.js";

const PASSWORD = "correct horse battery staple";

let svc: RunningIdentityService;
let sql: postgres.Sql;
let client: ServiceClient;
const secrets = createSecretScanner();

beforeAll(async () => {
  svc = await startIdentityService({});
  sql = svc.database.sql;
  client = await createServiceClient(svc.env, "customer:read", "customer-service");
  secrets.add("client secret", client.secret);
});
afterAll(() => svc?.close());
afterEach(async () => {
  await secrets.addStored(sql);
  secrets.expectClean({ identity: svc.logs.lines });
});

interface Answer {
  status: number;
  headers: Headers;
  body: unknown;
}

async function post(path: string, body: string, headers: Record<string, string> = {}): Promise<Answer> {
  const res = await fetch(`${svc.url}${path}`, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
    body,
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : undefined };
}

const form = (params: Record<string, string>) => new URLSearchParams(params).toString();
const basic = (id: string, secret: string) =>
  `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString("base64")}`;
const error = (code: string, description: string) => ({ error: code, error_description: description });

async function customerTokens() {
  const email = `oauth.${randomUUID().slice(0, 8)}@example.com`;
  const res = await signUpByMail(svc.clients.client(AuthService), svc.env.IDENTITY_MAILBOX_DIR ?? "", {
    email,
    password: PASSWORD,
  });
  const tokens = { email, access: res.tokens?.accessToken ?? "", refresh: res.tokens?.refreshToken ?? "" };
  secrets.add("customer tokens", tokens.access, tokens.refresh);
  return tokens;
}

describe("client authentication", () => {
  it("a wrong secret over HTTP Basic: 401 invalid_client with the Basic challenge, not cached", async () => {
    const res = await post("/oauth2/token", form({ grant_type: "client_credentials" }), {
      authorization: basic(client.clientId, "not the secret"),
    });
    expect(res).toMatchObject({ status: 401, body: error("invalid_client", "invalid client credentials") });
    expect(res.headers.get("www-authenticate")).toMatch(/^Basic realm="oauth2"/);
    expect(res.headers.get("content-type")).toBe("application/json; charset=utf-8");
    expect(res.headers.get("cache-control")).toBe("no-store");
    // One log line per request, with the outcome and without the client id it could not authenticate.
    const line = svc.logs.lines.map((l) => JSON.parse(l) as Record<string, unknown>).findLast((l) => l.msg === "oauth");
    expect(line).toMatchObject({ endpoint: "/oauth2/token", status: 401, outcome: "invalid_client" });
    expect(line).not.toHaveProperty("clientId");
  });

  it("a wrong secret or an unknown client in the body: 401 invalid_client, the same answer, no challenge", async () => {
    for (const clientId of [client.clientId, "no-such-client"]) {
      const res = await post(
        "/oauth2/token",
        form({ grant_type: "client_credentials", client_id: clientId, client_secret: "not the secret" }),
      );
      expect(res).toMatchObject({ status: 401, body: error("invalid_client", "invalid client credentials") });
      expect(res.headers.get("www-authenticate")).toBeNull();
    }
  });

  it("an Authorization header that is not Basic: 401 invalid_client with the challenge", async () => {
    const res = await post("/oauth2/token", form({ grant_type: "client_credentials" }), {
      authorization: "Bearer something",
    });
    expect(res.status).toBe(401);
    expect(res.body).toMatchObject({ error: "invalid_client" });
    expect(res.headers.get("www-authenticate")).toMatch(/^Basic /);
  });

  it("two methods at once, or a body client_id other than the header's: invalid_request", async () => {
    const both = await post("/oauth2/token", form({ grant_type: "client_credentials", client_secret: client.secret }), {
      authorization: basic(client.clientId, client.secret),
    });
    expect(both).toMatchObject({
      status: 400,
      body: error("invalid_request", "use one client authentication method, not two"),
    });
    const other = await post("/oauth2/token", form({ grant_type: "client_credentials", client_id: "someone-else" }), {
      authorization: basic(client.clientId, client.secret),
    });
    expect(other).toMatchObject({ status: 400, body: { error: "invalid_request" } });
  });

  it("no client at all: 401 invalid_client at every endpoint", async () => {
    for (const [path, params] of [
      ["/oauth2/token", { grant_type: "client_credentials" }],
      ["/oauth2/token", { grant_type: "refresh_token", refresh_token: "x" }],
      ["/oauth2/revoke", { token: "x" }],
      ["/oauth2/introspect", { token: "x" }],
    ] as const) {
      const res = await post(path, form(params));
      expect(res.status, path).toBe(401);
      expect(res.body, path).toMatchObject({ error: "invalid_client" });
    }
  });
});

describe("grants", () => {
  it("grants that do not exist here (password, implicit): unsupported_grant_type", async () => {
    const { email } = await customerTokens();
    const [{ sessions }] = await sql<[{ sessions: number }]>`select count(*)::int as sessions from refresh_tokens`;
    for (const grant of [
      { grant_type: "password", username: email, password: PASSWORD, client_id: "first-party" },
      { grant_type: "implicit", client_id: "first-party" },
    ]) {
      const res = await post("/oauth2/token", form(grant));
      expect(res).toMatchObject({
        status: 400,
        body: error("unsupported_grant_type", "supported: authorization_code, client_credentials, refresh_token"),
      });
    }
    // Nothing signed in: a real account's password opened no session.
    expect((await sql`select count(*)::int as sessions from refresh_tokens`)[0]?.sessions).toBe(sessions);
  });

  it("client_credentials for the public first-party client, refresh_token for a confidential one: unauthorized_client", async () => {
    const { refresh } = await customerTokens();
    const pub = await post("/oauth2/token", form({ grant_type: "client_credentials", client_id: "first-party" }));
    expect(pub).toMatchObject({
      status: 400,
      body: error("unauthorized_client", "client_credentials is for confidential clients"),
    });
    const conf = await post("/oauth2/token", form({ grant_type: "refresh_token", refresh_token: refresh }), {
      authorization: basic(client.clientId, client.secret),
    });
    expect(conf).toMatchObject({
      status: 400,
      body: error("unauthorized_client", "the client is not registered for refresh_token"),
    });
    // An unknown public client: not a client at all.
    const unknown = await post(
      "/oauth2/token",
      form({ grant_type: "refresh_token", refresh_token: refresh, client_id: "app" }),
    );
    expect(unknown).toMatchObject({ status: 401, body: { error: "invalid_client" } });
    // The refresh token was never touched: it still rotates.
    const ok = await post(
      "/oauth2/token",
      form({ grant_type: "refresh_token", refresh_token: refresh, client_id: "first-party" }),
    );
    expect(ok.status).toBe(200);
    expect(ok.headers.get("cache-control")).toBe("no-store");
    const body = ok.body as { access_token: string; refresh_token: string };
    secrets.add("tokens", body.access_token, body.refresh_token);
  });

  it("an unknown refresh token: invalid_grant; a scope beyond the session's: invalid_scope", async () => {
    const { refresh } = await customerTokens();
    const unknown = await post(
      "/oauth2/token",
      form({ grant_type: "refresh_token", refresh_token: "no-such-token", client_id: "first-party" }),
    );
    expect(unknown).toMatchObject({ status: 400, body: error("invalid_grant", "invalid refresh token") });
    const tooLong = await post(
      "/oauth2/token",
      form({ grant_type: "refresh_token", refresh_token: "x".repeat(513), client_id: "first-party" }),
    );
    expect(tooLong).toMatchObject({ status: 400, body: error("invalid_grant", "invalid refresh token") });
    const wider = await post(
      "/oauth2/token",
      form({ grant_type: "refresh_token", refresh_token: refresh, client_id: "first-party", scope: "customer:read" }),
    );
    expect(wider).toMatchObject({ status: 400, body: error("invalid_scope", "a refresh keeps the session's scope") });
  });

  it("a malformed resource: invalid_target; a malformed scope: invalid_scope", async () => {
    const auth = { authorization: basic(client.clientId, client.secret) };
    for (const resource of ["has space", "x".repeat(257), "é"]) {
      const res = await post("/oauth2/token", form({ grant_type: "client_credentials", resource }), auth);
      expect(res, resource).toMatchObject({ status: 400, body: { error: "invalid_target" } });
    }
    const nine = new URLSearchParams([["grant_type", "client_credentials"]]);
    for (let i = 0; i < 9; i++) nine.append("resource", `r${i}`);
    expect(await post("/oauth2/token", nine.toString(), auth)).toMatchObject({
      status: 400,
      body: { error: "invalid_target" },
    });
    const scope = await post("/oauth2/token", form({ grant_type: "client_credentials", scope: 'a"b' }), auth);
    expect(scope).toMatchObject({ status: 400, body: error("invalid_scope", "scope is malformed") });
  });
});

describe("malformed requests", () => {
  it("missing parameters: invalid_request", async () => {
    const auth = { authorization: basic(client.clientId, client.secret) };
    expect(await post("/oauth2/token", form({}), auth)).toMatchObject({
      status: 400,
      body: error("invalid_request", "grant_type is required"),
    });
    expect(await post("/oauth2/token", form({ grant_type: "refresh_token", client_id: "first-party" }))).toMatchObject({
      status: 400,
      body: error("invalid_request", "refresh_token is required"),
    });
    expect(await post("/oauth2/revoke", form({ client_id: "first-party" }))).toMatchObject({
      status: 400,
      body: error("invalid_request", "token is required"),
    });
    // An empty value is as if the parameter were missing (RFC 6749 §3.1).
    expect(await post("/oauth2/token", "grant_type=", auth)).toMatchObject({
      status: 400,
      body: error("invalid_request", "grant_type is required"),
    });
  });

  it("a parameter sent twice: invalid_request", async () => {
    const res = await post("/oauth2/token", "grant_type=client_credentials&grant_type=refresh_token", {
      authorization: basic(client.clientId, client.secret),
    });
    expect(res).toMatchObject({ status: 400, body: error("invalid_request", "parameter grant_type is repeated") });
  });

  it("another content type, or none: 400 invalid_request", async () => {
    for (const type of ["application/json", "text/plain", "multipart/form-data; boundary=x"]) {
      const res = await post("/oauth2/token", JSON.stringify({ grant_type: "client_credentials" }), {
        "content-type": type,
        authorization: basic(client.clientId, client.secret),
      });
      expect(res, type).toMatchObject({
        status: 400,
        body: error("invalid_request", "the body must be application/x-www-form-urlencoded"),
      });
    }
    const none = await fetch(`${svc.url}/oauth2/token`, {
      method: "POST",
      headers: { authorization: basic(client.clientId, client.secret) },
      body: new Blob([form({ grant_type: "client_credentials" })]),
    });
    expect(none.status).toBe(400);
    expect(await none.json()).toEqual(error("invalid_request", "the body must be application/x-www-form-urlencoded"));
    // The form type with a charset parameter is the form type.
    const withCharset = await post("/oauth2/token", form({ grant_type: "client_credentials" }), {
      "content-type": "application/x-www-form-urlencoded; charset=UTF-8",
      authorization: basic(client.clientId, client.secret),
    });
    expect(withCharset.status).toBe(200);
    secrets.add("access token", (withCharset.body as { access_token: string }).access_token);
  });

  it("a body over the limit, declared or streamed: 413 invalid_request, and the server serves on", async () => {
    const big = `grant_type=client_credentials&pad=${"x".repeat(MAX_FORM_BYTES)}`;
    const declared = await post("/oauth2/token", big, { authorization: basic(client.clientId, client.secret) });
    expect(declared).toMatchObject({
      status: 413,
      body: error("invalid_request", `the body is larger than ${MAX_FORM_BYTES} bytes`),
    });
    const chunks = [big.slice(0, 1000), big.slice(1000)];
    const streamed = new ReadableStream<Uint8Array>({
      pull(controller) {
        const next = chunks.shift();
        if (next === undefined) controller.close();
        else controller.enqueue(new TextEncoder().encode(next));
      },
    });
    const res = await fetch(`${svc.url}/oauth2/token`, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        authorization: basic(client.clientId, client.secret),
      },
      body: streamed,
      duplex: "half",
    } as RequestInit);
    expect(res.status).toBe(413);
    expect(await res.json()).toMatchObject({ error: "invalid_request" });
    const after = await post("/oauth2/token", form({ grant_type: "client_credentials" }), {
      authorization: basic(client.clientId, client.secret),
    });
    expect(after.status).toBe(200);
    secrets.add("access token", (after.body as { access_token: string }).access_token);
  });

  it("GET: 405 with Allow: POST", async () => {
    for (const path of ["/oauth2/token", "/oauth2/revoke", "/oauth2/introspect"]) {
      const res = await fetch(`${svc.url}${path}?grant_type=client_credentials`);
      expect(res.status, path).toBe(405);
      expect(res.headers.get("allow")).toBe("POST");
      expect(await res.json()).toEqual(error("invalid_request", "use POST"));
    }
  });

  it("answers over HTTP/2 (h2c) as over HTTP/1.1", async () => {
    const res = await h2request(
      svc.url,
      {
        ":path": "/oauth2/token",
        "content-type": "application/x-www-form-urlencoded",
        authorization: basic(client.clientId, client.secret),
      },
      new TextEncoder().encode(form({ grant_type: "client_credentials", scope: "customer:read" })),
    );
    expect(res.headers[":status"]).toBe(200);
    const body = JSON.parse(res.data.toString()) as { access_token: string; scope: string };
    secrets.add("access token", body.access_token);
    expect(body.scope).toBe("customer:read");
  });
});

describe("revocation and introspection", () => {
  it("revocation answers 200 for an unknown or oversized token; introspection inactive for them", async () => {
    const auth = { authorization: basic(client.clientId, client.secret) };
    for (const token of ["no-such-token", "a.b.c", "x".repeat(8193)]) {
      const revoked = await post("/oauth2/revoke", form({ token }), auth);
      expect(revoked.status).toBe(200);
      expect(revoked.body).toBeUndefined();
    }
    const introspector = await createServiceClient(svc.env, "identity:introspect", "customer-service");
    secrets.add("client secret", introspector.secret);
    const { access } = await customerTokens();
    for (const token of ["no-such-token", "x".repeat(8193)]) {
      const res = await post("/oauth2/introspect", form({ token }), {
        authorization: basic(introspector.clientId, introspector.secret),
      });
      expect(res).toMatchObject({ status: 200, body: { active: false } });
      expect(Object.keys(res.body as object)).toEqual(["active"]);
    }
    const live = await post("/oauth2/introspect", form({ token: access, token_type_hint: "refresh_token" }), {
      authorization: basic(introspector.clientId, introspector.secret),
    });
    expect(live).toMatchObject({ status: 200, body: { active: true, token_type: "access_token" } });
    expect(live.headers.get("cache-control")).toBe("no-store");
  });
});
