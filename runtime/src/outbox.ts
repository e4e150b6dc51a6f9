/**
 * Transactional outbox. A command writes its events to the `outbox` table in
 * its own transaction (`enqueueEvent`); one relay per service (elected with a
 * Postgres advisory lock) publishes committed rows to JetStream in id order
 * and marks each row sent only after its JetStream ack. NATS being down never
 * touches the request path: rows wait in the outbox until it is back.
 */
import { type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, jetstream, StorageType } from "@nats-io/jetstream";
import { connect, headers, type MsgHdrs, type NatsConnection, nanos } from "@nats-io/transport-node";
import { sql, type WithSubquery } from "drizzle-orm";
import { settlesWithin } from "./async.js";
import { type Database, type Db, isConnectionError, placeholder, type SqlSession } from "./db.js";
import { errMessage, type Logger } from "./logger.js";
import { outbox } from "./outbox-schema.js";

/** One event as the outbox stores it. */
export interface OutboxEvent {
  /** UUIDv7; also `Nats-Msg-Id` and `ce-id`. */
  eventId: string;
  /** NATS subject, e.g. `customer.registered.<customer_id>`. */
  subject: string;
  /** The protobuf message full name (`ce-type`). */
  type: string;
  /** `ce-source`, e.g. `customer-service`. */
  source: string;
  /** `ce-subject`: the customer id. */
  ceSubject: string;
  /** The event message in protobuf binary. */
  payload: Uint8Array;
  occurTime: Date;
}

/** A drizzle transaction (or database) over any schema that includes `outbox`. */
export type OutboxTx = Pick<Db<Record<string, unknown>>, "insert" | "execute">;

/**
 * Writes an event to the outbox inside the caller's transaction and wakes the
 * relay with `pg_notify(channel)`, which Postgres delivers only at commit.
 * Use a lower-case channel name (PGlite folds unquoted names).
 */
export async function enqueueEvent(tx: OutboxTx, event: OutboxEvent, channel: string): Promise<void> {
  const insert = tx.insert(outbox).values(event);
  // One round trip: a data-modifying CTE always runs. Postgres folds identical
  // notifications of one transaction into one, so a batch wakes the relay once.
  await tx.execute(sql`with e as ${insert} select pg_notify(${channel}, '')`);
}

// The columns an event sets; the others (id, published_at, attempts) take their defaults.
const EVENT_COLUMNS = [
  "eventId",
  "subject",
  "type",
  "source",
  "ceSubject",
  "payload",
  "occurTime",
] as const satisfies readonly (keyof OutboxEvent)[];

/** A drizzle database over any schema that includes `outbox`: the pool's, or a transaction's. */
export type OutboxDb = Pick<Db<Record<string, unknown>>, "$with" | "with">;

/**
 * Prepares `change` (an INSERT or UPDATE … RETURNING, as a CTE) together with
 * its event: for each row the change returns, one outbox row and a
 * `pg_notify(channel)`, in one statement. One round trip, and no explicit
 * transaction: a statement is atomic by itself. A change that matches no row
 * writes no event. Execute with the change's values and `eventValues(event)`;
 * it returns one row per changed row. Prepared on `db`'s session: prepare it
 * on the transaction that is to run it.
 */
export function prepareWithEvent(db: OutboxDb, change: WithSubquery, channel: string, name: string) {
  const columns = EVENT_COLUMNS.map((k) => sql.identifier(outbox[k].name));
  const values = EVENT_COLUMNS.map((k) => placeholder(`event.${k}`, outbox[k]));
  const queued = db
    .$with("queued", {})
    .as(sql`insert into ${outbox} (${sql.join(columns, sql`, `)}) select ${sql.join(values, sql`, `)} from ${change}`);
  return db
    .with(change, queued)
    .select({ notified: sql`pg_notify(${channel}, '')` })
    .from(change)
    .prepare(name);
}

/** The values of `event` for a statement of `prepareWithEvent`. */
export function eventValues(event: OutboxEvent): Record<string, unknown> {
  return Object.fromEntries(EVENT_COLUMNS.map((k) => [`event.${k}`, event[k]]));
}

