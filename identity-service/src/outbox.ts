/**
 * The identity service's outbox, described once for its writers (sign-in,
 * revocation) and its relay. The channel and the lock key live here and
 * nowhere else; tests read them from here (or from `relay.outbox`).
 */
import { defineOutbox, type Outbox } from "@customer-platform/runtime/outbox";
import type { IdentityConfig } from "./config.js";

/** The outbox of the identity service publishing to `config.stream` under `config.subjectPrefix`. */
export function identityOutbox(config: Pick<IdentityConfig, "stream" | "subjectPrefix">): Outbox {
  return defineOutbox({
    source: "identity-service",
    stream: config.stream,
    subjectPrefix: config.subjectPrefix,
    channel: "identity_outbox",
    // One relay per database at a time. The platform's other advisory locks:
    // 7_310_001 migrations (runtime db.ts), 7_310_002 the customer relay,
    // 7_310_004 the mail deliverer (runtime mail/leader.ts), 7_310_101 the
    // signing-key bootstrap (tokens.ts).
    lockKey: 7_310_003n,
  });
}
