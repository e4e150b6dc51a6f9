import type { Authenticator } from "@customer-platform/runtime/auth";
import type { Db } from "@customer-platform/runtime/db";
import type { Outbox } from "@customer-platform/runtime/outbox";
import type * as schema from "./db/schema.js";

/** What the CustomerService handlers need. */
export interface CustomerServiceDeps {
  readonly db: Db<typeof schema>;
  readonly auth: Authenticator;
  /** Where events go: the service's outbox (customer-service/src/outbox.ts). */
  readonly events: Outbox;
  /** The current time; tests may pin it. */
  readonly now: () => Date;
}
