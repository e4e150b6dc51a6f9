/**
 * Revoked access tokens, for a resource server that verifies tokens offline:
 * the identity provider publishes `identity.v1.TokensRevoked` on
 * `<prefix>.token.revoked.>` in its stream, and this list follows it with an
 * ephemeral consumer (no acks, in stream order), keeping each revoked `jti`
 * and `sid` in memory until the event's `expire_time`, but never longer than
 * an access token can live after the revocation (lookback + skew). Only
 * events signed by the identity provider count (`verifier`, see
 * ./event-signing.ts): a forged revocation is ignored and logged. Entries
 * per event and in total are capped (`maxIdsPerEvent`, `maxEntries`).
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
 * const verifier = createEventVerifier({ trust: { "identity-service": "http://127.0.0.1:8081/.well-known/event-keys.json" } });
 * const revocations = createRevocationList({ nats: nc, stream: "IDENTITY", subjectPrefix: "identity", lookbackMs: 15 * 60_000, verifier, logger });
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
import { CE_ID, CE_TYPE } from "./cloudevents.js";
import { EventKeysUnavailableError, EventSignatureError, type EventVerifier } from "./event-signing.js";
import { errMessage, type Logger } from "./logger.js";
import { identitySubjects } from "./subjects.js";
import type { RevocationCheck, RevocationSubject } from "./tokens.js";

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
  /**
   * Verifies each event's signature (`createEventVerifier` trusting the
   * identity provider's event keys, `<issuer>/.well-known/event-keys.json`).
   * An event that does not verify is ignored and logged; while the keys
   * cannot be fetched the list waits and retries, never applying an
   * unverified event.
   */
  verifier: EventVerifier;
  /** The `ce-source` revocations must be signed by. Default `identity-service`. */
  source?: string;
  /** Most ids (jwt_ids + session_ids + key_ids) one event may carry; a larger event is ignored and logged. Default 1,000. */
  maxIdsPerEvent?: number;
  /**
   * Most entries held. At the cap the entry that expires first (the oldest)
   * is dropped for the new one, and a warning logged. Default 100,000.
   */
  maxEntries?: number;
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
  /**
   * True once the list has applied every revocation the stream held when it
   * first subscribed (or found no stream): from then on a token revoked
   * before this process started is refused. Stays true through outages.
   */
  readonly caughtUp: boolean;
  /** Revoked token ids and session ids held. */
  readonly size: number;
  /** Events ignored: unsigned, badly signed, not from the identity provider, or too large. */
  readonly rejected: number;
  /** Entries dropped at `maxEntries`. */
  readonly evicted: number;
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

/** The ids one TokensRevoked names, each counted against `maxIdsPerEvent`. */
function idsIn(event: TokensRevoked): number {
  return event.jwtIds.length + event.sessionIds.length + event.keyIds.length;
}

