/**
 * Revoked access tokens, for a resource server that verifies tokens offline:
 * the identity provider publishes `identity.v1.TokensRevoked` on
 * `<prefix>.token.revoked.>` in its stream, and this list follows it with an
 * ephemeral consumer (no acks, in stream order), keeping each revoked `jti`
 * and `sid` in memory until the event's `expire_time`.
 *
 * At start it reads from `lookback` ago (the longest access-token lifetime):
 * a token revoked earlier has expired. When NATS goes away it keeps what it
 * knows, retries by itself and resumes after the last event it applied, so a
 * revocation published meanwhile is honoured once NATS is back. It never
 * blocks a request: `isRevoked` is a lookup in two maps.
 *
 * Give it the process's NATS connection (`nats`), created with
 * `maxReconnectAttempts: -1` so it outlives an outage; the list never closes
 * it. Or give it `natsUrl` and it keeps a connection of its own, which also
 * lets a process start while NATS is down.
 *
 * ```ts
 * const revocations = createRevocationList({ nats: nc, stream: "IDENTITY", subjectPrefix: "identity", lookbackMs: 15 * 60_000, logger });
 * revocations.start();
 * const tokens = createTokenVerifier({ jwksUrl, issuer, audience, revocations });
 * ```
 */
import { randomUUID } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { type TokensRevoked, TokensRevokedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import {
  AckPolicy,
  type ConsumerConfig,
  type ConsumerMessages,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  type JsMsg,
  jetstream,
  jetstreamManager,
  type StreamInfo,
} from "@nats-io/jetstream";
import { connect, type NatsConnection, nanos } from "@nats-io/transport-node";
import { settlesWithin } from "./async.js";
import { createSupervisedLoop, type StepResult } from "./background.js";
import { CE_TYPE } from "./cloudevents.js";
import { errMessage, type Logger } from "./logger.js";
import { identitySubjects } from "./subjects.js";
import type { Principal, RevocationCheck } from "./tokens.js";

export type { Logger };

/** Where the list reads from: the caller's connection, or a URL it connects to itself. */
export type RevocationSource =
  | {
      /** A connection of the caller's (never closed by the list); it should reconnect forever. */
      nats: NatsConnection;
      natsUrl?: never;
    }
  | {
      /** The list connects here itself, retrying while NATS is down, and closes it on stop(). */
      natsUrl: string;
      nats?: never;
    };

export type RevocationListOptions = RevocationSource & {
  /** The identity provider's stream, e.g. `IDENTITY`. */
  stream: string;
  /** Its subject prefix, e.g. `identity`: the list reads `<prefix>.token.revoked.>`. */
  subjectPrefix: string;
  /** How far back to read at start: at least the identity provider's access-token lifetime. */
  lookbackMs: number;
  /** Clock skew allowed for: added to the lookback and to every entry's life. Default 60 s. */
  skewMs?: number;
  /** Longest wait between attempts to (re)subscribe. Default 5 s. */
  maxRetryMs?: number;
  /** Where the list says what it does; a pino logger fits. */
  logger: Logger;
};

export interface RevocationList extends RevocationCheck, AsyncDisposable {
  /** Starts following revocations in the background; never throws, never waits for NATS. */
  start(): void;
  /** Stops following (closing the NATS connection if the list opened it). Never throws. */
  stop(): Promise<void>;
  /** True while a consumer delivers revocations. */
  readonly subscribed: boolean;
  /** Revoked token ids and session ids held. */
  readonly size: number;
}

const PRUNE_INTERVAL_MS = 30_000;
// A consumer left behind by a crash is removed by the server after this long.
const INACTIVE_THRESHOLD_MS = 2 * 60_000;

/** A failure while the NATS connection is down. */
class ConnectionLost extends Error {
  constructor(cause: unknown) {
    super("NATS connection lost", { cause });
  }
}

/** Creates the list; nothing connects until start(). */
export function createRevocationList(opts: RevocationListOptions): RevocationList {
  const subject = identitySubjects(opts.subjectPrefix).ofType("identity.v1.TokensRevoked");
  const skewMs = opts.skewMs ?? 60_000;
  const maxRetryMs = opts.maxRetryMs ?? 5_000;
  const log = opts.logger.child({ component: "revocations", stream: opts.stream, subject });

  // Revoked jti / sid → when the entry may be forgotten (epoch ms).
  const tokenIds = new Map<string, number>();
  const sessionIds = new Map<string, number>();
  // The stream sequence of the last message applied: a new consumer resumes after it.
  let lastSeq = 0;
  // When the stream lastSeq counts in was created.
  let streamCreated: string | undefined;

  let pruneTimer: ReturnType<typeof setInterval> | undefined;
  // The connection the list opened itself (natsUrl); a caller's is never closed here.
  let nc: NatsConnection | undefined;
  let statuses: { stop?(): void } | undefined;
  let messages: ConsumerMessages | undefined;
  let subscribed = false;
  // Set by a disconnect, cleared by the next subscription: the consumer of the
  // time ended with the connection, and what fails meanwhile fails for that.
  let lostConnection = false;
  // Consecutive reads that found no stream; they back off, but are no failure.
  let noStream = 0;

  const remember = (entries: Map<string, number>, id: string, until: number) => {
    if (id && (entries.get(id) ?? 0) < until) entries.set(id, until);
  };

  function apply(m: JsMsg): void {
    lastSeq = m.seq;
    if (m.headers?.get(CE_TYPE) !== TokensRevokedSchema.typeName) return;
    let event: TokensRevoked;
    try {
      event = fromBinary(TokensRevokedSchema, m.data);
    } catch (err) {
      log.warn({ seq: m.seq, err: errMessage(err) }, "undecodable TokensRevoked event skipped");
      return;
    }
    // Without an expiry, keep it as long as any token it could name may live.
    const until = (event.expireTime ? timestampMs(event.expireTime) : Date.now() + opts.lookbackMs) + skewMs;
    if (until <= Date.now()) return;
    for (const id of event.jwtIds) remember(tokenIds, id, until);
    for (const id of event.sessionIds) remember(sessionIds, id, until);
  }

  function prune(): void {
    const now = Date.now();
    for (const entries of [tokenIds, sessionIds]) {
      for (const [id, until] of entries) if (until <= now) entries.delete(id);
    }
  }

  async function connection(signal: AbortSignal): Promise<NatsConnection> {
    if (opts.nats) {
      if (!statuses) void watch(opts.nats);
      return opts.nats;
    }
    if (nc && !nc.isClosed()) return nc;
    const conn = await connect({
      servers: opts.natsUrl,
      name: `revocations ${opts.stream}`,
      timeout: 2_000,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 1_000,
    });
    if (signal.aborted) {
      await conn.close().catch(() => {});
      throw new Error("stopping");
    }
    nc = conn;
    void watch(conn);
    return conn;
  }

  // nats.js reconnects by itself. A consumer does not survive every outage
  // (a restarted server forgets it; messages in flight are lost), so each
  // disconnect ends the current one and the loop makes a new one, resuming
  // after lastSeq, as soon as the connection is back.
  async function watch(conn: NatsConnection): Promise<void> {
    const iter = conn.status();
    statuses = iter as { stop?(): void };
    try {
      for await (const s of iter) {
        if (s.type === "disconnect") {
          lostConnection = true;
          void messages?.close();
        } else if (s.type === "reconnect") {
          loop.retryNow();
        }
      }
    } catch {
      // The iterator ends with the connection.
    }
  }

  // Follows the stream until the consumer ends; "no stream" while there is none to follow.
  async function follow(conn: NatsConnection, signal: AbortSignal): Promise<"ended" | "no stream"> {
    const jsm = await jetstreamManager(conn, { timeout: 5_000 });
    let stream: StreamInfo;
    try {
      stream = await jsm.streams.info(opts.stream);
    } catch (err) {
      if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) return "no stream";
      throw err;
    }
    // A stream deleted and created again numbers its messages from 1 again.
    if (stream.created !== streamCreated || stream.state.last_seq < lastSeq) lastSeq = 0;
    streamCreated = stream.created;
    const from: Partial<ConsumerConfig> =
      lastSeq > 0
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: lastSeq + 1 }
        : {
            deliver_policy: DeliverPolicy.StartTime,
            opt_start_time: new Date(Date.now() - opts.lookbackMs - skewMs).toISOString(),
          };
    // One filter subject (filter_subjects needs NATS 2.10).
    const info = await jsm.consumers.add(opts.stream, {
      name: `revocations_${randomUUID().replaceAll("-", "")}`,
      ack_policy: AckPolicy.None,
      filter_subject: subject,
      mem_storage: true,
      num_replicas: 1,
      inactive_threshold: nanos(INACTIVE_THRESHOLD_MS),
      ...from,
    });
    const iter = await jetstream(conn)
      .consumers.getConsumerFromInfo(info)
      .consume({ max_messages: 256, expires: 5_000, abort_on_missing_resource: true });
    messages = iter;
    subscribed = true;
    if (signal.aborted) void iter.close();
    if (loop.failures > 0 || lastSeq === 0) {
      log.info({ from: from.opt_start_seq ?? from.opt_start_time }, "reading token revocations");
    }
    lostConnection = false;
    loop.recovered();
    let delivered = 0;
    try {
      for await (const m of iter) {
        // Without acks a message lost in flight is not redelivered: start over after the last one applied.
        if (m.info.deliverySequence !== delivered + 1) {
          log.debug({ seq: m.seq, lastSeq }, "revocations skipped a message; resubscribing");
          break;
        }
        delivered = m.info.deliverySequence;
        apply(m);
      }
    } finally {
      subscribed = false;
      messages = undefined;
      await iter.close().catch(() => {});
      // Best effort: otherwise the server drops it after INACTIVE_THRESHOLD_MS.
      if (!conn.isClosed()) await settlesWithin(jsm.consumers.delete(opts.stream, info.name), 1_000);
    }
    return "ended";
  }

  // A caller's connection, once closed, never comes back: retrying cannot help.
  const callerClosed = () => {
    if (!opts.nats?.isClosed()) return false;
    log.warn({}, "the NATS connection was closed; token revocations are no longer followed");
    return true;
  };

  // One step follows the stream for as long as its consumer lasts.
  async function step(signal: AbortSignal): Promise<StepResult> {
    if (callerClosed()) return "done";
    let outcome: "ended" | "no stream";
    try {
      outcome = await follow(await connection(signal), signal);
    } catch (err) {
      if (signal.aborted || callerClosed()) return "done";
      throw lostConnection ? new ConnectionLost(err) : err;
    }
    // A consumer ended by an outage is a failure (one warning per outage); by itself, not.
    if (lostConnection) throw new ConnectionLost(undefined);
    if (outcome === "ended") {
      noStream = 0;
      return 250;
    }
    // Nothing can have been revoked into a stream that does not exist: not a failure.
    if (noStream === 0) log.info({}, "no revocations stream yet; reading it once it exists");
    noStream++;
    return Math.min(maxRetryMs, 250 * 2 ** noStream);
  }

  const loop = createSupervisedLoop({
    name: "revocation list",
    logger: log,
    step,
    minBackoffMs: 500,
    maxBackoffMs: maxRetryMs,
    failureMessage: (err) =>
      `${err instanceof ConnectionLost ? "NATS connection lost" : "cannot read token revocations"}; ` +
      "tokens revoked meanwhile are accepted until revocations can be read again",
    // "reading token revocations" says it.
    recoveryMessage: false,
  });

  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= (async () => {
      clearInterval(pruneTimer);
      // Ending the consumer's messages ends the step, which deletes the consumer;
      // closing the connection ends whatever it still waits for.
      const stopping = loop.stop(2_000);
      await messages?.close().catch(() => {});
      statuses?.stop?.();
      const ended = await stopping;
      if (opts.nats) {
        // Not ours to close: a request still pending ends by its own timeout, and the loop with it.
        if (!ended) log.debug({}, "revocation list stopped with a NATS request pending");
        return;
      }
      await nc?.close().catch(() => {});
      await loop.done;
    })().catch((err: unknown) => log.error({ err: errMessage(err) }, "revocation list stop failed"));
    return stopped;
  };

  return {
    start() {
      if (pruneTimer || stopped) return;
      pruneTimer = setInterval(prune, PRUNE_INTERVAL_MS).unref();
      loop.start();
    },
    stop,
    [Symbol.asyncDispose]: stop,
    isRevoked(principal: Pick<Principal, "tokenId" | "sessionId">) {
      return (
        tokenIds.has(principal.tokenId) || (principal.sessionId !== undefined && sessionIds.has(principal.sessionId))
      );
    },
    get subscribed() {
      return subscribed;
    },
    get size() {
      return tokenIds.size + sessionIds.size;
    },
  };
}
