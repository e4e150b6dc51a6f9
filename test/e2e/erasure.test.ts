/**
 * Erasure end to end, across both services and their streams, on a private
 * NATS server both services reach through a TCP proxy the test can cut (an
 * outage as the services see it): a customer deletes their account (or
 * an operator does); the profile is erased in the customer service's
 * database, the customer's personal data is purged from both streams, the
 * tombstones (CustomerDeleted, CustomerErased) carry ids only, tokens and
 * sign-in are refused, and the example read model drops the customer. The
 * same with NATS down during the deletion and back later, and the same twice.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { CustomerDeletedSchema, DeletedBy } from "@customer-platform/gen/identity/v1/events_pb.js";
import type { EventConsumer } from "@customer-platform/sdk";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readCustomer, startReadModel } from "../../examples/read-model/read-model.js";
import { bearer, failure } from "../support/clients.js";
import { verifierFor } from "../support/events.js";
import { type PrivateNats, startPrivateNats } from "../support/nats.js";
import { type Platform, type SignedUp, startPlatform } from "../support/platform.js";
import { connectSql, createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { waitForStream } from "../support/streams.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { until } from "../support/timing.js";

const PASSWORD = "correct horse battery staple";

let nats: PrivateNats;
/** Between both services and NATS: cut() is an outage as the services see it. */
let proxy: TcpProxy;
let platform: Platform;
let nc: NatsConnection;
let jsm: JetStreamManager;
let readDb: TestDatabase;
let sql: postgres.Sql;
let readModel: EventConsumer;

beforeAll(async () => {
  nats = await startPrivateNats();
  const target = new URL(nats.url);
  proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port) });
  platform = await startPlatform({ natsUrl: proxy.rewrite(nats.url) });
  nc = await connect({ servers: nats.url, reconnectTimeWait: 100, maxReconnectAttempts: -1 });
  jsm = await jetstreamManager(nc);
  await waitForStream(jsm, platform.customer.streams.stream);
  await waitForStream(jsm, platform.identity.streams.stream);
  readDb = await createTestDatabase("erasure_read_model");
  sql = connectSql(readDb.url, 2);
  readModel = await startReadModel({
    sql,
    js: jetstream(nc),
    stream: platform.customer.streams.stream,
    consumer: "erasure-read-model",
    verifier: verifierFor("customer-service", platform.customer.url),
  });
}, 60_000);

afterAll(async () => {
  await readModel?.stop();
  await sql?.end();
  await readDb?.drop();
  await nc?.close();
  await platform?.close();
  await proxy?.close();
  await nats?.stop();
});

const customerPrefix = () => platform.customer.streams.subjectPrefix;
const identityPrefix = () => platform.identity.streams.subjectPrefix;

/** Messages on `subject` in `stream` now. */
async function countOn(stream: string, subject: string): Promise<number> {
  const info = await jsm.streams.info(stream, { subjects_filter: subject });
  return info.state.subjects?.[subject] ?? 0;
}

/** A customer with a profile changed once, known to the read model; tokens for both services. */
async function profiledCustomer(label: string): Promise<SignedUp> {
  const c = await platform.newCustomer(PASSWORD, label, ["customer-service", platform.issuer]);
  await platform
    .customers()
    .updateCustomer(
      { customer: { customerId: c.customerId, givenName: "Augusta" }, updateMask: { paths: ["given_name"] } },
      bearer(c.accessToken),
    );
  await until("the read model holds the customer", async () => (await readCustomer(sql, c.customerId))?.version === 2n);
  return c;
}

