/**
 * NATS subjects of the platform's events: the builders the publishing
 * services use, and the filters a consumer subscribes with, so producer and
 * consumer compute a subject in one place.
 *
 * | event                               | subject                                                   | stream     |
 * | ----------------------------------- | --------------------------------------------------------- | ---------- |
 * | `customer.v1.CustomerRegistered`    | `customer.registered.<customer_id>`                       | `CUSTOMER` |
 * | `customer.v1.CustomerUpdated`       | `customer.updated.<customer_id>`                          | `CUSTOMER` |
 * | `customer.v1.CustomerErased`        | `customer.erased.<customer_id>`                           | `CUSTOMER` |
 * | `identity.v1.CustomerAuthenticated` | `identity.customer.authenticated.<customer_id>`           | `IDENTITY` |
 * | `identity.v1.TokensRevoked`         | `identity.token.revoked.<customer_id>`, or for a service's token `identity.token.revoked.client.<client_id>` | `IDENTITY` |
 * | `identity.v1.CustomerEmailVerified` | `identity.customer.email_verified.<customer_id>`          | `IDENTITY` |
 * | `identity.v1.CustomerDeleted`       | `identity.customer.deleted.<customer_id>`                 | `IDENTITY` |
 * | `identity.v1.IdentityDisabled`      | `identity.customer.disabled.<customer_id>`                | `IDENTITY` |
 * | `identity.v1.IdentityEnabled`       | `identity.customer.enabled.<customer_id>`                 | `IDENTITY` |
 * | `identity.v1.PasswordChanged`       | `identity.customer.password_changed.<customer_id>`        | `IDENTITY` |
 * | `identity.v1.AuditRecorded`         | `identity.audit.customer.<customer_id>`, or about a client `identity.audit.client.<client_id>` | `IDENTITY` |
 *
 * The first token is the stream's subject prefix (configurable per
 * deployment; the defaults are `customer` and `identity`). Customer ids are
 * UUIDs; a client id may contain `.` (then its subject has more tokens, still
 * under `<prefix>.token.revoked.>`).
 */

/** The customer service's default subject prefix. */
export const DEFAULT_CUSTOMER_PREFIX = "customer";
/** The identity service's default subject prefix. */
export const DEFAULT_IDENTITY_PREFIX = "identity";

/** Event types in the customer stream. */
export type CustomerEventType =
  | "customer.v1.CustomerRegistered"
  | "customer.v1.CustomerUpdated"
  | "customer.v1.CustomerErased";
/** Event types in the identity stream. */
export type IdentityEventType =
  | "identity.v1.CustomerAuthenticated"
  | "identity.v1.TokensRevoked"
  | "identity.v1.CustomerEmailVerified"
  | "identity.v1.CustomerDeleted"
  | "identity.v1.IdentityDisabled"
  | "identity.v1.IdentityEnabled"
  | "identity.v1.PasswordChanged"
  | "identity.v1.AuditRecorded";

/** Subjects of the customer service's stream (`<prefix>.>`). */
export interface CustomerSubjects {
  readonly prefix: string;
  /** Every event of the stream: `<prefix>.>`. */
  readonly all: string;
  /** `<prefix>.registered.<customer_id>` */
  registered(customerId: string): string;
  /** `<prefix>.updated.<customer_id>` */
  updated(customerId: string): string;
  /** `<prefix>.erased.<customer_id>`: the tombstone; the customer's registered and updated subjects are purged after it. */
  erased(customerId: string): string;
  /** Filter: every event of one type, e.g. `<prefix>.updated.*`. */
  ofType(type: CustomerEventType): string;
  /** Filter: every event of one customer, `<prefix>.*.<customer_id>`; throws TypeError for an id that is no single token. */
  ofCustomer(customerId: string): string;
}

/** Subjects of the customer service's stream; prefix as its `CUSTOMER_SUBJECT_PREFIX`. */
export function customerSubjects(prefix: string = DEFAULT_CUSTOMER_PREFIX): CustomerSubjects {
  const types: Record<CustomerEventType, string> = {
    "customer.v1.CustomerRegistered": `${prefix}.registered.*`,
    "customer.v1.CustomerUpdated": `${prefix}.updated.*`,
    "customer.v1.CustomerErased": `${prefix}.erased.*`,
  };
  return {
    prefix,
    all: `${prefix}.>`,
    registered: (customerId) => `${prefix}.registered.${customerId}`,
    updated: (customerId) => `${prefix}.updated.${customerId}`,
    erased: (customerId) => `${prefix}.erased.${customerId}`,
    ofType: (type) => types[type],
    ofCustomer: (customerId) => `${prefix}.*.${token(customerId, "customer id")}`,
  };
}

/** Whose tokens a TokensRevoked event is about: a customer's, or a service's (client credentials). */
export type TokenOwner = { readonly customerId: string } | { readonly clientId: string };

/** What an AuditRecorded event is about: a customer's account, or a client. */
export type AuditTarget = { readonly customerId: string } | { readonly clientId: string };

