/**
 * OAuth scopes of the platform's access tokens (the token's space-separated
 * `scope` claim; `Principal.scopes` holds them as a set).
 */

/** OpenID Connect: the token stands for a signed-in person. On every customer token. */
export const SCOPE_OPENID = "openid";
/** OpenID Connect: the customer's own profile. On every customer token. */
export const SCOPE_PROFILE = "profile";
/** A customer acting on their own account only. On every customer token. */
export const SCOPE_CUSTOMER_SELF = "customer:self";
/** A service may read any customer's profile (GetCustomer). */
export const SCOPE_CUSTOMER_READ = "customer:read";
/** A service may change any customer's profile (RegisterCustomer, UpdateCustomer). */
export const SCOPE_CUSTOMER_WRITE = "customer:write";
/**
 * A service may describe tokens with the identity service's IntrospectToken
 * (its token must also be for the identity service's audience, the issuer).
 */
export const SCOPE_IDENTITY_INTROSPECT = "identity:introspect";
/**
 * A service may call the identity service's AdminService (suspend and erase
 * accounts, register and change clients; its token must also be for the
 * identity service's audience, the issuer).
 */
export const SCOPE_IDENTITY_ADMIN = "identity:admin";

/** Every scope the identity service issues (its discovery document's `scopes_supported`). */
export const SCOPES = [
  SCOPE_OPENID,
  SCOPE_PROFILE,
  SCOPE_CUSTOMER_SELF,
  SCOPE_CUSTOMER_READ,
  SCOPE_CUSTOMER_WRITE,
  SCOPE_IDENTITY_INTROSPECT,
  SCOPE_IDENTITY_ADMIN,
] as const;

/** A scope the platform knows. */
export type Scope = (typeof SCOPES)[number];

/** The scopes of a customer's own token (sign-up, sign-in, refresh). */
export const CUSTOMER_TOKEN_SCOPES: readonly Scope[] = [SCOPE_OPENID, SCOPE_PROFILE, SCOPE_CUSTOMER_SELF];

/** The scopes that grant a service something (`identity clients create <id> --scopes …`). */
export const SERVICE_SCOPES: readonly Scope[] = [
  SCOPE_CUSTOMER_READ,
  SCOPE_CUSTOMER_WRITE,
  SCOPE_IDENTITY_INTROSPECT,
  SCOPE_IDENTITY_ADMIN,
];
