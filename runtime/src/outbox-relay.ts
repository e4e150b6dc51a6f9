/**
 * The outbox relay: one per service instance, publishing only while it leads
 * (outbox-leader.ts). A leader reads unsent rows in id order, publishes them
 * (outbox-publisher.ts) and marks them sent after their acks, batch after
 * batch, then waits for a NOTIFY from a writer or, as a safety net, the next
 * poll. A follower tries the lock now and then, so another instance takes
 * over when the leader stops or loses its database session.
 *
 * The relay runs as a supervised loop (`@customer-platform/sdk/background`):
 * a failed step is retried with backoff and logged once per outage. What it
 * does is observable as typed events (`leader`, `follower`, `published`,
 * `idle`, `stopped`) and as a `status` snapshot, for operators and tests.
 */
import { EventEmitter } from "node:events";
import { createSupervisedLoop, type StepResult, settlesWithin } from "@customer-platform/sdk/background";
import type { EventSigner } from "@customer-platform/sdk/event-signing";
import { type JetStreamClient, jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { type Database, isConnectionError } from "./db.js";
import { errMessage, type Logger } from "./logger.js";
import type { Nats, NatsStatus } from "./nats.js";
import type { Outbox } from "./outbox.js";
import { createOutboxLeadership, type OutboxLock } from "./outbox-leader.js";
import { createOutboxPublisher, PublishError, type PublishedEvent } from "./outbox-publisher.js";

export type { PublishedEvent };

/**
 * Where the relay is. A follower tries the lock now and then; a leader holds
 * it and publishes; `draining` is a leader that was asked to stop after
 * publishing what is pending (until `deadline`); `stopping` waits for the
 * running step before the lock, if still held, is released.
 */
export type RelayState =
  | { readonly kind: "created" }
  | { readonly kind: "follower" }
  | { readonly kind: "leader"; readonly lock: OutboxLock }
  | { readonly kind: "draining"; readonly lock: OutboxLock; readonly deadline: number }
  | { readonly kind: "stopping"; readonly lock: OutboxLock | undefined }
  | { readonly kind: "stopped" };

/** What the relay emits. Listeners run synchronously in the relay's loop: keep them short. */
export interface RelayEvents {
  /** This relay took the lock; `pid` is its lock session's backend (pg_stat_activity). */
  leader: [info: { pid: number }];
  /** This relay no longer leads: its lock session died, or it is stopping. */
  follower: [info: { reason: "lock session lost" | "stopping" }];
  /**
   * Events acked by JetStream and marked sent, one batch at a time, in outbox
   * order; `duplicate` marks those JetStream already had (see `status.duplicates`).
   */
  published: [events: readonly PublishedEvent[]];
  /** The leader published all it read: the outbox held nothing more when it was read. */
  idle: [];
  /** stop() has finished. */
  stopped: [];
}

/** A snapshot of the relay, for operators (and tests). */
export interface OutboxRelayStatus {
  readonly state: RelayState["kind"];
  /** The shared connection's status, as the relay sees it. */
  readonly nats: NatsStatus;
  /** Events this relay has published (acked and marked sent) since it started. */
  readonly published: number;
  /**
   * Acks in which JetStream said it had the event already (by `Nats-Msg-Id`)
   * and so stored nothing, counted whether or not the batch could then be
   * marked sent. Not 0 only when an event was sent twice: by a leader that
   * lost its session with a batch in flight and by its successor, or again
   * after a publish whose ack was lost.
   */
  readonly duplicates: number;
  /** Failed steps since the last success: 0 while healthy. */
  readonly failures: number;
}

export interface OutboxRelayOptions {
  /** The outbox to relay: its stream, subjects, NOTIFY channel and lock. */
  outbox: Outbox;
  database: Pick<Database<Record<string, unknown>>, "query" | "listen" | "session">;
  /** The process's NATS connection (nats.ts); the relay never closes it. */
  nats: Pick<Nats, "status" | "connection" | "events">;
  logger: Logger;
  /** Safety-net poll when no NOTIFY arrives; default 5000. */
  pollIntervalMs?: number;
  /** Rows read per batch; default 256. */
  batchSize?: number;
  /** Wait for one JetStream ack; default 5000. */
  publishTimeoutMs?: number;
  /** How often a follower tries the lock: every `lockRetryMs` / 2 to `lockRetryMs`; default 2000. */
  lockRetryMs?: number;
  /** Signs every event published (the service host always gives one: event-keys.ts). */
  signer?: EventSigner;
}

export interface OutboxRelay {
  readonly outbox: Outbox;
  readonly events: EventEmitter<RelayEvents>;
  readonly status: OutboxRelayStatus;
  /** Starts relaying in the background; never throws, never waits for NATS. */
  start(): void;
  /**
   * Stops relaying; with `flush`, a leader first publishes what is pending,
   * for up to `timeoutMs` (default 5000). Then releases the lock. Never throws.
   */
  stop(opts?: { flush?: boolean; timeoutMs?: number }): Promise<void>;
}

/** Creates the relay of `outbox`; nothing runs until start(). */
export function createOutboxRelay(opts: OutboxRelayOptions): OutboxRelay {
  const { outbox, database, nats } = opts;
  const log = opts.logger.child({ stream: outbox.stream });
  const pollIntervalMs = opts.pollIntervalMs ?? 5000;
  const batchSize = opts.batchSize ?? 256;
  const lockRetryMs = opts.lockRetryMs ?? 2000;
  const leadership = createOutboxLeadership({ outbox, database, logger: log });
  const publisher = createOutboxPublisher({
    outbox,
    publishTimeoutMs: opts.publishTimeoutMs ?? 5000,
    logger: log,
    ...(opts.signer && { signer: opts.signer }),
  });
  const events = new EventEmitter<RelayEvents>();

  let state: RelayState = { kind: "created" };
  let published = 0;
  let duplicates = 0;
  // LISTEN is retried with the poll when it fails; the relay polls meanwhile.
  let listening: { kind: "on"; unlisten: () => Promise<void> } | { kind: "off"; retryAt: number } = {
    kind: "off",
    retryAt: 0,
  };
  let js: { conn: NatsConnection; client: JetStreamClient } | undefined;
  // Said once per NATS outage, and only by a leader: only a leader holds events back.
  let toldNatsDown = false;
  let stopped: Promise<void> | undefined;

  // A listener that throws must not fail a step (and so republish a batch).
  const emit = <K extends keyof RelayEvents>(name: K, ...args: RelayEvents[K]) => {
    try {
      (events.emit as (name: K, ...args: RelayEvents[K]) => boolean)(name, ...args);
    } catch (err) {
      log.error({ err: errMessage(err), event: name }, "outbox relay event listener failed");
    }
  };

  const lockOf = (s: RelayState) =>
    s.kind === "leader" || s.kind === "draining" || s.kind === "stopping" ? s.lock : undefined;

  function becomeLeader(lock: OutboxLock): void {
    state = { kind: "leader", lock };
    log.info({ pid: lock.pid }, "outbox relay is the leader");
    emit("leader", { pid: lock.pid });
  }

  // The server released the lock with the session; the dead connection is not
  // touched again (see LOCK_ALIVE in outbox-leader.ts).
  function loseLock(lock: OutboxLock): void {
    if (lockOf(state) !== lock) return;
    state = state.kind === "leader" ? { kind: "follower" } : { kind: "stopping", lock: undefined };
    log.warn("outbox relay lost its lock session; no longer the leader");
    emit("follower", { reason: "lock session lost" });
  }

  function tellNatsDown(): void {
    if (toldNatsDown || nats.status !== "disconnected") return;
    toldNatsDown = true;
    log.warn("NATS unavailable; events are held in the outbox");
  }

  // NATS back: publish now, even if a publish that failed with the outage is backing off.
  const onNatsConnected = () => {
    toldNatsDown = false;
    if (state.kind === "leader") loop.retryNow();
  };
  const onNatsDisconnected = () => {
    if (state.kind === "leader") tellNatsDown();
  };
  const onNotify = () => {
    if (state.kind === "leader") loop.wake();
  };

  function jetStream(): JetStreamClient | undefined {
    const conn = nats.connection;
    if (!conn) return undefined;
    if (js?.conn !== conn) js = { conn, client: jetstream(conn, { timeout: opts.publishTimeoutMs ?? 5000 }) };
    return js.client;
  }

  async function listen(): Promise<void> {
    if (listening.kind === "on" || Date.now() < listening.retryAt) return;
    try {
      listening = { kind: "on", unlisten: await database.listen(outbox.channel, onNotify) };
    } catch (err) {
      listening = { kind: "off", retryAt: Date.now() + pollIntervalMs };
      log.debug({ err: errMessage(err) }, "LISTEN failed");
    }
  }

  async function follow(): Promise<StepResult> {
    const lock = await leadership.tryAcquire();
    if (!lock) return lockRetryMs / 2 + (Math.random() * lockRetryMs) / 2;
    // stop() came while the lock was being taken.
    if (state.kind !== "follower") {
      await leadership.release(lock);
      return "done";
    }
    becomeLeader(lock);
    return 0;
  }

  // Acked by JetStream, not yet marked sent: the next batch's read marks them
  // in the same statement (outbox-leader.ts, markAndRead), so a batch costs
  // one round trip to PostgreSQL, not two. Marked on their own only when no
  // read follows: a failed publish, NATS gone, a stop.
  let acked: PublishedEvent[] = [];

  function marked(events: PublishedEvent[]): void {
    if (events.length === 0) return;
    published += events.length;
    emit("published", events);
  }

  /** Marks what is acked but not marked yet; false when the lock is gone. */
  async function markAcked(lock: OutboxLock): Promise<boolean> {
    const events = acked;
    if (events.length === 0) return true;
    // Kept until marked: a statement that fails leaves them for the next try.
    const ids = events.map((e) => e.id);
    if (!(await leadership.markSent(lock, ids))) return false;
    acked = [];
    marked(events);
    return true;
  }

  // One batch: mark the previous batch and read, publish, then step again at
  // once, so the next read marks this batch. A crash in between republishes
  // what was acked but not marked, and JetStream drops the repeats by
  // Nats-Msg-Id.
  async function lead(lock: OutboxLock, signal: AbortSignal): Promise<StepResult> {
    const client = jetStream();
    if (!client) {
      if (!(await markAcked(lock))) return lockLost(lock);
      if (state.kind === "draining") return "done";
      tellNatsDown();
      // Woken when NATS is back.
      return pollIntervalMs;
    }
    // Before the first read: consumers wait for the stream to exist.
    await publisher.ensureStream(client);
    // A flush ends only after a read that began after stop() was called.
    const drainingAtRead = state.kind === "draining";
    const toMark = acked;
    const ids = toMark.map((e) => e.id);
    const { alive, rows } = await leadership.markAndRead(lock, ids, batchSize);
    if (!alive) return lockLost(lock);
    acked = [];
    marked(toMark);
    const keepGoing = () => !signal.aborted && (state.kind !== "draining" || Date.now() < state.deadline);
    const { sent, failure, complete } = await publisher.publish(client, rows, { keepGoing, signal });
    acked = sent;
    // Counted when acked: a leader that lost its session cannot mark, but it did send.
    const repeated = sent.filter((e) => e.duplicate);
    if (repeated.length > 0) {
      duplicates += repeated.length;
      log.info({ eventIds: repeated.map((e) => e.eventId) }, "JetStream already had these events; repeats dropped");
    }
    if (failure) {
      if (!(await markAcked(lock))) return lockLost(lock);
      await database
        .query("update outbox set attempts = attempts + 1 where id = $1::bigint", [failure.row.id])
        .catch(() => {});
      throw failure;
    }
    if (state.kind === "draining" && Date.now() >= state.deadline) {
      return (await markAcked(lock)) ? "done" : lockLost(lock);
    }
    // The next step marks what this one sent, and reads what came meanwhile.
    if (sent.length > 0 || !complete || rows.length === batchSize) return 0;
    emit("idle");
    if (state.kind === "draining") return drainingAtRead ? "done" : 0;
    return pollIntervalMs;
  }

  function lockLost(lock: OutboxLock): StepResult {
    acked = [];
    loseLock(lock);
    return state.kind === "follower" ? 0 : "done";
  }

  async function step(signal: AbortSignal): Promise<StepResult> {
    if (state.kind !== "follower" && state.kind !== "leader" && state.kind !== "draining") return "done";
    await listen();
    const s = state;
    switch (s.kind) {
      case "follower":
        return follow();
      case "leader":
        return lead(s.lock, signal);
      case "draining":
        // A flush that fails is not retried: the next leader publishes the rest.
        return lead(s.lock, signal).catch((err: unknown) => {
          log.warn({ err: errMessage(err) }, "outbox relay could not flush; the next leader publishes the rest");
          return "done" as const;
        });
      default:
        return "done";
    }
  }

  const loop = createSupervisedLoop({
    name: "outbox relay",
    logger: log,
    step,
    minBackoffMs: 100,
    maxBackoffMs: 5000,
    failureMessage: (err) =>
      err instanceof PublishError
        ? "publish failed; retrying"
        : isConnectionError(err)
          ? "outbox relay cannot reach the database; retrying"
          : "outbox relay failed; retrying",
  });

  async function stopNow(flush: boolean, timeoutMs: number): Promise<void> {
    if (state.kind === "created") {
      state = { kind: "stopped" };
      emit("stopped");
      return;
    }
    if (flush && state.kind === "leader") {
      state = { kind: "draining", lock: state.lock, deadline: Date.now() + timeoutMs };
      // Now, even if a failed batch is backing off: this is the last chance.
      loop.retryNow();
      await settlesWithin(loop.done, timeoutMs);
    }
    state = { kind: "stopping", lock: lockOf(state) };
    // Stops waiting for acks; what is not marked sent is published again by the next leader.
    const ended = await loop.stop(flush ? 2_000 : timeoutMs);
    const lock = lockOf(state);
    state = { kind: "stopped" };
    nats.events.off("connected", onNatsConnected);
    nats.events.off("disconnected", onNatsDisconnected);
    if (lock && ended) {
      // What the last step sent is marked now, so the next leader does not publish it again.
      await markAcked(lock).catch((err: unknown) =>
        log.warn({ err: errMessage(err) }, "could not mark the last acked events; the next leader repeats them"),
      );
    }
    if (lock) {
      // Said before the unlock, so no listener ever sees two leaders at once.
      emit("follower", { reason: "stopping" });
      if (ended) await leadership.release(lock);
      else log.warn("outbox relay did not stop in time; its lock goes with its connection");
    }
    if (listening.kind === "on") await settlesWithin(listening.unlisten(), 2000);
    listening = { kind: "off", retryAt: Number.POSITIVE_INFINITY };
    emit("stopped");
  }

  return {
    outbox,
    events,
    get status() {
      return { state: state.kind, nats: nats.status, published, duplicates, failures: loop.failures };
    },
    start() {
      if (state.kind !== "created") return;
      state = { kind: "follower" };
      nats.events.on("connected", onNatsConnected);
      nats.events.on("disconnected", onNatsDisconnected);
      loop.start();
    },
    stop({ flush = false, timeoutMs = 5000 } = {}) {
      stopped ??= stopNow(flush, timeoutMs).catch((err: unknown) =>
        log.error({ err: errMessage(err) }, "outbox relay stop failed"),
      );
      return stopped;
    },
  };
}
