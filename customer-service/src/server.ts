/**
 * The customer service: CustomerService over its own database, events
 * relayed from the outbox to JetStream.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  CustomerService,
  file_customer_v1_customer_service,
} from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { createJwksAuthenticator } from "@customer-platform/runtime/auth";
import { type ConnectServer, startConnectServer } from "@customer-platform/runtime/connect-server";
import { openDatabase } from "@customer-platform/runtime/db";
import { outboxCleanup, startHousekeeping } from "@customer-platform/runtime/housekeeping";
import { createLogger, type Logger } from "@customer-platform/runtime/logger";
import { createOutboxRelay, type OutboxRelay } from "@customer-platform/runtime/outbox";
import { createRevocationList, type RevocationList } from "@customer-platform/runtime/revocations";
import type { CustomerConfig } from "./config.js";
import * as schema from "./db/schema.js";
import { createCustomerService } from "./routes/index.js";

const MIGRATIONS = join(dirname(fileURLToPath(import.meta.url)), "db/migrations");
// One relay per database at a time (pg_try_advisory_lock key).
const RELAY_LOCK = 7_310_002n;
const NOTIFY_CHANNEL = "customer_outbox";

export interface CustomerServer extends AsyncDisposable {
  /** Base URL once started, e.g. http://127.0.0.1:8080 */
  readonly url: string;
  readonly port: number;
  readonly logger: Logger;
  /** The outbox relay (tests wait on it). */
  readonly relay: OutboxRelay;
  /** Revoked access tokens, from the identity service's TokensRevoked events. */
  readonly revocations: RevocationList;
  start(): Promise<void>;
  /** Graceful stop: stop accepting, finish in-flight calls, flush the outbox, close everything. */
  stop(): Promise<void>;
}

export interface CustomerServerOptions {
  logger?: Logger;
  now?: () => Date;
}

/** Wires the customer service from its configuration. Nothing listens until start(). */
export async function createCustomerServer(
  config: CustomerConfig,
  opts: CustomerServerOptions = {},
): Promise<CustomerServer> {
  const logger = opts.logger ?? createLogger({ name: "customer-service", level: config.logLevel });
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, schema });
  await database.migrate(MIGRATIONS);
  // On PostgreSQL the relay reads and marks the outbox on its own connections: behind
  // the request transactions in the shared pool, each batch would wait for a free one.
  // (Embedded PGlite is one session; it is shared.)
  const relayDatabase = config.databaseUrl
    ? await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, schema, max: 2 })
    : database;
  const relay = createOutboxRelay({
    database: relayDatabase,
    natsUrl: config.natsUrl,
    stream: { name: config.stream, subjects: [`${config.subjectPrefix}.>`] },
    channel: NOTIFY_CHANNEL,
    lockKey: RELAY_LOCK,
    logger: logger.child({ component: "outbox-relay" }),
  });
  // Availability over strictness: while revocations cannot be read, tokens are
  // still verified offline (and readiness does not depend on it).
  const revocations = createRevocationList({
    natsUrl: config.natsUrl,
    stream: config.revocationStream,
    subjectPrefix: config.revocationSubjectPrefix,
    lookbackMs: config.revocationLookbackSec * 1000,
    logger,
  });
  const auth = createJwksAuthenticator({
    jwksUrl: config.jwksUrl,
    issuer: config.issuer,
    audience: config.audience,
    cooldownMs: 5_000,
    revocations,
  });
  const impl = createCustomerService({
    db: database.db,
    auth,
    events: { source: "customer-service", subjectPrefix: config.subjectPrefix, notifyChannel: NOTIFY_CHANNEL },
    now: opts.now ?? (() => new Date()),
  });
  let server: ConnectServer | undefined;
  let stopping: Promise<void> | undefined;
  let stopHousekeeping = () => {};

  const stop = () => {
    stopping ??= (async () => {
      stopHousekeeping();
      await server?.close(config.shutdownGraceMs);
      await Promise.all([relay.stop({ flush: true, timeoutMs: 5_000 }), revocations.stop()]);
      if (relayDatabase !== database) await relayDatabase.close();
      await database.close();
      logger.info("stopped");
    })();
    return stopping;
  };
  return {
    get url() {
      if (!server) throw new Error("not started");
      return server.url;
    },
    get port() {
      if (!server) throw new Error("not started");
      return server.port;
    },
    logger,
    relay,
    revocations,
    async start() {
      server = await startConnectServer({
        host: config.host,
        port: config.port,
        logger,
        service: CustomerService,
        file: file_customer_v1_customer_service,
        impl,
        readMaxBytes: config.maxRequestBytes,
        probe: () => database.query("select 1"),
      });
      stopHousekeeping = startHousekeeping(database, [outboxCleanup(7)], 10 * 60_000, logger);
      relay.start();
      revocations.start();
      logger.info(
        {
          url: server.url,
          database: database.description,
          nats: config.natsUrl,
          stream: config.stream,
          revocationStream: config.revocationStream,
        },
        "customer service listening",
      );
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
