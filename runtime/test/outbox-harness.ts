/**
 * What the outbox tests share: a database holding only the outbox table (on
 * PostgreSQL or PGlite), an outbox description on unique stream names, the
 * process's NATS connection, relays with short timings, events to write and
 * the stream to read back. Everything made is released after each test.
 */
import { randomInt } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { AuthenticationMethod, CustomerAuthenticatedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { jetstreamManager, type StoredMsg } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { generateDrizzleJson, generateMigration } from "drizzle-kit/api";
import { pino } from "pino";
import { afterEach } from "vitest";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { createTestDatabase } from "../../test/support/postgres.js";
import { type Database, openDatabase } from "../src/db.js";
import { uuidv7 } from "../src/ids.js";
import type { Logger } from "../src/logger.js";
import { createNats, type Nats } from "../src/nats.js";
import { defineOutbox, type Outbox } from "../src/outbox.js";
import { createOutboxRelay, type OutboxRelay, type OutboxRelayOptions } from "../src/outbox-relay.js";
import { outbox as outboxTable } from "../src/outbox-schema.js";
import { enqueueEvent, type OutboxEvent, outboxEvent } from "../src/outbox-writer.js";

const schema = { outbox: outboxTable };
export type OutboxDatabase = Database<typeof schema>;

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

/** Runs `cleanup` after the current test, before what was registered earlier. */
export function afterThisTest(cleanup: () => Promise<unknown>): void {
  cleanups.push(cleanup);
}

/** Opens a database (postgres:// or pglite:<dir>) holding the outbox table, its DDL generated from the schema. */
export async function outboxDatabase(url: string): Promise<OutboxDatabase> {
  const database = await openDatabase({ url, schema, max: 4 });
  afterThisTest(() => database.close());
  for (const ddl of await generateMigration(generateDrizzleJson({}), generateDrizzleJson(schema))) {
    await database.query(ddl);
  }
  return database;
}

/** A fresh PostgreSQL database with the outbox table. */
export async function postgresOutbox(): Promise<OutboxDatabase> {
  const testDb = await createTestDatabase("outbox");
  afterThisTest(() => testDb.drop());
  return outboxDatabase(testDb.url);
}

/**
 * An outbox on unique stream names and a random lock key (so parallel files
 * never share a lock), its stream deleted after the test when on `natsUrl`.
 */
export function testOutbox(natsUrl?: string): Outbox {
  const names = uniqueStreamNames("identity");
  if (natsUrl) afterThisTest(() => deleteStreams(natsUrl, names.stream));
  return defineOutbox({
    source: "identity-service",
    stream: names.stream,
    subjectPrefix: names.subjectPrefix,
    channel: "outbox_test",
    lockKey: BigInt(randomInt(1, 2 ** 31)),
  });
}

/** Log lines kept in memory. */
export function captureLogger() {
  const lines: Array<{ msg: string; level: number }> = [];
  const logger: Logger = pino({ level: "debug" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  return {
    logger,
    lines,
    /** How many lines say exactly `msg` (at `level`, if given: 20 debug, 30 info, 40 warn). */
    count: (msg: string, level?: number) =>
      lines.filter((l) => l.msg === msg && (level === undefined || l.level === level)).length,
  };
}

/** The process's NATS connection, closed after the test. */
export function testNats(url: string, logger: Logger = captureLogger().logger): Nats {
  const nats = createNats({ url, name: "outbox-test", logger, maxRetryMs: 500 });
  afterThisTest(() => nats.close());
  return nats;
}

/** A relay with short timings, stopped after the test. */
export function newRelay(
  database: OutboxDatabase,
  outbox: Outbox,
  nats: Nats,
  extra: Partial<Omit<OutboxRelayOptions, "database" | "outbox" | "nats">> = {},
): OutboxRelay {
  const relay = createOutboxRelay({
    outbox,
    database,
    nats,
    logger: captureLogger().logger,
    pollIntervalMs: 200,
    lockRetryMs: 200,
    publishTimeoutMs: 1000,
    ...extra,
  });
  afterThisTest(() => relay.stop());
  return relay;
}

/** A CustomerAuthenticated event of a new customer, for `outbox`. */
export function authenticated(outbox: Outbox): OutboxEvent {
  const eventId = uuidv7();
  const customerId = uuidv7();
  const occurTime = new Date();
  const message = create(CustomerAuthenticatedSchema, {
    eventId,
    occurTime: timestampFromDate(occurTime),
    customerId,
    method: AuthenticationMethod.PASSWORD,
  });
  return outboxEvent(outbox, CustomerAuthenticatedSchema, message, {
    eventId,
    occurTime,
    subject: `${outbox.subjectPrefix}.customer.authenticated.${customerId}`,
    ceSubject: customerId,
  });
}

/** Writes `events` in one transaction. */
export async function enqueueAll(database: OutboxDatabase, outbox: Outbox, events: OutboxEvent[]): Promise<void> {
  await database.db.transaction(async (tx) => {
    for (const e of events) await enqueueEvent(tx, e, outbox);
  });
}

/** Every message of `stream`, in stream order. */
export async function streamMessages(natsUrl: string, stream: string): Promise<StoredMsg[]> {
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
export async function outboxOrder(database: OutboxDatabase): Promise<string[]> {
  const rows = await database.query<{ event_id: string }>("select event_id::text as event_id from outbox order by id");
  return rows.map((r) => r.event_id);
}

export { sharedNatsUrl };
