/**
 * Client registration through AdminService (CreateClient, GetClient,
 * ListClients, UpdateClient, RotateClientSecret): a client registered by RPC
 * works with an off-the-shelf relying party (openid-client: client
 * credentials; the authorization endpoint honours its redirect URIs, and a
 * change to them at once); registrations that cannot work are
 * INVALID_ARGUMENT naming the field, and store nothing; every change is
 * audited, a change that changes nothing is not; a rotated secret ends the
 * old one and its tokens. Who may call: admin.test.ts.
 */
import { randomUUID } from "node:crypto";
import { type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AdminService,
  type ClientSchema,
  GetClientResponseSchema,
} from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import * as oidc from "openid-client";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { bearer, CORE_PROTOCOLS, type CoreProtocol } from "../../test/support/clients.js";
import { openPage } from "../../test/support/hosted-pages.js";
import {
  SCOPE_IDENTITY_ADMIN,
  type ServiceClient,
  serviceSignIn,
  writtenEvents,
} from "../../test/support/identity-admin.js";
import { type Platform, startPlatform } from "../../test/support/platform.js";
import { createSecretScanner } from "../../test/support/secrets.js";
import type { RunningIdentityService } from "../../test/support/services.js";

const CALLBACK = "https://app.example.com/callback";
type ClientInit = MessageInitShape<typeof ClientSchema>;

let platform: Platform;
let svc: RunningIdentityService;
let sql: postgres.Sql;
let admin: ServiceClient & { token: string };
let issuer: string;
const secrets = createSecretScanner();

beforeAll(async () => {
  // Its issuer is its own address: openid-client reads discovery there.
  platform = await startPlatform();
  svc = platform.identity;
  sql = svc.database.sql;
  issuer = platform.issuer;
  admin = await serviceSignIn(svc.clients.client(AuthService), svc.env, SCOPE_IDENTITY_ADMIN, issuer);
  secrets.add("a client secret", admin.secret);
});

afterAll(async () => {
  secrets.close();
  await platform?.close();
});

afterEach(async () => {
  await secrets.addStored(sql);
  secrets.expectClean({ identity: svc.logs.lines });
});

const adminClient = (protocol: CoreProtocol = "connect-http1") => svc.clients.client(AdminService, protocol);
const asAdmin = () => bearer(admin.token);
const newId = (label: string) => `${label}-${randomUUID().slice(0, 8)}`;
const audits = async (clientId: string) =>
  (await writtenEvents(sql, clientId))
    .filter((e) => e.type === "identity.v1.AuditRecorded")
    .map((e) => e.message.action);

/** The field violations of an INVALID_ARGUMENT, as `field: rule`. */
async function violations(call: Promise<unknown>): Promise<string[]> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
  expect(err?.code, err?.rawMessage).toBe(Code.InvalidArgument);
  return (err?.findDetails(ViolationsSchema) ?? []).flatMap((v) =>
    v.violations.map((x) => `${(x.field?.elements ?? []).map((e) => e.fieldName).join(".")}: ${x.ruleId}`),
  );
}

/** openid-client, configured from discovery for a confidential client. */
const relyingParty = (clientId: string, secret: string) =>
  oidc.discovery(new URL(issuer), clientId, undefined, oidc.ClientSecretBasic(secret), {
    execute: [oidc.allowInsecureRequests],
  });