/** Subjects of the identity service's stream (`<prefix>.>`). */
export interface IdentitySubjects {
  readonly prefix: string;
  /** Every event of the stream: `<prefix>.>`. */
  readonly all: string;
  /** `<prefix>.customer.authenticated.<customer_id>` */
  customerAuthenticated(customerId: string): string;
  /** `<prefix>.customer.email_verified.<customer_id>` */
  customerEmailVerified(customerId: string): string;
  /** `<prefix>.customer.deleted.<customer_id>` */
  customerDeleted(customerId: string): string;
  /** `<prefix>.customer.disabled.<customer_id>` */
  identityDisabled(customerId: string): string;
  /** `<prefix>.customer.enabled.<customer_id>` */
  identityEnabled(customerId: string): string;
  /** `<prefix>.customer.password_changed.<customer_id>` */
  passwordChanged(customerId: string): string;
  /** `<prefix>.audit.customer.<customer_id>`, or `<prefix>.audit.client.<client_id>` for a client. */
  auditRecorded(target: AuditTarget): string;
  /** `<prefix>.token.revoked.<customer_id>`, or `<prefix>.token.revoked.client.<client_id>` for a service. */
  tokensRevoked(owner: TokenOwner): string;
  /**
   * Filter: every `<prefix>.customer.>` event (sign-ins, verified emails, deletions, suspensions,
   * password changes): one filter subject for a consumer of several of them (NATS 2.9 allows one).
   */
  readonly customerEvents: string;
  /** Filter: every event of one type, e.g. `<prefix>.token.revoked.>` (customers' and services'). */
  ofType(type: IdentityEventType): string;
  /**
   * Filter: every event about one customer, `<prefix>.*.*.<customer_id>` (the `<prefix>.customer.*` events,
   * revocations of the customer's tokens and audit events about the customer's account);
   * throws TypeError for an id that is no single token.
   */
  ofCustomer(customerId: string): string;
}

/** Subjects of the identity service's stream; prefix as its `IDENTITY_SUBJECT_PREFIX`. */
export function identitySubjects(prefix: string = DEFAULT_IDENTITY_PREFIX): IdentitySubjects {
  const types: Record<IdentityEventType, string> = {
    "identity.v1.CustomerAuthenticated": `${prefix}.customer.authenticated.*`,
    "identity.v1.TokensRevoked": `${prefix}.token.revoked.>`,
    // `>` rather than `*` (the same for customer ids, one token each): the filter deploy/nats/nats.conf allows.
    "identity.v1.CustomerEmailVerified": `${prefix}.customer.email_verified.>`,
    "identity.v1.CustomerDeleted": `${prefix}.customer.deleted.>`,
    "identity.v1.IdentityDisabled": `${prefix}.customer.disabled.>`,
    "identity.v1.IdentityEnabled": `${prefix}.customer.enabled.>`,
    "identity.v1.PasswordChanged": `${prefix}.customer.password_changed.>`,
    "identity.v1.AuditRecorded": `${prefix}.audit.>`,
  };
  return {
    prefix,
    all: `${prefix}.>`,
    customerAuthenticated: (customerId) => `${prefix}.customer.authenticated.${customerId}`,
    customerEmailVerified: (customerId) => `${prefix}.customer.email_verified.${customerId}`,
    customerDeleted: (customerId) => `${prefix}.customer.deleted.${customerId}`,
    identityDisabled: (customerId) => `${prefix}.customer.disabled.${customerId}`,
    identityEnabled: (customerId) => `${prefix}.customer.enabled.${customerId}`,
    passwordChanged: (customerId) => `${prefix}.customer.password_changed.${customerId}`,
    auditRecorded: (target) =>
      "customerId" in target
        ? `${prefix}.audit.customer.${target.customerId}`
        : `${prefix}.audit.client.${target.clientId}`,
    customerEvents: `${prefix}.customer.>`,
    tokensRevoked: (owner) =>
      "customerId" in owner
        ? `${prefix}.token.revoked.${owner.customerId}`
        : `${prefix}.token.revoked.client.${owner.clientId}`,
    ofType: (type) => types[type],
    ofCustomer: (customerId) => `${prefix}.*.*.${token(customerId, "customer id")}`,
  };
}

/**
 * True when subject matches filter by NATS rules: `*` is one token, `>` (last)
 * one or more. For routing events received on a wide subscription.
 */
export function subjectMatches(filter: string, subject: string): boolean {
  const f = filter.split(".");
  const s = subject.split(".");
  for (let i = 0; i < f.length; i++) {
    const part = f[i];
    if (part === ">") return i === f.length - 1 && s.length > i;
    if (i >= s.length) return false;
    if (part !== "*" && part !== s[i]) return false;
  }
  return f.length === s.length;
}

// One subject token: a wildcard or separator in an id would widen a filter to other customers' events.
const TOKEN = /^[^\s.*>]+$/;

function token(value: string, what: string): string {
  if (!TOKEN.test(value)) throw new TypeError(`${what} ${JSON.stringify(value)} cannot be a subject token`);
  return value;
}
