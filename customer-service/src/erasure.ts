/**
 * Erasure: on the identity service's identity.v1.CustomerDeleted, the
 * customer service erases what it holds of the customer, in one transaction:
 * the profile, its verified email, and the outbox rows of the events about
 * the profile (they carry it); it records the erasure (`erasures`, ids only)
 * and, the first time only, writes customer.v1.CustomerErased (the
 * tombstone) and asks for the customer's registered and updated subjects to
 * be purged from the stream once the tombstone is published
 * (runtime stream-purge.ts). A redelivery finds the tombstone and changes
 * nothing. RegisterCustomer refuses an erased id (register-customer.ts).
 *
 * Erasure and registration exclude each other per customer with a
 * transaction-level advisory lock: the erasure takes it exclusively first;
 * a registration's statement takes it shared with a try, and writes nothing
 * when the erasure holds it (then it looks again, and sees the erasure). A
 * registration that took it first finishes before the erasure goes on, and
 * its profile is erased with the rest.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { CustomerErasedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { uuidv7 } from "@customer-platform/runtime/ids";
import type { Outbox } from "@customer-platform/runtime/outbox";
import { enqueueEvent, type OutboxEvent, outboxEvent } from "@customer-platform/runtime/outbox-writer";
import { requestStreamPurge } from "@customer-platform/runtime/stream-purge";
import { customerSubjects } from "@customer-platform/sdk/subjects";
import { and, eq, inArray, sql } from "drizzle-orm";
import { customers, erasures, outbox as outboxTable, verifiedEmails } from "./db/schema.js";
import type { CustomerServiceDeps } from "./deps.js";

/**
 * The advisory lock (two-key form: this class, and `hashtext(customer_id)`)
 * that orders an erasure and a registration of one customer. The platform's
 * other advisory locks are single-key (customer-service/src/outbox.ts).
 */
export const ERASURE_LOCK_CLASS = 7_310_011;

/** What applying a CustomerDeleted did. */
export type ErasureOutcome =
  /** Erased now: the tombstone is written and the purges requested. */
  | "erased"
  /** Erased before: nothing changed. */
  | "already erased";

/** customer.v1.CustomerErased, as an outbox event. */
export function customerErased(outbox: Outbox, customerId: string, occurTime: Date): OutboxEvent {
  const eventId = uuidv7();
  const event = create(CustomerErasedSchema, { eventId, occurTime: timestampFromDate(occurTime), customerId });
  return outboxEvent(outbox, CustomerErasedSchema, event, {
    eventId,
    occurTime,
    subject: customerSubjects(outbox.subjectPrefix).erased(customerId),
    ceSubject: customerId,
  });
}

/** Erases the customer in one transaction; idempotent. */
export async function eraseCustomer(
  deps: Pick<CustomerServiceDeps, "db" | "events" | "now">,
  customerId: string,
): Promise<ErasureOutcome> {
  const subjects = customerSubjects(deps.events.subjectPrefix);
  const profileSubjects = [subjects.registered(customerId), subjects.updated(customerId)];
  return deps.db.transaction(async (tx) => {
    const now = deps.now();
    // First: a registration under way finishes (and is erased below), a later one sees the erasure.
    await tx.execute(sql`select pg_advisory_xact_lock(${ERASURE_LOCK_CLASS}::int, hashtext(${customerId}::text))`);
    await tx.delete(customers).where(eq(customers.customerId, customerId));
    await tx.delete(verifiedEmails).where(eq(verifiedEmails.customerId, customerId));
    // The events about the profile carry it: unpublished ones never leave, published ones are
    // not kept for housekeeping (the stream's copies are purged after the tombstone).
    await tx
      .delete(outboxTable)
      .where(and(eq(outboxTable.ceSubject, customerId), inArray(outboxTable.subject, profileSubjects)));
    const recorded = await tx
      .insert(erasures)
      .values({ customerId, erasedAt: now })
      .onConflictDoNothing()
      .returning({ customerId: erasures.customerId });
    if (recorded.length === 0) return "already erased";
    const tombstone = customerErased(deps.events, customerId, now);
    await enqueueEvent(tx, tombstone, deps.events);
    for (const subject of profileSubjects) {
      await requestStreamPurge(tx, { stream: deps.events.stream, subject, afterEventId: tombstone.eventId, now });
    }
    return "erased";
  });
}
