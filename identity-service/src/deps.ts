import type { HandlerContext } from "@connectrpc/connect";
import type { Authenticator } from "@customer-platform/runtime/auth";
import type { Db } from "@customer-platform/runtime/db";
import type { Outbox } from "@customer-platform/runtime/outbox";
import type * as schema from "./db/schema.js";
import type { PasswordHasher } from "./passwords.js";
import type { RateLimiter } from "./rate-limit.js";
import type { AudiencePolicy } from "./sessions.js";
import type { Throttle } from "./throttle.js";
import type { KeyStore, TokenSettings } from "./tokens.js";

/** What the AuthService handlers need. */
export interface AuthServiceDeps {
  readonly db: Db<typeof schema>;
  readonly passwords: PasswordHasher;
  readonly throttle: Throttle;
  /** Limits per client address (keyed by `addressLimitKey(clientAddress(ctx))`), and recovery's per email. */
  readonly rateLimits: {
    readonly signIn: RateLimiter;
    /** GET /oauth2/authorize (each stores a request row), with the sign-in limit's settings. */
    readonly authorize: RateLimiter;
    readonly signUp: RateLimiter;
    readonly recovery: RateLimiter;
    readonly recoveryEmail: RateLimiter;
    /** StartSignUp per email (known or not). */
    readonly signUpEmail: RateLimiter;
    /** StartEmailChange and CompleteEmailChange per account (keyed by customer id). */
    readonly emailChange: RateLimiter;
  };
  /** How long a mailed code works, by purpose. */
  readonly codeTtlSec: { readonly recovery: number; readonly signUp: number; readonly emailChange: number };
  /** Whether the deprecated CreateCredentials still signs up (IDENTITY_LEGACY_CREATE_CREDENTIALS). */
  readonly legacyCreateCredentials: boolean;
  /** The caller's address: the peer, or the client behind a trusted proxy. */
  readonly clientAddress: (ctx: Pick<HandlerContext, "values" | "requestHeader">) => string;
  readonly keys: KeyStore;
  readonly tokens: TokenSettings;
  /** Verifies our own access tokens, revocations included. */
  readonly auth: Authenticator;
  /** Where events go: the service's outbox (identity-service/src/outbox.ts). */
  readonly events: Outbox;
  /** client_id of tokens issued to customers by the first-party sign-in API. */
  readonly firstPartyClientId: string;
  /** Audiences first-party customer tokens may be for (IDENTITY_AUDIENCES and the issuer) and get by default. */
  readonly firstPartyAudiences: AudiencePolicy;
  readonly now: () => Date;
}
