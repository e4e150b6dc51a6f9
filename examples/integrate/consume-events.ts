/**
 * Consuming the platform's events in another service, two ways. See
 * docs/integrate.md; examples/read-model/ is a complete consumer.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { CustomerRegisteredSchema, CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import {
  consumeEvents,
  createEventVerifier,
  customerSubjects,
  EVENT_KEYS_PATH,
  type EventConsumer,
  readCloudEvent,
} from "@customer-platform/sdk";
import { AckPolicy, type JetStreamClient } from "@nats-io/jetstream";
import type postgres from "postgres";

/**
 * With the SDK's consumeEvents: typed handlers, ack after success, redelivery on
 * error. CustomerAuthenticated has no version, so the handler is made
 * idempotent by its event id: the id and the effect commit in one
 * transaction, and an id seen before is skipped. Only events signed by the
 * identity service (its keys at `<issuer>/.well-known/event-keys.json`) are handled.
 */
export async function consumeSignIns(
  sql: postgres.Sql,
  js: JetStreamClient,
  stream = "IDENTITY",
  identityIssuer = "http://127.0.0.1:8081",
): Promise<EventConsumer> {
  await sql`create table if not exists processed_events (event_id uuid primary key)`;
  await sql`create table if not exists sign_ins (customer_id uuid primary key, count int not null, last_at timestamptz)`;
  return consumeEvents({
    js,
    stream,
    consumer: "orders-sign-ins",
    verifier: createEventVerifier({ trust: { "identity-service": `${identityIssuer}${EVENT_KEYS_PATH}` } }),
    handlers: {
      "identity.v1.CustomerAuthenticated": async (event, meta) => {
        await sql.begin(async (tx) => {
          const fresh =
            await tx`insert into processed_events (event_id) values (${meta.id}) on conflict do nothing returning 1`;
          if (fresh.length === 0) return; // a repeat: already counted
          await tx`
            insert into sign_ins (customer_id, count, last_at) values (${event.customerId}, 1, ${meta.time ?? null})
            on conflict (customer_id) do update set count = sign_ins.count + 1, last_at = excluded.last_at`;
        });
      },
    },
  });
}

/**
 * Plain JetStream, without consumeEvents: a durable pull consumer on the
 * customer subjects, decode by the `ce-type` header (read with the SDK's
 * readCloudEvent) with the generated schema, ack after handling. Returns a
 * function that stops it.
 */
export async function consumeCustomersPlain(
  js: JetStreamClient,
  onCustomer: (customerId: string, version: bigint, eventId: string) => Promise<void>,
  stream = "CUSTOMER",
  subjectPrefix = "customer",
  durable = "orders-customers",
): Promise<() => Promise<void>> {
  const jsm = await js.jetstreamManager();
  await jsm.consumers.add(stream, {
    durable_name: durable,
    ack_policy: AckPolicy.Explicit,
    filter_subject: customerSubjects(subjectPrefix).all,
  });
  const consumer = await js.consumers.get(stream, durable);
  const messages = await consumer.consume();
  const done = (async () => {
    for await (const m of messages) {
      const { type, id: eventId } = readCloudEvent(m.headers);
      try {
        if (type === CustomerRegisteredSchema.typeName) {
          const { customer } = fromBinary(CustomerRegisteredSchema, m.data);
          if (customer) await onCustomer(customer.customerId, customer.version, eventId);
        } else if (type === CustomerUpdatedSchema.typeName) {
          const { customer } = fromBinary(CustomerUpdatedSchema, m.data);
          if (customer) await onCustomer(customer.customerId, customer.version, eventId);
        }
        m.ack();
      } catch {
        m.nak(5_000); // try again in 5 s
      }
    }
  })();
  return async () => {
    await messages.close();
    await done;
  };
}
