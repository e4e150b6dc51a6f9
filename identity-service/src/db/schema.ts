/**
 * The User Directory. `npm run db:generate` turns changes here into a SQL
 * migration under ./migrations; the service applies migrations at start.
 */
import { sql } from "drizzle-orm";
import { customType, index, integer, jsonb, pgTable, text, timestamp, uniqueIndex, uuid } from "drizzle-orm/pg-core";

export { outbox } from "@customer-platform/runtime/outbox-schema";

const bytea = customType<{ data: Buffer; driverData: Buffer }>({ dataType: () => "bytea" });
const tstz = (name: string) => timestamp(name, { withTimezone: true, precision: 6 });

/** A customer's credentials. The password exists only as an argon2id hash (PHC string with its parameters). */
export const identities = pgTable(
  "identities",
  {
    customerId: uuid("customer_id").primaryKey(),
    email: text("email").notNull(),
    passwordHash: text("password_hash").notNull(),
    /** "active" or "disabled"; a disabled identity cannot sign in or refresh. */
    status: text("status").notNull().default("active"),
    createdAt: tstz("created_at").notNull(),
    updatedAt: tstz("updated_at").notNull(),
    passwordChangedAt: tstz("password_changed_at").notNull(),
    lastSignInAt: tstz("last_sign_in_at"),
  },
  (t) => [uniqueIndex("identities_email_key").on(sql`lower(${t.email})`)],
);

/**
 * Failed-attempt counters per login identifier, whether or not an identity
 * has it (a counter only on identities would tell attackers which exist).
 * The key is a SHA-256 of the normalised identifier, so unknown emails typed
 * at the sign-in form are not stored.
 */
export const loginThrottles = pgTable("login_throttles", {
  key: bytea("key").primaryKey(),
  failures: integer("failures").notNull(),
  blockedUntil: tstz("blocked_until"),
  lastFailureAt: tstz("last_failure_at").notNull(),
});

/**
 * Refresh tokens, stored as SHA-256 hashes only. Rotation makes a chain per
 * sign-in (the family); reuse of a rotated token revokes the whole family.
 */
export const refreshTokens = pgTable(
  "refresh_tokens",
  {
    id: uuid("id").primaryKey(),
    tokenHash: bytea("token_hash").notNull().unique(),
    familyId: uuid("family_id").notNull(),
    parentId: uuid("parent_id"),
    customerId: uuid("customer_id").notNull(),
    clientId: text("client_id").notNull(),
    scope: text("scope").notNull(),
    createdAt: tstz("created_at").notNull(),
    expiresAt: tstz("expires_at").notNull(),
    /** Set when the token was exchanged for its successor. */
    rotatedAt: tstz("rotated_at"),
    revokedAt: tstz("revoked_at"),
    revokeReason: text("revoke_reason"),
  },
  (t) => [index("refresh_tokens_family_idx").on(t.familyId), index("refresh_tokens_customer_idx").on(t.customerId)],
);

/** Access tokens revoked before their expiry (by `jti`); rows may be dropped once expired. */
export const revokedAccessTokens = pgTable("revoked_access_tokens", {
  jti: text("jti").primaryKey(),
  expiresAt: tstz("expires_at").notNull(),
  revokedAt: tstz("revoked_at").notNull(),
});

/** Token signing keys. The newest active key signs; every key not yet retired is in the JWKS. */
export const signingKeys = pgTable("signing_keys", {
  kid: text("kid").primaryKey(),
  alg: text("alg").notNull(),
  privateJwk: jsonb("private_jwk").notNull(),
  publicJwk: jsonb("public_jwk").notNull(),
  createdAt: tstz("created_at").notNull(),
  /** After this, the key no longer signs; it stays in the JWKS until its tokens expired. */
  retiredAt: tstz("retired_at"),
});

/** OAuth clients of services (client credentials). The secret is stored only as a SHA-256 hash. */
export const clients = pgTable("clients", {
  clientId: text("client_id").primaryKey(),
  secretHash: bytea("secret_hash").notNull(),
  scopes: text("scopes").array().notNull(),
  description: text("description").notNull().default(""),
  createdAt: tstz("created_at").notNull(),
  disabledAt: tstz("disabled_at"),
});
