/**
 * Stream purges: personal data removed from a JetStream stream after an
 * erasure. The erasure's transaction writes its tombstone event to the outbox
 * and, with `requestStreamPurge`, one row per subject to purge, naming that
 * event; the purger (one per service instance, run by the service host)
 * purges a subject only once the event is published (its outbox row marked
 * sent, or already deleted by housekeeping after that). Every earlier event
 * on the subject was published before it (the relay keeps outbox order), so
 * none lands in the stream after the purge.
 *
 * A purge deletes the subject's messages one by one, each overwritten
 * (`STREAM.MSG.DELETE` with erase), never with a filtered `STREAM.PURGE`:
 * NATS 2.9 moves every consumer of the stream past its last message after a
 * filtered purge (its first-sequence bookkeeping reads 0 for an emptied
 * subject), so events not yet delivered to any consumer, the tombstone
 * among them, would be skipped silently. Deleting a message leaves the
 * consumers where they are.
 *
 * The purger is a supervised loop: it polls, is woken by a NOTIFY when a
 * purge is requested (to learn which event it waits for), when the relay of
 * this instance publishes that event, and when NATS comes back; it
 * retries a failed purge with a growing delay (counted in `attempts`; one
 * error line at `alertAfterAttempts`), and
 * waits out NATS outages. Purging a subject twice (two instances, a crash
 * before the row is marked) removes nothing more: nothing is published on
 * an erased customer's subjects again. Done rows are deleted after
 * `keepDoneDays`. A database without the table (a service that never
 * erases) gets no purger.
 */
import { EventEmitter } from "node:events";
import { createSupervisedLoop, type StepResult, settlesWithin } from "@customer-platform/sdk/background";
import {
  JetStreamApiCodes,
  JetStreamApiError,
  type JetStreamManager,
  jetstreamManager,
  type MsgRequest,
} from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { sql } from "drizzle-orm";
import type { Db } from "./db.js";
import { uuidv7 } from "./ids.js";
import { errMessage, type Logger } from "./logger.js";
import type { Nats } from "./nats.js";
import { streamPurges } from "./stream-purge-schema.js";

/** A purge to run once `afterEventId` is published. */
export interface StreamPurgeRequest {
  /** The JetStream stream, e.g. `CUSTOMER`. */
  readonly stream: string;
  /** The subject whose messages go, e.g. `customer.updated.<customer_id>` (no wildcard needed). */
  readonly subject: string;
  /** The outbox event (written in the same transaction) that must be published first. */
  readonly afterEventId: string;
  readonly now: Date;
}

/** The NOTIFY channel a purge request wakes the purgers on (delivered at commit). */
export const STREAM_PURGE_CHANNEL = "stream_purges";

/** Records a purge in the caller's transaction; it runs after the commit, once the event is published. */
export async function requestStreamPurge(
  tx: Pick<Db<Record<string, unknown>>, "insert" | "execute">,
  request: StreamPurgeRequest,
): Promise<void> {
  const insert = tx.insert(streamPurges).values({
    id: uuidv7(request.now.getTime()),
    stream: request.stream,
    subject: request.subject,
    afterEventId: request.afterEventId,
    createdAt: request.now,
  });
  // One round trip, as enqueueEvent: the purgers learn which event to wait for.
  await tx.execute(sql`with p as ${insert} select pg_notify(${STREAM_PURGE_CHANNEL}, '')`);
}

/** What the purger emits (listeners run in its loop: keep them short). */
export interface StreamPurgerEvents {
  /** A subject was purged and its row marked done; `purged` counts the messages removed. */
  purged: [info: { id: string; stream: string; subject: string; purged: number }];
  /** A purge failed; it is tried again after a delay. */
  failed: [info: { id: string; stream: string; subject: string; attempts: number; error: string | undefined }];
}

export interface StreamPurger {
  readonly events: EventEmitter<StreamPurgerEvents>;
  /**
   * Told the ids of events just published (the relay's `published`): wakes
   * the purger if a pending purge waits for one of them.
   */
  published(eventIds: readonly string[]): void;
  /** Starts in the background; never throws, never waits for the network. */
  start(): void;
  stop(): Promise<unknown>;
}

