/**
 * Erasing a customer's account: AuthService.DeleteAccount (the customer,
 * their password shown) and AdminService.DeleteIdentity / `identities
 * delete` (an operator) run this one function. In one transaction: every
 * session revoked (TokensRevoked, reason ACCOUNT_DELETED) and the refresh
 * tokens deleted; the identity's codes, the mail queued to its addresses,
 * its CustomerEmailVerified outbox rows (they carry the email) and
 * the login throttle of its email deleted; the identity row replaced by a
 * tombstone (deleted_identities, ids only); CustomerDeleted and
 * AuditRecorded written; and a purge of the customer's
 * `customer.email_verified` subject from the identity stream requested, to
 * run once CustomerDeleted is published (runtime stream-purge.ts).
 */
import { CustomerEmailVerifiedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { requestStreamPurge } from "@customer-platform/runtime/stream-purge";
import { and, eq, inArray, isNull, sql } from "drizzle-orm";
import type { AccountChange, AccountChangeContext } from "./accounts.js";
import {
  authorizationRequests,
  deletedIdentities,
  identities,
  mailOutbox,
  oneTimeCodes,
  outbox,
  refreshTokens,
} from "./db/schema.js";
import { type AuditActor, DeletedBy, emitAuditRecorded, emitCustomerDeleted, TokenRevocationReason } from "./events.js";
import { normalizeEmail } from "./routes/credentials.js";
import { revokeSessions } from "./sessions.js";
import { loginThrottleKey, unlockKey } from "./throttle.js";

/** Who erases: the customer (DeleteAccount) or an operator (AdminService, the CLI). */
export type Eraser =
  | { readonly by: "customer"; readonly actor: AuditActor & { kind: "customer" } }
  | { readonly by: "admin"; readonly actor: AuditActor };

/**
 * Erases the account of `customerId`: `changed` when it was erased now,
 * `unchanged` when it had been already (the tombstone stays, nothing is
 * written), `not_found` when there never was such an account.
 */
export async function eraseIdentity(
  ctx: AccountChangeContext,
  customerId: string,
  eraser: Eraser,
): Promise<AccountChange> {
  const { now, events } = ctx;
  // As the service writes ids (lower case): the purge must name the subjects the events were published on.
  customerId = customerId.toLowerCase();
  return ctx.db.transaction(async (tx) => {
    // Locked first: a sign-in or a second erasure meanwhile waits, then finds no identity.
    const [identity] = await tx
      .select({ email: identities.email })
      .from(identities)
      .where(eq(identities.customerId, customerId))
      .for("update");
    if (!identity) {
      const [tombstone] = await tx
        .select({ customerId: deletedIdentities.customerId })
        .from(deletedIdentities)
        .where(eq(deletedIdentities.customerId, customerId));
      return tombstone ? "unchanged" : "not_found";
    }
    await revokeSessions(tx, ctx, { customerId }, TokenRevocationReason.ACCOUNT_DELETED, now);
    await tx.delete(refreshTokens).where(eq(refreshTokens.customerId, customerId));
    // Its sign-ins in progress or done at the authorization endpoint (their browser's address and User-Agent).
    await tx.delete(authorizationRequests).where(eq(authorizationRequests.customerId, customerId));
    // Codes name the addresses mailed for this identity (an email change's new one); those mails go too.
    const codes = await tx
      .delete(oneTimeCodes)
      .where(eq(oneTimeCodes.customerId, customerId))
      .returning({ email: oneTimeCodes.email });
    const email = normalizeEmail(identity.email);
    const addresses = [...new Set([email, ...codes.flatMap((c) => (c.email ? [normalizeEmail(c.email)] : []))])];
    await tx
      .delete(mailOutbox)
      .where(
        and(
          isNull(mailOutbox.sentAt),
          isNull(mailOutbox.givenUpAt),
          inArray(sql`lower(${mailOutbox.recipient})`, addresses),
        ),
      );
    // They carry the email. Those not yet in the stream must never get there (the purge would not find
    // them); those published are in the stream until the purge, and need not stay in the outbox meanwhile.
    await tx
      .delete(outbox)
      .where(and(eq(outbox.type, CustomerEmailVerifiedSchema.typeName), eq(outbox.ceSubject, customerId)));
    await unlockKey(tx, loginThrottleKey(email));
    await tx.delete(identities).where(eq(identities.customerId, customerId));
    await tx.insert(deletedIdentities).values({ customerId, deletedAt: now, deletedBy: eraser.by });
    const deletedEventId = await emitCustomerDeleted(
      tx,
      events,
      { customerId, deletedBy: eraser.by === "customer" ? DeletedBy.CUSTOMER : DeletedBy.ADMIN },
      now,
    );
    await emitAuditRecorded(
      tx,
      events,
      { actor: eraser.actor, action: "identity.delete", target: { kind: "customer", id: customerId } },
      now,
    );
    // Published events that carry the email (CustomerEmailVerified) leave the stream once CustomerDeleted is out.
    await requestStreamPurge(tx, {
      stream: events.stream,
      subject: `${events.subjectPrefix}.customer.email_verified.${customerId}`,
      afterEventId: deletedEventId,
      now,
    });
    return "changed";
  });
}
