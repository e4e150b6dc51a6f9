/**
 * A typed consumer for the platform's events. Every event arrives as
 * protobuf binary with CloudEvents binary-mode headers (./cloudevents.ts);
 * `ce-type` names the message, so a handler receives the decoded, generated
 * message:
 *
 * ```ts
 * const consumer = await consumeEvents({
 *   js: jetstream(nc),
 *   stream: "CUSTOMER",
 *   consumer: "orders-read-model", // durable: survives restarts
 *   // Only events signed by the customer service reach the handlers (./event-signing.ts).
 *   verifier: createEventVerifier({ trust: { "customer-service": "http://customer:8080/.well-known/event-keys.json" } }),
 *   handlers: {
 *     "customer.v1.CustomerRegistered": async (event, meta) => save(event.customer, meta.id),
 *     "customer.v1.CustomerUpdated": async (event, meta) => save(event.customer, meta.id),
 *   },
 * });
 * await consumer.stop();
 * ```
 *
 * Every event's signature is verified before it is decoded: one that is
 * unsigned, signed by a producer not trusted or with a key not its own, or
 * changed after signing (payload, `ce-*` headers or subject) is terminated,
 * never handed to a handler, reported to `onError` (an EventSignatureError
 * with the reason) and counted in `rejected`. While a producer's keys cannot
 * be fetched its events are redelivered later, never handled unverified.
 *
 * A message is acked only after its handler resolved (and the ack is
 * confirmed by the server); a handler that throws gets the message redelivered
 * after a growing delay. Delivery is therefore at least once, so handlers
 * must be idempotent:
 *
 * - Customer events carry the full profile with its `version`: apply one
 *   only if its version is greater than the stored one, in one statement
 *   (`insert … on conflict (customer_id) do update … where stored.version <
 *   excluded.version`). Repeats, redeliveries and even out-of-order delivery
 *   then leave the same state.
 * - `CustomerErased` (the tombstone): delete what you hold of `customer_id`,
 *   and remember the id if a late `CustomerRegistered`/`CustomerUpdated`
 *   redelivery must not bring the row back (the stream purges those after it).
 * - Events without a version (`CustomerAuthenticated`, `TokensRevoked`): record `meta.id` (the
 *   `event_id`) in a processed-events table in the same transaction as the
 *   effect, and skip an id already there (`insert … on conflict do nothing`).
 */
import { fromBinary } from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import {
  type CustomerErased,
  CustomerErasedSchema,
  type CustomerRegistered,
  CustomerRegisteredSchema,
  type CustomerUpdated,
  CustomerUpdatedSchema,
} from "@customer-platform/gen/customer/v1/events_pb.js";
import {
  type AuditRecorded,
  AuditRecordedSchema,
  type CustomerAuthenticated,
  CustomerAuthenticatedSchema,
  type CustomerDeleted,
  CustomerDeletedSchema,
  type CustomerEmailVerified,
  CustomerEmailVerifiedSchema,
  type IdentityDisabled,
  IdentityDisabledSchema,
  type IdentityEnabled,
  IdentityEnabledSchema,
  type PasswordChanged,
  PasswordChangedSchema,
  type TokensRevoked,
  TokensRevokedSchema,
} from "@customer-platform/gen/identity/v1/events_pb.js";
import {
  AckPolicy,
  type ConsumerConfig,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamClient,
  type JsMsg,
} from "@nats-io/jetstream";
import { CE_ID, CE_TYPE, readCloudEvent } from "./cloudevents.js";
import { EventKeysUnavailableError, EventSignatureError, type EventVerifier } from "./event-signing.js";

/** Every event the platform publishes, by `ce-type`. */
export interface PlatformEvents {
  "customer.v1.CustomerRegistered": CustomerRegistered;
  "customer.v1.CustomerUpdated": CustomerUpdated;
  "customer.v1.CustomerErased": CustomerErased;
  "identity.v1.CustomerAuthenticated": CustomerAuthenticated;
  "identity.v1.TokensRevoked": TokensRevoked;
  "identity.v1.CustomerEmailVerified": CustomerEmailVerified;
  "identity.v1.CustomerDeleted": CustomerDeleted;
  "identity.v1.IdentityDisabled": IdentityDisabled;
  "identity.v1.IdentityEnabled": IdentityEnabled;
  "identity.v1.PasswordChanged": PasswordChanged;
  "identity.v1.AuditRecorded": AuditRecorded;
}

/** A `ce-type` the platform publishes. */
export type EventType = keyof PlatformEvents;