/** Builds an outbox event from a protobuf-es message: binary payload, `type` = its full name. */
export function outboxEvent<Desc extends DescMessage>(
  schema: Desc,
  message: MessageShape<Desc>,
  meta: Omit<OutboxEvent, "type" | "payload">,
): OutboxEvent {
  return { ...meta, type: schema.typeName, payload: toBinary(schema, message) };
}

/** What the relay reports for each event once it is acked and marked sent. */
export interface PublishedEvent {
  /** The outbox row id (decimal). */
  id: string;
  eventId: string;
  subject: string;
  /** Stream sequence. */
  seq: number;
  /** True when JetStream had it already (a repeat within the duplicate window). */
  duplicate: boolean;
}

export interface OutboxRelayOptions {
  database: Pick<Database<Record<string, unknown>>, "query" | "listen" | "session">;
  natsUrl: string;
  /** Created if missing (file storage); an existing stream's config is left alone. */
  stream: { name: string; subjects: string[]; duplicateWindowMs?: number };
  /** The NOTIFY channel `enqueueEvent` uses. */
  channel: string;
  /** Advisory lock key; one relay per database holds it. */
  lockKey: bigint;
  logger: Logger;
  /** Safety-net poll when no NOTIFY arrives; default 5000. */
  pollIntervalMs?: number;
  /** Rows read per batch; default 256. */
  batchSize?: number;
  /** Wait for one JetStream ack; default 5000. */
  publishTimeoutMs?: number;
  /** How often a non-leader tries the lock: every `lockRetryMs` / 2 to `lockRetryMs`; default 2000. */
  lockRetryMs?: number;
  onPublished?: (event: PublishedEvent) => void;
}

export interface OutboxRelay {
  /** Starts relaying in the background; never throws, never waits for NATS. */
  start(): void;
  /**
   * Stops relaying; with `flush`, first publishes what is pending for up to
   * `timeoutMs` (default 5000). Then releases the lock and closes NATS. Never throws.
   */
  stop(opts?: { flush?: boolean; timeoutMs?: number }): Promise<void>;
  readonly isLeader: boolean;
  readonly natsConnected: boolean;
  /** Events acked and marked sent by this relay. */
  readonly published: number;
  /** Resolves when the outbox holds no unsent row; rejects after timeoutMs (default 10000). */
  waitIdle(timeoutMs?: number): Promise<void>;
}

interface OutboxRecord {
  id: string;
  event_id: string;
  subject: string;
  type: string;
  source: string;
  ce_subject: string;
  payload: Uint8Array;
  occur_time: Date | string;
}

/** Splits rows, in order, into runs in which no `ce_subject` repeats. */
function waves(rows: readonly OutboxRecord[]): OutboxRecord[][] {
  const out: OutboxRecord[][] = [];
  let wave: OutboxRecord[] = [];
  const seen = new Set<string>();
  for (const row of rows) {
    if (seen.has(row.ce_subject)) {
      out.push(wave);
      wave = [];
      seen.clear();
    }
    seen.add(row.ce_subject);
    wave.push(row);
  }
  if (wave.length > 0) out.push(wave);
  return out;
}

/** The lock-holding session, identified the way pg_stat_activity shows it. */
interface Lock {
  session: SqlSession;
  pid: number;
  backendStart: string;
}

// True while the lock session lives; a session-level advisory lock lives exactly
// as long as its session. Checked from the pool rather than by querying the
// session itself: postgres.js throws an uncaught TypeError (crashing the process)
// when a reserved connection whose socket has closed is queried or released.
const LOCK_ALIVE = "exists (select 1 from pg_stat_activity where pid = $1 and backend_start = $2::timestamptz)";

// Ordered by the bigint column, not by the text alias of the same name.
const SELECT_UNSENT = `select id::text as id, event_id::text as event_id, subject, type, source, ce_subject, payload, occur_time
  from outbox where published_at is null and ${LOCK_ALIVE} order by outbox.id limit $3`;

// Explicit ids, never a range: a row with an id inside the range may have been
// invisible (uncommitted) when the batch was read.
const MARK_SENT = `with sent as (
  update outbox set published_at = now() where id = any($3::bigint[]) and ${LOCK_ALIVE} returning 1
) select count(*)::int as n from sent`;

const MAX_BACKOFF_MS = 5000;

