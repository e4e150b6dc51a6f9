/**
 * The identity service: AuthService over the user directory, the JWKS and
 * discovery documents, CustomerAuthenticated relayed from the outbox.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { AuthService, file_identity_v1_auth_service } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { type ConnectServer, startConnectServer } from "@customer-platform/runtime/connect-server";
import { openDatabase } from "@customer-platform/runtime/db";
import type { NodeHandlerFn } from "@customer-platform/runtime/health";
import { startHousekeeping } from "@customer-platform/runtime/housekeeping";
import { createLogger, type Logger } from "@customer-platform/runtime/logger";
import { createOutboxRelay, type OutboxRelay } from "@customer-platform/runtime/outbox";
import type { IdentityConfig } from "./config.js";
import * as schema from "./db/schema.js";
import { identityHousekeeping } from "./housekeeping.js";
import { createPasswordHasher } from "./passwords.js";
import { createAuthService } from "./routes/index.js";
import { createOwnTokenAuthenticator } from "./sessions.js";
import { createThrottle } from "./throttle.js";
import { openKeyStore, type TokenSettings } from "./tokens.js";
import { wellKnownHandler } from "./well-known.js";

const MIGRATIONS = join(dirname(fileURLToPath(import.meta.url)), "db/migrations");
const RELAY_LOCK = 7_310_003n;
const NOTIFY_CHANNEL = "identity_outbox";
const KEY_RELOAD_MS = 60_000;

export interface IdentityServer extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  readonly logger: Logger;
  readonly relay: OutboxRelay;
  start(): Promise<void>;
  /** Graceful stop: stop accepting, finish in-flight calls, flush the outbox, close everything. */
  stop(): Promise<void>;
}

export interface IdentityServerOptions {
  logger?: Logger;
  now?: () => Date;
}

/** Wires the identity service from its configuration. Nothing listens until start(). */
export async function createIdentityServer(
  config: IdentityConfig,
  opts: IdentityServerOptions = {},
): Promise<IdentityServer> {
  const logger = opts.logger ?? createLogger({ name: "identity-service", level: config.logLevel });
  const database = await openDatabase({ url: config.databaseUrl, dataDir: config.dataDir, schema });
  await database.migrate(MIGRATIONS);
  const tokens: TokenSettings = {
    issuer: config.issuer,
    audiences: config.audiences,
    accessTokenTtlSec: config.accessTokenTtlSec,
    refreshTokenTtlSec: config.refreshTokenTtlSec,
  };
  const keys = await openKeyStore(database.db, config.accessTokenTtlSec + 300);
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
  const impl = createAuthService({
    db: database.db,
    passwords: await createPasswordHasher(config.argon2),
    throttle: createThrottle(database.db, config.throttle),
    keys,
    tokens,
    auth: createOwnTokenAuthenticator(database.db, keys, tokens),
    events: { source: "identity-service", subjectPrefix: config.subjectPrefix, notifyChannel: NOTIFY_CHANNEL },
    firstPartyClientId: config.firstPartyClientId,
    now: opts.now ?? (() => new Date()),
  });
  const notFound: NodeHandlerFn = (_req, res) => {
    res.writeHead(404, { "content-type": "text/plain; charset=utf-8" });
    res.end("not found\n");
  };
  let server: ConnectServer | undefined;
  let reloadTimer: NodeJS.Timeout | undefined;
  let stopHousekeeping = () => {};
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      clearInterval(reloadTimer);
      stopHousekeeping();
      await server?.close(config.shutdownGraceMs);
      await relay.stop({ flush: true, timeoutMs: 5_000 });
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
    async start() {
      server = await startConnectServer({
        host: config.host,
        port: config.port,
        logger,
        service: AuthService,
        file: file_identity_v1_auth_service,
        impl,
        readMaxBytes: config.maxRequestBytes,
        http: wellKnownHandler(keys, config.issuer, notFound),
        probe: () => database.query("select 1"),
      });
      // Keys rotated by another instance or the CLI are picked up here.
      reloadTimer = setInterval(() => {
        keys.reload().catch((err: unknown) => logger.warn({ err }, "signing key reload failed"));
      }, KEY_RELOAD_MS).unref();
      stopHousekeeping = startHousekeeping(database, identityHousekeeping(config), 10 * 60_000, logger);
      relay.start();
      logger.info(
        { url: server.url, issuer: config.issuer, database: database.description, nats: config.natsUrl },
        "identity service listening",
      );
    },
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
