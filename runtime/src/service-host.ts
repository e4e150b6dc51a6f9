/**
 * The service host: assembles a service from what makes it different (its
 * schema and migrations, outbox, handlers, plain HTTP routes, housekeeping)
 * and owns every resource it runs on: the database pools, the process's one
 * NATS connection, the outbox relay, background loops and timers, the HTTP
 * server.
 *
 * Every resource registers its own release the moment it is acquired (as
 * graphile-worker's "releasers" do); stop() runs them in reverse order, and
 * so does a start() that fails halfway, so nothing is left open either way.
 * The order of acquisition is what makes the stop graceful: the server
 * (acquired last) stops accepting and finishes the calls in flight, then the
 * relay flushes the events those calls wrote, then NATS and the pools close.
 */
import { EventEmitter } from "node:events";
import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl } from "@connectrpc/connect";
import type { NatsConnection } from "@nats-io/transport-node";
import type { HostConfig } from "./config.js";
import { type ConnectServer, notFound, type ServedService, startConnectServer } from "./connect-server.js";
import { type Database, openDatabase } from "./db.js";
import { eventKeysHttpHandler, openEventKeys } from "./event-keys.js";
import { EXIT_CONFIG, EXIT_TEMPFAIL } from "./exit-codes.js";
import type { NodeHandlerFn } from "./health.js";
import { type HousekeepingTask, startHousekeeping, startPeriodic } from "./housekeeping.js";
import { createLogger, errMessage, type Logger } from "./logger.js";
import { StartupError } from "./main.js";
import { createNats, describeNatsAuth, type Nats } from "./nats.js";
import type { Outbox } from "./outbox.js";
import { createOutboxRelay, type OutboxRelay } from "./outbox-relay.js";
import { redactUrl } from "./redact.js";
import { createStreamPurger } from "./stream-purge.js";

export type { HostConfig } from "./config.js";

/** A service's database: the drizzle schema and the drizzle-kit migrations folder that builds it. */
export interface ServiceDatabase<S extends Record<string, unknown>> {
  readonly schema: S;
  readonly migrations: string;
}

/** How often housekeeping runs. */
const HOUSEKEEPING_INTERVAL_MS = 10 * 60_000;
/** How long the relay may take at stop to publish what the last calls wrote. */
const RELAY_FLUSH_MS = 5_000;

/**
 * Opens the configured database and brings its schema up to date, one
 * instance at a time; closes it again when migrating fails. For the host and
 * for tools that work on a service's database without serving (the CLI).
 */
export async function openServiceDatabase<S extends Record<string, unknown>>(
  config: Pick<HostConfig, "database">,
  database: ServiceDatabase<S>,
  opts: { name: string; max?: number },
): Promise<Database<S>> {
  const opened = await openDatabase({ ...config.database, schema: database.schema, ...opts });
  try {
    await opened.migrate(database.migrations);
  } catch (err) {
    await opened.close().catch(() => {});
    throw err;
  }
  return opened;
}

/** Something that runs in the background from start to stop, e.g. a revocation list. */
export interface Background {
  /** Starts in the background; never throws, never waits for the network. */
  start(): void;
  stop(): Promise<unknown>;
}

/** What a service's setup builds its handlers from; everything here is owned and released by the host. */
export interface ServiceParts<C extends HostConfig, S extends Record<string, unknown>> {
  readonly config: C;
  readonly logger: Logger;
  /** The service's database, migrated: the pool the handlers use. */
  readonly database: Database<S>;
  /** The process's one NATS connection, made on first use; it connects in the background. */
  readonly nats: Nats;
  readonly outbox: Outbox;
  /** The current time; tests may pin it. */
  readonly now: () => Date;
  /** Registers the release of something setup acquired; it runs in reverse order with the host's own. */
  defer(name: string, release: () => unknown): void;
  /** Starts `component` now and stops it at stop (after the server, before the relay and NATS). */
  run<T extends Background>(name: string, component: T): T;
  /**
   * Runs a component that needs a live NATS connection (e.g. a revocation list
   * on the process's connection): made and started once NATS is connected
   * (the service does not wait for that), made again on a new connection if
   * the old one is replaced, stopped at stop before NATS closes. `current` is
   * undefined until NATS was first reached.
   */
  runOnNats<T extends Background>(
    name: string,
    make: (connection: NatsConnection) => T,
  ): { readonly current: T | undefined };
  /** Runs `task` every `intervalMs` (first after one interval) until stop; a failure is logged as a warning. */
  every(name: string, intervalMs: number, task: () => Promise<unknown>): void;
}

