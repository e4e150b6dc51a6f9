/**
 * The customer service: CustomerService over its own database, events
 * relayed from the outbox to JetStream, tokens verified offline against the
 * identity service's JWKS and revocations, the profile's email following
 * the identity's verified email and erasing the customer on the identity's
 * CustomerDeleted (identity-events.ts). The host (runtime service-host)
 * assembles and runs it; this file says only what is particular to it.
 */
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { type Authenticator, createJwksAuthenticator } from "@customer-platform/runtime/auth";
import { outboxCleanup } from "@customer-platform/runtime/housekeeping";
import type { Logger } from "@customer-platform/runtime/logger";
import {
  createService,
  extendHost,
  type HostOverrides,
  type ServiceHost,
} from "@customer-platform/runtime/service-host";
import { createEventVerifier } from "@customer-platform/sdk/event-signing";
import { createRevocationList, type RevocationList } from "@customer-platform/sdk/revocations";
import type { CustomerConfig } from "./config.js";
import { customerDatabase } from "./database.js";
import { eraseCustomer } from "./erasure.js";
import { createIdentityEventConsumer } from "./identity-events.js";
import { customerOutbox } from "./outbox.js";
import { createCustomerService } from "./routes/index.js";
import { applyVerifiedEmail } from "./verified-email.js";

/** What the customer service knows of revoked tokens (nothing until NATS was first reached). */
export type RevocationState = Pick<
  RevocationList,
  "isRevoked" | "keyRevocations" | "subscribed" | "size" | "caughtUp" | "rejected"
>;

export interface CustomerServer extends ServiceHost {
  /** Revoked access tokens, from the identity service's TokensRevoked events (not with `overrides.auth`). */
  readonly revocations: RevocationState;
}

export interface CustomerServerOptions {
  logger?: Logger;
  now?: () => Date;
  /** For tests and the bench: parts used instead of the ones built from the configuration. */
  overrides?: HostOverrides<typeof CustomerService> & {
    /** Verifies callers instead of the JWKS authenticator (and its revocation list). */
    auth?: Authenticator;
  };
}

/** The customer service from its configuration. Nothing is opened until start(). */
export async function createCustomerServer(
  config: CustomerConfig,
  opts: CustomerServerOptions = {},
): Promise<CustomerServer> {
  let revocations: RevocationState | undefined;
  const host = createService({
    name: "customer-service",
    config,
    database: customerDatabase,
    outbox: customerOutbox(config),
    service: CustomerService,
    housekeeping: [outboxCleanup(7)],
    ...opts,
    async setup(parts) {
      const { database, outbox, logger, now, runOnNats } = parts;
      let auth = opts.overrides?.auth;
      let ready: (() => boolean) | undefined;
      // Only events signed by the identity service count: anyone who can publish on NATS
      // could otherwise revoke any token, or give any profile their own address.
      const verifier = createEventVerifier({ trust: { "identity-service": config.identityEventKeysUrl } });
      // The profile's email follows the identity's verified email, and a deleted account's
      // profile is erased; a durable consumer, so what is published while NATS or this
      // service is down is applied when both are back.
      const deps = { db: database.db, events: outbox, now };
      runOnNats("identity events", (nats) =>
        createIdentityEventConsumer({
          nats,
          stream: config.revocationStream,
          subjectPrefix: config.revocationSubjectPrefix,
          durable: config.identityConsumer,
          verifier,
          applyVerifiedEmail: (verified) => applyVerifiedEmail(deps, verified),
          erase: (customerId) => eraseCustomer(deps, customerId),
          logger: logger.child({ component: "identity-events" }),
        }),
      );
      if (!auth) {
        const list = runOnNats("revocations", (nats) =>
          createRevocationList({
            nats,
            stream: config.revocationStream,
            subjectPrefix: config.revocationSubjectPrefix,
            lookbackMs: config.revocationLookbackSec * 1000,
            verifier,
            logger,
          }),
        );
        // Not ready until the revocations of the lookback window are applied, so no
        // instance that just started accepts a token revoked before it started. While
        // NATS is unreachable, availability over strictness (as for a running instance
        // in an outage): ready, tokens verified offline, revocations applied once it is back.
        const processNats = parts.nats;
        ready = () => processNats.status === "disconnected" || (list.current?.caughtUp ?? false);
        const state: RevocationState = {
          isRevoked: (principal) => list.current?.isRevoked(principal) ?? false,
          // Tells the verifier to refetch the JWKS when a signing key is revoked.
          get keyRevocations() {
            return list.current?.keyRevocations ?? 0;
          },
          get subscribed() {
            return list.current?.subscribed ?? false;
          },
          get size() {
            return list.current?.size ?? 0;
          },
          get caughtUp() {
            return list.current?.caughtUp ?? false;
          },
          get rejected() {
            return list.current?.rejected ?? 0;
          },
        };
        revocations = state;
        // Keys are cached for the JWKS's max-age, which the identity service's key rotation waits out;
        // the service's clock judges both that age and token expiry.
        auth = createJwksAuthenticator({
          jwksUrl: config.jwksUrl,
          issuer: config.issuer,
          audience: config.audience,
          cooldownMs: 5_000,
          revocations: state,
          now,
        });
      }
      return { impl: createCustomerService({ db: database.db, auth, events: outbox, now }), ...(ready && { ready }) };
    },
    describe: (c) => ({ stream: c.stream, revocationStream: c.revocationStream, identityConsumer: c.identityConsumer }),
  });
  return extendHost<ServiceHost, Pick<CustomerServer, "revocations">>(host, {
    revocations: () => {
      if (!revocations)
        throw new Error(opts.overrides?.auth ? "no revocation list with overrides.auth" : "not started");
      return revocations;
    },
  });
}
