/**
 * AdminService on the identity service's port, and the CLI's `identities` and
 * `clients disable|enable`: who may call it (a service token for the
 * identity service with the scope identity:admin), what suspending an
 * account or a client does to sign-in, refresh and introspection, that each
 * change commits its events with an AuditRecorded naming the actor, and
 * that a change that changes nothing writes nothing. Erasure:
 * delete-account.test.ts.
 */
import { randomUUID } from "node:crypto";
import { userInfo } from "node:os";
import { Code } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus } from "@customer-platform/gen/grpc/health/v1/health_pb.js";
import { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { DeletedBy, TokenRevocationReason } from "@customer-platform/gen/identity/v1/events_pb.js";
import { decodeJwt } from "jose";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { bearer, CORE_PROTOCOLS, type CoreProtocol, rpcError } from "../../test/support/clients.js";
import {
  identityCli,
  newEvents,
  SCOPE_IDENTITY_ADMIN,
  type ServiceClient,
  serviceSignIn,
  writtenEvents,
} from "../../test/support/identity-admin.js";
import { signUpByMail } from "../../test/support/mailbox.js";
import { createSecretScanner } from "../../test/support/secrets.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";

/** The identity service's own audience: its issuer. */
const ISSUER = "https://identity.test";
const PASSWORD = "correct horse battery staple";

let svc: RunningIdentityService;
let sql: postgres.Sql;
/** identity:admin for the identity service. */
let admin: ServiceClient & { token: string };
/** identity:introspect for the identity service. */
let introspector: ServiceClient & { token: string };

const secrets = createSecretScanner();

beforeAll(async () => {
  svc = await startIdentityService({});
  sql = svc.database.sql;
  admin = await serviceSignIn(auth(), svc.env, SCOPE_IDENTITY_ADMIN, ISSUER);
  introspector = await serviceSignIn(auth(), svc.env, "identity:introspect", ISSUER);
  secrets.add("a client secret", admin.secret, introspector.secret);
});

afterAll(async () => {
  secrets.close();
  await svc?.close();
});

afterEach(async () => {
  await secrets.addStored(sql);
  secrets.expectClean({ identity: svc.logs.lines });
});

const auth = (protocol: CoreProtocol = "connect-http1") => svc.clients.client(AuthService, protocol);
const adminClient = (protocol: CoreProtocol = "connect-http1") => svc.clients.client(AdminService, protocol);
const asAdmin = () => bearer(admin.token);

/** A customer signed up by mail, with tokens for the customer service and the identity service. */
async function signUp() {
  const email = `admin.${randomUUID().slice(0, 8)}@example.com`;
  const res = await signUpByMail(auth(), svc.env.IDENTITY_MAILBOX_DIR ?? "", {
    email,
    password: PASSWORD,
    audience: ["customer-service", ISSUER],
  });
  return {
    email,
    customerId: res.customerId,
    accessToken: res.tokens?.accessToken ?? "",
    refreshToken: res.tokens?.refreshToken ?? "",
  };
}

const introspect = (token: string) => auth().introspectToken({ token }, bearer(introspector.token));
const types = (events: { type: string }[]) => events.map((e) => e.type);

describe.each(CORE_PROTOCOLS)("who may call AdminService over %s", (protocol) => {
  const calls = (id: string) => ({
    DisableIdentity: (o: object) => adminClient(protocol).disableIdentity({ customerId: id }, o),
    EnableIdentity: (o: object) => adminClient(protocol).enableIdentity({ customerId: id }, o),
    DeleteIdentity: (o: object) => adminClient(protocol).deleteIdentity({ customerId: id }, o),
    DisableClient: (o: object) => adminClient(protocol).disableClient({ clientId: introspector.clientId }, o),
    EnableClient: (o: object) => adminClient(protocol).enableClient({ clientId: introspector.clientId }, o),
    CreateClient: (o: object) =>
      adminClient(protocol).createClient({ client: { clientId: "never-made", scopes: ["customer:read"] } }, o),
    GetClient: (o: object) => adminClient(protocol).getClient({ clientId: introspector.clientId }, o),
    ListClients: (o: object) => adminClient(protocol).listClients({}, o),
    UpdateClient: (o: object) =>
      adminClient(protocol).updateClient(
        { client: { clientId: introspector.clientId, description: "changed" }, updateMask: { paths: ["description"] } },
        o,
      ),
    RotateClientSecret: (o: object) => adminClient(protocol).rotateClientSecret({ clientId: introspector.clientId }, o),
  });

  it("covers every method, and is served beside AuthService with its own health", async () => {
    expect(Object.keys(calls("")).sort()).toEqual(AdminService.methods.map((m) => m.name).sort());
    const health = svc.clients.client(Health, protocol);
    for (const service of [AuthService.typeName, AdminService.typeName]) {
      await expect(health.check({ service })).resolves.toMatchObject({
        status: HealthCheckResponse_ServingStatus.SERVING,
      });
    }
  });

  it("refuses a call without a token, with a customer token, without the scope or for another audience", async () => {
    const customer = await signUp();
    const withoutScope = await serviceSignIn(auth(), svc.env, "identity:introspect customer:read", ISSUER);
    const otherAudience = await serviceSignIn(auth(), svc.env, SCOPE_IDENTITY_ADMIN, "customer-service");
    secrets.add("a client secret", withoutScope.secret, otherAudience.secret);
    const before = await sql`select customer_id, status from identities where customer_id = ${customer.customerId}`;
    const outboxBefore = await sql`select count(*)::int as n from outbox`;
    for (const [name, call] of Object.entries(calls(customer.customerId))) {
      await expect(call({}), name).rejects.toMatchObject(rpcError("missing bearer token", Code.Unauthenticated));
      await expect(call(bearer(customer.accessToken)), name).rejects.toMatchObject(
        rpcError("only a service token may call AdminService", Code.PermissionDenied),
      );
      await expect(call(bearer(withoutScope.token)), name).rejects.toMatchObject(
        rpcError("AdminService requires the scope identity:admin", Code.PermissionDenied),
      );
      // A token for the customer service is not one for the identity service's own RPCs.
      await expect(call(bearer(otherAudience.token)), name).rejects.toMatchObject({ code: Code.Unauthenticated });
    }
    expect(await sql`select customer_id, status from identities where customer_id = ${customer.customerId}`).toEqual(
      before,
    );
    expect(await sql`select count(*)::int as n from outbox`).toEqual(outboxBefore);
    await expect(auth().authenticateCustomer({ email: customer.email, password: PASSWORD })).resolves.toMatchObject({
      customerId: customer.customerId,
    });
  });

  it("answers NOT_FOUND for an unknown customer or client and INVALID_ARGUMENT for a malformed id", async () => {
    const unknown = randomUUID();
    const admin = adminClient(protocol);
    const notFound = rpcError("customer not found", Code.NotFound);
    await expect(admin.disableIdentity({ customerId: unknown }, asAdmin())).rejects.toMatchObject(notFound);
    await expect(admin.enableIdentity({ customerId: unknown }, asAdmin())).rejects.toMatchObject(notFound);
    await expect(admin.deleteIdentity({ customerId: unknown }, asAdmin())).rejects.toMatchObject(notFound);
    const noClient = rpcError("client not found", Code.NotFound);
    await expect(admin.disableClient({ clientId: "svc-nobody" }, asAdmin())).rejects.toMatchObject(noClient);
    await expect(admin.enableClient({ clientId: "svc-nobody" }, asAdmin())).rejects.toMatchObject(noClient);
    await expect(admin.disableIdentity({ customerId: "not-a-uuid" }, asAdmin())).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
    await expect(admin.disableClient({ clientId: "" }, asAdmin())).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
    expect(await sql`select count(*)::int as n from outbox where ce_subject = ${unknown}`).toEqual([{ n: 0 }]);
  });
});

describe("suspending an account", () => {
  it("refuses the right password with FAILED_PRECONDITION, ends every session, and is audited", async () => {
    const c = await signUp();
    const sid = decodeJwt(c.accessToken).sid;
    await expect(introspect(c.accessToken)).resolves.toMatchObject({ active: true });
    const before = await writtenEvents(sql, c.customerId);

    await adminClient().disableIdentity({ customerId: c.customerId }, asAdmin());

    await expect(auth().authenticateCustomer({ email: c.email, password: PASSWORD })).rejects.toMatchObject(
      rpcError("account disabled", Code.FailedPrecondition),
    );
    // To anyone without the password it answers as a wrong password does.
    await expect(auth().authenticateCustomer({ email: c.email, password: "not the password" })).rejects.toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );
    await expect(auth().refreshToken({ refreshToken: c.refreshToken })).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    await expect(introspect(c.accessToken)).resolves.toMatchObject({ active: false });
    await expect(introspect(c.refreshToken)).resolves.toMatchObject({ active: false });
    const [row] = await sql`select status, disabled_at from identities where customer_id = ${c.customerId}`;
    expect(row).toMatchObject({ status: "disabled", disabled_at: expect.any(Date) });
    expect(
      await sql`select count(*)::int as n from refresh_tokens
        where customer_id = ${c.customerId} and (revoked_at is null or revoke_reason <> 'identity_disabled')`,
    ).toEqual([{ n: 0 }]);

    const written = newEvents(before, await writtenEvents(sql, c.customerId));
    expect(types(written)).toEqual([
      "identity.v1.TokensRevoked",
      "identity.v1.IdentityDisabled",
      "identity.v1.AuditRecorded",
    ]);
    const [revoked, disabled, audit] = written;
    expect(revoked?.message).toMatchObject({
      customerId: c.customerId,
      sessionIds: [sid],
      reason: TokenRevocationReason.IDENTITY_DISABLED,
    });
    expect(disabled).toMatchObject({
      subject: `${svc.streams.subjectPrefix}.customer.disabled.${c.customerId}`,
      message: { customerId: c.customerId, eventId: disabled?.eventId },
    });
    expect(audit).toMatchObject({
      subject: `${svc.streams.subjectPrefix}.audit.customer.${c.customerId}`,
      message: {
        actorKind: "client",
        actorId: admin.clientId,
        action: "identity.disable",
        targetKind: "customer",
        targetId: c.customerId,
      },
    });

    // Disabling again changes nothing and writes nothing.
    await adminClient("grpc").disableIdentity({ customerId: c.customerId }, asAdmin());
    expect(newEvents(before, await writtenEvents(sql, c.customerId))).toHaveLength(3);
  });

  it("enabling lets the customer sign in again; the old sessions stay ended", async () => {
    const c = await signUp();
    await adminClient().disableIdentity({ customerId: c.customerId }, asAdmin());
    const before = await writtenEvents(sql, c.customerId);

    await adminClient().enableIdentity({ customerId: c.customerId }, asAdmin());

    const signedIn = await auth().authenticateCustomer({ email: c.email, password: PASSWORD });
    expect(signedIn.customerId).toBe(c.customerId);
    await expect(auth().refreshToken({ refreshToken: c.refreshToken })).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    await expect(introspect(c.accessToken)).resolves.toMatchObject({ active: false });
    const [row] = await sql`select status, disabled_at from identities where customer_id = ${c.customerId}`;
    expect(row).toEqual({ status: "active", disabled_at: null });
    const written = newEvents(before, await writtenEvents(sql, c.customerId));
    expect(types(written)).toEqual([
      "identity.v1.IdentityEnabled",
      "identity.v1.AuditRecorded",
      // The sign-in above.
      "identity.v1.CustomerAuthenticated",
    ]);
    expect(written[0]?.subject).toBe(`${svc.streams.subjectPrefix}.customer.enabled.${c.customerId}`);
    expect(written[1]?.message).toMatchObject({
      actorKind: "client",
      actorId: admin.clientId,
      action: "identity.enable",
    });

    // Enabling an active identity changes nothing and writes nothing.
    await adminClient().enableIdentity({ customerId: c.customerId }, asAdmin());
    expect(newEvents(before, await writtenEvents(sql, c.customerId))).toHaveLength(3);
  });

  it("DeleteIdentity erases the account as the operator's decision; a second call changes nothing", async () => {
    const c = await signUp();
    const before = await writtenEvents(sql, c.customerId);
    // In capitals: the same id, and the subjects (the purge's too) name it as the service writes it.
    await adminClient().deleteIdentity({ customerId: c.customerId.toUpperCase() }, asAdmin());
    const written = newEvents(before, await writtenEvents(sql, c.customerId));
    expect(types(written)).toEqual([
      "identity.v1.TokensRevoked",
      "identity.v1.CustomerDeleted",
      "identity.v1.AuditRecorded",
    ]);
    expect(written[1]?.message).toMatchObject({ customerId: c.customerId, deletedBy: DeletedBy.ADMIN });
    expect(written[2]?.message).toMatchObject({
      actorKind: "client",
      actorId: admin.clientId,
      action: "identity.delete",
      targetId: c.customerId,
    });
    expect(written[1]?.subject).toBe(`${svc.streams.subjectPrefix}.customer.deleted.${c.customerId}`);
    expect(await sql`select deleted_by from deleted_identities where customer_id = ${c.customerId}`).toEqual([
      { deleted_by: "admin" },
    ]);
    expect(await sql`select subject from stream_purges where after_event_id = ${written[1]?.eventId ?? ""}`).toEqual([
      { subject: `${svc.streams.subjectPrefix}.customer.email_verified.${c.customerId}` },
    ]);
    await expect(auth().authenticateCustomer({ email: c.email, password: PASSWORD })).rejects.toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );

    await adminClient("grpc").deleteIdentity({ customerId: c.customerId }, asAdmin());
    // Disabling or enabling what is gone: as unknown.
    await expect(adminClient().disableIdentity({ customerId: c.customerId }, asAdmin())).rejects.toMatchObject(
      rpcError("customer not found", Code.NotFound),
    );
    expect(newEvents(before, await writtenEvents(sql, c.customerId))).toHaveLength(3);
  });
});

