/**
 * The profile's email follows the identity's verified email: the identity
 * service publishes identity.v1.CustomerEmailVerified (signed) whenever a
 * customer proves an address, and the consumer of identity events
 * (identity-events.ts) applies it here, in one transaction: verified_emails
 * takes it if its email_version is above the one stored (so redeliveries and
 * reordering change nothing), and a profile with another email gets it, with
 * a new version and a customer.v1.CustomerUpdated (update_mask ["email"]) in
 * the outbox. An erased customer's email is not kept (erasure.ts).
 */
import type { CustomerEmailVerified } from "@customer-platform/gen/identity/v1/events_pb.js";
import { enqueueEvent } from "@customer-platform/runtime/outbox-writer";
import type { IdentitySubjects } from "@customer-platform/sdk/subjects";
import { eq, sql } from "drizzle-orm";
import { toCustomer } from "./customer.js";
import { type CustomerRow, customers, erasures, verifiedEmails } from "./db/schema.js";
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
  | "updated"
  /** The customer was erased: nothing is stored. */
  | "erased";

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
    // A late redelivery (or a replay) must not store an erased customer's address again.
    const [erased] = await tx.select().from(erasures).where(eq(erasures.customerId, customerId));
    if (erased) return "erased";
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
export function verifiedEmailOf(
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