export interface StreamPurgerOptions {
  database: { query<T = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]> };
  /**
   * LISTENs for purge requests (STREAM_PURGE_CHANNEL), to learn at once which
   * event to wait for; without it (or while LISTEN fails) the poll finds them.
   */
  listen?: (channel: string, onNotify: () => void) => Promise<() => Promise<void>>;
  /** The process's NATS connection; never closed here. */
  nats: Pick<Nats, "connection" | "events">;
  logger: Logger;
  /** Safety-net poll; default 5000. */
  pollIntervalMs?: number;
  /** The first retry delay of a failed purge, doubling per attempt up to `maxRetryMs`; default 1000. */
  minRetryMs?: number;
  /** Default 60 000. */
  maxRetryMs?: number;
  /** Done rows are deleted this long after they were done; default 30. */
  keepDoneDays?: number;
  /**
   * At this many failed attempts a purge is logged at error level, once (an
   * operator's alert: the erased customer's data stays in the stream until
   * it succeeds); default 10 (a few minutes at the default delays).
   */
  alertAfterAttempts?: number;
  /** JetStream API timeout; default 5000. */
  timeoutMs?: number;
}

interface PendingPurge {
  id: string;
  stream: string;
  subject: string;
  attempts: number;
  after: string;
  ready: boolean;
}

const BATCH = 100;
const CLEANUP_EVERY_MS = 60 * 60_000;