describe.each(CORE_PROTOCOLS)("client registration over %s", (protocol) => {
  it("registers a service client whose secret works with openid-client's client credentials grant", async () => {
    const clientId = newId("orders");
    const before = new Date(Math.floor(Date.now() / 1000) * 1000);
    const res = await adminClient(protocol).createClient(
      { client: { clientId, scopes: ["customer:read"], description: "the orders service" } },
      asAdmin(),
    );
    secrets.add("a client secret", res.clientSecret);
    expect(res.clientSecret).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(res.client).toMatchObject({
      clientId,
      description: "the orders service",
      scopes: ["customer:read"],
      audiences: ["customer-service"],
      defaultAudiences: ["customer-service"],
      grantTypes: ["client_credentials"],
      redirectUris: [],
      public: false,
      firstParty: false,
    });
    const createTime = res.client?.createTime;
    expect(createTime && timestampDate(createTime).getTime()).toBeGreaterThanOrEqual(before.getTime());
    expect(res.client?.disableTime).toBeUndefined();
    // Only the hash is stored.
    const [row] = await sql<{ secret_hash: Buffer }[]>`select secret_hash from clients where client_id = ${clientId}`;
    expect(row?.secret_hash.toString("latin1")).not.toContain(res.clientSecret);

    const tokens = await oidc.clientCredentialsGrant(await relyingParty(clientId, res.clientSecret), {
      scope: "customer:read",
    });
    expect(tokens.token_type.toLowerCase()).toBe("bearer");
    expect(JSON.parse(Buffer.from(tokens.access_token.split(".")[1] ?? "", "base64url").toString())).toMatchObject({
      client_id: clientId,
      scope: "customer:read",
      aud: ["customer-service"],
    });

    const got = await adminClient(protocol).getClient({ clientId }, asAdmin());
    expect(got.client).toEqual(res.client);
    expect(Buffer.from(toBinary(GetClientResponseSchema, got)).toString("latin1")).not.toContain(res.clientSecret);
    expect(await audits(clientId)).toEqual(["client.create"]);
  });

  it("registers a public app; the authorization endpoint takes exactly its redirect URIs, and an update at once", async () => {
    const clientId = newId("spa");
    const res = await adminClient(protocol).createClient(
      {
        client: {
          clientId,
          scopes: ["openid", "email", "customer:self"],
          redirectUris: [CALLBACK],
          public: true,
          firstParty: true,
        },
      },
      asAdmin(),
    );
    expect(res.clientSecret).toBe("");
    expect(res.client).toMatchObject({ grantTypes: ["authorization_code", "refresh_token"], public: true });
    const rp = await oidc.discovery(new URL(issuer), clientId, undefined, oidc.None(), {
      execute: [oidc.allowInsecureRequests],
    });
    const authorize = async (redirectUri: string) =>
      openPage(
        oidc.buildAuthorizationUrl(rp, {
          redirect_uri: redirectUri,
          scope: "openid email",
          code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
          code_challenge_method: "S256",
          state: oidc.randomState(),
        }),
      );
    const second = "http://127.0.0.1:8080/cb";
    expect((await authorize(CALLBACK)).status).toBe(200);
    expect((await authorize(second)).status).toBe(400);

    const updated = await adminClient(protocol).updateClient(
      { client: { clientId, redirectUris: [CALLBACK, second] }, updateMask: { paths: ["redirect_uris"] } },
      asAdmin(),
    );
    expect(updated.client?.redirectUris).toEqual([CALLBACK, second]);
    expect((await authorize(second)).status).toBe(200);
    // A public client has no secret to rotate.
    await expect(adminClient(protocol).rotateClientSecret({ clientId }, asAdmin())).rejects.toMatchObject({
      code: Code.FailedPrecondition,
      rawMessage: "a public client has no secret",
    });
    expect(await audits(clientId)).toEqual(["client.create", "client.update"]);
  });
});

