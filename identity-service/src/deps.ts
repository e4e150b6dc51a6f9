import type { Authenticator } from "@customer-platform/runtime/auth";
import type { Db } from "@customer-platform/runtime/db";
import type * as schema from "./db/schema.js";
import type { PasswordHasher } from "./passwords.js";
import type { Throttle } from "./throttle.js";
import type { KeyStore, TokenSettings } from "./tokens.js";

/** Where this service's events go: `ce-source`, subject prefix (default "identity") and NOTIFY channel. */
export interface EventsConfig {
  readonly source: string;
  readonly subjectPrefix: string;
  readonly notifyChannel: string;
}

/** What the AuthService handlers need. */
export interface AuthServiceDeps {
  readonly db: Db<typeof schema>;
  readonly passwords: PasswordHasher;
  readonly throttle: Throttle;
  readonly keys: KeyStore;
  readonly tokens: TokenSettings;
  /** Verifies our own access tokens, revocations included. */
  readonly auth: Authenticator;
  readonly events: EventsConfig;
  /** client_id of tokens issued to customers by the first-party sign-in API. */
  readonly firstPartyClientId: string;
  readonly now: () => Date;
}
