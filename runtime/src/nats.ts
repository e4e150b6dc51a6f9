/**
 * The process's one NATS connection, shared by the outbox relay and whatever
 * else talks to NATS. It connects in the background, retrying until NATS is
 * reachable (a service starts, and serves, while NATS is down), then lets
 * nats.js reconnect forever. Every transition is logged once and emitted as
 * a typed event; `connection` is there only while connected, so nothing is
 * written into the reconnect buffer by mistake.
 */
import { EventEmitter } from "node:events";
import { createSupervisedLoop, type SupervisedLoop } from "@customer-platform/sdk/background";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { errMessage, type Logger } from "./logger.js";

/**
 * `connecting` until the first attempt ends; `disconnected` while NATS is
 * unreachable (retrying); `closed` after close().
 */
export type NatsStatus = "connecting" | "connected" | "disconnected" | "closed";

/** What the connection emits, for the components that share it and for tests and operators. */
export interface NatsEvents {
  /** Connected: the first time, or again after an outage. */
  connected: [connection: NatsConnection];
  /** An outage began: the first attempt to connect failed, or the connection was lost. */
  disconnected: [];
  /** close() was called. */
  closed: [];
}

export interface NatsOptions {
  url: string;
  /** The connection's name on the server (its monitoring shows it), e.g. `customer-service`. */
  name: string;
  logger: Logger;
  /** Timeout of one attempt to connect; default 2000. */
  connectTimeoutMs?: number;
  /** Longest wait between attempts before the first connection; default 2000. */
  maxRetryMs?: number;
}

export interface Nats extends AsyncDisposable {
  readonly url: string;
  readonly status: NatsStatus;
  /** The connection while `status` is `connected`; undefined otherwise. */
  readonly connection: NatsConnection | undefined;
  readonly events: EventEmitter<NatsEvents>;
  /** Closes the connection and stops retrying. Never throws. */
  close(): Promise<void>;
}

/** Creates the connection and starts connecting in the background; never throws, never waits for NATS. */
export function createNats(opts: NatsOptions): Nats {
  const log = opts.logger.child({ component: "nats", nats: opts.url });
  const events = new EventEmitter<NatsEvents>();
  let status: NatsStatus = "connecting";
  // The nats.js connection once made, also while it reconnects.
  let conn: NatsConnection | undefined;
  let connector: SupervisedLoop | undefined;
  let closed: Promise<void> | undefined;

  // A listener that throws must not break the connection's bookkeeping.
  const emit = <K extends keyof NatsEvents>(name: K, ...args: NatsEvents[K]) => {
    try {
      (events.emit as (name: K, ...args: NatsEvents[K]) => boolean)(name, ...args);
    } catch (err) {
      log.error({ err: errMessage(err), event: name }, "NATS event listener failed");
    }
  };

  const outage = () => {
    status = "disconnected";
    emit("disconnected");
  };

  function startConnecting(): void {
    connector = createSupervisedLoop({
      name: "NATS connection",
      logger: log,
      minBackoffMs: 250,
      maxBackoffMs: opts.maxRetryMs ?? 2_000,
      failureMessage: () => "cannot connect to NATS; retrying",
      // "connected to NATS" says it.
      recoveryMessage: false,
      async step(signal) {
        let c: NatsConnection;
        try {
          c = await connect({
            servers: opts.url,
            name: opts.name,
            timeout: opts.connectTimeoutMs ?? 2_000,
            reconnect: true,
            maxReconnectAttempts: -1,
            reconnectTimeWait: 1_000,
          });
        } catch (err) {
          if (status === "connecting") outage();
          throw err;
        }
        if (signal.aborted) {
          await c.close().catch(() => {});
          return "done";
        }
        adopt(c);
        return "done";
      },
    });
    connector.start();
  }

  function adopt(c: NatsConnection): void {
    conn = c;
    status = "connected";
    log.info("connected to NATS");
    emit("connected", c);
    void watch(c);
  }

  // nats.js reconnects forever by itself; this follows its state.
  async function watch(c: NatsConnection): Promise<void> {
    const ended = c.closed();
    try {
      for await (const s of c.status()) {
        if (conn !== c) break;
        if (s.type === "disconnect" && status === "connected") {
          log.warn("NATS connection lost; reconnecting");
          outage();
        } else if (s.type === "reconnect" && status === "disconnected") {
          status = "connected";
          log.info("reconnected to NATS");
          emit("connected", c);
        }
      }
    } catch {
      // The iterator ends with the connection.
    }
    await ended;
    // Closed by nats.js itself (e.g. the server refused it): start over.
    if (conn === c && status !== "closed") {
      conn = undefined;
      if (status === "connected") {
        log.warn({ err: errMessage(await ended) }, "NATS connection closed; reconnecting");
        outage();
      }
      startConnecting();
    }
  }

  const close = () => {
    closed ??= (async () => {
      status = "closed";
      const c = conn;
      conn = undefined;
      await connector?.stop(3_000);
      await c?.close().catch(() => {});
      emit("closed");
      log.debug("NATS connection closed");
    })();
    return closed;
  };

  startConnecting();
  return {
    url: opts.url,
    get status() {
      return status;
    },
    get connection() {
      return status === "connected" ? conn : undefined;
    },
    events,
    close,
    [Symbol.asyncDispose]: close,
  };
}
