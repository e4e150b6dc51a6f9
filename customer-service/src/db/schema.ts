/**
 * The Customer Database. `npm run db:generate` turns changes here into a SQL
 * migration under ./migrations; the service applies migrations at start.
 */
import { sql } from "drizzle-orm";
import { bigint, jsonb, pgTable, text, timestamp, uniqueIndex, uuid } from "drizzle-orm/pg-core";

export { eventKeys } from "@customer-platform/runtime/event-keys-schema";
export { outbox } from "@customer-platform/runtime/outbox-schema";

/** A postal address as stored (the JSON form of customer.v1.PostalAddress). */
export interface StoredAddress {
  addressLines: string[];
  locality: string;
  region: string;
  postalCode: string;
  countryCode: string;
}

export const customers = pgTable(
  "customers",
  {
    customerId: uuid("customer_id").primaryKey(),
    email: text("email").notNull(),
    givenName: text("given_name").notNull(),
    familyName: text("family_name").notNull(),
    phoneNumber: text("phone_number"),
    address: jsonb("address").$type<StoredAddress>(),
    version: bigint("version", { mode: "number" }).notNull().default(1),
    createTime: timestamp("create_time", { withTimezone: true, precision: 6 }).notNull(),
    updateTime: timestamp("update_time", { withTimezone: true, precision: 6 }).notNull(),
  },
  // No two customers share an email, whatever its case.
  (t) => [uniqueIndex("customers_email_key").on(sql`lower(${t.email})`)],
);

export type CustomerRow = typeof customers.$inferSelect;
