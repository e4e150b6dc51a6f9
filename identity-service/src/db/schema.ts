/**
 * The User Directory. `npm run db:generate` turns changes here into a SQL
 * migration under ./migrations; the service applies migrations at start.
 */
import { sql } from "drizzle-orm";
import {
  bigint,
  boolean,
  customType,
  index,
  integer,
  jsonb,
  pgTable,
  text,
  timestamp,
  uniqueIndex,
  uuid,
} from "drizzle-orm/pg-core";

export { eventKeys } from "@customer-platform/runtime/event-keys-schema";
export { mailOutbox } from "@customer-platform/runtime/mail-schema";
export { outbox } from "@customer-platform/runtime/outbox-schema";
export { streamPurges } from "@customer-platform/runtime/stream-purge-schema";

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
    /** When an operator disabled it (AdminService.DisableIdentity); null while active. */
    disabledAt: tstz("disabled_at"),
    createdAt: tstz("created_at").notNull(),
    updatedAt: tstz("updated_at").notNull(),
    passwordChangedAt: tstz("password_changed_at").notNull(),
    lastSignInAt: tstz("last_sign_in_at"),
    /**
     * When the owner proved the current email by a code (sign-up, email
     * change, verification); null for an identity from the deprecated
     * CreateCredentials until it verifies its address.
     */
    emailVerifiedAt: tstz("email_verified_at"),
    /** How many verified emails the identity has had: the version of its last CustomerEmailVerified event (0: none). */
    emailVersion: bigint("email_version", { mode: "number" }).notNull().default(0),
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
  /** Set at the consecutive-failure cap (NIST SP 800-63B 5.2.2): sign-in refused until `identity unlock` or a success. */
  lockedAt: tstz("locked_at"),
});

/**
 * Rate limits per client address (identity-service/src/rate-limit.ts): a
 * GCRA theoretical arrival time per SHA-256 of limit name and address.
 * Rows whose `tat` has passed carry no state and may be deleted.
 */
export const rateLimits = pgTable("rate_limits", {
  key: bytea("key").primaryKey(),
  tat: tstz("tat").notNull(),
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
    /** The session's audiences (RFC 8707): what its access tokens may be for; empty for rows older than audiences. */
    audiences: text("audiences").array().notNull().default(sql`'{}'::text[]`),
    createdAt: tstz("created_at").notNull(),
    expiresAt: tstz("expires_at").notNull(),
    /**
     * When the session ends however often it is refreshed (sign-in +
     * IDENTITY_SESSION_MAX_LIFETIME); the same for every row of the family,
     * which is kept until then so a rotated token replayed still revokes it.
     */
    sessionExpiresAt: tstz("session_expires_at"),
    /** Set when the token was exchanged for its successor. */
    rotatedAt: tstz("rotated_at"),
    revokedAt: tstz("revoked_at"),
    revokeReason: text("revoke_reason"),
    /** The User-Agent seen at the session's sign-in (first row of a family only; at most 256 characters). */
    userAgent: text("user_agent"),
    /** The client address seen at the session's sign-in (first row of a family only). */
    ipAddress: text("ip_address"),
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
  /** Set by `keys revoke`: the key is out of the JWKS and every token it signed is refused. */
  revokedAt: tstz("revoked_at"),
});

/**
 * OAuth clients: services (client credentials) and applications that sign
 * customers in (authorization code + PKCE). The secret is stored only as a
 * SHA-256 hash; a public client's is a random value nobody was shown.
 */