/** Creates the purger; nothing runs until start(). */
export function createStreamPurger(opts: StreamPurgerOptions): StreamPurger {
  const { database, nats } = opts;
  const log = opts.logger;
  const pollIntervalMs = opts.pollIntervalMs ?? 5_000;
  const minRetryMs = opts.minRetryMs ?? 1_000;
  const maxRetryMs = opts.maxRetryMs ?? 60_000;
  const keepDoneDays = Math.max(0, Math.floor(opts.keepDoneDays ?? 30));
  const alertAfterAttempts = Math.max(2, Math.floor(opts.alertAfterAttempts ?? 10));
  const events = new EventEmitter<StreamPurgerEvents>();
  // A failed purge is not tried again before this (per row; attempts are counted in the table).
  const retryAt = new Map<string, number>();
  let manager: { conn: NatsConnection; jsm: Promise<JetStreamManager> } | undefined;
  let tableChecked = false;
  let lastCleanup = 0;
  // The events pending purges wait for, as last read.
  let waitingFor = new Set<string>();
  // True while the pending purges are read: an event published meanwhile may be missed by the read.
  let reading = false;
  let listening: { kind: "on"; unlisten: () => Promise<void> } | { kind: "off"; retryAt: number } = {
    kind: "off",
    retryAt: 0,
  };

  async function listen(): Promise<void> {
    if (!opts.listen || listening.kind === "on" || Date.now() < listening.retryAt) return;
    try {
      listening = { kind: "on", unlisten: await opts.listen(STREAM_PURGE_CHANNEL, () => loop.wake()) };
    } catch (err) {
      listening = { kind: "off", retryAt: Date.now() + pollIntervalMs };
      log.debug({ err: errMessage(err) }, "LISTEN failed");
    }
  }

  const emit = <K extends keyof StreamPurgerEvents>(name: K, ...args: StreamPurgerEvents[K]) => {
    try {
      (events.emit as (name: K, ...args: StreamPurgerEvents[K]) => boolean)(name, ...args);
    } catch (err) {
      log.error({ err: errMessage(err), event: name }, "stream purger event listener failed");
    }
  };

  function jsmFor(conn: NatsConnection): Promise<JetStreamManager> {
    if (manager?.conn !== conn) {
      const jsm = jetstreamManager(conn, { timeout: opts.timeoutMs ?? 5_000 });
      // A failed creation is made again at the next step.
      jsm.catch(() => {
        if (manager?.jsm === jsm) manager = undefined;
      });
      manager = { conn, jsm };
    }
    return manager.jsm;
  }

  async function cleanup(): Promise<void> {
    if (Date.now() - lastCleanup < CLEANUP_EVERY_MS) return;
    lastCleanup = Date.now();
    await database.query(
      `delete from stream_purges where id in (select id from stream_purges
         where done_at < now() - make_interval(days => $1::int) limit 10000)`,
      [keepDoneDays],
    );
  }

  async function step(): Promise<StepResult> {
    if (!tableChecked) {
      const [row] = await database.query<{ present: boolean }>(
        "select to_regclass('stream_purges') is not null as present",
      );
      if (!row?.present) {
        log.debug("no stream_purges table; no stream purger");
        return "done";
      }
      tableChecked = true;
    }
    await listen();
    await cleanup();
    // Pending purges; ready once the event is published, or gone (housekeeping deletes published rows only).
    reading = true;
    const pending = await database
      .query<PendingPurge>(
        `select p.id::text as id, p.stream, p.subject, p.attempts, p.after_event_id::text as after,
              not exists (select 1 from outbox o where o.event_id = p.after_event_id and o.published_at is null) as ready
         from stream_purges p
        where p.done_at is null
        order by p.created_at, p.id limit ${BATCH}`,
      )
      .finally(() => {
        reading = false;
      });
    waitingFor = new Set(pending.filter((p) => !p.ready).map((p) => p.after));
    const rows = pending.filter((p) => p.ready);
    const conn = nats.connection;
    if (rows.length === 0) return pollIntervalMs;
    // Woken when NATS is back.
    if (!conn) return pollIntervalMs;
    const jsm = await jsmFor(conn);
    const now = Date.now();
    let next = pollIntervalMs;
    let done = 0;
    let failures = 0;
    for (const row of rows) {
      const due = retryAt.get(row.id) ?? 0;
      if (due > now) {
        next = Math.min(next, due - now);
        continue;
      }
      let purged: number;
      try {
        purged = await eraseMessages(jsm, row.stream, row.subject);
      } catch (err) {
        if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound) {
          // No stream, nothing to remove.
          purged = 0;
        } else {
          failures++;
          const attempts = row.attempts + 1;
          const delay = Math.min(maxRetryMs, minRetryMs * 2 ** (attempts - 1));
          retryAt.set(row.id, Date.now() + delay / 2 + (Math.random() * delay) / 2);
          next = Math.min(next, delay);
          await database.query("update stream_purges set attempts = attempts + 1 where id = $1::uuid", [row.id]);
          const info = { id: row.id, stream: row.stream, subject: row.subject, attempts, error: errMessage(err) };
          // One warning per purge at its first failure; the repeats are debug lines.
          if (attempts === 1) log.warn(info, "stream purge failed; retrying");
          else if (attempts === alertAfterAttempts) {
            log.error(info, "stream purge keeps failing: the erased customer's data stays in the stream until it runs");
          } else log.debug(info, "stream purge failed again; retrying");
          emit("failed", info);
          // NATS went away: the rest wait for it.
          if (!nats.connection) break;
          continue;
        }
      }
      await database.query("update stream_purges set done_at = now() where id = $1::uuid", [row.id]);
      retryAt.delete(row.id);
      done++;
      log.info({ id: row.id, stream: row.stream, subject: row.subject, purged }, "stream purged");
      emit("purged", { id: row.id, stream: row.stream, subject: row.subject, purged });
    }
    if (failures > 0 && !nats.connection) return pollIntervalMs;
    // A full batch may have more behind it.
    return done > 0 && pending.length === BATCH ? 0 : next;
  }

  const loop = createSupervisedLoop({
    name: "stream purger",
    logger: log,
    step,
    minBackoffMs: 500,
    maxBackoffMs: 30_000,
  });
  const onConnected = () => loop.retryNow();

  return {
    events,
    published(eventIds) {
      if (reading || (waitingFor.size > 0 && eventIds.some((id) => waitingFor.has(id)))) loop.wake();
    },
    start() {
      nats.events.on("connected", onConnected);
      loop.start();
    },
    async stop() {
      nats.events.off("connected", onConnected);
      await loop.stop();
      if (listening.kind === "on") await settlesWithin(listening.unlisten(), 2_000);
      listening = { kind: "off", retryAt: Number.POSITIVE_INFINITY };
    },
  };
}

/**
 * Deletes, overwriting each, every message of `stream` on `subject` (which may
 * hold wildcards), in stream order; the count deleted. A message deleted
 * meanwhile (another instance) is not counted; nothing new is published on an
 * erased customer's subjects, so this ends.
 */
export async function eraseMessages(jsm: JetStreamManager, stream: string, subject: string): Promise<number> {
  let erased = 0;
  let seq = 1;
  for (;;) {
    // STREAM.MSG.GET takes next_by_subj (NATS 2.9); nats.js types it only for direct get, and sends the query as is.
    const m = await jsm.streams.getMessage(stream, { next_by_subj: subject, seq } as unknown as MsgRequest);
    if (!m) return erased;
    const deleted = await jsm.streams.deleteMessage(stream, m.seq, true).catch((err: unknown) => {
      // Deleted by another instance between the read and the delete.
      // (NATS answers 10057, "message delete failed", with this description.)
      if (err instanceof JetStreamApiError && err.message === "no message found") return false;
      throw err;
    });
    if (deleted) erased++;
    seq = m.seq + 1;
  }
}
