/**
 * consumeEvents against the real JetStream: typed dispatch by ce-type, ack
 * only after the handler, redelivery after a failure, and a stop that hands
 * the unprocessed rest back so a restart continues without gaps or repeats.
 * Every event is signed (test/support/events.ts); the ones that are not, or
 * not by a trusted key, or changed after signing, never reach a handler.
 */
import { randomUUID } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import {
  CustomerErasedSchema,
  CustomerRegisteredSchema,
  CustomerUpdatedSchema,
  file_customer_v1_events as customerEventsFile,
} from "@customer-platform/gen/customer/v1/events_pb.js";
import {
  AuthenticationMethod,
  CustomerAuthenticatedSchema,
  CustomerDeletedSchema,
  DeletedBy,
  file_identity_v1_events as identityEventsFile,
} from "@customer-platform/gen/identity/v1/events_pb.js";
import { type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventHeaders, startTestEventKeys, type TestEventKeys } from "../../test/support/events.js";
import { sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { sleep, until } from "../../test/support/timing.js";
import { CE_SIGNATURE, CE_TYPE } from "../src/cloudevents.js";
import { EventKeysUnavailableError, EventSignatureError, type EventVerifier } from "../src/event-signing.js";
import { consumeEvents, decodeEvent, type EventMeta, eventSchemas } from "../src/events.js";

const { stream, subjectPrefix } = uniqueStreamNames("customer");
let nc: NatsConnection;
let js: JetStreamClient;
let jsm: JetStreamManager;
let keys: TestEventKeys;
let verifier: EventVerifier;

beforeAll(async () => {
  keys = await startTestEventKeys();
  verifier = keys.verifier("customer-service");
  nc = await connect({ servers: sharedNatsUrl });
  js = jetstream(nc);
  jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: stream, subjects: [`${subjectPrefix}.>`] });
});

afterAll(async () => {
  await jsm?.streams.delete(stream).catch(() => false);
  await nc?.close();
  await keys?.close();
});

/** Publishes an event the way the outbox relay does; returns its event id. */
async function publishRegistered(topic: string, customerId: string, version = 1n): Promise<string> {
  const eventId = randomUUID();
  const schema = version === 1n ? CustomerRegisteredSchema : CustomerUpdatedSchema;
  const event = create(schema, {
    eventId,
    occurTime: timestampNow(),
    customer: { customerId, email: `${customerId}@example.com`, givenName: "Ada", familyName: "Lovelace", version },
  });
  await publishRaw(
    `${subjectPrefix}.${topic}.${customerId}`,
    schema.typeName,
    toBinary(schema, event),
    eventId,
    customerId,
  );
  return eventId;
}

async function publishRaw(subject: string, type: string, payload: Uint8Array, eventId: string, customerId: string) {
  const h = await eventHeaders(keys.signer, subject, payload, {
    id: eventId,
    type,
    source: "customer-service",
    time: new Date(),
    subject: customerId,
  });
  await js.publish(subject, payload, { msgID: eventId, headers: h });
}

const durable = () => `c_${randomUUID().slice(0, 8)}`;