/** Creates the relay that publishes the outbox of `database` to JetStream. */
export function createOutboxRelay(opts: OutboxRelayOptions): OutboxRelay {
  const { database, natsUrl, stream, channel } = opts;
  const lockKey = opts.lockKey.toString();
  const log = opts.logger.child({ stream: stream.name });
  const pollIntervalMs = opts.pollIntervalMs ?? 5000;
  const batchSize = opts.batchSize ?? 256;
  const publishTimeoutMs = opts.publishTimeoutMs ?? 5000;
  const lockRetryMs = opts.lockRetryMs ?? 2000;

  let started = false;
  let stopping = false;
  let flushUntil = 0;
  let stopped: Promise<void> | undefined;
  let loop: Promise<void> = Promise.resolve();
  let connecting: Promise<void> = Promise.resolve();

  let lock: Lock | undefined;
  let nc: NatsConnection | undefined;
  let js: JetStreamClient | undefined;
  let natsUp = false;
  let streamReady = false;
  let unlisten: (() => Promise<void>) | undefined;
  let nextListenAt = 0;
  let published = 0;
  let dbFailing = false;
  let publishFailing = false;

  // Wake-ups coalesce into one flag: however many NOTIFYs arrive during a
  // batch, the relay reads once more afterwards. A wait ends on its own kind of
  // wake-up or a stronger one: "notify" < "ready" (NATS connected) < "stop".
  let dirty = false;
  const RANK = { notify: 0, ready: 1, stop: 2 } as const;
  type Wake = keyof typeof RANK;
  const waiters = new Set<{ until: Wake; done: () => void }>();
  const wake = (kind: Wake) => {
    if (kind === "notify") dirty = true;
    for (const w of waiters) if (RANK[kind] >= RANK[w.until]) w.done();
  };
  const pause = (ms: number, until: Wake) =>
    stopping || (until === "notify" && dirty)
      ? Promise.resolve()
      : new Promise<void>((resolve) => {
          const w = {
            until,
            done: () => {
              clearTimeout(timer);
              waiters.delete(w);
              resolve();
            },
          };
          const timer = setTimeout(w.done, ms);
          waiters.add(w);
        });
  const flushing = () => stopping && flushUntil > Date.now();

  async function connectNats(): Promise<void> {
    let logged = false;
    for (let attempt = 0; !stopping; attempt++) {
      try {
        const conn = await connect({
          servers: natsUrl,
          name: `outbox-relay ${stream.name}`,
          timeout: 2000,
          reconnect: true,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 1000,
        });
        if (stopping) {
          await conn.close().catch(() => {});
          return;
        }
        nc = conn;
        js = jetstream(conn, { timeout: publishTimeoutMs });
        natsUp = true;
        log.info({ nats: natsUrl }, "connected to NATS");
        void watchNats(conn);
        wake("ready");
        return;
      } catch (err) {
        if (!logged) {
          logged = true;
          log.warn({ nats: natsUrl, err: errMessage(err) }, "NATS unavailable; events are held in the outbox");
        }
        await pause(Math.min(2000, 250 * 2 ** attempt), "stop");
      }
    }
  }

  // nats.js reconnects forever on its own; this only tracks the state, logging
  // each transition once.
  async function watchNats(conn: NatsConnection): Promise<void> {
    const closed = conn.closed();
    try {
      for await (const s of conn.status()) {
        if (s.type === "disconnect") {
          natsUp = false;
          log.warn("NATS connection lost; events are held in the outbox");
        } else if (s.type === "reconnect") {
          natsUp = true;
          log.info("reconnected to NATS");
          wake("ready");
        }
      }
    } catch {
      // The iterator ends with the connection; nothing to report.
    }
    await closed;
    if (nc === conn) {
      nc = undefined;
      js = undefined;
      natsUp = false;
      if (!stopping) connecting = connectNats();
    }
  }

  async function listen(): Promise<void> {
    if (unlisten || Date.now() < nextListenAt) return;
    try {
      unlisten = await database.listen(channel, () => wake("notify"));
    } catch (err) {
      // The slow poll still runs; LISTEN is retried with it.
      nextListenAt = Date.now() + pollIntervalMs;
      log.debug({ err: errMessage(err) }, "LISTEN failed");
    }
  }

  async function acquire(): Promise<void> {
    let session: SqlSession | undefined;
    try {
      session = await database.session();
      const [row] = await session.query<{ locked: boolean; pid: number; backend_start: string }>(
        `select pg_try_advisory_lock($1::bigint) as locked, pg_backend_pid() as pid,
           (select backend_start::text from pg_stat_activity where pid = pg_backend_pid()) as backend_start`,
        [lockKey],
      );
      dbFailing = false;
      if (row?.locked) {
        lock = { session, pid: row.pid, backendStart: row.backend_start };
        log.info("outbox relay is the leader");
        return;
      }
    } catch (err) {
      if (!dbFailing) log.warn({ err: errMessage(err) }, "outbox relay cannot reach the database");
      dbFailing = true;
      // A broken connection is left alone (see LOCK_ALIVE); the pool replaces it.
      if (isConnectionError(err)) return;
    }
    await session?.release().catch(() => {});
  }

  function lose(held: Lock): void {
    if (lock !== held) return;
    lock = undefined;
    // The server released the lock with the session; the dead connection is
    // not touched again (see LOCK_ALIVE).
    log.warn("outbox relay lost its lock session; no longer the leader");
  }

  async function isAlive(held: Lock): Promise<boolean> {
    const [row] = await database.query<{ alive: boolean }>(`select ${LOCK_ALIVE} as alive`, [
      held.pid,
      held.backendStart,
    ]);
    return row?.alive === true;
  }

  async function ensureStream(client: JetStreamClient): Promise<void> {
    const jsm = await client.jetstreamManager();
    try {
      await jsm.streams.info(stream.name);
      return;
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) throw err;
    }
    await jsm.streams.add({
      name: stream.name,
      subjects: stream.subjects,
      storage: StorageType.File,
      duplicate_window: nanos(stream.duplicateWindowMs ?? 120_000),
    });
    log.info({ subjects: stream.subjects }, "created stream");
  }

  // Publishes sequentially: the next row goes out only after the previous one's
  // ack, so a failed publish can never be overtaken by a later row (a pipelined
  // row could land first, e.g. flushed from the reconnect buffer). Acked rows
  // are marked in one statement per batch; a crash in between republishes them
  // and JetStream drops the repeats by Nats-Msg-Id.
  async function relayBatch(held: Lock, client: JetStreamClient): Promise<"idle" | "more" | "failed"> {
    dirty = false;
    if (!streamReady) {
      await ensureStream(client);
      streamReady = true;
    }
    const rows = await database.query<OutboxRecord>(SELECT_UNSENT, [held.pid, held.backendStart, batchSize]);
    if (rows.length === 0) {
      if (!(await isAlive(held))) lose(held);
      return "idle";
    }
    const sent: PublishedEvent[] = [];
    let failed = false;
    // Publishes are pipelined in waves: a wave holds consecutive rows of distinct
    // `ce_subject`s (customers) and is published all at once on the one connection,
    // which JetStream stores in the order sent. The next wave starts only when every
    // publish of this one is acked, so a failed publish is never overtaken by a later
    // event of the same customer; after a failure only the acked prefix is marked sent,
    // and what follows is retried (a repeat within the duplicate window is dropped by
    // `Nats-Msg-Id`).
    for (const wave of waves(rows)) {
      if (stopping && !flushing()) break;
      const acks = await Promise.allSettled(
        wave.map((row) =>
          client.publish(row.subject, row.payload, {
            msgID: row.event_id,
            headers: cloudEventHeaders(row),
            timeout: publishTimeoutMs,
          }),
        ),
      );
      for (const [i, ack] of acks.entries()) {
        const row = wave[i] as OutboxRecord;
        if (ack.status === "fulfilled") {
          const { seq, duplicate } = ack.value;
          sent.push({ id: row.id, eventId: row.event_id, subject: row.subject, seq, duplicate });
          continue;
        }
        failed = true;
        // Re-check the stream before the retry: a missing stream looks like this too.
        streamReady = false;
        if (!publishFailing)
          log.warn({ eventId: row.event_id, err: errMessage(ack.reason) }, "publish failed; retrying");
        publishFailing = true;
        await database
          .query("update outbox set attempts = attempts + 1 where id = $1::bigint", [row.id])
          .catch(() => {});
        break;
      }
      if (failed) break;
    }
    if (sent.length > 0) {
      const [marked] = await database.query<{ n: number }>(MARK_SENT, [
        held.pid,
        held.backendStart,
        `{${sent.map((e) => e.id).join(",")}}`,
      ]);
      if (!marked?.n) {
        lose(held);
        return "idle";
      }
      published += sent.length;
      for (const e of sent) opts.onPublished?.(e);
    }
    if (failed) return "failed";
    publishFailing = false;
    return rows.length === batchSize ? "more" : "idle";
  }

  async function run(): Promise<void> {
    let failures = 0;
    for (;;) {
      if (stopping && !(flushing() && lock && natsUp)) return;
      await listen();
      if (!lock) {
        await acquire();
        if (!lock) {
          await pause(jitter(lockRetryMs), "stop");
          continue;
        }
      }
      const held = lock;
      if (!js || !natsUp) {
        await pause(pollIntervalMs, "ready");
        continue;
      }
      const outcome = await relayBatch(held, js).catch((err) => {
        if (failures === 0) log.warn({ err: errMessage(err) }, "outbox relay batch failed; retrying");
        else log.debug({ err: errMessage(err) }, "outbox relay batch failed again");
        return "failed" as const;
      });
      if (outcome === "failed") {
        if (stopping) return;
        failures++;
        await pause(jitter(Math.min(MAX_BACKOFF_MS, 100 * 2 ** (failures - 1))), "stop");
        continue;
      }
      failures = 0;
      if (outcome === "idle") {
        // A flush ends only after a read that began after stop() was called.
        if (stopping) {
          if (!dirty) return;
          continue;
        }
        if (lock) await pause(pollIntervalMs, "notify");
      }
    }
  }

  async function release(): Promise<void> {
    const held = lock;
    lock = undefined;
    if (!held) return;
    try {
      if (await isAlive(held)) {
        await held.session.query("select pg_advisory_unlock($1::bigint)", [lockKey]);
        await held.session.release();
      }
    } catch (err) {
      log.warn({ err: errMessage(err) }, "could not release the outbox lock; it goes with its connection");
    }
  }

  async function stopNow(flush: boolean, timeoutMs: number): Promise<void> {
    stopping = true;
    if (flush) {
      flushUntil = Date.now() + timeoutMs;
      dirty = true;
    }
    wake("stop");
    const loopDone = await settlesWithin(loop, timeoutMs);
    // Closing NATS also fails a publish still waiting for its ack, which ends the loop.
    const conn = nc;
    nc = undefined;
    js = undefined;
    natsUp = false;
    await conn?.close().catch(() => {});
    if (loopDone || (await settlesWithin(loop, 2000))) await release();
    else log.warn("outbox relay did not stop in time; its lock goes with its connection");
    if (unlisten) await settlesWithin(unlisten(), 2000);
    unlisten = undefined;
    await settlesWithin(connecting, 3000);
  }

  return {
    start() {
      if (started || stopping) return;
      started = true;
      connecting = connectNats();
      loop = run().catch((err) => log.error({ err: errMessage(err) }, "outbox relay stopped unexpectedly"));
    },
    stop({ flush = false, timeoutMs = 5000 } = {}) {
      stopped ??= stopNow(flush, timeoutMs).catch((err) =>
        log.error({ err: errMessage(err) }, "outbox relay stop failed"),
      );
      return stopped;
    },
    get isLeader() {
      return lock !== undefined;
    },
    get natsConnected() {
      return natsUp;
    },
    get published() {
      return published;
    },
    async waitIdle(timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const [row] = await database.query<{ n: number }>(
          "select count(*)::int as n from outbox where published_at is null",
        );
        if (!row?.n) return;
        if (Date.now() > deadline) throw new Error(`outbox still holds ${row.n} unsent events after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

/** CloudEvents binary-mode attributes (Nats-Msg-Id is added by the publish option). */
function cloudEventHeaders(row: OutboxRecord): MsgHdrs {
  const h = headers();
  h.set("ce-specversion", "1.0");
  h.set("ce-id", row.event_id);
  h.set("ce-type", row.type);
  h.set("ce-source", row.source);
  h.set("ce-time", new Date(row.occur_time).toISOString());
  h.set("ce-subject", row.ce_subject);
  h.set("ce-datacontenttype", "application/protobuf");
  h.set("content-type", "application/protobuf");
  return h;
}

function jitter(ms: number): number {
  return ms / 2 + (Math.random() * ms) / 2;
}
