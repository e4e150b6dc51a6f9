/**
 * The customer service's outbox, described once for its writers (the route
 * handlers) and its relay. The channel and the lock key live here and nowhere
 * else; tests read them from here (or from `relay.outbox`).
 */
import { defineOutbox, type Outbox } from "@customer-platform/runtime/outbox";
import type { CustomerConfig } from "./config.js";

/** The outbox of the customer service publishing to `config.stream` under `config.subjectPrefix`. */
export function customerOutbox(config: Pick<CustomerConfig, "stream" | "subjectPrefix">): Outbox {
  return defineOutbox({
    source: "customer-service",
    stream: config.stream,
    subjectPrefix: config.subjectPrefix,
    channel: "customer_outbox",
    // One relay per database at a time. The platform's other advisory locks:
    // 7_310_001 migrations (runtime db.ts), 7_310_003 the identity relay,
    // 7_310_004 the identity mail deliverer, 7_310_101 the identity signing-key bootstrap.
    lockKey: 7_310_002n,
  });
}