/** What a service serves: its handlers and, optionally, plain HTTP routes (tried before the 404). */
export interface ServiceRoutes<Svc extends DescService> {
  impl: ServiceImpl<Svc>;
  /** More services on the same port (connect-server's `served(service, impl)`), e.g. an admin API. */
  also?: readonly ServedService[];
  http?: NodeHandlerFn;
  /**
   * Readiness besides the database (e.g. the revocation list has caught up):
   * the service reports NOT_SERVING while it returns false. Asked before the
   * database probe, every 100 ms while false, every 2 s once true.
   */
  ready?: () => boolean;
}

/** Seams for tests and variants, used instead of assembling a service again (atproto bsync's `overrides`). */
export interface HostOverrides<Svc extends DescService> {
  /** Wraps the handlers, e.g. to answer one method with a constant. */
  impl?: (impl: ServiceImpl<Svc>) => ServiceImpl<Svc>;
  /** false: this process does not relay the outbox; another one does. */
  relay?: false;
}

export interface ServiceOptions<C extends HostConfig, S extends Record<string, unknown>, Svc extends DescService> {
  /** The service's name, e.g. `customer-service`: the logger's name, and the NATS connection's. */
  name: string;
  config: C;
  database: ServiceDatabase<S>;
  outbox: Outbox;
  /** The Connect service served (setup may add more: `ServiceRoutes.also`); reflection serves the files that declare them. */
  service: Svc;
  /** Periodic deletions, first run a few seconds after start, then every 10 minutes. */
  housekeeping?: HousekeepingTask[];
  /** Builds the handlers from the host's parts; whatever it opens it hands to `parts` to release. */
  setup(parts: ServiceParts<C, S>): Promise<ServiceRoutes<Svc>>;
  /** Extra fields for the "<name> listening" log line. */
  describe?(config: C): Record<string, unknown>;
  /** Default: JSON lines on stdout at `config.logLevel`. */
  logger?: Logger;
  now?: () => Date;
  overrides?: HostOverrides<Svc>;
}

/** What the host tells tests and operators about its resources. */
export interface HostEvents {
  /** A resource was acquired (its release registered), e.g. `database`, `nats`, `http server`. */
  acquired: [name: string];
  /** A resource was released; `error` if releasing it failed (logged, and the others still released). */
  released: [name: string, error: unknown];
}

export interface ServiceHost extends AsyncDisposable {
  readonly name: string;
  readonly logger: Logger;
  /** Base URL once started, e.g. http://127.0.0.1:8080 */
  readonly url: string;
  readonly port: number;
  /** The outbox relay, once started (not with `overrides.relay: false`). */
  readonly relay: OutboxRelay;
  readonly events: EventEmitter<HostEvents>;
  /**
   * Acquires everything and starts serving. If a step fails, everything
   * acquired so far is released before it rejects. Later calls return the
   * first call's promise.
   */
  start(): Promise<void>;
  /**
   * Graceful stop: stop accepting, finish the calls in flight (up to the
   * grace period), flush the outbox, then release everything else, last
   * acquired first. Ends a start() still under way. Never rejects.
   */
  stop(): Promise<void>;
}

/** Thrown by a start() that stop() ended. */
export class HostStoppedError extends Error {
  override name = "HostStoppedError";
}