describe("refused registrations", () => {
  const base = { scopes: ["customer:read"] };
  it.each<[string, ClientInit, string]>([
    ["a client id that is not one", { clientId: "Bad Id" }, "client.client_id: string.pattern"],
    ["an empty client id", { clientId: "" }, "client.client_id: string.pattern"],
    ["no scopes", { scopes: [] }, "client.scopes: client.scopes"],
    ["a scope with a space", { scopes: ["a b"] }, "client.scopes: string.pattern"],
    ["an unknown grant", { grantTypes: ["password"] }, "client.grant_types: string.in"],
    [
      "plain http off loopback",
      { redirectUris: ["http://app.example.com/cb"] },
      "client.redirect_uris: client.redirect_uri",
    ],
    ["a fragment", { redirectUris: ["https://app.example.com/cb#x"] }, "client.redirect_uris: client.redirect_uri"],
    ["a relative URI", { postLogoutRedirectUris: ["/bye"] }, "client.post_logout_redirect_uris: client.redirect_uri"],
    [
      "authorization_code without redirect URIs",
      { grantTypes: ["authorization_code"] },
      "client.redirect_uris: client.redirect_uris_required",
    ],
    [
      "redirect URIs without authorization_code",
      { redirectUris: [CALLBACK], grantTypes: ["client_credentials"] },
      "client.redirect_uris: client.redirect_uris_unused",
    ],
    ["a public client with client credentials", { public: true }, "client.grant_types: client.public_credentials"],
    [
      "default audiences that are not audiences",
      { audiences: ["customer-service"], defaultAudiences: ["orders"] },
      "client.default_audiences: client.default_audiences",
    ],
  ])("refuses %s with a field violation, and stores nothing", async (_what, change, violation) => {
    const clientId = change.clientId ?? newId("bad");
    const count = await sql`select count(*)::int as n from clients`;
    expect(
      await violations(adminClient().createClient({ client: { ...base, ...change, clientId } }, asAdmin())),
    ).toEqual([violation]);
    expect(await sql`select count(*)::int as n from clients`).toEqual(count);
  });

  it("answers ALREADY_EXISTS for an id in use or the first party's, and changes nothing", async () => {
    const clientId = newId("twice");
    await adminClient().createClient({ client: { clientId, scopes: ["customer:read"] } }, asAdmin());
    const row = await sql`select * from clients where client_id = ${clientId}`;
    for (const id of [clientId, svc.env.IDENTITY_FIRST_PARTY_CLIENT_ID ?? "first-party"]) {
      await expect(
        adminClient().createClient({ client: { clientId: id, scopes: ["customer:write"] } }, asAdmin()),
      ).rejects.toMatchObject({ code: Code.AlreadyExists, rawMessage: "client exists" });
    }
    expect(await sql`select * from clients where client_id = ${clientId}`).toEqual(row);
    expect(await audits(clientId)).toEqual(["client.create"]);
  });
});

