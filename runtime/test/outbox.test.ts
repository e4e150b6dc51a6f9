/**
 * The outbox description and its writers: `defineOutbox` refuses what the
 * relay could not use; an event takes its source from the outbox and must
 * lie under its subject prefix; both write paths (`enqueueEvent` in a
 * transaction, `prepareWithEvent` in one statement) store the event with its
 * change and wake the relay on the outbox's channel at commit, never for a
 * change that did not happen.
 */
import { create, fromBinary } from "@bufbuild/protobuf";
import { CustomerAuthenticatedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { eq, sql } from "drizzle-orm";
import { pgTable, text } from "drizzle-orm/pg-core";
import { describe, expect, it } from "vitest";
import { sleep } from "../../test/support/timing.js";
import { defineOutbox } from "../src/outbox.js";
import { enqueueEvent, eventValues, outboxEvent, prepareWithEvent } from "../src/outbox-writer.js";
import { afterThisTest, authenticated, enqueueAll, outboxOrder, postgresOutbox, testOutbox } from "./outbox-harness.js";

const valid = {
  source: "orders-service",
  stream: "ORDERS",
  subjectPrefix: "orders",
  channel: "orders_outbox",
  lockKey: 42n,
};

describe("defineOutbox", () => {
  it("returns the description frozen", () => {
    const outbox = defineOutbox(valid);
    expect(outbox).toEqual(valid);
    expect(Object.isFrozen(outbox)).toBe(true);
  });

  it.each([
    ["an empty source", { source: "" }, "outbox source must not be empty"],
    ["a dotted stream", { stream: "ORDERS.EVENTS" }, 'outbox stream "ORDERS.EVENTS" is not a valid stream name'],
    [
      "a wildcard prefix",
      { subjectPrefix: "orders.>" },
      'outbox subject prefix "orders.>" is not dot-separated tokens',
    ],
    ["an empty prefix", { subjectPrefix: "" }, 'outbox subject prefix "" is not dot-separated tokens'],
    [
      "an upper-case channel",
      { channel: "Orders_Outbox" },
      'outbox channel "Orders_Outbox" is not a lower-case SQL identifier',
    ],
    [
      "a dashed channel",
      { channel: "orders-outbox" },
      'outbox channel "orders-outbox" is not a lower-case SQL identifier',
    ],
    ["a lock key past int8", { lockKey: 2n ** 63n }, "outbox lock key 9223372036854775808 is not a bigint"],
  ])("refuses %s", (_label, change, message) => {
    expect(() => defineOutbox({ ...valid, ...change })).toThrow(new Error(message));
  });
});

describe("outboxEvent", () => {
  it("takes type and payload from the message and the source from the outbox", () => {
    const outbox = testOutbox();
    const event = authenticated(outbox);
    expect(event).toMatchObject({ type: "identity.v1.CustomerAuthenticated", source: "identity-service" });
    expect(fromBinary(CustomerAuthenticatedSchema, event.payload).eventId).toBe(event.eventId);
  });

  it("refuses a subject outside the outbox's prefix", () => {
    const outbox = testOutbox();
    const message = create(CustomerAuthenticatedSchema, { customerId: "c1" });
    const meta = {
      eventId: "e1",
      occurTime: new Date(),
      subject: "elsewhere.customer.authenticated.c1",
      ceSubject: "c1",
    };
    expect(() => outboxEvent(outbox, CustomerAuthenticatedSchema, message, meta)).toThrow(
      new Error(
        `event subject "elsewhere.customer.authenticated.c1" is not under the outbox's prefix "${outbox.subjectPrefix}"`,
      ),
    );
    // A prefix is whole tokens: `<prefix>x.…` is not under `<prefix>`.
    expect(() =>
      outboxEvent(outbox, CustomerAuthenticatedSchema, message, { ...meta, subject: `${outbox.subjectPrefix}x.a` }),
    ).toThrow(/is not under the outbox's prefix/);
  });
});

/** Counts NOTIFYs on the outbox's channel, on the database's own LISTEN connection. */
async function notifications(database: Awaited<ReturnType<typeof postgresOutbox>>, channel: string) {
  let n = 0;
  const unlisten = await database.listen(channel, () => void n++);
  afterThisTest(unlisten);
  return () => n;
}

describe("enqueueEvent", () => {
  it("writes the events of a transaction and wakes the relay once, at commit", async () => {
    const database = await postgresOutbox();
    const outbox = testOutbox();
    const notified = await notifications(database, outbox.channel);
    const events = [authenticated(outbox), authenticated(outbox), authenticated(outbox)];
    let before = -1;
    await database.db.transaction(async (tx) => {
      for (const e of events) await enqueueEvent(tx, e, outbox);
      await sleep(200);
      before = notified();
    });
    expect(before).toBe(0);
    await expect.poll(notified).toBe(1);
    expect(await outboxOrder(database)).toEqual(events.map((e) => e.eventId));
    const [row] = await database.query<Record<string, unknown>>(
      "select subject, type, source, ce_subject, published_at, attempts from outbox order by id limit 1",
    );
    expect(row).toEqual({
      subject: events[0]?.subject,
      type: "identity.v1.CustomerAuthenticated",
      source: "identity-service",
      ce_subject: events[0]?.ceSubject,
      published_at: null,
      attempts: 0,
    });
  });

  it("writes nothing and wakes nobody when the transaction rolls back", async () => {
    const database = await postgresOutbox();
    const outbox = testOutbox();
    const notified = await notifications(database, outbox.channel);
    await expect(
      database.db.transaction(async (tx) => {
        await enqueueEvent(tx, authenticated(outbox), outbox);
        throw new Error("command failed");
      }),
    ).rejects.toThrow("command failed");
    const committed = authenticated(outbox);
    await enqueueAll(database, outbox, [committed]);
    await expect.poll(notified).toBe(1);
    expect(await outboxOrder(database)).toEqual([committed.eventId]);
  });
});

const things = pgTable("things", { id: text("id").primaryKey(), name: text("name").notNull() });

describe("prepareWithEvent", () => {
  it("writes one event per changed row in the change's statement, and none when nothing changed", async () => {
    const database = await postgresOutbox();
    await database.query("create table things (id text primary key, name text not null)");
    await database.query("insert into things values ('a', 'old')");
    const outbox = testOutbox();
    const notified = await notifications(database, outbox.channel);
    const { db } = database;
    const renamed = db.$with("renamed").as(
      db
        .update(things)
        .set({ name: sql`${sql.placeholder("name")}` })
        .where(eq(things.id, sql.placeholder("id")))
        .returning({ id: things.id }),
    );
    const rename = prepareWithEvent(db, renamed, outbox, "rename_thing");

    const missing = await rename.execute({ id: "nope", name: "new", ...eventValues(authenticated(outbox)) });
    expect(missing).toEqual([]);
    const event = authenticated(outbox);
    const changed = await rename.execute({ id: "a", name: "new", ...eventValues(event) });
    expect(changed).toHaveLength(1);

    await expect.poll(notified).toBe(1);
    expect(await outboxOrder(database)).toEqual([event.eventId]);
    expect(await database.query("select name from things")).toEqual([{ name: "new" }]);
  });
});
