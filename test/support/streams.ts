/**
 * Reading JetStream streams as a consumer would: whole streams decoded into
 * events (for ledger checks), messages on one subject one at a time or as
 * they arrive, message counts, the CloudEvents headers every event carries,
 * and waiting until a relay has created its stream.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { CustomerRegisteredSchema, CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import {
  CustomerAuthenticatedSchema,
  CustomerEmailVerifiedSchema,
  TokensRevokedSchema,
} from "@customer-platform/gen/identity/v1/events_pb.js";
import { CE_TYPE } from "@customer-platform/sdk/cloudevents";
import { eventSchemas, isEventType } from "@customer-platform/sdk/events";
import { type JetStreamManager, type JsMsg, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { expect } from "vitest";
import { until } from "./timing.js";

export const REGISTERED = CustomerRegisteredSchema.typeName;
export const UPDATED = CustomerUpdatedSchema.typeName;
export const AUTHENTICATED = CustomerAuthenticatedSchema.typeName;
export const EMAIL_VERIFIED = CustomerEmailVerifiedSchema.typeName;
export const TOKENS_REVOKED = TokensRevokedSchema.typeName;

/** One message of a stream, decoded. */
export interface StreamEvent {
  seq: number;
  eventId: string;
  /** `Nats-Msg-Id`, which must equal eventId. */
  msgId: string;
  type: string;
  customerId: string;
  /** The email version for CustomerEmailVerified; 0 for the other identity events. */
  version: number;
  /** The profile's family name after the change ("" for CustomerAuthenticated). */
  familyName: string;
}

/** The number of messages in stream, or undefined while it does not exist. */
export async function streamCount(natsUrl: string, stream: string): Promise<number | undefined> {
  const nc = await connect({ servers: natsUrl, reconnect: false });
  try {
    const jsm = await jetstreamManager(nc);
    return (await jsm.streams.info(stream)).state.messages;
  } catch {
    return undefined;
  } finally {
    await nc.close();
  }
}

/**
 * Waits until stream exists: a service's relay creates its stream once it
 * leads, and tests that count messages must wait for that.
 */
export async function waitForStream(
  nats: string | JetStreamManager,
  stream: string,
  timeoutMs = 10_000,
): Promise<void> {
  const exists = async () =>
    typeof nats === "string"
      ? (await streamCount(nats, stream)) !== undefined
      : await nats.streams.info(stream).then(
          () => true,
          () => false,
        );
  await until(`stream ${stream} to be created`, exists, timeoutMs);
}

/**
 * Every message of stream, in stream order, decoded (customer events and
 * CustomerAuthenticated), read by an ordered consumer on its own connection.
 */
export async function readStream(natsUrl: string, stream: string): Promise<StreamEvent[]> {
  const nc = await connect({ servers: natsUrl });
  try {
    const total = (await (await jetstreamManager(nc)).streams.info(stream)).state.messages;
    const events: StreamEvent[] = [];
    if (total === 0) return events;
    const consumer = await jetstream(nc).consumers.get(stream);
    const messages = await consumer.consume({ max_messages: 512 });
    for await (const msg of messages) {
      const type = msg.headers?.get(CE_TYPE) ?? "";
      const base = { seq: msg.seq, msgId: msg.headers?.get("Nats-Msg-Id") ?? "", type };
      if (type !== REGISTERED && type !== UPDATED) {
        // Identity events (and any other): ids only; the email version for CustomerEmailVerified.
        const decoded = isEventType(type) ? fromBinary(eventSchemas[type], msg.data) : undefined;
        const customerId = decoded && "customerId" in decoded ? decoded.customerId : "";
        const version = decoded && "emailVersion" in decoded ? Number(decoded.emailVersion) : 0;
        events.push({ ...base, eventId: decoded?.eventId ?? "", customerId, version, familyName: "" });
      } else {
        const e =
          type === REGISTERED
            ? fromBinary(CustomerRegisteredSchema, msg.data)
            : fromBinary(CustomerUpdatedSchema, msg.data);
        const c = e.customer;
        events.push({
          ...base,
          eventId: e.eventId,
          customerId: c?.customerId ?? "",
          version: Number(c?.version),
          familyName: c?.familyName ?? "",
        });
      }
      if (events.length >= total) break;
    }
    await messages.close();
    return events;
  } finally {
    await nc.close();
  }
}

