/**
 * Erasure: on identity.v1.CustomerDeleted (signed by the identity service,
 * consumed durably with the verified emails) the customer service erases the
 * profile and its verified email, records a tombstone, publishes one
 * customer.v1.CustomerErased and purges the customer's registered and
 * updated subjects from its stream; once, however often the event comes,
 * also after a NATS outage; the profile cannot be registered again; a forged
 * deletion erases nothing.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { CustomerErasedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { CustomerDeletedSchema, DeletedBy } from "@customer-platform/gen/identity/v1/events_pb.js";
import { openServiceDatabase } from "@customer-platform/runtime/service-host";
import { customerSubjects } from "@customer-platform/sdk/subjects";
import type { JetStreamManager } from "@nats-io/jetstream";
import { nanos } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, rpcError } from "../../test/support/clients.js";
import { startTestEventKeys } from "../../test/support/events.js";
import {
  type CutOffService,
  type IdentityFeed,
  type PublishOptions,
  startCutOffService,
  startIdentityFeed,
} from "../../test/support/identity-feed.js";
import type { TestIssuer } from "../../test/support/issuer.js";
import type { StreamNames } from "../../test/support/nats.js";
import { createTestDatabase } from "../../test/support/postgres.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";
import { sleep, until } from "../../test/support/timing.js";
import { customerDatabase } from "../src/database.js";
import { eraseCustomer } from "../src/erasure.js";
import { customerRegistered } from "../src/events.js";
import { IDENTITY_EVENT_ACK_WAIT_MS } from "../src/identity-events.js";
import { customerOutbox } from "../src/outbox.js";

const DURABLE = "customer-service-identity";
/** The consumer's first event waits for the identity service's keys to be fetched. */
const POLL = { timeout: 15_000 };

let feed: IdentityFeed;
let issuer: TestIssuer;
let identity: StreamNames;
let svc: RunningCustomerService;
let jsm: JetStreamManager;

beforeAll(async () => {
  feed = await startIdentityFeed();
  ({ issuer, streams: identity, jsm } = feed);
  svc = await startCustomerService(feed.env(), { identityStreams: identity });
});

afterAll(async () => {
  await svc?.close();
  await feed?.close();
});

/** Publishes a CustomerDeleted as the identity service does; resolves with its stream sequence. */
function publishDeleted(customerId: string, opts: PublishOptions = {}): Promise<number> {
  const fields = { deletedBy: DeletedBy.CUSTOMER };
  return feed.publish(CustomerDeletedSchema, customerId, fields, (s) => s.customerDeleted(customerId), opts);
}

/** Waits until the service's durable consumer has settled every event up to stream sequence `seq`. */
const consumed = (seq: number, streams: StreamNames = identity, durable = DURABLE, timeoutMs?: number) =>
  feed.consumed(seq, durable, streams, timeoutMs);

const profile = { givenName: "Ada", familyName: "Lovelace" };

/** A registered customer whose profile was also updated: events on both subjects. */
async function registeredAndUpdated(service: RunningCustomerService) {
  const id = crypto.randomUUID();
  const token = await issuer.customer(id);
  const client = service.clients.client(CustomerService);
  await client.registerCustomer(profile, bearer(token));
  await client.updateCustomer(
    { customer: { customerId: id, givenName: "Augusta" }, updateMask: { paths: ["given_name"] } },
    bearer(token),
  );
  const subjects = customerSubjects(service.streams.subjectPrefix);
  await until("both events in the stream", async () => {
    const counts = await subjectCounts(service, id);
    return counts[subjects.registered(id)] === 1 && counts[subjects.updated(id)] === 1;
  });
  return { id, token };
}

/** Messages per subject of the customer's, in the service's stream. */
async function subjectCounts(service: RunningCustomerService, id: string): Promise<Record<string, number>> {
  const info = await jsm.streams
    .info(service.streams.stream, { subjects_filter: `${service.streams.subjectPrefix}.*.${id}` })
    .catch(() => undefined);
  return { ...(info?.state.subjects ?? {}) };
}

