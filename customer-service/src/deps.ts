import type { Authenticator } from "../../runtime/auth.js";
import type { Db } from "../../runtime/db.js";
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
