/**
 * The table of a service's event signing keys. Each service includes it in
 * its own drizzle schema (`export { eventKeys } from
 * ".../runtime/event-keys-schema.js"`), as it does the outbox, so the key
 * lives in that service's own database and every instance signs with it.
 */
import { jsonb, pgTable, text, timestamp } from "drizzle-orm/pg-core";

/** Ed25519 keys the service signs its events with; the newest signs, every one is published. */
export const eventKeys = pgTable("event_keys", {
  /** The key id (`kid`): the public key's JWK thumbprint (RFC 7638). */
  kid: text("kid").primaryKey(),
  /** The private JWK; never logged, never served. */
  privateJwk: jsonb("private_jwk").notNull(),
  /** The public JWK, as served in `/.well-known/event-keys.json`. */
  publicJwk: jsonb("public_jwk").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true, precision: 6 }).notNull(),
});

export type EventKeyRow = typeof eventKeys.$inferSelect;