/** Creates the list; nothing connects until start(). */
export function createRevocationList(opts: RevocationListOptions): RevocationList {
  if (!opts.verifier) throw new TypeError("createRevocationList: verifier is required (createEventVerifier)");
  const subject = identitySubjects(opts.subjectPrefix).ofType("identity.v1.TokensRevoked");
  const skewMs = opts.skewMs ?? 60_000;
  const maxRetryMs = opts.maxRetryMs ?? 5_000;
  const source = opts.source ?? "identity-service";
  const maxIdsPerEvent = opts.maxIdsPerEvent ?? 1_000;
  const maxEntries = opts.maxEntries ?? 100_000;
  const log = opts.logger.child({ component: "revocations", stream: opts.stream, subject });
  let rejected = 0;
  let evicted = 0;
  let caughtUp = false;
  // Said once until the list is below the cap again.
  let toldFull = false;

  // Revoked jti / sid → when the entry may be forgotten (epoch ms).
  const tokenIds = new Map<string, number>();
  const sessionIds = new Map<string, number>();
  // Revoked signing keys and clients' cut-offs (see keyAndClientRevocations).
  const keysAndClients = keyAndClientRevocations();
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

  // Map order is insertion order, and every entry lives at most lookback + skew
  // from its arrival: the first entry is (about) the one that expires first.
  const makeRoom = () => {
    while (tokenIds.size + sessionIds.size >= maxEntries) {
      const t = tokenIds.entries().next().value;
      const s = sessionIds.entries().next().value;
      const from = !s || (t && t[1] <= s[1]) ? tokenIds : sessionIds;
      const first = from.keys().next().value;
      if (first === undefined) return;
      from.delete(first);
      evicted++;
      if (!toldFull) {
        toldFull = true;
        log.warn({ maxEntries }, "revocation list full; the entries that expire first are dropped");
      }
    }
  };

  const remember = (entries: Map<string, number>, id: string, until: number) => {
    if (!id) return;
    const known = entries.get(id);
    if (known !== undefined) {
      if (known < until) entries.set(id, until);
      return;
    }
    makeRoom();
    entries.set(id, until);
  };

  const refuse = (m: JsMsg, reason: string, detail?: Record<string, unknown>) => {
    rejected++;
    log.warn(
      { seq: m.seq, eventId: m.headers?.get(CE_ID) || undefined, reason, ...detail },
      "TokensRevoked event ignored",
    );
  };

  /**
   * Applies one message: verified, decoded, each entry's life clamped to what
   * an access token can live after the revocation. Throws (and leaves lastSeq)
   * only when the signing keys are unavailable: the message is read again later.
   */
  async function apply(m: JsMsg): Promise<void> {
    if (m.headers?.get(CE_TYPE) !== TokensRevokedSchema.typeName) {
      lastSeq = m.seq;
      return;
    }
    try {
      const verified = await opts.verifier.verify(m);
      if (verified.source !== source) throw new EventSignatureError("untrusted_source", verified.source);
    } catch (err) {
      if (err instanceof EventKeysUnavailableError) throw err;
      lastSeq = m.seq;
      refuse(m, err instanceof EventSignatureError ? err.reason : "verification failed", { err: errMessage(err) });
      return;
    }
    lastSeq = m.seq;
    let event: TokensRevoked;
    try {
      event = fromBinary(TokensRevokedSchema, m.data);
    } catch (err) {
      refuse(m, "undecodable", { err: errMessage(err) });
      return;
    }
    const ids = idsIn(event);
    if (ids > maxIdsPerEvent) {
      refuse(m, "too many ids", { ids, maxIdsPerEvent });
      return;
    }
    // A token this event names was issued before it occurred and lives at most
    // the lookback: no entry outlives that, whatever expire_time says.
    const storedAt = Math.floor(m.info.timestampNanos / 1e6);
    const occurred = event.occurTime ? Math.min(timestampMs(event.occurTime), storedAt) : storedAt;
    const latest = occurred + opts.lookbackMs;
    const until = Math.min(event.expireTime ? timestampMs(event.expireTime) : latest, latest) + skewMs;
    if (until <= Date.now()) return;
    for (const id of event.jwtIds) remember(tokenIds, id, until);
    for (const id of event.sessionIds) remember(sessionIds, id, until);
    keysAndClients.apply(event, until);
  }

  function prune(): void {
    const now = Date.now();
    for (const entries of [tokenIds, sessionIds]) {
      for (const [id, until] of entries) if (until <= now) entries.delete(id);
    }
    if (tokenIds.size + sessionIds.size < maxEntries) toldFull = false;
    keysAndClients.prune(now);
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
      if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) {
        // Nothing was revoked into a stream that does not exist.
        caughtUp = true;
        return "no stream";
      }
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
    // Nothing to replay: every revocation in the window is applied.
    if (info.num_pending === 0) caughtUp = true;
    if (signal.aborted) void iter.close();
    if (loop.failures > 0 || lastSeq === 0) {
      log.info({ from: from.opt_start_seq ?? from.opt_start_time }, "reading token revocations");
    }
    lostConnection = false;
    // Recovered once reading works: nothing to replay, or a message applied (its keys fetched).
    let recovering = true;
    if (info.num_pending === 0) {
      loop.recovered();
      recovering = false;
    }
    let delivered = 0;
    try {
      for await (const m of iter) {
        // Without acks a message lost in flight is not redelivered: start over after the last one applied.
        if (m.info.deliverySequence !== delivered + 1) {
          log.debug({ seq: m.seq, lastSeq }, "revocations skipped a message; resubscribing");
          break;
        }
        delivered = m.info.deliverySequence;
        await apply(m);
        if (recovering) {
          loop.recovered();
          recovering = false;
        }
        // The last message the consumer had when it was made, or any later one.
        if (m.info.pending === 0) caughtUp = true;
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
    failureMessage: (err) => {
      const what =
        err instanceof ConnectionLost
          ? "NATS connection lost"
          : err instanceof EventKeysUnavailableError
            ? "cannot verify token revocations: the identity provider's event keys are unavailable"
            : "cannot read token revocations";
      return `${what}; tokens revoked meanwhile are accepted until revocations can be read again`;
    },
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
      // No entry lives longer than lookback + skew: a shorter window is pruned as often.
      pruneTimer = setInterval(prune, Math.min(PRUNE_INTERVAL_MS, opts.lookbackMs + skewMs)).unref();
      loop.start();
    },
    stop,
    [Symbol.asyncDispose]: stop,
    isRevoked(principal: RevocationSubject) {
      return (
        tokenIds.has(principal.tokenId) ||
        (principal.sessionId !== undefined && sessionIds.has(principal.sessionId)) ||
        keysAndClients.isRevoked(principal)
      );
    },
    get keyRevocations() {
      return keysAndClients.keyRevocations;
    },
    get subscribed() {
      return subscribed;
    },
    get caughtUp() {
      return caughtUp;
    },
    get rejected() {
      return rejected;
    },
    get evicted() {
      return evicted;
    },
    get size() {
      return tokenIds.size + sessionIds.size + keysAndClients.size;
    },
  };
}

