/**
 * The example read model against the real customer service: a burst of
 * registrations and updates, the consumer stopped mid-burst and started
 * again later, duplicates published on purpose. The table must end up
 * exactly as GetCustomer answers, with no event applied twice.
 */
import { randomUUID } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import {
  CustomerErasedSchema,
  CustomerRegisteredSchema,
  CustomerUpdatedSchema,
} from "@customer-platform/gen/customer/v1/events_pb.js";
import { customerSubjects, readCloudEvent } from "@customer-platform/sdk";
import { type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer } from "../../test/support/clients.js";
import { publishEvent, serviceEventSigner, verifierFor } from "../../test/support/events.js";
import { startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { waitForOutboxEmpty } from "../../test/support/outbox.js";
import { connectSql, createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";
import { waitForStream } from "../../test/support/streams.js";
import { until } from "../../test/support/timing.js";
import { type AppliedEvent, readCustomer, startReadModel, VersionGapError } from "./read-model.js";

let issuer: TestIssuer;
let svc: RunningCustomerService;
let readDb: TestDatabase;
let sql: postgres.Sql;
let nc: NatsConnection;
let js: JetStreamClient;
let jsm: JetStreamManager;

beforeAll(async () => {
  issuer = await startTestIssuer();
  svc = await startCustomerService({ IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl });
  readDb = await createTestDatabase("read_model");
  // The read model writes from several handlers at once.
  sql = connectSql(readDb.url, 4);
  nc = await connect({ servers: svc.natsUrl });
  js = jetstream(nc);
  jsm = await jetstreamManager(nc);
  await waitForStream(jsm, svc.streams.stream, 20_000);
});

afterAll(async () => {
  await nc?.close();
  await sql?.end();
  await readDb?.drop();
  await svc?.close();
  await issuer?.close();
});

const customers = () => svc.clients.client(CustomerService);

interface Registered {
  id: string;
  token: string;
}

async function register(): Promise<Registered> {
  const id = randomUUID();
  const token = await issuer.customer(id);
  await customers().registerCustomer({ givenName: "Ada", familyName: "Lovelace" }, bearer(token));
  return { id, token };
}

/** One real change; every third also moves the phone and address. */
async function update(c: Registered, n: number): Promise<void> {
  const full = n % 3 === 0;
  await customers().updateCustomer(
    {
      customer: {
        customerId: c.id,
        givenName: `Ada ${n}`,
        ...(full
          ? {
              phoneNumber: `+4915123456${String(n).padStart(3, "0")}`,
              address: { addressLines: [`${n} Analytical St`], locality: "London", countryCode: "GB" },
            }
          : {}),
      },
      updateMask: { paths: full ? ["given_name", "phone_number", "address"] : ["given_name"] },
    },
    bearer(c.token),
  );
}

/** The ce-id of every event in the stream, in stream order. */
async function streamEventIds(): Promise<string[]> {
  const info = await jsm.streams.info(svc.streams.stream);
  const ids: string[] = [];
  const consumer = await js.consumers.get(svc.streams.stream);
  const messages = await consumer.fetch({ max_messages: info.state.messages, expires: 5_000 });
  for await (const m of messages) {
    ids.push(readCloudEvent(m.headers).id);
    if (m.info.pending === 0) break;
  }
  return ids;
}

async function converged(all: Registered[]): Promise<boolean> {
  for (const c of all) {
    const { customer } = await customers().getCustomer({ customerId: c.id }, bearer(c.token));
    const held = await readCustomer(sql, c.id);
    if (held?.version !== customer?.version) return false;
  }
  return true;
}

describe("the example read model", () => {
  it("converges to GetCustomer after a burst and a restart mid-burst, applying no event twice", async () => {
    const consumer = `read-model-${randomUUID().slice(0, 8)}`;
    const applied = new Map<string, number>();
    const handled = new Map<string, number>();
    const errors: unknown[] = [];
    const start = () =>
      startReadModel({
        sql,
        js,
        stream: svc.streams.stream,
        consumer,
        verifier: verifierFor("customer-service", svc.url),
        onApplied: (e: AppliedEvent) => {
          handled.set(e.eventId, (handled.get(e.eventId) ?? 0) + 1);
          if (e.applied) applied.set(e.eventId, (applied.get(e.eventId) ?? 0) + 1);
        },
        onError: (err) => errors.push(err),
      });

    let readModel = await start();
    const all = await Promise.all(Array.from({ length: 20 }, register));
    // Five updates per customer, customers in parallel; the consumer stops halfway.
    let done = 0;
    const stopped = until("half the burst", () => done >= 50, 20_000).then(() => readModel.stop());
    await Promise.all(
      all.map(async (c) => {
        for (let n = 1; n <= 5; n++) {
          await update(c, n);
          done++;
        }
      }),
    );
    await stopped;
    // More changes while nobody consumes.
    await Promise.all(
      all.map(async (c) => {
        for (let n = 6; n <= 8; n++) await update(c, n);
      }),
    );
    await waitForOutboxEmpty(svc.database.url);
    const pending = await jsm.consumers.info(svc.streams.stream, consumer);
    expect(pending.num_pending).toBeGreaterThan(0);
    expect(await converged(all)).toBe(false);

    readModel = await start();
    try {
      await until("the read model to converge", () => converged(all), 20_000);
      for (const c of all) {
        const { customer } = await customers().getCustomer({ customerId: c.id }, bearer(c.token));
        expect(await readCustomer(sql, c.id)).toEqual(customer);
      }
      const ids = await streamEventIds();
      expect(ids).toHaveLength(20 * 9);
      expect(ids.filter((id) => !handled.has(id))).toEqual([]);
      expect([...applied.values()].filter((n) => n !== 1)).toEqual([]);
      expect(errors).toEqual([]);

      // A duplicate of an old event (as a relay outage beyond the duplicate
      // window could produce) is handled but changes nothing.
      const target = all[0] as Registered;
      const before = await readCustomer(sql, target.id);
      if (!before) throw new Error("customer missing from the read model");
      const stale = create(CustomerUpdatedSchema, {
        eventId: randomUUID(),
        customer: { ...before, givenName: "Stale", version: 2n },
        updateMask: { paths: ["given_name"] },
      });
      // Signed with the service's own key: a genuine event replayed, not a forgery.
      const signer = await serviceEventSigner(svc.database.url);
      const subject = customerSubjects(svc.streams.subjectPrefix).updated(target.id);
      await publishEvent(js, signer, subject, toBinary(CustomerUpdatedSchema, stale), {
        id: stale.eventId,
        type: CustomerUpdatedSchema.typeName,
        source: "customer-service",
        time: new Date(),
        subject: target.id,
      });
      await until("the duplicate to be handled", () => handled.has(stale.eventId), 20_000);
      expect(applied.has(stale.eventId)).toBe(false);
      expect(await readCustomer(sql, target.id)).toEqual(before);
    } finally {
      await readModel.stop();
    }
  });

  it("refuses a version jump it cannot explain, and re-reads the customer for one it can", async () => {
    const c = await register();
    await update(c, 1);
    const applied: AppliedEvent[] = [];
    const errors: unknown[] = [];
    const subjects = customerSubjects(svc.streams.subjectPrefix);
    const readModel = await startReadModel({
      sql,
      js,
      stream: svc.streams.stream,
      consumer: `jumps-${randomUUID().slice(0, 8)}`,
      // One filter (several need NATS 2.10): this customer's registration and updates.
      subjects: [`${svc.streams.subjectPrefix}.*.${c.id}`],
      verifier: verifierFor("customer-service", svc.url),
      fetchCustomer: async (customerId) => (await customers().getCustomer({ customerId }, bearer(c.token))).customer,
      onApplied: (e) => applied.push(e),
      onError: (err) => errors.push(err),
    });
    try {
      await until("version 2", async () => (await readCustomer(sql, c.id))?.version === 2n);
      const held = await readCustomer(sql, c.id);
      if (!held) throw new Error("customer missing from the read model");
      // Signed with the service's key, yet claiming a version the service never reached
      // (a lost event cannot explain it): refused, the table untouched.
      const signer = await serviceEventSigner(svc.database.url);
      const ahead = create(CustomerUpdatedSchema, {
        eventId: randomUUID(),
        customer: { ...held, givenName: "Ahead", version: 9n },
        updateMask: { paths: ["given_name"] },
      });
      await publishEvent(js, signer, subjects.updated(c.id), toBinary(CustomerUpdatedSchema, ahead), {
        id: ahead.eventId,
        type: CustomerUpdatedSchema.typeName,
        source: "customer-service",
        time: new Date(),
        subject: c.id,
      });
      await until("the jump refused", () => errors.some((e) => e instanceof VersionGapError));
      expect(errors[0]).toMatchObject({ customerId: c.id, stored: 2n, received: 9n });
      expect(await readCustomer(sql, c.id)).toEqual(held);
      await readModel.stop();

      // A jump it can explain: the table lost the customer (an event it never saw), and the first
      // event it now gets is version 2 while the service is at 3: read again from the service.
      await update(c, 2);
      await sql`delete from customers_read_model where customer_id = ${c.id}`;
      const again = await startReadModel({
        sql,
        js,
        stream: svc.streams.stream,
        consumer: `jumps-${randomUUID().slice(0, 8)}`,
        subjects: [subjects.updated(c.id)],
        verifier: verifierFor("customer-service", svc.url),
        fetchCustomer: async (customerId) => (await customers().getCustomer({ customerId }, bearer(c.token))).customer,
        onApplied: (e) => applied.push(e),
        onError: (err) => errors.push(err),
      });
      try {
        await until("version 3, read again", () => applied.some((e) => e.reread && e.version === 3n));
        const { customer } = await customers().getCustomer({ customerId: c.id }, bearer(c.token));
        expect(await readCustomer(sql, c.id)).toEqual(customer);
      } finally {
        await again.stop();
      }
    } finally {
      await readModel.stop();
    }
  });

  it("deletes the customer on CustomerErased, keeps only the id, and lets no late profile event bring it back", async () => {
    const c = await register();
    const other = await register();
    const applied: AppliedEvent[] = [];
    const errors: unknown[] = [];
    const subjects = customerSubjects(svc.streams.subjectPrefix);
    const readModel = await startReadModel({
      sql,
      js,
      stream: svc.streams.stream,
      consumer: `erased-${randomUUID().slice(0, 8)}`,
      verifier: verifierFor("customer-service", svc.url),
      onApplied: (e) => applied.push(e),
      onError: (err) => errors.push(err),
    });
    try {
      await until("both customers held", async () =>
        Boolean((await readCustomer(sql, c.id)) && (await readCustomer(sql, other.id))),
      );
      const held = await readCustomer(sql, c.id);
      if (!held) throw new Error("customer missing from the read model");
      // As the customer service publishes it (its own key), twice: a redelivery changes nothing.
      const signer = await serviceEventSigner(svc.database.url);
      const publish = async (type: string, subject: string, eventId: string, payload: Uint8Array) =>
        publishEvent(js, signer, subject, payload, {
          id: eventId,
          type,
          source: "customer-service",
          time: new Date(),
          subject: c.id,
        });
      for (let i = 0; i < 2; i++) {
        const erased = create(CustomerErasedSchema, { eventId: randomUUID(), customerId: c.id });
        await publish(
          CustomerErasedSchema.typeName,
          subjects.erased(c.id),
          erased.eventId,
          toBinary(CustomerErasedSchema, erased),
        );
      }
      await until("the erasure handled twice", () => applied.filter((e) => e.erased).length === 2);
      expect(applied.filter((e) => e.erased).map((e) => e.applied)).toEqual([true, false]);
      expect(await readCustomer(sql, c.id)).toBeUndefined();
      const [tombstone] =
        await sql`select count(*)::int as n from customers_read_model_erased where customer_id = ${c.id}`;
      expect(tombstone?.n).toBe(1);

      // A genuine registration redelivered late, and a later update: neither brings the row back.
      const late = create(CustomerRegisteredSchema, { eventId: randomUUID(), customer: { ...held, version: 1n } });
      const next = create(CustomerUpdatedSchema, {
        eventId: randomUUID(),
        customer: { ...held, givenName: "Back", version: held.version + 1n },
        updateMask: { paths: ["given_name"] },
      });
      await publish(
        CustomerRegisteredSchema.typeName,
        subjects.registered(c.id),
        late.eventId,
        toBinary(CustomerRegisteredSchema, late),
      );
      await publish(
        CustomerUpdatedSchema.typeName,
        subjects.updated(c.id),
        next.eventId,
        toBinary(CustomerUpdatedSchema, next),
      );
      await until("both handled", () => applied.some((e) => e.eventId === next.eventId));
      expect(applied.filter((e) => e.eventId === late.eventId || e.eventId === next.eventId)).toEqual([
        expect.objectContaining({ applied: false, erased: true }),
        expect.objectContaining({ applied: false, erased: true }),
      ]);
      expect(await readCustomer(sql, c.id)).toBeUndefined();
      expect(await readCustomer(sql, other.id)).toBeDefined();
      // (The stream holds the other tests' events too, among them a version jump it refuses.)
      expect(errors.filter((e) => !(e instanceof VersionGapError) || e.customerId === c.id)).toEqual([]);
    } finally {
      await readModel.stop();
    }
  });
});