describe("consumeEvents", () => {
  it("decodes by ce-type into the generated message and acks after the handler", async () => {
    const name = durable();
    const topic = `t1${randomUUID().slice(0, 6)}`;
    const id = randomUUID();
    const registeredId = await publishRegistered(`${topic}.registered`, id);
    const updatedId = await publishRegistered(`${topic}.updated`, id, 2n);
    const seen: Array<{ kind: string; version: bigint | undefined; meta: EventMeta }> = [];
    const consumer = await consumeEvents({
      js,
      stream,
      consumer: name,
      verifier,
      subjects: [`${subjectPrefix}.${topic}.>`],
      handlers: {
        "customer.v1.CustomerRegistered": async (e, meta) => {
          seen.push({ kind: e.$typeName, version: e.customer?.version, meta });
        },
        "customer.v1.CustomerUpdated": async (e, meta) => {
          seen.push({ kind: e.$typeName, version: e.customer?.version, meta });
        },
      },
    });
    try {
      await until("two events", () => seen.length === 2);
      expect(seen.map((s) => [s.kind, s.version, s.meta.id, s.meta.customerId, s.meta.deliveryCount])).toEqual([
        ["customer.v1.CustomerRegistered", 1n, registeredId, id, 1],
        ["customer.v1.CustomerUpdated", 2n, updatedId, id, 1],
      ]);
      expect(seen[0]?.meta).toMatchObject({ type: "customer.v1.CustomerRegistered", source: "customer-service" });
      expect(seen[0]?.meta.time).toBeInstanceOf(Date);
      await until("acks", async () => (await jsm.consumers.info(stream, name)).num_ack_pending === 0);
      const info = await jsm.consumers.info(stream, name);
      expect(info.num_pending).toBe(0);
      expect(info.delivered.consumer_seq).toBe(2);
    } finally {
      await consumer.stop();
    }
  });

  it("redelivers an event whose handler failed, after the retry delay, and acks it once it succeeds", async () => {
    const topic = `t2${randomUUID().slice(0, 6)}`;
    const id = randomUUID();
    await publishRegistered(`${topic}.registered`, id);
    const attempts: number[] = [];
    const errors: unknown[] = [];
    const consumer = await consumeEvents({
      js,
      stream,
      consumer: durable(),
      verifier,
      subjects: [`${subjectPrefix}.${topic}.>`],
      retryDelayMs: () => 200,
      onError: (err) => errors.push(err),
      handlers: {
        "customer.v1.CustomerRegistered": async (_e, meta) => {
          attempts.push(meta.deliveryCount);
          if (attempts.length === 1) throw new Error("database down");
        },
      },
    });
    try {
      await until("a second attempt", () => attempts.length === 2);
      expect(attempts).toEqual([1, 2]);
      expect(errors).toEqual([new Error("database down")]);
      await sleep(500);
      expect(attempts).toEqual([1, 2]);
    } finally {
      await consumer.stop();
    }
  });

  it("terminates an unknown ce-type, acks a type without handler, and keeps going", async () => {
    const topic = `t3${randomUUID().slice(0, 6)}`;
    const id = randomUUID();
    await publishRaw(
      `${subjectPrefix}.${topic}.x`,
      "customer.v1.CustomerDeleted",
      new Uint8Array([1]),
      randomUUID(),
      id,
    );
    await publishRegistered(`${topic}.updated`, id, 2n);
    const garbled = randomUUID();
    await publishRaw(
      `${subjectPrefix}.${topic}.y`,
      CustomerRegisteredSchema.typeName,
      new Uint8Array([0xff]),
      garbled,
      id,
    );
    const lastId = await publishRegistered(`${topic}.registered`, randomUUID());
    const seen: string[] = [];
    const errors: string[] = [];
    const name = durable();
    const consumer = await consumeEvents({
      js,
      stream,
      consumer: name,
      verifier,
      subjects: [`${subjectPrefix}.${topic}.>`],
      onError: (err, msg) => errors.push(`${msg?.subject.split(".").at(-1)}: ${(err as Error).message}`),
      handlers: {
        "customer.v1.CustomerRegistered": async (_e, meta) => {
          seen.push(meta.id);
        },
      },
    });
    try {
      await until("the last event", () => seen.length === 1);
      expect(seen).toEqual([lastId]);
      expect(errors).toHaveLength(2);
      expect(errors[0]).toBe(`x: unknown ce-type "customer.v1.CustomerDeleted" on ${subjectPrefix}.${topic}.x`);
      expect(errors[1]).toMatch(/^y: /);
      await until("acks", async () => (await jsm.consumers.info(stream, name)).num_ack_pending === 0);
      expect((await jsm.consumers.info(stream, name)).num_redelivered).toBe(0);
    } finally {
      await consumer.stop();
    }
  });

  it("finishes what was delivered on stop, so a restart continues in order with no gap and no repeat", async () => {
    const topic = `t4${randomUUID().slice(0, 6)}`;
    const published: string[] = [];
    for (let i = 0; i < 150; i++) published.push(await publishRegistered(`${topic}.registered`, randomUUID()));
    const name = durable();
    const handled: string[] = [];
    const start = () =>
      consumeEvents({
        js,
        stream,
        verifier,
        consumer: name,
        subjects: [`${subjectPrefix}.${topic}.>`],
        // A long ack_wait: events stuck with a stopped consumer would not come back in this test.
        consumerConfig: { ack_wait: 120_000_000_000 },
        handlers: {
          "customer.v1.CustomerRegistered": async (_e, meta) => {
            await sleep(2);
            handled.push(meta.id);
          },
        },
      });
    const first = await start();
    await until("some events", () => handled.length >= 30);
    await first.stop();
    const afterStop = handled.length;
    expect(afterStop).toBeLessThan(150);
    await sleep(100);
    expect(handled.length).toBe(afterStop);
    const second = await start();
    try {
      await until("all events", () => handled.length >= 150);
      await sleep(200);
      expect(handled).toEqual(published);
    } finally {
      await second.stop();
    }
  });

  it("ends, rejecting done, when its durable consumer is deleted", async () => {
    const name = durable();
    const consumer = await consumeEvents({
      js,
      stream,
      consumer: name,
      verifier,
      subjects: [`${subjectPrefix}.t5.>`],
      handlers: {},
    });
    await until("the consumer", () =>
      jsm.consumers.info(stream, name).then(
        () => true,
        () => false,
      ),
    );
    await jsm.consumers.delete(stream, name);
    await expect(consumer.done).rejects.toMatchObject({ code: 10014 });
    await consumer.stop();
  });

  it("terminates events that are unsigned, signed by another key or changed after signing, and handles the genuine one", async () => {
    const name = durable();
    const topic = `t6${randomUUID().slice(0, 6)}`;
    const customerId = randomUUID();
    const subject = `${subjectPrefix}.${topic}.updated.${customerId}`;
    const event = (version: bigint) =>
      create(CustomerUpdatedSchema, {
        eventId: randomUUID(),
        customer: { customerId, email: "mallory@example.com", givenName: "Mallory", familyName: "M", version },
      });
    const attrs = (id: string) => ({
      id,
      type: CustomerUpdatedSchema.typeName,
      source: "customer-service",
      time: new Date(),
      subject: customerId,
    });
    const forged = event(9_000_000_000n);
    const payload = toBinary(CustomerUpdatedSchema, forged);
    // No signature at all.
    const unsigned = await eventHeaders(undefined, subject, payload, attrs(forged.eventId));
    await js.publish(subject, payload, { headers: unsigned, msgID: randomUUID() });
    // A key of the attacker's own.
    const other = await startTestEventKeys();
    try {
      const wrongKey = await eventHeaders(other.signer, subject, payload, attrs(forged.eventId));
      await js.publish(subject, payload, { headers: wrongKey, msgID: randomUUID() });
    } finally {
      await other.close();
    }
    // A genuine signature over another payload, and one whose signed ce-type is changed.
    const genuine = event(2n);
    const genuinePayload = toBinary(CustomerUpdatedSchema, genuine);
    const signed = await eventHeaders(keys.signer, subject, genuinePayload, attrs(genuine.eventId));
    await js.publish(subject, payload, { headers: signed, msgID: randomUUID() });
    const retyped = await eventHeaders(keys.signer, subject, genuinePayload, attrs(genuine.eventId));
    retyped.set(CE_TYPE, CustomerRegisteredSchema.typeName);
    await js.publish(subject, genuinePayload, { headers: retyped, msgID: randomUUID() });
    // A genuine event moved to another subject.
    await js.publish(`${subjectPrefix}.${topic}.updated.${randomUUID()}`, genuinePayload, {
      headers: signed,
      msgID: randomUUID(),
    });
    // A signature that is not a detached JWS.
    const garbage = await eventHeaders(keys.signer, subject, genuinePayload, attrs(genuine.eventId));
    garbage.set(CE_SIGNATURE, "not-a-jws");
    await js.publish(subject, genuinePayload, { headers: garbage, msgID: randomUUID() });
    // And the genuine event itself.
    await publishRaw(subject, CustomerUpdatedSchema.typeName, genuinePayload, genuine.eventId, customerId);

    const seen: bigint[] = [];
    const refused: EventSignatureError[] = [];
    const consumer = await consumeEvents({
      js,
      stream,
      consumer: name,
      verifier,
      subjects: [`${subjectPrefix}.${topic}.>`],
      onError: (err) => {
        if (err instanceof EventSignatureError) refused.push(err);
      },
      handlers: {
        "customer.v1.CustomerUpdated": async (e) => {
          seen.push(e.customer?.version ?? 0n);
        },
        "customer.v1.CustomerRegistered": async (e) => {
          seen.push(e.customer?.version ?? 0n);
        },
      },
    });
    try {
      await until("the genuine event", () => seen.length === 1);
      await until("every forgery refused", () => consumer.rejected === 6);
      expect(seen).toEqual([2n]);
      expect(refused.map((e) => e.reason)).toEqual([
        "unsigned",
        "unknown_key",
        "bad_signature",
        "attributes_mismatch",
        "attributes_mismatch",
        "malformed",
      ]);
      expect(refused[0]?.message).toBe(`event signature refused: unsigned (event ${forged.eventId} on ${subject})`);
      expect(refused[3]?.detail).toContain("type");
      expect(refused[4]?.detail).toContain("natssubject");
      // Terminated, not redelivered: nothing left pending.
      await until("acks", async () => (await jsm.consumers.info(stream, name)).num_ack_pending === 0);
    } finally {
      await consumer.stop();
    }
  });

  it("redelivers, never handles, an event while its producer's keys cannot be fetched", async () => {
    const topic = `t7${randomUUID().slice(0, 6)}`;
    const id = randomUUID();
    const down = await startTestEventKeys();
    down.available = false;
    try {
      const customerId = randomUUID();
      const subject = `${subjectPrefix}.${topic}.registered.${customerId}`;
      const event = create(CustomerRegisteredSchema, {
        eventId: id,
        customer: { customerId, email: "ada@example.com", givenName: "Ada", familyName: "L", version: 1n },
      });
      const payload = toBinary(CustomerRegisteredSchema, event);
      const h = await eventHeaders(down.signer, subject, payload, {
        id,
        type: CustomerRegisteredSchema.typeName,
        source: "customer-service",
        time: new Date(),
        subject: customerId,
      });
      await js.publish(subject, payload, { headers: h, msgID: id });
      const handled: string[] = [];
      const unavailable: unknown[] = [];
      const consumer = await consumeEvents({
        js,
        stream,
        consumer: durable(),
        verifier: down.verifier("customer-service", { cooldownMs: 0 }),
        subjects: [`${subjectPrefix}.${topic}.>`],
        retryDelayMs: () => 200,
        onError: (err) => unavailable.push(err),
        handlers: {
          "customer.v1.CustomerRegistered": async (_e, meta) => {
            handled.push(meta.id);
          },
        },
      });
      try {
        await until("two deliveries refused for want of keys", () => unavailable.length >= 2);
        expect(unavailable.every((e) => e instanceof EventKeysUnavailableError)).toBe(true);
        expect(handled).toEqual([]);
        expect(consumer.rejected).toBe(0);
        down.available = true;
        await until("the event handled once its keys are back", () => handled.length === 1);
        expect(handled).toEqual([id]);
      } finally {
        await consumer.stop();
      }
    } finally {
      await down.close();
    }
  });

  it("decodeEvent returns the typed message, or undefined for a foreign type", () => {
    const event = create(CustomerAuthenticatedSchema, {
      eventId: randomUUID(),
      customerId: randomUUID(),
      method: AuthenticationMethod.PASSWORD,
    });
    const h = headers();
    h.set(CE_TYPE, "identity.v1.CustomerAuthenticated");
    const decoded = decodeEvent({ headers: h, data: toBinary(CustomerAuthenticatedSchema, event) });
    expect(decoded?.type).toBe("identity.v1.CustomerAuthenticated");
    expect(decoded?.event).toEqual(event);
    h.set(CE_TYPE, "other.v1.Thing");
    expect(decodeEvent({ headers: h, data: new Uint8Array() })).toBeUndefined();
  });

  it("knows every event the contracts declare, by its full name", () => {
    // Every message in the events files is an event (the enums are not messages).
    const declared = [...customerEventsFile.messages, ...identityEventsFile.messages].map((m) => m.typeName).sort();
    expect(Object.keys(eventSchemas).sort()).toEqual(declared);
    for (const [type, schema] of Object.entries(eventSchemas)) expect(schema.typeName).toBe(type);
  });

  it("decodes the erasure and account events", () => {
    const customerId = randomUUID();
    const deleted = create(CustomerDeletedSchema, { eventId: randomUUID(), customerId, deletedBy: DeletedBy.ADMIN });
    const erased = create(CustomerErasedSchema, { eventId: randomUUID(), customerId });
    const h = headers();
    h.set(CE_TYPE, "identity.v1.CustomerDeleted");
    expect(decodeEvent({ headers: h, data: toBinary(CustomerDeletedSchema, deleted) })).toEqual({
      type: "identity.v1.CustomerDeleted",
      event: deleted,
    });
    h.set(CE_TYPE, "customer.v1.CustomerErased");
    expect(decodeEvent({ headers: h, data: toBinary(CustomerErasedSchema, erased) })).toEqual({
      type: "customer.v1.CustomerErased",
      event: erased,
    });
  });
});
