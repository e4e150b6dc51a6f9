/**
 * The process's one NATS connection, shared by the outbox relay and whatever
 * else talks to NATS. It connects in the background, retrying until NATS is
 * reachable (a service starts, and serves, while NATS is down), then lets
 * nats.js reconnect forever. Every transition is logged once and emitted as
 * a typed event; `connection` is there only while connected, so nothing is
 * written into the reconnect buffer by mistake.
 *
 * It signs in with the service's own credentials (config.ts envNats: a creds
 * file, an nkey seed, a user and password), read again at every reconnect so
 * that rotated files are picked up. Credentials NATS refuses are reported as
 * such (`firstAttempt`, a warning naming the variable), never the secret.
 */
import { EventEmitter } from "node:events";
import { createSupervisedLoop, type SupervisedLoop } from "@customer-platform/sdk/background";
import {
  type Authenticator,
  AuthorizationError,
  type ConnectionOptions,
  connect,
  credsAuthenticator,
  type NatsConnection,
  nkeyAuthenticator,
  tokenAuthenticator,
  UserAuthenticationExpiredError,
  usernamePasswordAuthenticator,
} from "@nats-io/transport-node";
import type { NatsAuth, NatsConfig } from "./config.js";
import { errMessage, type Logger } from "./logger.js";
import { redactUrl } from "./redact.js";

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

/** How the first attempt to connect ended. */
export interface NatsAttempt {
  /**
   * `connected`; `refused`: NATS answered, but refused the credentials (a
   * configuration error); `unreachable`: no answer (NATS down, or not there
   * yet); `closed`: close() came first.
   */
  readonly outcome: "connected" | "refused" | "unreachable" | "closed";
  /** For `refused`: one line saying who was refused, from which variable, and why. */
  readonly reason?: string;
}

export interface NatsOptions {
  /** The server; credentials in it are not used (they come in `auth`) and never logged. */
  url: string;
  /** How to sign in; none: anonymously. */
  auth?: NatsAuth | undefined;
  /** The connection's name on the server (its monitoring shows it), e.g. `customer-service`. */
  name: string;
  /**
   * The prefix of the connection's reply subjects (default `_INBOX`): one per
   * service lets NATS authorization give each user its own replies only.
   */
  inboxPrefix?: string;
  logger: Logger;
  /** Timeout of one attempt to connect; default 2000. */
  connectTimeoutMs?: number;
  /** Longest wait between attempts before the first connection; default 2000. */
  maxRetryMs?: number;
}

export interface Nats extends AsyncDisposable {
  readonly url: string;
  readonly status: NatsStatus;
  /** Settles when the first attempt to connect has ended (within the connect timeout); never rejects. */
  readonly firstAttempt: Promise<NatsAttempt>;
  /** The connection while `status` is `connected`; undefined otherwise. */
  readonly connection: NatsConnection | undefined;
  readonly events: EventEmitter<NatsEvents>;
  /** Closes the connection and stops retrying. Never throws. */
  close(): Promise<void>;
}

/** The server and authenticator for nats.js `connect()` (for tools that connect as a service does). */
export function natsConnectOptions(
  config: NatsConfig,
): Pick<ConnectionOptions, "servers"> & Partial<Pick<ConnectionOptions, "authenticator">> {
  return { servers: config.url, ...(config.auth && { authenticator: natsAuthenticator(config.auth) }) };
}

/** The nats.js authenticator for `auth`; it reads the secret at every (re)connect. */
export function natsAuthenticator(auth: NatsAuth): Authenticator {
  const bytes = () => new TextEncoder().encode(auth.secret());
  switch (auth.method) {
    case "creds":
      return credsAuthenticator(bytes);
    case "nkey":
      return nkeyAuthenticator(bytes);
    case "user":
      return usernamePasswordAuthenticator(auth.identity ?? "", auth.secret);
    case "token":
      return tokenAuthenticator(auth.secret);
  }
}

