/**
 * The identity events the customer service acts on, through one durable
 * JetStream consumer on the identity stream filtered to
 * `<prefix>.customer.>` (one filter subject: NATS 2.9 has no
 * filter_subjects), so an outage or a restart loses nothing and one
 * customer's events are applied in stream order:
 *
 * - identity.v1.CustomerEmailVerified: the profile's email follows the
 *   verified one (verified-email.ts);
 * - identity.v1.CustomerDeleted: the customer is erased (erasure.ts).
 *
 * The other events under that prefix (sign-ins, suspensions, password
 * changes) are acked and skipped. Each event is verified against the
 * identity service's event keys first (a forged one is terminated and
 * logged, never applied); it is acked after its transaction commits, and a
 * failure (the database away) is redelivered later with a growing delay.
 */
import type { CustomerDeleted } from "@customer-platform/gen/identity/v1/events_pb.js";
import { loggableError } from "@customer-platform/runtime/errors";
import type { Logger } from "@customer-platform/runtime/logger";
import type { Background } from "@customer-platform/runtime/service-host";
import { createSupervisedLoop } from "@customer-platform/sdk/background";
import { CE_ID } from "@customer-platform/sdk/cloudevents";
import {
  EventKeysUnavailableError,
  EventSignatureError,
  type EventVerifier,
} from "@customer-platform/sdk/event-signing";
import { consumeEvents, type EventConsumer } from "@customer-platform/sdk/events";
import { type IdentitySubjects, identitySubjects } from "@customer-platform/sdk/subjects";
import { type JsMsg, jetstream } from "@nats-io/jetstream";
import { type NatsConnection, nanos } from "@nats-io/transport-node";
import type { ErasureOutcome } from "./erasure.js";
import { type EmailOutcome, type VerifiedEmail, verifiedEmailOf } from "./verified-email.js";

/** How long JetStream waits for an identity event's ack before handing it out again. */
export const IDENTITY_EVENT_ACK_WAIT_MS = 10_000;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The customer a CustomerDeleted erases, or why it cannot be applied (a
 * producer's bug). The signature covers the payload, the subject and
 * `ce-subject`; all three must name the customer.
 */
function deletedCustomerOf(
  event: CustomerDeleted,
  subject: string,
  ceSubject: string,
  subjects: IdentitySubjects,
): string | { error: string } {
  const { customerId } = event;
  if (!UUID.test(customerId)) return { error: "customer_id is not a UUID" };
  if (subject !== subjects.customerDeleted(customerId)) return { error: "the subject names another customer" };
  if (ceSubject !== customerId) return { error: "ce-subject names another customer" };
  return customerId.toLowerCase();
}

export interface IdentityEventConsumerOptions {
  /** The process's connection; never closed here. */
  nats: NatsConnection;
  /** The identity service's stream and subject prefix. */
  stream: string;
  subjectPrefix: string;
  /** The durable consumer's name: created if missing, resumed otherwise. */
  durable: string;
  /** Trusts the identity service's event keys. */
  verifier: EventVerifier;
  applyVerifiedEmail(verified: VerifiedEmail): Promise<EmailOutcome>;
  erase(customerId: string): Promise<ErasureOutcome>;
  logger: Logger;
  /** How long one pull waits for events (default 1000 ms); a stop waits for it. */
  maxWaitMs?: number;
  /** Delay before a failed event comes again; default 1 s doubling per delivery, at most 60 s. */
  retryDelayMs?: (deliveryCount: number) => number;
}

export interface IdentityEventConsumer extends Background {
  /** Events terminated because their signature did not verify. */
  readonly rejected: number;
}

/**
 * Consumes the identity events with the SDK's consumeEvents (verification,
 * ack after the handler, redelivery with backoff), restarted under a
 * supervised loop while NATS or the identity stream is away (one warning per
 * outage).
 */
export function createIdentityEventConsumer(opts: IdentityEventConsumerOptions): IdentityEventConsumer {
  const { stream, durable, verifier, logger } = opts;
  const subjects = identitySubjects(opts.subjectPrefix);
  const maxWaitMs = Math.max(1_000, opts.maxWaitMs ?? 1_000);
  let rejectedBefore = 0;
  let current: EventConsumer | undefined;

  const onError = (err: unknown, m: JsMsg | undefined) => {
    const log = m
      ? logger.child({
          eventId: m.headers?.get(CE_ID) || "(no ce-id)",
          subject: m.subject,
          delivery: m.info.deliveryCount,
        })
      : logger;
    if (err instanceof EventSignatureError) {
      log.error(
        { reason: err.reason, detail: err.detail },
        "identity event refused: not signed by the identity service",
      );
    } else if (err instanceof EventKeysUnavailableError) {
      log.warn({ err: err.message }, "identity event not checked; retrying");
    } else {
      log.warn({ err: loggableError(err) }, "identity event not applied; retrying");
    }
  };

  // A producer's bug: redelivering would not help. Acked, so dropped.
  const malformed = (meta: { id: string; subject: string }, reason: string) =>
    logger.error({ eventId: meta.id, subject: meta.subject, reason }, "identity event dropped: malformed");

  const loop = createSupervisedLoop({
    name: "identity event consumer",
    logger,
    async step(signal) {
      const consumer = await consumeEvents({
        js: jetstream(opts.nats),
        stream,
        consumer: durable,
        // One filter subject: NATS 2.9 has no filter_subjects.
        subjects: [subjects.customerEvents],
        verifier,
        maxWaitMs,
        // An event handed to a pull request that an outage cut off comes again after the ack wait:
        // 10 s rather than JetStream's 30 (a consumer created by an earlier build keeps its own).
        // Handlers take milliseconds and are idempotent, so an early redelivery costs nothing.
        consumerConfig: { ack_wait: nanos(IDENTITY_EVENT_ACK_WAIT_MS) },
        ...(opts.retryDelayMs && { retryDelayMs: opts.retryDelayMs }),
        onError,
        handlers: {
          "identity.v1.CustomerEmailVerified": async (event, meta) => {
            const verified = verifiedEmailOf(event, meta.subject, meta.customerId, subjects);
            if (typeof verified === "string") return malformed(meta, verified);
            const outcome = await opts.applyVerifiedEmail(verified);
            logger.debug(
              { customerId: verified.customerId, version: verified.emailVersion, outcome },
              "verified email",
            );
          },
          "identity.v1.CustomerDeleted": async (event, meta) => {
            const customerId = deletedCustomerOf(event, meta.subject, meta.customerId, subjects);
            if (typeof customerId !== "string") return malformed(meta, customerId.error);
            const outcome = await opts.erase(customerId);
            logger.info({ customerId, eventId: meta.id, outcome }, "customer erased");
          },
        },
      });
      current = consumer;
      const stop = () => void consumer.stop();
      signal.addEventListener("abort", stop, { once: true });
      try {
        // Resolves after stop(); rejects when the stream or the consumer went away (then bound again).
        await consumer.done;
      } finally {
        signal.removeEventListener("abort", stop);
        rejectedBefore += consumer.rejected;
        current = undefined;
      }
      return signal.aborted ? "done" : 0;
    },
    failureMessage: () => `identity event consumer cannot read ${stream}; retrying`,
  });
  return {
    start: () => loop.start(),
    stop: () => loop.stop(maxWaitMs + 5_000),
    get rejected() {
      return rejectedBefore + (current?.rejected ?? 0);
    },
  };
}
