/**
 * The relay's one statement per batch (outbox-leader.ts, markAndRead): it
 * marks the ids it is given and reads the unsent rows after them in id
 * order, never one it marks; and once the lock's session is gone it marks
 * and reads nothing. On PostgreSQL and on PGlite.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { createOutboxLeadership } from "../src/outbox-leader.js";
import {
  afterThisTest,
  authenticated,
  enqueueAll,
  captureLogger as logger,
  type OutboxDatabase,
  outboxDatabase,
  outboxOrder,
  postgresOutbox,
  testOutbox,
} from "./outbox-harness.js";

async function check(database: OutboxDatabase) {
  const outbox = testOutbox();
  const leadership = createOutboxLeadership({ outbox, database, logger: logger().logger });
  const lock = await leadership.tryAcquire();
  if (!lock) throw new Error("no lock");
  afterThisTest(() => leadership.release(lock));
  await enqueueAll(
    database,
    outbox,
    Array.from({ length: 5 }, () => authenticated(outbox)),
  );
  const order = await outboxOrder(database);
  const ids = (await database.query<{ id: string }>("select id::text as id from outbox order by id")).map((r) => r.id);

  const first = await leadership.markAndRead(lock, [], 3);
  expect(first).toMatchObject({ alive: true, marked: 0 });
  expect(first.rows.map((r) => r.event_id)).toEqual(order.slice(0, 3));

  // The rows it marks are still unsent in the statement's snapshot: left out by id.
  const second = await leadership.markAndRead(lock, ids.slice(0, 3), 3);
  expect(second).toMatchObject({ alive: true, marked: 3 });
  expect(second.rows.map((r) => r.event_id)).toEqual(order.slice(3));

  const last = await leadership.markAndRead(lock, ids.slice(3), 3);
  expect(last).toEqual({ alive: true, marked: 2, rows: [] });
  const unsent = await database.query("select id from outbox where published_at is null");
  expect(unsent).toEqual([]);
  return { leadership, lock };
}

describe("markAndRead", () => {
  it("marks what it is given and reads the rest in id order, and nothing once the lock is gone", async () => {
    const database = await postgresOutbox();
    const { leadership, lock } = await check(database);
    await enqueueAll(database, testOutbox(), [authenticated(testOutbox())]);
    const [row] = await database.query<{ id: string }>("select id::text as id from outbox where published_at is null");
    await database.query("select pg_terminate_backend($1)", [lock.pid]);
    // pg_terminate_backend only signals: the session (and its lock) lives until its backend has exited.
    await expect.poll(() => leadership.isAlive(lock)).toBe(false);
    expect(await leadership.markAndRead(lock, [row?.id as string], 10)).toEqual({ alive: false, marked: 0, rows: [] });
    expect(await database.query("select id from outbox where published_at is null")).toHaveLength(1);
  });

  it("works on PGlite", async () => {
    const dir = mkdtempSync(join(tmpdir(), "outbox-mark-pglite-"));
    afterThisTest(async () => rmSync(dir, { recursive: true, force: true }));
    await check(await outboxDatabase(`pglite:${dir}`));
  });
});