/** What the service holds of the customer. */
async function held(service: RunningCustomerService, id: string) {
  const sql = service.database.sql;
  const [row] = await sql<[{ profiles: number; emails: number; erasures: number; purges: number; done: number }]>`
    select (select count(*)::int from customers where customer_id = ${id}) as profiles,
           (select count(*)::int from verified_emails where customer_id = ${id}) as emails,
           (select count(*)::int from erasures where customer_id = ${id}) as erasures,
           (select count(*)::int from stream_purges where subject like ${`%.${id}`}) as purges,
           (select count(*)::int from stream_purges where subject like ${`%.${id}`} and done_at is not null) as done`;
  return row;
}

/** The customer's state once erased: nothing held but the tombstone, two purges done, only the CustomerErased left. */
async function expectErased(service: RunningCustomerService, id: string) {
  await until("the purges are done", async () => (await held(service, id)).done === 2, POLL.timeout);
  expect(await held(service, id)).toEqual({ profiles: 0, emails: 0, erasures: 1, purges: 2, done: 2 });
  const subjects = customerSubjects(service.streams.subjectPrefix);
  expect(await subjectCounts(service, id)).toEqual({ [subjects.erased(id)]: 1 });
  const erased = await jsm.streams.getMessage(service.streams.stream, { last_by_subj: subjects.erased(id) });
  expect(erased?.header.get("ce-type")).toBe(CustomerErasedSchema.typeName);
  expect(fromBinary(CustomerErasedSchema, erased?.data ?? new Uint8Array())).toMatchObject({ customerId: id });
}

describe("on CustomerDeleted", () => {
  it("erases the profile and verified email, publishes one CustomerErased and purges the customer's subjects", async () => {
    const { id } = await registeredAndUpdated(svc);
    const other = await registeredAndUpdated(svc);
    await consumed(await publishDeleted(id));
    await expectErased(svc, id);
    // Another customer keeps everything.
    expect(Object.values(await subjectCounts(svc, other.id))).toEqual([1, 1]);
    expect(await held(svc, other.id)).toEqual({ profiles: 1, emails: 1, erasures: 0, purges: 0, done: 0 });
  });

  it("changes nothing when the deletion comes again", async () => {
    const { id } = await registeredAndUpdated(svc);
    await consumed(await publishDeleted(id));
    await expectErased(svc, id);
    const [before] = await svc.database.sql`select erased_at from erasures where customer_id = ${id}`;
    const outboxRows = async () =>
      (await svc.database.sql`select count(*)::int as n from outbox where ce_subject = ${id}`)[0]?.n;
    const rowsBefore = await outboxRows();

    await consumed(await publishDeleted(id));
    await expectErased(svc, id);
    expect((await svc.database.sql`select erased_at from erasures where customer_id = ${id}`)[0]).toEqual(before);
    expect(await outboxRows()).toBe(rowsBefore);
  });

  it("refuses to register the erased customer again, with a token still alive or a new one", async () => {
    const { id, token } = await registeredAndUpdated(svc);
    await consumed(await publishDeleted(id));
    await expectErased(svc, id);
    const client = svc.clients.client(CustomerService);
    const refused = rpcError("account deleted", Code.FailedPrecondition);
    await expect(client.registerCustomer(profile, bearer(token))).rejects.toMatchObject(refused);
    await expect(client.registerCustomer(profile, bearer(await issuer.customer(id)))).rejects.toMatchObject(refused);
    // A token without an email claim takes the other path (reading the stored email): refused too.
    await expect(client.registerCustomer(profile, bearer(await issuer.issue({ sub: id })))).rejects.toMatchObject(
      refused,
    );
    expect(await held(svc, id)).toMatchObject({ profiles: 0, emails: 0 });
  });

  it("erases nothing on a deletion the identity service did not sign", async () => {
    const { id, token } = await registeredAndUpdated(svc);
    const stranger = await startTestEventKeys();
    try {
      await publishDeleted(id, { signer: null });
      await consumed(await publishDeleted(id, { signer: stranger.signer }));
    } finally {
      await stranger.close();
    }
    expect(await held(svc, id)).toEqual({ profiles: 1, emails: 1, erasures: 0, purges: 0, done: 0 });
    expect(Object.values(await subjectCounts(svc, id))).toEqual([1, 1]);
    await expect(
      svc.clients.client(CustomerService).getCustomer({ customerId: id }, bearer(token)),
    ).resolves.toMatchObject({ customer: { customerId: id } });
  });
});

