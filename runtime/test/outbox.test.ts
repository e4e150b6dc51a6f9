import { randomInt } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, fromBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { AuthenticationMethod, CustomerAuthenticatedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { jetstreamManager, type StoredMsg } from "@nats-io/jetstream";
import { connect, nanos } from "@nats-io/transport-node";
import { generateDrizzleJson, generateMigration } from "drizzle-kit/api";
import { pino } from "pino";
import { afterEach, describe, expect, test } from "vitest";
import {
  deleteStreams,
  type StreamNames,
  sharedNatsUrl,
  startPrivateNats,
  uniqueStreamNames,
} from "../../test/support/nats.js";
import { createTestDatabase } from "../../test/support/postgres.js";
import { type Database, openDatabase } from "../src/db.js";
import { uuidv7 } from "../src/ids.js";
import { createOutboxRelay, enqueueEvent, type OutboxEvent, type OutboxRelayOptions, outboxEvent } from "../src/outbox.js";
import { outbox } from "../src/outbox-schema.js";

const CHANNEL = "outbox_test";
const schema = { outbox };
type OutboxDatabase = Database<typeof schema>;

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

/** Opens a database (PostgreSQL URL or PGlite dir) holding the outbox table, its DDL generated from the schema. */
async function outboxDatabase(url: string | undefined, dataDir = ""): Promise<OutboxDatabase> {
  const database = await openDatabase({ url, dataDir, schema, max: 4 });
  cleanups.push(() => database.close());
  for (const ddl of await generateMigration(generateDrizzleJson({}), generateDrizzleJson(schema))) {
    await database.query(ddl);
  }
  return database;
}

async function postgresOutbox(): Promise<OutboxDatabase> {
  const testDb = await createTestDatabase("outbox");
  cleanups.push(() => testDb.drop());
  return outboxDatabase(testDb.url);
}

function streamFor(natsUrl: string): StreamNames {
  const names = uniqueStreamNames("identity");
  cleanups.push(() => deleteStreams(natsUrl, names.stream));
  return names;
}

function captureLogger() {
  const lines: Array<{ msg: string; level: number }> = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return { logger, count: (msg: string) => lines.filter((l) => l.msg.startsWith(msg)).length };
}

function newRelay(
  database: OutboxDatabase,
  natsUrl: string,
  names: StreamNames,
  extra: Partial<OutboxRelayOptions> = {},
) {
  const relay = createOutboxRelay({
    database,
    natsUrl,
    stream: { name: names.stream, subjects: [`${names.subjectPrefix}.>`] },
    channel: CHANNEL,
    lockKey: 9_000_000n,
    logger: captureLogger().logger,
    pollIntervalMs: 200,
    lockRetryMs: 200,
    publishTimeoutMs: 1000,
    ...extra,
  });
  cleanups.push(() => relay.stop());
  return relay;
}

function authenticated(names: StreamNames): OutboxEvent {
  const eventId = uuidv7();
  const customerId = uuidv7();
  const occurTime = new Date();
  const message = create(CustomerAuthenticatedSchema, {
    eventId,
    occurTime: timestampFromDate(occurTime),
    customerId,
    method: AuthenticationMethod.PASSWORD,
  });
  return outboxEvent(CustomerAuthenticatedSchema, message, {
    eventId,
    occurTime,
    subject: `${names.subjectPrefix}.customer.authenticated.${customerId}`,
    source: "identity-service",
    ceSubject: customerId,
  });
}

async function enqueueAll(database: OutboxDatabase, events: OutboxEvent[]): Promise<void> {
  await database.db.transaction(async (tx) => {
    for (const e of events) await enqueueEvent(tx, e, CHANNEL);
  });
}

async function streamMessages(natsUrl: string, stream: string): Promise<StoredMsg[]> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    const { state } = await jsm.streams.info(stream);
    const msgs: StoredMsg[] = [];
    for (let seq = state.first_seq; seq <= state.last_seq && state.messages > 0; seq++) {
      const m = await jsm.streams.getMessage(stream, { seq });
      if (m) msgs.push(m);
    }
    return msgs;
  } finally {
    await nc.close();
  }
}

/** Event ids in outbox (relay) order. */
async function outboxOrder(database: OutboxDatabase): Promise<string[]> {
  const rows = await database.query<{ event_id: string }>("select event_id::text as event_id from outbox order by id");
  return rows.map((r) => r.event_id);
}