/** Messages on one subject, read one at a time from the start of the stream. */
export interface SubjectReader {
  /** The next message; fails if none arrives within timeoutMs. */
  next(timeoutMs?: number): Promise<JsMsg>;
  /** True if no further message arrives within quietMs. */
  none(quietMs?: number): Promise<boolean>;
  /** The next `expected` messages (each given up to 5 s), then any that follow within 1 s of each other. */
  all(expected: number): Promise<JsMsg[]>;
}

/** An ordered consumer of subject (a filter) in stream, from its start, as any subscriber would read it. */
export async function readSubject(nc: NatsConnection, stream: string, subject: string): Promise<SubjectReader> {
  const consumer = await jetstream(nc).consumers.get(stream, { filter_subjects: subject });
  const next = async (timeoutMs = 5_000) => {
    const msg = await consumer.next({ expires: timeoutMs });
    if (!msg) throw new Error(`no message on ${subject} within ${timeoutMs} ms`);
    return msg;
  };
  return {
    next,
    none: async (quietMs = 1_000) => (await consumer.next({ expires: quietMs })) === null,
    async all(expected) {
      const msgs: JsMsg[] = [];
      const nextOrNull = () => consumer.next({ expires: msgs.length < expected ? 5_000 : 1_000 });
      for (let msg = await nextOrNull(); msg; msg = await nextOrNull()) msgs.push(msg);
      return msgs;
    },
  };
}

/** Messages on one subject, collected as they arrive. */
export interface Collector {
  readonly received: JsMsg[];
  /** Resolves with what was received once there are at least n; fails after timeoutMs (default 10 s). */
  until(n: number, timeoutMs?: number): Promise<JsMsg[]>;
  stop(): Promise<void>;
}

/** Collects every message on subject (a filter) from the start of stream, as a subscriber would. */
export async function collect(nc: NatsConnection, stream: string, subject: string): Promise<Collector> {
  const consumer = await jetstream(nc).consumers.get(stream, { filter_subjects: subject });
  const messages = await consumer.consume();
  const received: JsMsg[] = [];
  const done = (async () => {
    for await (const m of messages) received.push(m);
  })();
  return {
    received,
    async until(n, timeoutMs = 10_000) {
      await until(`${n} events on ${subject}`, () => received.length >= n, timeoutMs, 20);
      return received;
    },
    async stop() {
      await messages.close();
      await done;
    },
  };
}

/** A message's headers as a plain object: each name with all its values. */
export function headersOf(msg: JsMsg): Record<string, string[]> {
  const h = msg.headers;
  if (!h) throw new Error("message without headers");
  return Object.fromEntries(h.keys().map((k) => [k, h.values(k)]));
}

/** The headers every event carries (DESIGN.md): Nats-Msg-Id and the CloudEvents binary-mode headers. */
export function cloudEventHeaders(e: {
  id: string;
  type: string;
  source: string;
  /** The event's time as RFC 3339 text, or a matcher such as expect.stringMatching(…). */
  time: unknown;
  subject: string;
}): Record<string, unknown[]> {
  return {
    "Nats-Msg-Id": [e.id],
    "ce-specversion": ["1.0"],
    "ce-id": [e.id],
    "ce-type": [e.type],
    "ce-source": [e.source],
    "ce-time": [e.time],
    "ce-subject": [e.subject],
    "ce-datacontenttype": ["application/protobuf"],
    "content-type": ["application/protobuf"],
    // The producer's detached JWS (test/support/events.ts, sdk event-signing).
    "ce-signature": [expect.stringMatching(/^[\w-]+\.\.[\w-]+$/)],
  };
}
