/**
 * Stream purges (stream-purge.ts) against a real database and JetStream: a
 * purge waits until the event it names is published, then removes exactly its
 * subject's messages and moves no consumer of the stream; it waits out a NATS outage and runs once afterwards; it
 * works on the embedded PGlite database too.
 */
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AckPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { generateDrizzleJson, generateMigration } from "drizzle-kit/api";
import { describe, expect, it, vi } from "vitest";
import { sharedNatsUrl, startPrivateNats } from "../../test/support/nats.js";
import { waitForOutboxEmpty } from "../../test/support/outbox.js";
import { createTestDatabase } from "../../test/support/postgres.js";
import { sleep } from "../../test/support/timing.js";
import { type Database, openDatabase } from "../src/db.js";
import type { Nats } from "../src/nats.js";
import type { Outbox } from "../src/outbox.js";
import { outbox as outboxTable } from "../src/outbox-schema.js";
import { enqueueEvent, type OutboxEvent } from "../src/outbox-writer.js";
import { createStreamPurger, requestStreamPurge, type StreamPurger } from "../src/stream-purge.js";
import { streamPurges } from "../src/stream-purge-schema.js";
import { afterThisTest, authenticated, captureLogger, newRelay, testNats, testOutbox } from "./outbox-harness.js";

const schema = { outbox: outboxTable, streamPurges };
type PurgeDatabase = Database<typeof schema>;

async function purgeDatabase(url: string): Promise<PurgeDatabase> {
  const database = await openDatabase({ url, schema, max: 4 });
  afterThisTest(() => database.close());
  for (const ddl of await generateMigration(generateDrizzleJson({}), generateDrizzleJson(schema))) {
    await database.query(ddl);
  }
  return database;
}

async function postgresPurgeDatabase(): Promise<PurgeDatabase> {
  const testDb = await createTestDatabase("stream_purge");
  afterThisTest(() => testDb.drop());
  return purgeDatabase(testDb.url);
}

function newPurger(
  database: PurgeDatabase,
  nats: Nats,
  log = captureLogger(),
): { purger: StreamPurger; purged: string[] } {
  const purger = createStreamPurger({
    database,
    nats,
    logger: log.logger,
    alertAfterAttempts: 3,
    pollIntervalMs: 200,
    minRetryMs: 100,
    maxRetryMs: 500,
  });
  const purged: string[] = [];
  purger.events.on("purged", ({ subject }) => purged.push(subject));
  afterThisTest(() => purger.stop());
  return { purger, purged };
}

/** An event of `customerId` on `subject` (a CustomerAuthenticated, which carries no profile). */
function eventOn(outbox: Outbox, subject: string): OutboxEvent {
  return { ...authenticated(outbox), subject };
}

/** Messages per subject in `stream`. */
async function countsBySubject(natsUrl: string, stream: string): Promise<Record<string, number>> {
  const nc = await connect({ servers: natsUrl });
  try {
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(stream, { subjects_filter: ">" });
    return { ...(info.state.subjects ?? {}) };
  } finally {
    await nc.close();
  }
}

/**
 * Customer A's two events on `purged`, one of B's on `kept`, published; then A's
 * tombstone and the purge of `purged` after it, in one transaction (not yet published).
 */
async function eraseScenario(database: PurgeDatabase, outbox: Outbox) {
  const purged = `${outbox.subjectPrefix}.updated.a`;
  const kept = `${outbox.subjectPrefix}.updated.b`;
  const tombstoneSubject = `${outbox.subjectPrefix}.erased.a`;
  const earlier = [eventOn(outbox, purged), eventOn(outbox, purged), eventOn(outbox, kept)];
  await database.db.transaction(async (tx) => {
    for (const e of earlier) await enqueueEvent(tx, e, outbox);
  });
  const tombstone = eventOn(outbox, tombstoneSubject);
  const writeTombstone = () =>
    database.db.transaction(async (tx) => {
      await enqueueEvent(tx, tombstone, outbox);
      await requestStreamPurge(tx, {
        stream: outbox.stream,
        subject: purged,
        afterEventId: tombstone.eventId,
        now: new Date(),
      });
    });
  return { purged, kept, tombstoneSubject, writeTombstone };
}

const pending = async (database: PurgeDatabase) =>
  database.query<{ done: boolean; attempts: number }>(
    "select done_at is not null as done, attempts from stream_purges order by created_at",
  );