/** The generated schema of each event type. */
export const eventSchemas: { readonly [T in EventType]: GenMessage<PlatformEvents[T]> } = {
  "customer.v1.CustomerRegistered": CustomerRegisteredSchema,
  "customer.v1.CustomerUpdated": CustomerUpdatedSchema,
  "customer.v1.CustomerErased": CustomerErasedSchema,
  "identity.v1.CustomerAuthenticated": CustomerAuthenticatedSchema,
  "identity.v1.TokensRevoked": TokensRevokedSchema,
  "identity.v1.CustomerEmailVerified": CustomerEmailVerifiedSchema,
  "identity.v1.CustomerDeleted": CustomerDeletedSchema,
  "identity.v1.IdentityDisabled": IdentityDisabledSchema,
  "identity.v1.IdentityEnabled": IdentityEnabledSchema,
  "identity.v1.PasswordChanged": PasswordChangedSchema,
  "identity.v1.AuditRecorded": AuditRecordedSchema,
};

/** True when type is one of the platform's event types. */
export function isEventType(type: string | undefined): type is EventType {
  return type !== undefined && Object.hasOwn(eventSchemas, type);
}

/** A decoded event: its type and the generated message. */
export type DecodedEvent = { [T in EventType]: { type: T; event: PlatformEvents[T] } }[EventType];

/**
 * Decodes a message by its `ce-type` header. Returns undefined for a type
 * this code does not know; throws if the payload is not a valid message.
 */
export function decodeEvent(msg: Pick<JsMsg, "headers" | "data">): DecodedEvent | undefined {
  const type = msg.headers?.get(CE_TYPE);
  if (!isEventType(type)) return undefined;
  const schema: GenMessage<PlatformEvents[EventType]> = eventSchemas[type];
  return { type, event: fromBinary(schema, msg.data) } as DecodedEvent;
}

/** What a handler learns about an event besides its message. */
export interface EventMeta {
  /** `ce-id`: the event_id, also `Nats-Msg-Id`. The key for idempotency. */
  readonly id: string;
  readonly type: EventType;
  /** `ce-source`, e.g. `customer-service`. */
  readonly source: string;
  /** `ce-time`: when the change committed (undefined if missing or not a date). */
  readonly time: Date | undefined;
  /** `ce-subject`: the customer id (a service's client id for its revoked token). */
  readonly customerId: string;
  /** The NATS subject, e.g. `customer.updated.<customer_id>`. */
  readonly subject: string;
  /** The `kid` of the producer's key that signed it; undefined only with `verifier: false`. */
  readonly signedBy: string | undefined;
  /** Position in the stream. */
  readonly streamSequence: number;
  /** 1 on the first delivery. */
  readonly deliveryCount: number;
  /** The raw message, for anything else. */
  readonly msg: JsMsg;
}

/** One optional handler per event type; a type without a handler is acked and skipped. */
export type EventHandlers = {
  readonly [T in EventType]?: (event: PlatformEvents[T], meta: EventMeta) => Promise<void>;
};

export interface ConsumeEventsOptions {
  js: JetStreamClient;
  /** The stream, e.g. `CUSTOMER` or `IDENTITY`. */
  stream: string;
  /** Durable consumer name: created if missing, resumed where it left off otherwise. */
  consumer: string;
  /** Subjects to receive (default: the whole stream). More than one needs NATS 2.10. */
  subjects?: string[];
  handlers: EventHandlers;
  /**
   * Checks each event's proof of origin (`createEventVerifier`, trusting the
   * producers of this stream). `false` turns verification off: any client
   * that can publish on the stream's subjects then reaches your handlers.
   */
  verifier: EventVerifier | false;
  /** Delay before a failed event is redelivered; default 1 s doubling per delivery, at most 60 s. */
  retryDelayMs?: (deliveryCount: number) => number;
  /**
   * Told about every event not handled: a handler error (redelivered later),
   * an event whose signature does not verify (EventSignatureError; terminated),
   * keys that cannot be fetched (EventKeysUnavailableError; redelivered later),
   * an unknown `ce-type` or an undecodable payload (both terminated, never
   * redelivered), a failed ack (redelivered later), a failed pull (retried
   * after a second; `msg` is undefined).
   */
  onError?: (err: unknown, msg: JsMsg | undefined) => void;
  /** Messages fetched per pull request; default 64. */
  maxMessages?: number;
  /** How long one pull request waits for messages (at least 1000 ms, the default); a stop waits for it. */
  maxWaitMs?: number;
  /** Settings for a consumer created here (e.g. `ack_wait`, `deliver_policy`). */
  consumerConfig?: Partial<ConsumerConfig>;
}

export interface EventConsumer extends AsyncDisposable {
  /** Events terminated because their signature did not verify. */
  readonly rejected: number;
  /** Stops pulling; resolves once the events already delivered are handled and acked (about `maxWaitMs` at most when idle). */
  stop(): Promise<void>;
  /** Resolves when consuming ends: after stop(), or rejects if it failed. */
  readonly done: Promise<void>;
}