describe("while NATS is unreachable", () => {
  let cutOff: CutOffService;
  const durable = "identity-outage";

  beforeAll(async () => {
    cutOff = await startCutOffService(feed, durable);
  });

  afterAll(async () => {
    await cutOff?.close();
  });

  it("erases once NATS is back, once", async () => {
    const { id } = await registeredAndUpdated(cutOff.service);
    await cutOff.bound();
    // What an event handed to a pull the cut leaves behind waits for before it comes again.
    expect((await jsm.consumers.info(cutOff.streams.stream, durable)).config.ack_wait).toBe(
      nanos(IDENTITY_EVENT_ACK_WAIT_MS),
    );

    cutOff.proxy.cut();
    await publishDeleted(id, { streams: cutOff.streams });
    const last = await publishDeleted(id, { streams: cutOff.streams });
    // Long enough for a connected consumer to have applied them (it pulls every second at most).
    await sleep(2_000);
    expect(await held(cutOff.service, id)).toMatchObject({ profiles: 1, erasures: 0 });
    cutOff.proxy.restore();

    // An event handed to a pull the cut left behind comes again after the ack wait (10 s).
    await consumed(last, cutOff.streams, durable, 30_000);
    await expectErased(cutOff.service, id);
  });
});

describe("eraseCustomer", () => {
  it("drops the customer's profile events from the outbox with the profile, and purges after the tombstone", async () => {
    const testDb = await createTestDatabase("erasure");
    const database = await openServiceDatabase(
      {
        database: {
          url: testDb.url,
          variable: "CUSTOMER_DATABASE_URL",
          statementTimeoutMs: 30_000,
          idleInTransactionTimeoutMs: 60_000,
        },
      },
      customerDatabase,
      { name: "erasure-test" },
    );
    try {
      const events = customerOutbox({ stream: "CUSTOMER_T", subjectPrefix: "t.customer" });
      const deps = { db: database.db, events, now: () => new Date() };
      const id = crypto.randomUUID();
      const other = crypto.randomUUID();
      const now = new Date();
      const registered = (customerId: string) =>
        customerRegistered(events, { customerId } as Parameters<typeof customerRegistered>[1], now);
      for (const customerId of [id, other]) {
        await testDb.sql`insert into customers (customer_id, email, given_name, family_name, address, version, create_time, update_time)
          values (${customerId}, ${`${customerId}@example.com`}, 'Ada', 'Lovelace', null, 1, now(), now())`;
        const e = registered(customerId);
        await testDb.sql`insert into outbox (event_id, subject, type, source, ce_subject, payload, occur_time)
          values (${e.eventId}, ${e.subject}, ${e.type}, ${e.source}, ${e.ceSubject}, ${Buffer.from(e.payload)}, now())`;
      }
      // One of them published already (kept a week for inspection, but it carries the profile).
      await testDb.sql`update outbox set published_at = now() where ce_subject = ${id}`;
      const pending = registered(id);
      await testDb.sql`insert into outbox (event_id, subject, type, source, ce_subject, payload, occur_time)
        values (${pending.eventId}, ${pending.subject}, ${pending.type}, ${pending.source}, ${pending.ceSubject},
          ${Buffer.from(pending.payload)}, now())`;

      expect(await eraseCustomer(deps, id)).toBe("erased");
      expect(await eraseCustomer(deps, id)).toBe("already erased");

      const rows = await testDb.sql<{ type: string; ce_subject: string; event_id: string }[]>`
        select type, ce_subject, event_id::text from outbox order by id`;
      expect(rows.map((r) => [r.type, r.ce_subject])).toEqual([
        ["customer.v1.CustomerRegistered", other],
        ["customer.v1.CustomerErased", id],
      ]);
      const purges = await testDb.sql<{ stream: string; subject: string; after: string }[]>`
        select stream, subject, after_event_id::text as after from stream_purges order by subject`;
      expect(purges).toEqual([
        { stream: "CUSTOMER_T", subject: `t.customer.registered.${id}`, after: rows[1]?.event_id },
        { stream: "CUSTOMER_T", subject: `t.customer.updated.${id}`, after: rows[1]?.event_id },
      ]);
      expect((await testDb.sql`select customer_id::text from customers`).map((r) => r.customer_id)).toEqual([other]);
    } finally {
      await database.close();
      await testDb.drop();
    }
  });
});