describe("changing a client", () => {
  it("gives new tokens the new scopes; issued ones keep theirs; a change that changes nothing is not audited", async () => {
    const clientId = newId("reports");
    const created = await adminClient().createClient({ client: { clientId, scopes: ["customer:read"] } }, asAdmin());
    secrets.add("a client secret", created.clientSecret);
    const auth = svc.clients.client(AuthService);
    const first = await auth.authenticateClient({ clientId, clientSecret: created.clientSecret, scope: "" });
    const changed = await adminClient().updateClient(
      {
        client: { clientId, scopes: ["customer:read", "customer:write"], description: "reports" },
        updateMask: { paths: ["scopes", "description"] },
      },
      asAdmin(),
    );
    expect(changed.client).toMatchObject({ scopes: ["customer:read", "customer:write"], description: "reports" });
    const second = await auth.authenticateClient({ clientId, clientSecret: created.clientSecret, scope: "" });
    const scopeOf = (t: string | undefined) =>
      (JSON.parse(Buffer.from((t ?? "").split(".")[1] ?? "", "base64url").toString()) as { scope: string }).scope;
    expect(scopeOf(first.tokens?.accessToken)).toBe("customer:read");
    expect(scopeOf(second.tokens?.accessToken)).toBe("customer:read customer:write");

    // The same values again: nothing written.
    const again = await adminClient().updateClient(
      { client: { clientId, description: "reports" }, updateMask: { paths: ["description"] } },
      asAdmin(),
    );
    expect(again.client).toEqual(changed.client);
    expect(await audits(clientId)).toEqual(["client.create", "client.update"]);
  });

  it("refuses an update that would leave a registration that cannot work, a wrong mask and an unknown client", async () => {
    const clientId = newId("web");
    await adminClient().createClient({ client: { clientId, scopes: ["openid"], redirectUris: [CALLBACK] } }, asAdmin());
    const row = await sql`select * from clients where client_id = ${clientId}`;
    const update = (client: ClientInit, paths: string[]) =>
      adminClient().updateClient({ client: { clientId, ...client }, updateMask: { paths } }, asAdmin());
    expect(await violations(update({ redirectUris: [] }, ["redirect_uris"]))).toEqual([
      "client.redirect_uris: client.redirect_uris_required",
    ]);
    expect(await violations(update({ defaultAudiences: ["elsewhere"] }, ["default_audiences"]))).toEqual([
      "client.default_audiences: client.default_audiences",
    ]);
    expect(await violations(update({ public: true }, ["public"]))).toEqual(["update_mask: field_mask.in"]);
    expect(await violations(update({}, []))).toEqual(["update_mask: field_mask.not_empty"]);
    expect(await violations(update({ scopes: ["x"] }, ["scopes", "scopes"]))).toEqual([
      "update_mask: field_mask.unique",
    ]);
    expect(await sql`select * from clients where client_id = ${clientId}`).toEqual(row);
    await expect(
      adminClient().updateClient(
        { client: { clientId: "no-such-client", description: "x" }, updateMask: { paths: ["description"] } },
        asAdmin(),
      ),
    ).rejects.toMatchObject({ code: Code.NotFound, rawMessage: "client not found" });
    expect(await audits(clientId)).toEqual(["client.create"]);
  });

  it("rotates a secret: the old one and its tokens are refused, the new one works; never the caller's own", async () => {
    const clientId = newId("billing");
    const created = await adminClient().createClient({ client: { clientId, scopes: ["customer:read"] } }, asAdmin());
    secrets.add("a client secret", created.clientSecret);
    const old = await (await oidc.clientCredentialsGrant(await relyingParty(clientId, created.clientSecret), {}))
      .access_token;
    const rotated = await adminClient().rotateClientSecret({ clientId }, asAdmin());
    secrets.add("a client secret", rotated.clientSecret);
    expect(rotated.clientSecret).not.toBe(created.clientSecret);
    // 401 with a Basic challenge (RFC 6749 §5.2 invalid_client after a Basic attempt).
    await expect(
      oidc.clientCredentialsGrant(await relyingParty(clientId, created.clientSecret), {}),
    ).rejects.toMatchObject({ status: 401 });
    await expect(
      oidc.clientCredentialsGrant(await relyingParty(clientId, rotated.clientSecret), {}),
    ).resolves.toHaveProperty("access_token");
    const revoked = (await writtenEvents(sql, clientId)).filter((e) => e.type === "identity.v1.TokensRevoked");
    expect(revoked).toHaveLength(1);
    expect(old).toBeTruthy();
    expect(await audits(clientId)).toEqual(["client.create", "client.rotate_secret"]);

    await expect(adminClient().rotateClientSecret({ clientId: admin.clientId }, asAdmin())).rejects.toMatchObject({
      code: Code.PermissionDenied,
    });
    await expect(adminClient().rotateClientSecret({ clientId: "no-such-client" }, asAdmin())).rejects.toMatchObject({
      code: Code.NotFound,
    });
  });
});

describe("listing clients", () => {
  it("pages through every client in id order, and refuses a page token it did not issue", async () => {
    for (let i = 0; i < 5; i++) {
      await adminClient().createClient({ client: { clientId: newId("page"), scopes: ["customer:read"] } }, asAdmin());
    }
    const expected = (await sql<{ client_id: string }[]>`select client_id from clients order by client_id`).map(
      (r) => r.client_id,
    );
    const seen: string[] = [];
    let pageToken = "";
    for (let pages = 0; pages < 100; pages++) {
      const page = await adminClient("grpc").listClients({ pageSize: 2, pageToken }, asAdmin());
      expect(page.clients.length).toBeLessThanOrEqual(2);
      seen.push(...page.clients.map((c) => c.clientId));
      pageToken = page.nextPageToken;
      if (!pageToken) break;
    }
    expect(seen).toEqual(expected);
    expect((await adminClient().listClients({}, asAdmin())).clients.map((c) => c.clientId)).toEqual(expected);
    for (const token of ["garbage", Buffer.from("clients:'; drop table clients; --").toString("base64url")]) {
      expect(await violations(adminClient().listClients({ pageToken: token }, asAdmin()))).toEqual([
        "page_token: page_token.valid",
      ]);
    }
    expect(await violations(adminClient().listClients({ pageSize: 501 }, asAdmin()))).toEqual([
      "page_size: int32.gte_lte",
    ]);
  });
});