describe("stream purges", () => {
  it("wait for their event to be published, then remove exactly the subject's messages", async () => {
    const database = await postgresPurgeDatabase();
    const outbox = testOutbox(sharedNatsUrl);
    const nats = testNats(sharedNatsUrl);
    const { purged, kept, tombstoneSubject, writeTombstone } = await eraseScenario(database, outbox);
    const first = newRelay(database, outbox, nats);
    first.start();
    await waitForOutboxEmpty(database);
    await first.stop();
    expect(await countsBySubject(sharedNatsUrl, outbox.stream)).toEqual({ [purged]: 2, [kept]: 1 });

    // A consumer that has read nothing yet: the purge must not move it (NATS 2.9's filtered purge
    // moved every consumer past the stream's end, so it would never see the kept event or the tombstone).
    const nc = await connect({ servers: sharedNatsUrl });
    afterThisTest(() => nc.close());
    const jsm = await jetstreamManager(nc);
    await jsm.consumers.add(outbox.stream, { durable_name: "bystander", ack_policy: AckPolicy.Explicit });

    const { purger, purged: done } = newPurger(database, nats);
    purger.start();
    await writeTombstone();
    // No relay: the tombstone stays in the outbox, and the purge waits for it.
    await sleep(1_000);
    expect(await pending(database)).toEqual([{ done: false, attempts: 0 }]);
    expect(await countsBySubject(sharedNatsUrl, outbox.stream)).toEqual({ [purged]: 2, [kept]: 1 });

    const relay = newRelay(database, outbox, nats);
    // As the service host wires them: the relay's publishes wake the purger.
    relay.events.on("published", (events) => purger.published(events.map((e) => e.eventId)));
    relay.start();
    await vi.waitFor(async () => expect(await pending(database)).toEqual([{ done: true, attempts: 0 }]), 10_000);
    expect(await countsBySubject(sharedNatsUrl, outbox.stream)).toEqual({ [kept]: 1, [tombstoneSubject]: 1 });
    await sleep(600);
    expect(done).toEqual([purged]);
    // The bystander still gets what was not purged, the tombstone last.
    expect((await jsm.consumers.info(outbox.stream, "bystander")).num_pending).toBe(2);
    const batch = await (await jetstream(nc).consumers.get(outbox.stream, "bystander")).fetch({
      max_messages: 3,
      expires: 1_000,
    });
    const delivered: string[] = [];
    for await (const m of batch) delivered.push(m.subject);
    expect(delivered).toEqual([kept, tombstoneSubject]);
  });

  it("wait out a NATS outage and run once when it is back", async () => {
    const server = await startPrivateNats();
    afterThisTest(() => server.stop());
    const database = await postgresPurgeDatabase();
    const outbox = testOutbox();
    const nats = testNats(server.url);
    const { purged, kept, tombstoneSubject, writeTombstone } = await eraseScenario(database, outbox);
    await writeTombstone();
    const relay = newRelay(database, outbox, nats);
    relay.start();
    await waitForOutboxEmpty(database);
    await relay.stop();

    await server.kill();
    await vi.waitUntil(() => nats.status === "disconnected", 10_000);
    const { purger, purged: done } = newPurger(database, nats);
    purger.start();
    await sleep(1_000);
    expect(await pending(database)).toEqual([{ done: false, attempts: 0 }]);

    await server.start();
    await vi.waitFor(async () => expect((await pending(database))[0]?.done).toBe(true), 15_000);
    expect(await countsBySubject(server.url, outbox.stream)).toEqual({ [kept]: 1, [tombstoneSubject]: 1 });
    await sleep(600);
    expect(done).toEqual([purged]);
  });

  it("count failed attempts and retry (a purge that cannot run), without holding up the others", async () => {
    const database = await postgresPurgeDatabase();
    const outbox = testOutbox(sharedNatsUrl);
    const nats = testNats(sharedNatsUrl);
    const { purged, kept, tombstoneSubject, writeTombstone } = await eraseScenario(database, outbox);
    await writeTombstone();
    // A stream name JetStream cannot have: every attempt fails.
    const [tombstone] = await database.query<{ event_id: string }>(
      "select event_id::text as event_id from outbox where subject = $1",
      [tombstoneSubject],
    );
    await requestStreamPurge(database.db, {
      stream: `${outbox.stream}.invalid`,
      subject: purged,
      afterEventId: tombstone?.event_id ?? "",
      now: new Date(Date.now() - 1_000),
    });
    const relay = newRelay(database, outbox, nats);
    relay.start();
    await waitForOutboxEmpty(database);
    const log = captureLogger();
    const { purger, purged: done } = newPurger(database, nats, log);
    const failed: number[] = [];
    purger.events.on("failed", ({ attempts }) => failed.push(attempts));
    purger.start();
    await vi.waitFor(() => {
      expect(done).toEqual([purged]);
      expect(failed.length).toBeGreaterThanOrEqual(4);
    }, 10_000);
    // One warning at the first failure, one error at the third (the alert), debug lines otherwise.
    expect(log.count("stream purge failed; retrying", 40)).toBe(1);
    const alert = "stream purge keeps failing: the erased customer's data stays in the stream until it runs";
    expect(log.count(alert, 50)).toBe(1);
    expect(await countsBySubject(sharedNatsUrl, outbox.stream)).toEqual({ [kept]: 1, [tombstoneSubject]: 1 });
    const [bad] = await pending(database);
    expect(bad?.done).toBe(false);
    expect(bad?.attempts).toBeGreaterThanOrEqual(4);
    expect(failed.slice(0, 2)).toEqual([1, 2]);
  });

  it("work on the embedded PGlite database", async () => {
    const dir = mkdtempSync(join(tmpdir(), "purge-pglite-"));
    const database = await purgeDatabase(`pglite:${dir}`);
    const outbox = testOutbox(sharedNatsUrl);
    const nats = testNats(sharedNatsUrl);
    const { purged, kept, tombstoneSubject, writeTombstone } = await eraseScenario(database, outbox);
    await writeTombstone();
    const { purger, purged: done } = newPurger(database, nats);
    purger.start();
    const relay = newRelay(database, outbox, nats);
    relay.start();
    await vi.waitFor(() => expect(done).toEqual([purged]), 10_000);
    expect(await countsBySubject(sharedNatsUrl, outbox.stream)).toEqual({ [kept]: 1, [tombstoneSubject]: 1 });
  });
});