/** Everything erasure promises, checked once the platform settled. */
async function expectErased(c: SignedUp, deletedBy: DeletedBy, timeoutMs = 30_000) {
  const id = c.customerId;
  const customerStream = platform.customer.streams.stream;
  const identityStream = platform.identity.streams.stream;
  await until(
    "the profile is erased",
    async () => (await platform.customer.database.sql`select 1 from customers where customer_id = ${id}`).length === 0,
    timeoutMs,
  );
  await until(
    "the customer's events are purged from the customer stream",
    async () =>
      (await countOn(customerStream, `${customerPrefix()}.registered.${id}`)) +
        (await countOn(customerStream, `${customerPrefix()}.updated.${id}`)) ===
      0,
    timeoutMs,
  );
  await until(
    "the verified email is purged from the identity stream",
    async () => (await countOn(identityStream, `${identityPrefix()}.customer.email_verified.${id}`)) === 0,
    timeoutMs,
  );
  expect(await countOn(customerStream, `${customerPrefix()}.erased.${id}`)).toBe(1);
  expect(await countOn(identityStream, `${identityPrefix()}.customer.deleted.${id}`)).toBe(1);
  // The tombstone carries ids only.
  const tombstone = await jsm.streams.getMessage(identityStream, {
    last_by_subj: `${identityPrefix()}.customer.deleted.${id}`,
  });
  const deleted = fromBinary(CustomerDeletedSchema, tombstone?.data ?? new Uint8Array());
  expect(deleted).toMatchObject({ customerId: id, deletedBy });
  expect(Buffer.from(tombstone?.data ?? []).toString("latin1")).not.toContain(c.email);
  // What stays in the customer service: the erasure's date, by id.
  expect(await platform.customer.database.sql`select customer_id from erasures where customer_id = ${id}`).toHaveLength(
    1,
  );
  expect(await platform.customer.database.sql`select 1 from verified_emails where customer_id = ${id}`).toHaveLength(0);
  // Tokens issued before are refused (TokensRevoked), and so is the password.
  await until(
    "the access token is refused",
    async () =>
      (await failure(platform.customers().getCustomer({ customerId: id }, bearer(c.accessToken))))?.code ===
      Code.Unauthenticated,
    15_000,
  );
  expect(await failure(platform.auth().authenticateCustomer({ email: c.email, password: PASSWORD }))).toMatchObject({
    code: Code.Unauthenticated,
  });
  expect(await failure(platform.auth().refreshToken({ refreshToken: c.refreshToken }))).toMatchObject({
    code: Code.Unauthenticated,
  });
  // The example read model dropped the customer on the tombstone.
  await until("the read model dropped the customer", async () => (await readCustomer(sql, id)) === undefined, 15_000);
}

/** The admin client: a service token with identity:admin for the identity service. */
async function adminToken(): Promise<string> {
  return platform.serviceToken("identity:admin", platform.issuer);
}

describe("erasure across both services and the streams", () => {
  it("a customer deletes their account: profile, stream data and read model are gone, tokens and sign-in refused", async () => {
    const c = await profiledCustomer("self");
    await platform.identity.clients
      .client(AuthService)
      .deleteAccount({ currentPassword: PASSWORD }, bearer(c.accessToken));
    await expectErased(c, DeletedBy.CUSTOMER);
  });

  it("the same with NATS down during the deletion and back later", async () => {
    const c = await profiledCustomer("outage");
    proxy.cut();
    try {
      await platform.identity.clients
        .client(AuthService)
        .deleteAccount({ currentPassword: PASSWORD }, bearer(c.accessToken));
      // Erased where NATS is not needed: the credentials.
      expect(await failure(platform.auth().authenticateCustomer({ email: c.email, password: PASSWORD }))).toMatchObject(
        { code: Code.Unauthenticated },
      );
    } finally {
      proxy.restore();
    }
    // The identity service publishes the tombstone and then erases the customer's email events while
    // the customer service may not have pulled it yet: the erasure must not move its consumer past it
    // (NATS 2.9's filtered purge did, and the profile was never erased).
    await expectErased(c, DeletedBy.CUSTOMER);
  }, 60_000);

  it("an operator deletes an account, twice: one tombstone each, nothing more", async () => {
    const c = await profiledCustomer("admin");
    const admin = platform.identity.clients.client(AdminService);
    const token = await adminToken();
    await admin.deleteIdentity({ customerId: c.customerId }, bearer(token));
    await expectErased(c, DeletedBy.ADMIN);
    await admin.deleteIdentity({ customerId: c.customerId }, bearer(token));
    await new Promise((r) => setTimeout(r, 1_000));
    expect(
      await countOn(platform.identity.streams.stream, `${identityPrefix()}.customer.deleted.${c.customerId}`),
    ).toBe(1);
    expect(await countOn(platform.customer.streams.stream, `${customerPrefix()}.erased.${c.customerId}`)).toBe(1);
  }, 60_000);

  it("refuses deletion and suspension without an admin token", async () => {
    const c = await platform.newCustomer(PASSWORD, "guarded", ["customer-service", platform.issuer]);
    const admin = platform.identity.clients.client(AdminService);
    expect(await failure(admin.deleteIdentity({ customerId: c.customerId }))).toMatchObject({
      code: Code.Unauthenticated,
    });
    expect(await failure(admin.disableIdentity({ customerId: c.customerId }, bearer(c.accessToken)))).toMatchObject({
      code: Code.PermissionDenied,
    });
    const reader = await platform.serviceToken("customer:read", platform.issuer);
    expect(await failure(admin.deleteIdentity({ customerId: c.customerId }, bearer(reader)))).toMatchObject({
      code: Code.PermissionDenied,
    });
    // Still there.
    await platform.auth().authenticateCustomer({ email: c.email, password: PASSWORD });
  });
});