/** Creates the host; nothing is opened until start(). */
export function createService<C extends HostConfig, S extends Record<string, unknown>, Svc extends DescService>(
  opts: ServiceOptions<C, S, Svc>,
): ServiceHost {
  const { config, name } = opts;
  const logger = opts.logger ?? createLogger({ name, level: config.logLevel });
  const events = new EventEmitter<HostEvents>();
  const releasers: Array<{ name: string; release: () => unknown }> = [];
  let server: ConnectServer | undefined;
  let relay: OutboxRelay | undefined;
  let starting: Promise<void> | undefined;
  let stopping: Promise<void> | undefined;

  const acquired = (what: string, release: () => unknown) => {
    releasers.push({ name: what, release });
    logger.debug({ resource: what }, "acquired");
    events.emit("acquired", what);
  };

  // Every release runs, in reverse order, even after one fails.
  const releaseAll = async () => {
    for (let r = releasers.pop(); r; r = releasers.pop()) {
      let error: unknown;
      try {
        await r.release();
      } catch (err) {
        error = err;
        logger.error({ err: errMessage(err), resource: r.name }, "release failed");
      }
      if (error === undefined) logger.debug({ resource: r.name }, "released");
      events.emit("released", r.name, error);
    }
  };

  // Between two steps of start(): a stop() meanwhile ends it.
  const checkpoint = () => {
    if (stopping) throw new HostStoppedError(`${name} was stopped while starting`);
  };

  async function acquireAll(): Promise<void> {
    const database = await openServiceDatabase(config, opts.database, { name });
    acquired("database", () => database.close());
    checkpoint();
    // Every event this service publishes is signed with its key; consumers verify with the published keys.
    const eventKeys = await openEventKeys(database);
    checkpoint();
    // On PostgreSQL the relay reads and marks the outbox on its own connections: behind
    // the request transactions in the shared pool, each batch would wait for a free one.
    // (Embedded PGlite is one session; it is shared.)
    const relays = opts.overrides?.relay !== false;
    let relayDatabase: Pick<Database<S>, "query" | "listen" | "session"> = database;
    if (relays && !database.embedded) {
      const own = await openDatabase({
        ...config.database,
        schema: opts.database.schema,
        name: `${name}-relay`,
        max: 2,
      });
      acquired("relay database", () => own.close());
      relayDatabase = own;
      checkpoint();
    }
    let nats: Nats | undefined;
    const parts: ServiceParts<C, S> = {
      config,
      logger,
      database,
      get nats() {
        if (!nats) {
          // Made after stop() it would never be closed.
          checkpoint();
          // Replies on a subject prefix of its own, which NATS authorization can give this service alone.
          const made = createNats({
            url: config.natsUrl,
            auth: config.natsAuth,
            name,
            inboxPrefix: `_INBOX_${name}`,
            logger,
          });
          nats = made;
          acquired("nats", () => made.close());
        }
        return nats;
      },
      outbox: opts.outbox,
      now: opts.now ?? (() => new Date()),
      defer: acquired,
      run(what, component) {
        component.start();
        acquired(what, () => component.stop());
        return component;
      },
      runOnNats(what, make) {
        const n = parts.nats;
        let current: { connection: NatsConnection; component: ReturnType<typeof make> } | undefined;
        let stopped = false;
        const adopt = (connection: NatsConnection) => {
          if (stopped || current?.connection === connection) return;
          const previous = current?.component;
          current = { connection, component: make(connection) };
          current.component.start();
          void previous?.stop();
        };
        n.events.on("connected", adopt);
        if (n.connection) adopt(n.connection);
        acquired(what, async () => {
          stopped = true;
          n.events.off("connected", adopt);
          await current?.component.stop();
        });
        return {
          get current() {
            return current?.component;
          },
        };
      },
      every(what, intervalMs, task) {
        const run = async () => {
          try {
            await task();
          } catch (err) {
            logger.warn({ err: errMessage(err), task: what }, `${what} failed`);
          }
        };
        const stop = startPeriodic(run, { firstMs: intervalMs, intervalMs });
        acquired(what, stop);
      },
    };
    const routes = await opts.setup(parts);
    checkpoint();
    if (relays) {
      const r = createOutboxRelay({
        outbox: opts.outbox,
        database: relayDatabase,
        nats: parts.nats,
        logger: logger.child({ component: "outbox-relay" }),
        signer: eventKeys.signer,
      });
      r.start();
      relay = r;
      acquired("outbox relay", () => r.stop({ flush: true, timeoutMs: RELAY_FLUSH_MS }));
      // Purges requested by erasures (stream-purge.ts), once their tombstone is published; stopped
      // before the relay. A database without the stream_purges table gets none.
      const purger = createStreamPurger({
        database,
        // On the relay's connections: postgres.js LISTENs on one connection per pool, which the relay has.
        listen: (channel, onNotify) => relayDatabase.listen(channel, onNotify),
        nats: parts.nats,
        logger: logger.child({ component: "stream-purger" }),
      });
      const onPublished = (published: readonly { eventId: string }[]) =>
        purger.published(published.map((e) => e.eventId));
      r.events.on("published", onPublished);
      purger.start();
      acquired("stream purger", async () => {
        r.events.off("published", onPublished);
        await purger.stop();
      });
    }
    if (opts.housekeeping?.length) {
      const stop = startHousekeeping(database, opts.housekeeping, HOUSEKEEPING_INTERVAL_MS, logger);
      acquired("housekeeping", stop);
    }
    // Refused NATS credentials are a configuration error; NATS down is not (events wait in the outbox).
    // The first attempt ends within the connect timeout, and has been under way since setup.
    if (nats) {
      const first = await nats.firstAttempt;
      if (first.outcome === "refused") {
        throw new StartupError(first.reason ?? "NATS refused the credentials", EXIT_CONFIG);
      }
      checkpoint();
    }
    const impl = opts.overrides?.impl ? opts.overrides.impl(routes.impl) : routes.impl;
    const listening = await startConnectServer({
      host: config.host,
      port: config.port,
      logger,
      service: opts.service,
      impl,
      ...(routes.also && { also: routes.also }),
      readMaxBytes: config.maxRequestBytes,
      ...(config.httpLimits && { limits: config.httpLimits }),
      ...(config.reflection !== undefined && { reflection: config.reflection }),
      ...(config.fastPath !== undefined && { fastPath: config.fastPath }),
      http: eventKeysHttpHandler(eventKeys, routes.http ?? notFound),
      // Not ready while the service catches up (asked again every 100 ms), then while the database fails.
      probe: async () => {
        if (routes.ready && !routes.ready()) return false;
        return database.query("select 1");
      },
      probePendingIntervalMs: 100,
    }).catch((err: unknown) => {
      throw listenFailure(err, config);
    });
    server = listening;
    acquired("http server", () => listening.close(config.shutdownGraceMs));
    checkpoint();
    logger.info(
      {
        url: listening.url,
        database: database.description,
        nats: redactUrl(config.natsUrl),
        natsAuth: describeNatsAuth(config.natsAuth),
        ...opts.describe?.(config),
      },
      `${name.replace(/-/g, " ")} listening`,
    );
  }

  const start = () => {
    starting ??= (async () => {
      checkpoint();
      try {
        await acquireAll();
      } catch (err) {
        await releaseAll();
        throw err;
      }
    })();
    return starting;
  };

  const stop = () => {
    stopping ??= (async () => {
      // A start under way ends at its next step, releasing what it acquired.
      await starting?.catch(() => {});
      await releaseAll();
      logger.info("stopped");
    })();
    return stopping;
  };

  return {
    name,
    logger,
    events,
    get url() {
      if (!server) throw new Error("not started");
      return server.url;
    },
    get port() {
      if (!server) throw new Error("not started");
      return server.port;
    },
    get relay() {
      if (!relay) throw new Error(opts.overrides?.relay === false ? "this host does not relay" : "not started");
      return relay;
    },
    start,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** `host` with more read-only properties, e.g. a service's revocation list once started. */
export function extendHost<H extends ServiceHost, X extends object>(
  host: H,
  getters: { [K in keyof X]: () => X[K] },
): H & X {
  for (const [key, get] of Object.entries<() => unknown>(getters)) {
    Object.defineProperty(host, key, { get, enumerable: true });
  }
  return host as H & X;
}

/** A port that cannot be bound, as one line naming the variable (a StartupError), or err itself. */
function listenFailure(err: unknown, config: HostConfig): unknown {
  const code = (err as { code?: unknown }).code;
  const where = `${config.portVariable ?? "port"}: cannot listen on ${config.host}:${config.port}`;
  if (code === "EADDRINUSE") {
    return new StartupError(
      `${where}: the address is in use; stop what holds it or choose another port`,
      EXIT_TEMPFAIL,
      {
        cause: err,
      },
    );
  }
  if (code === "EACCES" || code === "EADDRNOTAVAIL") {
    const why = code === "EACCES" ? "permission denied (a port below 1024 needs privileges)" : "no such local address";
    return new StartupError(`${where}: ${why}`, EXIT_CONFIG, { cause: err });
  }
  return err;
}