/** Who signs in, for log lines: never a secret. */
export function describeNatsAuth(auth: NatsAuth | undefined): string {
  if (!auth) return "anonymous";
  const who = {
    creds: "the creds file",
    nkey: `nkey ${auth.identity ?? ""}`,
    user: `user ${auth.identity ?? ""}`,
    token: "a token",
  }[auth.method];
  return `${who} (${auth.variable})`;
}

/** True when NATS refused the credentials (or they expired), rather than being unreachable. */
export function isNatsRefusal(err: unknown): boolean {
  return err instanceof AuthorizationError || err instanceof UserAuthenticationExpiredError;
}

/** Creates the connection and starts connecting in the background; never throws, never waits for NATS. */
export function createNats(opts: NatsOptions): Nats {
  const url = redactUrl(opts.url);
  const signIn = describeNatsAuth(opts.auth);
  const log = opts.logger.child({ component: "nats", nats: url, natsAuth: signIn });
  const authenticator = opts.auth && natsAuthenticator(opts.auth);
  const events = new EventEmitter<NatsEvents>();
  let status: NatsStatus = "connecting";
  let settleFirst: (attempt: NatsAttempt) => void = () => {};
  const firstAttempt = new Promise<NatsAttempt>((resolve) => {
    settleFirst = resolve;
  });
  // Set while NATS keeps refusing the credentials: one warning per run of refusals.
  let refused = false;
  const refusal = (err: unknown) =>
    `NATS at ${url} refused ${signIn}: ${errMessage(err)}; ` +
    "check the credentials and the server's authorization (docs/deploy.md, NATS authorization)";
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
      failureMessage: (err) => (isNatsRefusal(err) ? `${refusal(err)}; retrying` : "cannot connect to NATS; retrying"),
      // "connected to NATS" says it.
      recoveryMessage: false,
      async step(signal) {
        let c: NatsConnection;
        try {
          c = await connect({
            servers: stripCredentials(opts.url),
            ...(authenticator && { authenticator }),
            ...(opts.inboxPrefix && { inboxPrefix: opts.inboxPrefix }),
            name: opts.name,
            timeout: opts.connectTimeoutMs ?? 2_000,
            reconnect: true,
            maxReconnectAttempts: -1,
            reconnectTimeWait: 1_000,
            // nats.js otherwise builds an Error with a stack trace per publish and request, kept in
            // case it fails (3% of an UpdateCustomer's CPU); a failure still says what failed.
            noAsyncTraces: true,
          });
        } catch (err) {
          const isRefusal = isNatsRefusal(err);
          settleFirst(isRefusal ? { outcome: "refused", reason: refusal(err) } : { outcome: "unreachable" });
          // The loop warns at an outage's first failure; a refusal after other failures is worth a warning too.
          if (isRefusal && !refused && (connector?.failures ?? 0) > 0) log.warn({}, `${refusal(err)}; retrying`);
          refused = isRefusal;
          if (status === "connecting") outage();
          throw err;
        }
        refused = false;
        if (signal.aborted) {
          settleFirst({ outcome: "closed" });
          await c.close().catch(() => {});
          return "done";
        }
        settleFirst({ outcome: "connected" });
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
        } else if (s.type === "error") {
          // e.g. a permissions violation: what the server's authorization does not allow this user.
          log.error({ err: errMessage(s.error) }, "NATS reported an error");
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
      settleFirst({ outcome: "closed" });
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
    firstAttempt,
    get connection() {
      return status === "connected" ? conn : undefined;
    },
    events,
    close,
    [Symbol.asyncDispose]: close,
  };
}

/** url without user and password: nats.js would not use them, and they stay out of its messages. */
function stripCredentials(url: string): string {
  try {
    const u = new URL(url);
    if (!u.username && !u.password) return url;
    u.username = "";
    u.password = "";
    return u.toString();
  } catch {
    return url;
  }
}