describe("suspending a client", () => {
  it("refuses the right secret with FAILED_PRECONDITION, revokes its tokens, and is audited both ways", async () => {
    const svcClient = await serviceSignIn(auth(), svc.env, "customer:read", "customer-service");
    secrets.add("a client secret", svcClient.secret);
    const signIn = (secret = svcClient.secret) =>
      auth().authenticateClient({ clientId: svcClient.clientId, clientSecret: secret, scope: "" });
    await expect(introspect(svcClient.token)).resolves.toMatchObject({ active: true });

    // Its registration by the CLI is audited; what follows comes after it.
    const registered = await writtenEvents(sql, svcClient.clientId);
    expect(registered.map((e) => e.message.action)).toEqual(["client.create"]);
    const since = async () => newEvents(registered, await writtenEvents(sql, svcClient.clientId));
    await adminClient().disableClient({ clientId: svcClient.clientId }, asAdmin());

    await expect(signIn()).rejects.toMatchObject(rpcError("client disabled", Code.FailedPrecondition));
    await expect(signIn("not the secret at all")).rejects.toMatchObject(
      rpcError("invalid client credentials", Code.Unauthenticated),
    );
    await expect(introspect(svcClient.token)).resolves.toMatchObject({ active: false });
    const disabled = await since();
    expect(types(disabled)).toEqual(["identity.v1.TokensRevoked", "identity.v1.AuditRecorded"]);
    expect(disabled[0]?.message).toMatchObject({
      clientId: svcClient.clientId,
      reason: TokenRevocationReason.CLIENT_DISABLED,
    });
    expect(disabled[1]).toMatchObject({
      subject: `${svc.streams.subjectPrefix}.audit.client.${svcClient.clientId}`,
      message: { actorKind: "client", actorId: admin.clientId, action: "client.disable", targetKind: "client" },
    });
    // Again: nothing changes.
    await adminClient().disableClient({ clientId: svcClient.clientId }, asAdmin());
    expect(await since()).toHaveLength(2);

    await adminClient("grpc").enableClient({ clientId: svcClient.clientId }, asAdmin());
    const fresh = await signIn();
    await expect(introspect(fresh.tokens?.accessToken ?? "")).resolves.toMatchObject({ active: true });
    // Tokens revoked while it was disabled stay revoked.
    await expect(introspect(svcClient.token)).resolves.toMatchObject({ active: false });
    const enabled = (await since()).slice(2);
    expect(types(enabled)).toEqual(["identity.v1.AuditRecorded"]);
    expect(enabled[0]?.message).toMatchObject({ actorId: admin.clientId, action: "client.enable" });
    await adminClient().enableClient({ clientId: svcClient.clientId }, asAdmin());
    expect(await since()).toHaveLength(3);
  });

  it("refuses to disable the caller's own client", async () => {
    const own = await serviceSignIn(auth(), svc.env, SCOPE_IDENTITY_ADMIN, ISSUER);
    secrets.add("a client secret", own.secret);
    await expect(adminClient().disableClient({ clientId: own.clientId }, bearer(own.token))).rejects.toMatchObject(
      rpcError("a client cannot disable itself", Code.PermissionDenied),
    );
    expect(await sql`select disabled_at from clients where client_id = ${own.clientId}`).toEqual([
      { disabled_at: null },
    ]);
    // Only its registration.
    expect((await writtenEvents(sql, own.clientId)).map((e) => e.message.action)).toEqual(["client.create"]);
  });
});