/**
 * The revocations of TokensRevoked that name no single token: signing keys
 * (`key_ids`: every token whose `kid` is one) and a client's cut-off
 * (`client_id` with `issued_before`: every token of the client whose `iat`
 * is earlier). Entries live until the event's expiry, as the others do;
 * `keyRevocations` counts revoked keys, so a verifier knows to refetch the JWKS.
 */
function keyAndClientRevocations() {
  // kid → until (epoch ms).
  const keyIds = new Map<string, number>();
  // client id → { before: cut-off (epoch ms), until }.
  const clients = new Map<string, { before: number; until: number }>();
  let keyRevocations = 0;
  return {
    apply(event: TokensRevoked, until: number): void {
      for (const kid of event.keyIds) {
        if (!kid) continue;
        if (!keyIds.has(kid)) keyRevocations++;
        keyIds.set(kid, Math.max(until, keyIds.get(kid) ?? 0));
      }
      if (event.clientId && event.issuedBefore) {
        const before = timestampMs(event.issuedBefore);
        const known = clients.get(event.clientId);
        clients.set(event.clientId, {
          before: Math.max(before, known?.before ?? 0),
          until: Math.max(until, known?.until ?? 0),
        });
      }
    },
    prune(now: number): void {
      for (const [kid, until] of keyIds) if (until <= now) keyIds.delete(kid);
      for (const [id, c] of clients) if (c.until <= now) clients.delete(id);
    },
    isRevoked(principal: RevocationSubject): boolean {
      if (principal.keyId !== undefined && keyIds.has(principal.keyId)) return true;
      const cutOff = principal.clientId === undefined ? undefined : clients.get(principal.clientId);
      return cutOff !== undefined && principal.issuedAt !== undefined && principal.issuedAt.getTime() < cutOff.before;
    },
    get keyRevocations() {
      return keyRevocations;
    },
    get size() {
      return keyIds.size + clients.size;
    },
  };
}
