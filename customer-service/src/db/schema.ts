/**
 * The Customer Database. `npm run db:generate` turns changes here into a SQL
 * migration under ./migrations; the service applies migrations at start.
 */
import { bigint, jsonb, pgTable, text, timestamp, uuid } from "drizzle-orm/pg-core";

export { eventKeys } from "@customer-platform/runtime/event-keys-schema";
export { outbox } from "@customer-platform/runtime/outbox-schema";
export { streamPurges } from "@customer-platform/runtime/stream-purge-schema";

/** A postal address as stored (the JSON form of customer.v1.PostalAddress). */
export interface StoredAddress {
  addressLines: string[];
  locality: string;
  region: string;
  postalCode: string;
  countryCode: string;
}

// The email is not unique: the identity service keeps login emails unique, and a
// change reaches each profile by event, so two profiles may briefly show one
// address (a swap). Nothing looks a profile up by email, so it has no index.
export const customers = pgTable("customers", {
  customerId: uuid("customer_id").primaryKey(),
  email: text("email").notNull(),
  givenName: text("given_name").notNull(),
  familyName: text("family_name").notNull(),
  phoneNumber: text("phone_number"),
  address: jsonb("address").$type<StoredAddress>(),
  version: bigint("version", { mode: "number" }).notNull().default(1),
  createTime: timestamp("create_time", { withTimezone: true, precision: 6 }).notNull(),
  updateTime: timestamp("update_time", { withTimezone: true, precision: 6 }).notNull(),
});

export type CustomerRow = typeof customers.$inferSelect;

/**
 * Each customer's verified login email, as the identity service last published
 * it (identity.v1.CustomerEmailVerified), whether or not the customer has a
 * profile yet: RegisterCustomer takes the email from here. `email_version` is
 * the event's; an event is applied only if its version is higher. Version 0 is
 * an access token's verified `email` claim, recorded by RegisterCustomer
 * before any event arrived: every event supersedes it.
 */
export const verifiedEmails = pgTable("verified_emails", {
  customerId: uuid("customer_id").primaryKey(),
  email: text("email").notNull(),
  emailVersion: bigint("email_version", { mode: "number" }).notNull(),
  updatedAt: timestamp("updated_at", { withTimezone: true, precision: 6 }).notNull(),
});

export type VerifiedEmailRow = typeof verifiedEmails.$inferSelect;

/**
 * Erased customers (on identity.v1.CustomerDeleted): the tombstone, ids only.
 * It proves the erasure afterwards and makes a redelivered deletion a no-op
 * (one CustomerErased per customer).
 */
export const erasures = pgTable("erasures", {
  customerId: uuid("customer_id").primaryKey(),
  erasedAt: timestamp("erased_at", { withTimezone: true, precision: 6 }).notNull(),
});
