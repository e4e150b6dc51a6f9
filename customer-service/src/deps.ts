import type { Authenticator } from "@customer-platform/runtime/auth";
import type { Db } from "@customer-platform/runtime/db";
import type * as schema from "./db/schema.js";
import type { EventsConfig } from "./events.js";

/** What the CustomerService handlers need. */
export interface CustomerServiceDeps {
  readonly db: Db<typeof schema>;
  readonly auth: Authenticator;
  readonly events: EventsConfig;
  /** The current time; tests may pin it. */
  readonly now: () => Date;
}