describe("the CLI", () => {
  const operator = () => {
    try {
      return userInfo().username;
    } catch {
      return `uid:${process.getuid?.()}`;
    }
  };

  it("identities disable, enable and delete run the same operations, audited as the operating-system user", async () => {
    const c = await signUp();
    const before = (await writtenEvents(sql, c.customerId)).length;
    await expect(identityCli(svc.env, "identities", "disable", c.customerId)).resolves.toEqual({
      code: 0,
      out: [`disabled ${c.customerId}; its sessions are revoked`],
    });
    await expect(auth().authenticateCustomer({ email: c.email, password: PASSWORD })).rejects.toMatchObject(
      rpcError("account disabled", Code.FailedPrecondition),
    );
    await expect(identityCli(svc.env, "identities", "disable", c.customerId)).resolves.toEqual({
      code: 0,
      out: [`${c.customerId} was disabled already; nothing changed`],
    });
    expect((await identityCli(svc.env, "identities", "enable", c.customerId)).code).toBe(0);
    expect((await identityCli(svc.env, "identities", "delete", c.customerId)).code).toBe(0);
    const written = (await writtenEvents(sql, c.customerId)).slice(before);
    const audits = written.filter((e) => e.type === "identity.v1.AuditRecorded").map((e) => e.message);
    expect(audits).toMatchObject([
      {
        actorKind: "cli",
        actorId: operator(),
        action: "identity.disable",
        targetKind: "customer",
        targetId: c.customerId,
      },
      { actorKind: "cli", actorId: operator(), action: "identity.enable" },
      { actorKind: "cli", actorId: operator(), action: "identity.delete" },
    ]);
    expect(written.find((e) => e.type === "identity.v1.CustomerDeleted")?.message).toMatchObject({
      deletedBy: DeletedBy.ADMIN,
    });
    // Gone now: a second delete changes nothing; disabling it, or an id that never existed, fails.
    await expect(identityCli(svc.env, "identities", "delete", c.customerId)).resolves.toEqual({
      code: 0,
      out: [`${c.customerId} was deleted already; nothing changed`],
    });
    await expect(identityCli(svc.env, "identities", "disable", randomUUID())).rejects.toThrow(/^no customer "/);
    await expect(identityCli(svc.env, "identities", "delete", "not-a-uuid")).rejects.toThrow(
      "customer id must be a UUID",
    );
  });

  it("clients create, disable and enable are audited as the operating-system user", async () => {
    const svcClient = await serviceSignIn(auth(), svc.env, "customer:read", "customer-service");
    secrets.add("a client secret", svcClient.secret);
    expect((await identityCli(svc.env, "clients", "disable", svcClient.clientId)).code).toBe(0);
    await expect(
      auth().authenticateClient({ clientId: svcClient.clientId, clientSecret: svcClient.secret, scope: "" }),
    ).rejects.toMatchObject(rpcError("client disabled", Code.FailedPrecondition));
    await expect(identityCli(svc.env, "clients", "enable", svcClient.clientId)).resolves.toEqual({
      code: 0,
      out: [`enabled ${svcClient.clientId}; its earlier tokens stay revoked`],
    });
    await expect(
      auth().authenticateClient({ clientId: svcClient.clientId, clientSecret: svcClient.secret, scope: "" }),
    ).resolves.toMatchObject({ tokens: { tokenType: "Bearer" } });
    const audits = (await writtenEvents(sql, svcClient.clientId))
      .filter((e) => e.type === "identity.v1.AuditRecorded")
      .map((e) => e.message);
    expect(audits).toMatchObject([
      { actorKind: "cli", actorId: operator(), action: "client.create", targetId: svcClient.clientId },
      {
        actorKind: "cli",
        actorId: operator(),
        action: "client.disable",
        targetKind: "client",
        targetId: svcClient.clientId,
      },
      {
        actorKind: "cli",
        actorId: operator(),
        action: "client.enable",
        targetKind: "client",
        targetId: svcClient.clientId,
      },
    ]);
    await expect(identityCli(svc.env, "clients", "enable", "svc-nobody")).rejects.toThrow('no client "svc-nobody"');
  });
});
