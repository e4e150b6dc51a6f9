/**
 * The mail outbox table. A service that sends mail includes it in its own
 * drizzle schema (`export { mailOutbox } from ".../runtime/mail/schema.js"`),
 * as it does the event outbox, so it lands in that service's own database
 * and migrations; `enqueueMail` writes it in the caller's transaction and the
 * deliverer (deliverer.ts) sends what was committed.
 */

import { sql } from "drizzle-orm";
import { index, integer, jsonb, pgTable, text, timestamp, uuid } from "drizzle-orm/pg-core";
import type { HousekeepingTask } from "../housekeeping.js";

const tstz = (name: string) => timestamp(name, { withTimezone: true, precision: 6 });

/** One mail waiting for (or done with) the deliverer. */
export const mailOutbox = pgTable(
  "mail_outbox",
  {
    /** UUIDv7; the mail's Message-ID is derived from it, so every attempt sends the same one. */
    id: uuid("id").primaryKey(),
    /** The address the mail goes to; never logged. */
    recipient: text("recipient").notNull(),
    /** The template's name, e.g. `verification-code`: what the logs name. */
    template: text("template").notNull(),
    /** A BCP 47 tag the renderer understands, e.g. `en`, `de`. */
    locale: text("locale").notNull(),
    /**
     * What the template fills in (a one-time code, a product name); never
     * logged. Erased (null) once the mail is sent or given up, so a code does
     * not outlive its delivery in the database.
     */
    data: jsonb("data").$type<Record<string, unknown>>(),
    createdAt: tstz("created_at").notNull().defaultNow(),
    /** Failed attempts so far. */
    attempts: integer("attempts").notNull().default(0),
    /** Not before this time (backoff after a failure). */
    nextAttemptAt: tstz("next_attempt_at").notNull().defaultNow(),
    /** Why the last attempt failed, without the server's text (it may quote the address): e.g. `smtp 550 at RCPT TO`. */
    lastError: text("last_error"),
    /** When the mail server accepted it. */
    sentAt: tstz("sent_at"),
    /** When the deliverer stopped trying: a permanent rejection, an unrenderable mail, or too old. */
    givenUpAt: tstz("given_up_at"),
  },
  // The deliverer only ever scans what is pending, soonest first.
  (t) => [index("mail_outbox_pending_idx").on(t.nextAttemptAt).where(sql`sent_at is null and given_up_at is null`)],
);

export type MailOutboxRow = typeof mailOutbox.$inferSelect;

/** Deletes mails sent or given up more than `days` ago (for the service's housekeeping list). */
export const mailOutboxCleanup = (days: number): HousekeepingTask => ({
  name: "mail_outbox",
  sql: `delete from mail_outbox where id in (select id from mail_outbox where coalesce(sent_at, given_up_at) < now() - interval '${days} days' limit 10000)`,
});