export const clients = pgTable("clients", {
  clientId: text("client_id").primaryKey(),
  secretHash: bytea("secret_hash").notNull(),
  scopes: text("scopes").array().notNull(),
  /** Audiences (resource servers) the client may ask tokens for (RFC 8707). */
  audiences: text("audiences").array().notNull().default(sql`'{customer-service}'::text[]`),
  /** Audiences of its tokens when it asks for none. */
  defaultAudiences: text("default_audiences").array().notNull().default(sql`'{customer-service}'::text[]`),
  description: text("description").notNull().default(""),
  createdAt: tstz("created_at").notNull(),
  disabledAt: tstz("disabled_at"),
  /**
   * Tokens of the client issued before this are revoked (set by disable and
   * rotate-secret); tokens issued after it carry an `iat` no earlier.
   */
  tokensValidAfter: tstz("tokens_valid_after"),
  /** Where the authorization endpoint may send the browser back: exact absolute URIs (RFC 6749 §3.1.2, RFC 8252). */
  redirectUris: text("redirect_uris").array().notNull().default(sql`'{}'::text[]`),
  /** Where RP-initiated logout may send the browser back. */
  postLogoutRedirectUris: text("post_logout_redirect_uris").array().notNull().default(sql`'{}'::text[]`),
  /** The grant types the token endpoint serves the client: client_credentials, authorization_code, refresh_token. */
  grantTypes: text("grant_types").array().notNull().default(sql`'{client_credentials}'::text[]`),
  /** A public client (token_endpoint_auth_method `none`): no secret, PKCE only. */
  isPublic: boolean("is_public").notNull().default(false),
  /** A first-party client: customers are not asked to consent. */
  firstParty: boolean("first_party").notNull().default(false),
});

/**
 * Authorization requests of the hosted sign-in page (GET /oauth2/authorize),
 * from the request to its one-time code. The CSRF token and the code are
 * stored as SHA-256 hashes only. A request is `pending` (sign-in), then
 * `consent` (a third-party client), then `code` (a code was issued, valid
 * until `code_expires_at`), then `used` (exchanged, `family_id` the session
 * it created) or `denied`.
 */
export const authorizationRequests = pgTable(
  "authorization_requests",
  {
    id: uuid("id").primaryKey(),
    csrfHash: bytea("csrf_hash").notNull(),
    clientId: text("client_id").notNull(),
    redirectUri: text("redirect_uri").notNull(),
    state: text("state"),
    nonce: text("nonce"),
    scope: text("scope").notNull(),
    audiences: text("audiences").array().notNull(),
    codeChallenge: text("code_challenge").notNull(),
    stage: text("stage").notNull(),
    customerId: uuid("customer_id"),
    authTime: tstz("auth_time"),
    codeHash: bytea("code_hash").unique(),
    codeExpiresAt: tstz("code_expires_at"),
    familyId: uuid("family_id"),
    /** The browser's User-Agent and address at the sign-in, for the session it creates (ListSessions). */
    userAgent: text("user_agent"),
    ipAddress: text("ip_address"),
    createdAt: tstz("created_at").notNull(),
    /** The request (and its sign-in page) works until then; rows past it may be deleted. */
    expiresAt: tstz("expires_at").notNull(),
  },
  (t) => [index("authorization_requests_expires_idx").on(t.expiresAt)],
);

/**
 * One-time codes sent by mail (codes.ts): recovery, sign-up, email change.
 * Only a salted SHA-256 of the code is kept; a code works once
 * (`consumed_at`), until `expires_at`, for a bounded number of wrong guesses
 * (`attempts`). A newer code for the same identity (or, for a sign-up, the
 * same email) and purpose consumes the older ones.
 */
export const oneTimeCodes = pgTable(
  "one_time_codes",
  {
    id: uuid("id").primaryKey(),
    /** The identity the code is for; null for a sign-up (no identity yet). */
    customerId: uuid("customer_id").references(() => identities.customerId, { onDelete: "cascade" }),
    /** Where the code was sent, normalised: a sign-up's address, an email change's new one; null for recovery. */
    email: text("email"),
    /** "recovery", "sign-up" or "email-change" (CodePurpose). */
    purpose: text("purpose").notNull(),
    salt: bytea("salt").notNull(),
    codeHash: bytea("code_hash").notNull(),
    attempts: integer("attempts").notNull().default(0),
    createdAt: tstz("created_at").notNull(),
    expiresAt: tstz("expires_at").notNull(),
    consumedAt: tstz("consumed_at"),
  },
  (t) => [
    index("one_time_codes_customer_idx").on(t.customerId, t.purpose),
    index("one_time_codes_email_idx").on(t.email, t.purpose),
  ],
);

/**
 * Erased accounts (DeleteAccount, AdminService.DeleteIdentity): the
 * tombstone, ids only. It proves the erasure afterwards, makes a second one a
 * no-op, and tells a deleted id from one that never existed.
 */
export const deletedIdentities = pgTable("deleted_identities", {
  customerId: uuid("customer_id").primaryKey(),
  deletedAt: tstz("deleted_at").notNull(),
  /** "customer" or "admin". */
  deletedBy: text("deleted_by").notNull(),
});
