/**
 * The transactional outbox table. Each service includes it in its own
 * drizzle schema (`export { outbox } from ".../runtime/outbox-schema.js"`),
 * so it lands in that service's own database and migrations.
 */
import { sql } from "drizzle-orm";
import { bigserial, customType, index, integer, pgTable, text, timestamp, uuid } from "drizzle-orm/pg-core";

/** bytea as Uint8Array (postgres.js hands back a Buffer, PGlite a Uint8Array). */
const bytea = customType<{ data: Uint8Array; driverData: Uint8Array }>({
  dataType: () => "bytea",
  toDriver: (value) => Buffer.from(value.buffer, value.byteOffset, value.byteLength),
  fromDriver: (value) => new Uint8Array(value.buffer, value.byteOffset, value.byteLength),
});

/** One event waiting for (or done with) the relay; `id` is the relay order. */
export const outbox = pgTable(
  "outbox",
  {
    id: bigserial("id", { mode: "bigint" }).primaryKey(),
    eventId: uuid("event_id").notNull().unique(),
    /** NATS subject, e.g. `customer.registered.<customer_id>`. */
    subject: text("subject").notNull(),
    /** The protobuf message full name (ce-type). */
    type: text("type").notNull(),
    /** ce-source, e.g. `customer-service`. */
    source: text("source").notNull(),
    /** ce-subject: the customer id. */
    ceSubject: text("ce_subject").notNull(),
    /** The event message in protobuf binary. */
    payload: bytea("payload").notNull(),
    occurTime: timestamp("occur_time", { withTimezone: true, precision: 6 }).notNull(),
    publishedAt: timestamp("published_at", { withTimezone: true, precision: 6 }),
    /** Failed publish attempts, for operators. */
    attempts: integer("attempts").notNull().default(0),
  },
  // The relay only ever scans the unsent tail.
  (t) => [index("outbox_unpublished_idx").on(t.id).where(sql`published_at is null`)],
);

export type OutboxRow = typeof outbox.$inferSelect;
