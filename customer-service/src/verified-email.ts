/**
 * The profile's email follows the identity's verified email: the identity
 * service publishes identity.v1.CustomerEmailVerified (signed) whenever a
 * customer proves an address, and this consumer applies it.
 *
 * A durable JetStream consumer on the identity stream, filtered to
 * `<prefix>.customer.email_verified.>`, so an outage or a restart loses
 * nothing: it resumes where it left off. Each event is verified against the
 * identity service's event keys first (a forged one is terminated and
 * logged, never applied), then applied in one transaction: verified_emails
 * takes it if its email_version is above the one stored (so redeliveries and
 * reordering change nothing), and a profile with another email gets it, with
 * a new version and a customer.v1.CustomerUpdated (update_mask ["email"]) in
 * the outbox. It is acked after commit; a failure is redelivered later.
 */
import type { CustomerEmailVerified } from "@customer-platform/gen/identity/v1/events_pb.js";
import { loggableError } from "@customer-platform/runtime/errors";
import type { Logger } from "@customer-platform/runtime/logger";
import { enqueueEvent } from "@customer-platform/runtime/outbox-writer";
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
import type { NatsConnection } from "@nats-io/transport-node";
import { eq, sql } from "drizzle-orm";
import { toCustomer } from "./customer.js";
import { type CustomerRow, customers, verifiedEmails } from "./db/schema.js";
import type { CustomerServiceDeps } from "./deps.js";
import { customerUpdated } from "./events.js";

/** What applying one event did. */
export type EmailOutcome =
  /** Its version is not above the stored one: a redelivery, or older than one applied. */
  | "stale"
  /** Stored for a customer without a profile: RegisterCustomer takes it. */
  | "recorded"
  /** Stored; the profile had this email already. */
  | "unchanged"
  /** Stored, and the profile's email changed (CustomerUpdated written). */
  | "updated";

/** A verified email as an event states it. */
export interface VerifiedEmail {
  readonly customerId: string;
  readonly email: string;
  readonly emailVersion: number;
}

/**
 * Applies a verified email in one transaction. The upsert of verified_emails
 * comes first and locks the customer's row, as RegisterCustomer's statement
 * does: a registration running meanwhile either committed its profile before
 * (and is seen here) or reads this email after.
 */
export async function applyVerifiedEmail(
  deps: Pick<CustomerServiceDeps, "db" | "events" | "now">,
  verified: VerifiedEmail,
): Promise<EmailOutcome> {
  const { customerId, email, emailVersion } = verified;
  return deps.db.transaction(async (tx) => {
    const now = deps.now();
    const newer = await tx
      .insert(verifiedEmails)
      .values({ customerId, email, emailVersion, updatedAt: now })
      .onConflictDoUpdate({
        target: verifiedEmails.customerId,
        set: { email, emailVersion, updatedAt: now },
        setWhere: sql`${verifiedEmails.emailVersion} < excluded.email_version`,
      })
      .returning({ customerId: verifiedEmails.customerId });
    if (newer.length === 0) return "stale";
    const [current] = await tx.select().from(customers).where(eq(customers.customerId, customerId)).for("update");
    if (!current) return "recorded";
    if (current.email === email) return "unchanged";
    const updated: CustomerRow = { ...current, email, version: current.version + 1, updateTime: now };
    await tx
      .update(customers)
      .set({ email, version: updated.version, updateTime: now })
      .where(eq(customers.customerId, customerId));
    await enqueueEvent(tx, customerUpdated(deps.events, toCustomer(updated), ["email"], now), deps.events);
    return "updated";
  });
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The verified email an event states, or why it cannot be applied (a
 * producer's bug: redelivering would not help). The signature covers the
 * payload, the subject and `ce-subject`; all three must name the customer.
 */
function verifiedEmailOf(
  event: CustomerEmailVerified,
  subject: string,
  ceSubject: string,
  subjects: IdentitySubjects,
): VerifiedEmail | string {
  const { customerId, email, emailVersion } = event;
  if (!UUID.test(customerId)) return "customer_id is not a UUID";
  if (subject !== subjects.customerEmailVerified(customerId)) return "the subject names another customer";
  if (ceSubject !== customerId) return "ce-subject names another customer";
  if (email === "" || email.length > 254) return "email is empty or too long";
  if (emailVersion < 1n || emailVersion > BigInt(Number.MAX_SAFE_INTEGER)) return "email_version is out of range";
  return { customerId, email, emailVersion: Number(emailVersion) };
}

export interface VerifiedEmailConsumerOptions {
  /** The process's connection; never closed here. */
  nats: NatsConnection;
  /** The identity service's stream and subject prefix. */
  stream: string;
  subjectPrefix: string;
  /** The durable consumer's name: created if missing, resumed otherwise. */
  durable: string;
  /** Trusts the identity service's event keys. */
  verifier: EventVerifier;
  apply(verified: VerifiedEmail): Promise<EmailOutcome>;
  logger: Logger;
  /** How long one pull waits for events (default 1000 ms); a stop waits for it. */
  maxWaitMs?: number;
  /** Delay before a failed event comes again; default 1 s doubling per delivery, at most 60 s. */
  retryDelayMs?: (deliveryCount: number) => number;
}

export interface VerifiedEmailConsumer extends Background {
  /** Events terminated because their signature did not verify. */
  readonly rejected: number;
}

/**
 * Consumes CustomerEmailVerified with the SDK's consumeEvents (verification,
 * ack after the handler, redelivery with backoff), restarted under a
 * supervised loop while NATS or the identity stream is away (one warning per
 * outage).
 */
export function createVerifiedEmailConsumer(opts: VerifiedEmailConsumerOptions): VerifiedEmailConsumer {
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
        "verified email refused: not signed by the identity service",
      );
    } else if (err instanceof EventKeysUnavailableError) {
      log.warn({ err: err.message }, "verified email not checked; retrying");
    } else {
      log.warn({ err: loggableError(err) }, "verified email not applied; retrying");
    }
  };

  const loop = createSupervisedLoop({
    name: "verified email consumer",
    logger,
    async step(signal) {
      const consumer = await consumeEvents({
        js: jetstream(opts.nats),
        stream,
        consumer: durable,
        // One filter subject: NATS 2.9 has no filter_subjects.
        subjects: [subjects.ofType("identity.v1.CustomerEmailVerified")],
        verifier,
        maxWaitMs,
        ...(opts.retryDelayMs && { retryDelayMs: opts.retryDelayMs }),
        onError,
        handlers: {
          "identity.v1.CustomerEmailVerified": async (event, meta) => {
            const verified = verifiedEmailOf(event, meta.subject, meta.customerId, subjects);
            if (typeof verified === "string") {
              // A producer's bug: redelivering would not help. Acked, so dropped.
              logger.error(
                { eventId: meta.id, subject: meta.subject, reason: verified },
                "verified email dropped: malformed event",
              );
              return;
            }
            const outcome = await opts.apply(verified);
            logger.debug(
              { customerId: verified.customerId, version: verified.emailVersion, outcome },
              "verified email",
            );
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
    failureMessage: () => `verified email consumer cannot read ${stream}; retrying`,
  });
  return {
    start: () => loop.start(),
    stop: () => loop.stop(maxWaitMs + 5_000),
    get rejected() {
      return rejectedBefore + (current?.rejected ?? 0);
    },
  };
}
