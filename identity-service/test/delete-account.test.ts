/**
 * DeleteAccount: the customer erases their own account, proven by the
 * current password (a wrong one is counted with sign-ins and deletes
 * nothing). What goes in its one transaction: the identity (a tombstone of
 * ids stays), sessions (TokensRevoked, reason ACCOUNT_DELETED) and refresh
 * tokens, codes, mail queued to its address, the login throttle of its
 * email; what it writes: CustomerDeleted (ids only), AuditRecorded, and a
 * purge of its `customer.email_verified` subject to run once CustomerDeleted
 * is published. Afterwards the email signs in as an unknown one does, and
 * the tokens are refused.
 */
import { createHash, randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { DeletedBy, TokenRevocationReason } from "@customer-platform/gen/identity/v1/events_pb.js";
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { decodeJwt } from "jose";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { bearer, CORE_PROTOCOLS, type CoreProtocol, rpcError } from "../../test/support/clients.js";
import {
  newEvents,
  SCOPE_IDENTITY_ADMIN,
  type ServiceClient,
  serviceSignIn,
  writtenEvents,
} from "../../test/support/identity-admin.js";
import { signUpByMail } from "../../test/support/mailbox.js";
import { createSecretScanner } from "../../test/support/secrets.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { waitForStream } from "../../test/support/streams.js";

const ISSUER = "https://identity.test";
const PASSWORD = "correct horse battery staple";

let svc: RunningIdentityService;
let sql: postgres.Sql;
let admin: ServiceClient & { token: string };
let introspector: ServiceClient & { token: string };
let nc: NatsConnection;
let jsm: JetStreamManager;

const secrets = createSecretScanner();

beforeAll(async () => {
  // A block after the free attempts lasts beyond the test: RESOURCE_EXHAUSTED is deterministic.
  svc = await startIdentityService({ IDENTITY_THROTTLE_BASE_DELAY_MS: "60000" });
  sql = svc.database.sql;
  nc = await connect({ servers: svc.natsUrl });
  jsm = await jetstreamManager(nc);
  await waitForStream(jsm, svc.streams.stream);
  admin = await serviceSignIn(auth(), svc.env, SCOPE_IDENTITY_ADMIN, ISSUER);
  introspector = await serviceSignIn(auth(), svc.env, "identity:introspect", ISSUER);
  secrets.add("a client secret", admin.secret, introspector.secret);
});

afterAll(async () => {
  secrets.close();
  await nc?.close();
  await svc?.close();
});

afterEach(async () => {
  await secrets.addStored(sql);
  secrets.expectClean({ identity: svc.logs.lines });
});

const auth = (protocol: CoreProtocol = "connect-http1") => svc.clients.client(AuthService, protocol);
const introspect = (token: string) => auth().introspectToken({ token }, bearer(introspector.token));

async function signUp() {
  const email = `erase.${randomUUID().slice(0, 8)}@example.com`;
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

/** The login throttle row of an email (throttle.ts keys it by a SHA-256 of `login:<email>`). */
const throttleRows = (email: string) =>
  sql`select failures from login_throttles
    where key = ${createHash("sha256").update(`login:${email}`, "utf8").digest()}`;

/** Everything stored about a customer that the erasure removes. */
async function stored(customerId: string, email: string) {
  const [row] = await sql`select
    (select count(*)::int from identities where customer_id = ${customerId}) as identities,
    (select count(*)::int from refresh_tokens where customer_id = ${customerId}) as refresh_tokens,
    (select count(*)::int from one_time_codes where customer_id = ${customerId}) as codes,
    (select count(*)::int from mail_outbox where lower(recipient) = ${email} and sent_at is null) as queued_mail,
    (select count(*)::int from deleted_identities where customer_id = ${customerId}) as tombstones`;
  return row;
}

describe.each(CORE_PROTOCOLS)("DeleteAccount over %s", (protocol) => {
  it("with a wrong password: UNAUTHENTICATED, counted with sign-ins, and nothing deleted", async () => {
    const c = await signUp();
    const before = { stored: await stored(c.customerId, c.email), events: await writtenEvents(sql, c.customerId) };
    await expect(
      auth(protocol).deleteAccount({ currentPassword: "not the password" }, bearer(c.accessToken)),
    ).rejects.toMatchObject(rpcError("current password is wrong", Code.Unauthenticated));
    expect(await stored(c.customerId, c.email)).toEqual(before.stored);
    expect(await writtenEvents(sql, c.customerId)).toEqual(before.events);
    expect(await throttleRows(c.email)).toEqual([{ failures: 1 }]);
    await expect(introspect(c.accessToken)).resolves.toMatchObject({ active: true });
  });

  it("without a customer token for the identity service: UNAUTHENTICATED or PERMISSION_DENIED", async () => {
    const c = await signUp();
    await expect(auth(protocol).deleteAccount({ currentPassword: PASSWORD })).rejects.toMatchObject(
      rpcError("missing bearer token", Code.Unauthenticated),
    );
    await expect(
      auth(protocol).deleteAccount({ currentPassword: PASSWORD }, bearer(admin.token)),
    ).rejects.toMatchObject(rpcError("only a customer token can delete an account", Code.PermissionDenied));
    // A token for the customer service only is not one for the identity service's own RPCs.
    const narrow = await auth().authenticateCustomer({
      email: c.email,
      password: PASSWORD,
      audience: ["customer-service"],
    });
    await expect(
      auth(protocol).deleteAccount({ currentPassword: PASSWORD }, bearer(narrow.tokens?.accessToken ?? "")),
    ).rejects.toMatchObject({ code: Code.Unauthenticated });
    await expect(auth(protocol).deleteAccount({ currentPassword: "" }, bearer(c.accessToken))).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
    expect(await stored(c.customerId, c.email)).toMatchObject({ identities: 1, tombstones: 0 });
  });

  it("with the right password: the account is erased in one go, ids only in the events", async () => {
    const c = await signUp();
    const sid = decodeJwt(c.accessToken).sid;
    // A second session, a failed sign-in on the throttle, and a mail still queued to the address.
    const second = await auth().authenticateCustomer({ email: c.email, password: PASSWORD });
    await expect(auth().authenticateCustomer({ email: c.email, password: "wrong" })).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    await sql`insert into mail_outbox (id, recipient, template, locale, data, next_attempt_at)
      values (${randomUUID()}, ${c.email}, 'password-changed', 'en', '{}'::jsonb, now() + interval '1 day')`;
    const bystander = `bystander.${randomUUID().slice(0, 8)}@example.com`;
    await sql`insert into mail_outbox (id, recipient, template, locale, data, next_attempt_at)
      values (${randomUUID()}, ${bystander}, 'password-changed', 'en', '{}'::jsonb, now() + interval '1 day')`;
    expect(await stored(c.customerId, c.email)).toMatchObject({ identities: 1, refresh_tokens: 2, queued_mail: 1 });
    expect(await throttleRows(c.email)).toEqual([{ failures: 1 }]);
    const before = await writtenEvents(sql, c.customerId);

    await expect(auth(protocol).deleteAccount({ currentPassword: PASSWORD }, bearer(c.accessToken))).resolves.toEqual(
      expect.objectContaining({}),
    );

    expect(await stored(c.customerId, c.email)).toEqual({
      identities: 0,
      refresh_tokens: 0,
      codes: 0,
      queued_mail: 0,
      tombstones: 1,
    });
    expect(await sql`select deleted_by from deleted_identities where customer_id = ${c.customerId}`).toEqual([
      { deleted_by: "customer" },
    ]);
    expect(await sql`select count(*)::int as n from mail_outbox where recipient = ${bystander}`).toEqual([{ n: 1 }]);
    expect(await throttleRows(c.email)).toEqual([]);

    const written = newEvents(before, await writtenEvents(sql, c.customerId));
    expect(written.map((e) => e.type)).toEqual([
      "identity.v1.TokensRevoked",
      "identity.v1.CustomerDeleted",
      "identity.v1.AuditRecorded",
    ]);
    const [revoked, deleted, audit] = written;
    expect(revoked?.message).toMatchObject({ reason: TokenRevocationReason.ACCOUNT_DELETED });
    expect(new Set(revoked?.message.sessionIds as string[])).toEqual(
      new Set([sid, decodeJwt(second.tokens?.accessToken ?? "").sid]),
    );
    expect(deleted).toMatchObject({
      subject: `${svc.streams.subjectPrefix}.customer.deleted.${c.customerId}`,
      message: { customerId: c.customerId, deletedBy: DeletedBy.CUSTOMER },
    });
    expect(audit).toMatchObject({
      subject: `${svc.streams.subjectPrefix}.audit.customer.${c.customerId}`,
      message: {
        actorKind: "customer",
        actorId: c.customerId,
        action: "identity.delete",
        targetKind: "customer",
        targetId: c.customerId,
      },
    });
    // Ids only: no event of the erasure holds the address, in any case.
    for (const e of written) {
      const text = Buffer.from(e.payload).toString("latin1").toLowerCase();
      expect(text, e.type).not.toContain(c.email.split("@")[0]);
      expect(text, e.type).not.toContain("@example.com");
    }
    // The identity stream's copy of the email is purged once CustomerDeleted is published.
    expect(
      await sql`select stream, subject, after_event_id, done_at is null as pending from stream_purges
        where subject like ${`%.${c.customerId}`}`,
    ).toMatchObject([
      {
        stream: svc.streams.stream,
        subject: `${svc.streams.subjectPrefix}.customer.email_verified.${c.customerId}`,
        after_event_id: deleted?.eventId,
      },
    ]);

    // Afterwards: the email is as unknown, the tokens are refused.
    await expect(auth().authenticateCustomer({ email: c.email, password: PASSWORD })).rejects.toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );
    await expect(auth().refreshToken({ refreshToken: c.refreshToken })).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    await expect(introspect(c.accessToken)).resolves.toMatchObject({ active: false });
    await expect(introspect(c.refreshToken)).resolves.toMatchObject({ active: false });
    await expect(auth().deleteAccount({ currentPassword: PASSWORD }, bearer(c.accessToken))).rejects.toMatchObject(
      rpcError("access token revoked", Code.Unauthenticated),
    );

    // An operator deleting it again: success, nothing written.
    await svc.clients.client(AdminService, protocol).deleteIdentity({ customerId: c.customerId }, bearer(admin.token));
    expect(newEvents(before, await writtenEvents(sql, c.customerId))).toHaveLength(3);
    expect(await sql`select count(*)::int as n from stream_purges where subject like ${`%.${c.customerId}`}`).toEqual([
      { n: 1 },
    ]);
  });
});

it("counts wrong passwords with sign-ins: after the free attempts even the right one is RESOURCE_EXHAUSTED", async () => {
  const c = await signUp();
  for (let i = 0; i < 5; i++) {
    await expect(
      auth().deleteAccount({ currentPassword: `wrong password ${i}` }, bearer(c.accessToken)),
    ).rejects.toMatchObject(rpcError("current password is wrong", Code.Unauthenticated));
  }
  await expect(auth().deleteAccount({ currentPassword: PASSWORD }, bearer(c.accessToken))).rejects.toMatchObject({
    code: Code.ResourceExhausted,
  });
  // One counter: sign-in is blocked too.
  await expect(auth().authenticateCustomer({ email: c.email, password: PASSWORD })).rejects.toMatchObject({
    code: Code.ResourceExhausted,
  });
  expect(await stored(c.customerId, c.email)).toMatchObject({ identities: 1, tombstones: 0 });
});

/** How many messages the identity stream holds on `subject`. */
async function inStream(subject: string): Promise<number> {
  const info = await jsm.streams.info(svc.streams.stream, { subjects_filter: subject });
  return info.state.subjects?.[subject] ?? 0;
}

it("purges the customer's verified email from the identity stream once CustomerDeleted is published", async () => {
  const c = await signUp();
  const other = await signUp();
  const verified = (id: string) => `${svc.streams.subjectPrefix}.customer.email_verified.${id}`;
  await expect.poll(() => inStream(verified(c.customerId))).toBe(1);
  await expect.poll(() => inStream(verified(other.customerId))).toBe(1);

  await auth().deleteAccount({ currentPassword: PASSWORD }, bearer(c.accessToken));

  await expect
    .poll(() => sql`select done_at is not null as done from stream_purges where subject = ${verified(c.customerId)}`)
    .toEqual([{ done: true }]);
  expect(await inStream(verified(c.customerId))).toBe(0);
  // The tombstone stays, and nobody else's events go.
  expect(await inStream(`${svc.streams.subjectPrefix}.customer.deleted.${c.customerId}`)).toBe(1);
  expect(await inStream(verified(other.customerId))).toBe(1);
});

it("drops the customer's CustomerEmailVerified events from the outbox, waiting or published, and only those", async () => {
  const c = await signUp();
  const other = await signUp();
  const published = await signUp();
  // The file's last test: the relay stops, so what is unsent stays so (a relay elsewhere would publish them).
  await svc.server.relay.stop({ flush: true });
  const pending = await sql<{ id: string }[]>`update outbox set published_at = null
    where type = 'identity.v1.CustomerEmailVerified' and ce_subject in (${c.customerId}, ${other.customerId})
    returning id`;
  expect(pending).toHaveLength(2);
  await auth().deleteAccount({ currentPassword: PASSWORD }, bearer(c.accessToken));
  expect(
    await sql`select ce_subject from outbox where type = 'identity.v1.CustomerEmailVerified'
      and ce_subject in (${c.customerId}, ${other.customerId})`,
  ).toEqual([{ ce_subject: other.customerId }]);
  // A published one carries the email as well; the stream's copy is purged, the outbox's deleted.
  await auth().deleteAccount({ currentPassword: PASSWORD }, bearer(published.accessToken));
  expect(
    await sql`select count(*)::int as n from outbox where type = 'identity.v1.CustomerEmailVerified'
      and ce_subject = ${published.customerId}`,
  ).toEqual([{ n: 0 }]);
});