async function unsent(database: OutboxDatabase): Promise<number> {
  const [row] = await database.query<{ n: number }>("select count(*)::int as n from outbox where published_at is null");
  return row?.n ?? -1;
}

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("outbox relay", () => {
  test("publishes committed events in id order with CloudEvents headers and marks them sent", async () => {
    const database = await postgresOutbox();
    const names = streamFor(sharedNatsUrl);
    // More than nine, so an id order that went wrong (e.g. sorted as text) shows.
    const first = Array.from({ length: 11 }, () => authenticated(names));
    await enqueueAll(database, first);
    // A poll too slow to matter: after the first batch only NOTIFY can wake the relay.
    const relay = newRelay(database, sharedNatsUrl, names, { pollIntervalMs: 60_000 });
    relay.start();
    await relay.waitIdle();
    const second = [authenticated(names), authenticated(names)];
    await enqueueAll(database, second);
    await relay.waitIdle(5000);

    const msgs = await streamMessages(sharedNatsUrl, names.stream);
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual(await outboxOrder(database));
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual([...first, ...second].map((e) => e.eventId));
    expect(msgs.map((m) => m.seq)).toEqual(Array.from({ length: 13 }, (_, i) => i + 1));
    for (const [i, e] of [...first, ...second].entries()) {
      const m = msgs[i] as StoredMsg;
      expect(m.subject).toBe(e.subject);
      expect(Object.fromEntries(m.header.keys().map((k) => [k, m.header.values(k)]))).toEqual({
        "Nats-Msg-Id": [e.eventId],
        "ce-specversion": ["1.0"],
        "ce-id": [e.eventId],
        "ce-type": ["identity.v1.CustomerAuthenticated"],
        "ce-source": ["identity-service"],
        "ce-time": [e.occurTime.toISOString()],
        "ce-subject": [e.ceSubject],
        "ce-datacontenttype": ["application/protobuf"],
        "content-type": ["application/protobuf"],
      });
      expect(new Uint8Array(m.data)).toEqual(e.payload);
      expect(fromBinary(CustomerAuthenticatedSchema, m.data).customerId).toBe(e.ceSubject);
    }
    expect(await unsent(database)).toBe(0);
    expect(relay.published).toBe(13);

    const nc = await connect({ servers: sharedNatsUrl });
    const info = await (await jetstreamManager(nc)).streams.info(names.stream);
    await nc.close();
    expect(info.config).toMatchObject({
      subjects: [`${names.subjectPrefix}.>`],
      storage: "file",
      duplicate_window: nanos(120_000),
    });
  });

  test("a rolled-back transaction publishes nothing", async () => {
    const database = await postgresOutbox();
    const names = streamFor(sharedNatsUrl);
    const rolledBack = authenticated(names);
    await expect(
      database.db.transaction(async (tx) => {
        await enqueueEvent(tx, rolledBack, CHANNEL);
        throw new Error("command failed");
      }),
    ).rejects.toThrow("command failed");
    const committed = authenticated(names);
    await enqueueAll(database, [committed]);
    const relay = newRelay(database, sharedNatsUrl, names);
    relay.start();
    await relay.waitIdle();

    const msgs = await streamMessages(sharedNatsUrl, names.stream);
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual([committed.eventId]);
    expect(await outboxOrder(database)).toEqual([committed.eventId]);
  });

  test("holds events while NATS is down and publishes each once, in order, when it is back", async () => {
    const nats = await startPrivateNats();
    cleanups.push(() => nats.stop());
    const database = await postgresOutbox();
    const names = uniqueStreamNames("identity");
    const { logger, count } = captureLogger();
    const relay = newRelay(database, nats.url, names, { logger });
    await enqueueAll(database, [authenticated(names), authenticated(names)]);
    relay.start();
    await relay.waitIdle();

    await nats.kill();
    await until("the relay to see NATS down", () => !relay.natsConnected);
    for (let i = 0; i < 10; i++) await enqueueAll(database, [authenticated(names), authenticated(names)]);
    await sleep(500);
    expect(await unsent(database)).toBe(20);

    await nats.start();
    await relay.waitIdle(15_000);
    const msgs = await streamMessages(nats.url, names.stream);
    expect(msgs.map((m) => m.seq)).toEqual(Array.from({ length: 22 }, (_, i) => i + 1));
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual(await outboxOrder(database));
    expect(count("NATS connection lost")).toBe(1);
    expect(count("reconnected to NATS")).toBe(1);
  });

  test("starts while NATS is unreachable, says so once, and publishes once it is up", async () => {
    const nats = await startPrivateNats();
    cleanups.push(() => nats.stop());
    await nats.kill();
    const database = await postgresOutbox();
    const names = uniqueStreamNames("identity");
    const { logger, count } = captureLogger();
    const relay = newRelay(database, nats.url, names, { logger });
    relay.start();
    const events = [authenticated(names), authenticated(names), authenticated(names)];
    await enqueueAll(database, events);
    // Several connection attempts (250, 500, 1000 ms apart) happen meanwhile.
    await sleep(2000);
    expect(relay.isLeader).toBe(true);
    expect(relay.natsConnected).toBe(false);
    expect(await unsent(database)).toBe(3);
    expect(count("NATS unavailable")).toBe(1);

    await nats.start();
    await relay.waitIdle(15_000);
    const msgs = await streamMessages(nats.url, names.stream);
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual(events.map((e) => e.eventId));
    expect(count("NATS unavailable")).toBe(1);
    expect(count("connected to NATS")).toBe(1);
  });

  test("stop with flush publishes what is pending before it returns", async () => {
    const database = await postgresOutbox();
    const names = streamFor(sharedNatsUrl);
    const relay = newRelay(database, sharedNatsUrl, names, { batchSize: 20 });
    relay.start();
    await until("a connected leader", () => relay.isLeader && relay.natsConnected);
    await enqueueAll(
      database,
      Array.from({ length: 200 }, () => authenticated(names)),
    );
    await relay.stop({ flush: true, timeoutMs: 10_000 });
    expect(await unsent(database)).toBe(0);
    expect(relay.published).toBe(200);
    expect(relay.natsConnected).toBe(false);
  });

  test("stop with flush while NATS is down returns within its timeout and releases the lock", async () => {
    const nats = await startPrivateNats();
    cleanups.push(() => nats.stop());
    await nats.kill();
    const database = await postgresOutbox();
    const names = uniqueStreamNames("identity");
    const lockKey = BigInt(randomInt(1, 2 ** 31));
    const relay = newRelay(database, nats.url, names, { lockKey });
    relay.start();
    await enqueueAll(database, [authenticated(names)]);
    await until("leadership", () => relay.isLeader);

    const t0 = Date.now();
    await relay.stop({ flush: true, timeoutMs: 500 });
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(relay.isLeader).toBe(false);
    expect(await unsent(database)).toBe(1);
    const held = await database.query("select 1 from pg_locks where locktype = 'advisory' and objid = $1", [
      Number(lockKey),
    ]);
    expect(held).toEqual([]);
  });

  test("two relays on one database: one leader at a time, hand-over on stop and on a lost lock session", async () => {
    const database = await postgresOutbox();
    const names = streamFor(sharedNatsUrl);
    const lockKey = BigInt(randomInt(1, 2 ** 31));
    const a = newRelay(database, sharedNatsUrl, names, { lockKey });
    const lost = captureLogger();
    const b = newRelay(database, sharedNatsUrl, names, { lockKey, logger: lost.logger });
    let bothLeaders = false;
    const sampler = setInterval(() => {
      bothLeaders ||= a.isLeader && b.isLeader;
    }, 10);
    cleanups.push(async () => clearInterval(sampler));
    a.start();
    await until("a to lead", () => a.isLeader);
    b.start();
    await sleep(600);
    expect(b.isLeader).toBe(false);

    const batch = () => Array.from({ length: 10 }, () => authenticated(names));
    await enqueueAll(database, batch());
    await a.waitIdle();
    expect([a.published, b.published]).toEqual([10, 0]);

    await a.stop();
    await until("b to lead", () => b.isLeader);
    await enqueueAll(database, batch());
    await b.waitIdle();
    expect([a.published, b.published]).toEqual([10, 10]);
    clearInterval(sampler);
    expect(bothLeaders).toBe(false);

    // The lock session's connection dies: b must notice, stop relaying on it and win the lock again.
    const [killed] = await database.query<{ ok: boolean }>(
      `select pg_terminate_backend(pid) as ok from pg_locks
       where locktype = 'advisory' and objid = $1 and granted and database = (select oid from pg_database where datname = current_database())`,
      [Number(lockKey)],
    );
    expect(killed?.ok).toBe(true);
    await until("b to notice", () => lost.count("outbox relay lost its lock session") === 1);
    await until("b to lead again", () => b.isLeader);
    await enqueueAll(database, batch());
    await b.waitIdle();

    const msgs = await streamMessages(sharedNatsUrl, names.stream);
    const ids = msgs.map((m) => m.header.get("ce-id"));
    expect(ids).toEqual(await outboxOrder(database));
    expect(new Set(ids).size).toBe(30);
  });

  test("works on PGlite", async () => {
    const dir = mkdtempSync(join(tmpdir(), "outbox-pglite-"));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const database = await outboxDatabase(undefined, dir);
    const names = streamFor(sharedNatsUrl);
    const events = [authenticated(names), authenticated(names)];
    await enqueueAll(database, events);
    const relay = newRelay(database, sharedNatsUrl, names, { pollIntervalMs: 60_000 });
    relay.start();
    await relay.waitIdle();
    const later = authenticated(names);
    await enqueueAll(database, [later]);
    await relay.waitIdle(5000);

    const msgs = await streamMessages(sharedNatsUrl, names.stream);
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual([...events, later].map((e) => e.eventId));
    expect(new Uint8Array((msgs[0] as StoredMsg).data)).toEqual(events[0]?.payload);
    expect(relay.published).toBe(3);
  });
});
