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
import type { Principal, RevocationCheck } from "./auth.js";
import { errMessage, type Logger } from "./logger.js";

export interface RevocationListOptions {
  natsUrl: string;
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
  logger: Logger;
}

export interface RevocationList extends RevocationCheck, AsyncDisposable {
  /** Starts following revocations in the background; never throws, never waits for NATS. */
  start(): void;
  /** Stops following and closes the NATS connection. Never throws. */
  stop(): Promise<void>;
  /** True while a consumer delivers revocations. */
  readonly subscribed: boolean;
  /** Revoked token ids and session ids held. */
  readonly size: number;
}

const PRUNE_INTERVAL_MS = 30_000;
// A consumer left behind by a crash is removed by the server after this long.
const INACTIVE_THRESHOLD_MS = 2 * 60_000;

/** Creates the list; nothing connects until start(). */
export function createRevocationList(opts: RevocationListOptions): RevocationList {
  const subject = `${opts.subjectPrefix}.token.revoked.>`;
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

  let started = false;
  let stopping = false;
  let loop: Promise<void> = Promise.resolve();
  let pruneTimer: NodeJS.Timeout | undefined;
  let nc: NatsConnection | undefined;
  let messages: ConsumerMessages | undefined;
  let subscribed = false;
  let failing = false;
  let wakeUp: (() => void) | undefined;

  const wake = () => wakeUp?.();
  const pause = (ms: number) =>
    stopping
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          const done = () => {
            clearTimeout(timer);
            wakeUp = undefined;
            resolve();
          };
          const timer = setTimeout(done, ms);
          wakeUp = done;
        });

  // One warning per outage, not one per attempt.
  const trouble = (message: string, err?: unknown) => {
    if (failing) {
      log.debug({ err: errMessage(err) }, message);
      return;
    }
    failing = true;
    log.warn(
      { err: errMessage(err) },
      `${message}; tokens revoked meanwhile are accepted until revocations can be read again`,
    );
  };

  const remember = (entries: Map<string, number>, id: string, until: number) => {
    if (id && (entries.get(id) ?? 0) < until) entries.set(id, until);
  };

  function apply(m: JsMsg): void {
    lastSeq = m.seq;
    if (m.headers?.get("ce-type") !== TokensRevokedSchema.typeName) return;
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

  async function connection(): Promise<NatsConnection> {
    if (nc && !nc.isClosed()) return nc;
    const conn = await connect({
      servers: opts.natsUrl,
      name: `revocations ${opts.stream}`,
      timeout: 2_000,
      reconnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 1_000,
    });
    if (stopping) {
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
    try {
      for await (const s of conn.status()) {
        if (stopping) break;
        if (s.type === "disconnect") {
          trouble("NATS connection lost");
          void messages?.close();
        } else if (s.type === "reconnect") {
          wake();
        }
      }
    } catch {
      // The iterator ends with the connection.
    }
  }

  // Follows the stream until the consumer ends; "no stream" while there is none to follow.
  async function follow(conn: NatsConnection): Promise<"ended" | "no stream"> {
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
    if (stopping) void iter.close();
    if (failing || lastSeq === 0) {
      failing = false;
      log.info({ from: from.opt_start_seq ?? from.opt_start_time }, "reading token revocations");
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

  async function run(): Promise<void> {
    let toldNoStream = false;
    for (let failures = 0; !stopping; ) {
      try {
        if ((await follow(await connection())) === "ended") {
          failures = 0;
        } else {
          // Nothing can have been revoked into a stream that does not exist: not a failure.
          if (!toldNoStream) log.info("no revocations stream yet; reading it once it exists");
          toldNoStream = true;
          failures++;
        }
      } catch (err) {
        if (stopping) return;
        trouble("cannot read token revocations", err);
        failures++;
      }
      await pause(Math.min(maxRetryMs, 250 * 2 ** failures));
    }
  }

  let stopped: Promise<void> | undefined;
  const stop = () => {
    stopped ??= (async () => {
      stopping = true;
      clearInterval(pruneTimer);
      wake();
      // Ending the consumer's messages ends the loop, which deletes the consumer;
      // closing the connection ends whatever it still waits for.
      await messages?.close().catch(() => {});
      await settlesWithin(loop, 2_000);
      await nc?.close().catch(() => {});
      await loop;
    })().catch((err: unknown) => log.error({ err: errMessage(err) }, "revocation list stop failed"));
    return stopped;
  };

  return {
    start() {
      if (started || stopping) return;
      started = true;
      pruneTimer = setInterval(prune, PRUNE_INTERVAL_MS).unref();
      loop = run().catch((err: unknown) => log.error({ err: errMessage(err) }, "revocation list stopped unexpectedly"));
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
