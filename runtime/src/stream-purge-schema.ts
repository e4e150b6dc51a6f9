/**
 * Stream purges waiting to run (stream-purge.ts): personal data to remove
 * from a JetStream stream after an erasure. Each service includes the table
 * in its own drizzle schema, as it does the outbox. A purge runs once the
 * outbox event named by `after_event_id` (the erasure's tombstone, written in
 * the same transaction) is published: every earlier event on the subject is
 * in the stream by then, so none lands after the purge.
 */
import { index, integer, pgTable, text, timestamp, uuid } from "drizzle-orm/pg-core";

export const streamPurges = pgTable(
  "stream_purges",
  {
    id: uuid("id").primaryKey(),
    /** The JetStream stream, e.g. `CUSTOMER`. */
    stream: text("stream").notNull(),
    /** The subject whose messages are purged, e.g. `customer.updated.<customer_id>`. */
    subject: text("subject").notNull(),
    /** The outbox event that must be published first. */
    afterEventId: uuid("after_event_id").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, precision: 6 }).notNull(),
    doneAt: timestamp("done_at", { withTimezone: true, precision: 6 }),
    /** Failed attempts, for operators. */
    attempts: integer("attempts").notNull().default(0),
  },
  (t) => [index("stream_purges_pending_idx").on(t.createdAt)],
);

export type StreamPurgeRow = typeof streamPurges.$inferSelect;