// The stream or consumer is gone, or the connection closed: retrying cannot help.
function isPermanent(err: unknown): boolean {
  return (
    (err instanceof JetStreamApiError &&
      (err.code === JetStreamApiCodes.ConsumerNotFound || err.code === JetStreamApiCodes.StreamNotFound)) ||
    (err instanceof Error && err.name === "ClosedConnectionError")
  );
}

const defaultRetryDelay = (deliveryCount: number) => Math.min(60_000, 1_000 * 2 ** Math.max(0, deliveryCount - 1));

/**
 * Consumes the platform's events from a durable JetStream consumer, one at a
 * time in stream order, decoding each by `ce-type` for its typed handler.
 */
export async function consumeEvents(opts: ConsumeEventsOptions): Promise<EventConsumer> {
  const { js, stream, consumer: durable, subjects, handlers } = opts;
  // Plain JavaScript can leave it out: that must not turn verification off.
  if (opts.verifier === undefined) {
    throw new TypeError(
      "consumeEvents: verifier is required (createEventVerifier, or false to accept unsigned events)",
    );
  }
  const retryDelayMs = opts.retryDelayMs ?? defaultRetryDelay;
  const report = opts.onError ?? (() => {});
  const jsm = await js.jetstreamManager();
  const filter: Partial<ConsumerConfig> =
    subjects === undefined
      ? {}
      : subjects.length === 1
        ? { filter_subject: subjects[0] }
        : { filter_subjects: subjects };
  try {
    await jsm.consumers.info(stream, durable);
  } catch (err) {
    if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.ConsumerNotFound)) throw err;
    await jsm.consumers.add(stream, {
      durable_name: durable,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ...filter,
      ...opts.consumerConfig,
    });
  }
  const pull = await js.consumers.get(stream, durable);
  const maxMessages = opts.maxMessages ?? 64;
  const maxWaitMs = Math.max(1_000, opts.maxWaitMs ?? 1_000);
  const dispatch = handlers as Record<string, ((event: unknown, meta: EventMeta) => Promise<void>) | undefined>;
  let stopping = false;
  let rejected = 0;

  const handle = async (m: JsMsg) => {
    let signedBy: string | undefined;
    if (opts.verifier) {
      try {
        signedBy = (await opts.verifier.verify(m)).kid;
      } catch (err) {
        if (err instanceof EventKeysUnavailableError) {
          m.nak(retryDelayMs(m.info.deliveryCount));
        } else {
          m.term();
          rejected++;
        }
        const id = m.headers?.get(CE_ID) || "(no ce-id)";
        report(
          err instanceof EventSignatureError
            ? new EventSignatureError(
                err.reason,
                [`event ${id} on ${m.subject}`, err.detail].filter(Boolean).join(": "),
                { cause: err.cause },
              )
            : err,
          m,
        );
        return;
      }
    }
    const ce = readCloudEvent(m.headers);
    const type = ce.type;
    if (!isEventType(type)) {
      m.term();
      report(new Error(`unknown ${CE_TYPE} "${type}" on ${m.subject}`), m);
      return;
    }
    const handler = dispatch[type];
    if (!handler) {
      m.ack();
      return;
    }
    let event: unknown;
    try {
      event = fromBinary(eventSchemas[type], m.data);
    } catch (err) {
      m.term();
      report(err, m);
      return;
    }
    const meta: EventMeta = {
      id: ce.id,
      type,
      source: ce.source,
      time: ce.time,
      customerId: ce.subject,
      subject: m.subject,
      signedBy,
      streamSequence: m.seq,
      deliveryCount: m.info.deliveryCount,
      msg: m,
    };
    try {
      await handler(event, meta);
    } catch (err) {
      m.nak(retryDelayMs(m.info.deliveryCount));
      report(err, m);
      return;
    }
    // An unconfirmed ack means the event may come again, which idempotent handlers absorb.
    await m.ackAck().catch((err: unknown) => report(err, m));
  };

  // Batches of fetch() rather than consume(): a stop then waits for the open
  // pull request to be filled or to expire and handles what it delivered, so
  // no event is left with a consumer that is gone (it would come back only
  // after ack_wait, behind later ones).
  const done = (async () => {
    while (!stopping) {
      try {
        const batch = await pull.fetch({ max_messages: maxMessages, expires: maxWaitMs });
        for await (const m of batch) await handle(m);
      } catch (err) {
        if (stopping || isPermanent(err)) throw err;
        report(err, undefined);
        // A deleted consumer shows up as a failed pull; it ends consuming.
        const gone = await jsm.consumers.info(stream, durable).then(
          () => undefined,
          (e: unknown) => (isPermanent(e) ? e : undefined),
        );
        if (gone) throw gone;
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  })();
  // stop() awaits it; a failure before that must not be an unhandled rejection.
  done.catch(() => {});

  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopping = true;
    stopped ??= done.catch(() => {});
    return stopped;
  };
  return {
    stop,
    done,
    get rejected() {
      return rejected;
    },
    [Symbol.asyncDispose]: stop,
  };
}
