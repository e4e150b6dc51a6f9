/**
 * The relay publishing: committed events reach JetStream in outbox order,
 * in CloudEvents binary mode, each once, and are marked sent; NOTIFY wakes
 * it (the poll is too slow to matter here); what it does shows in its events
 * and status; a stop with flush publishes what is pending first; a listener
 * that throws breaks nothing; and all of it on PGlite too.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fromBinary } from "@bufbuild/protobuf";
import { CustomerAuthenticatedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { jetstreamManager, type StoredMsg } from "@nats-io/jetstream";
import { connect, nanos } from "@nats-io/transport-node";
import { describe, expect, it, vi } from "vitest";
import { unsentEvents, waitForOutboxEmpty } from "../../test/support/outbox.js";
import type { PublishedEvent } from "../src/outbox-relay.js";
import {
  afterThisTest,
  authenticated,
  captureLogger,
  enqueueAll,
  newRelay,
  outboxDatabase,
  outboxOrder,
  postgresOutbox,
  sharedNatsUrl,
  streamMessages,
  testNats,
  testOutbox,
} from "./outbox-harness.js";

describe("outbox relay", () => {
  it("publishes committed events in id order with CloudEvents headers and marks them sent", async () => {
    const database = await postgresOutbox();
    const outbox = testOutbox(sharedNatsUrl);
    // More than nine, so an id order that went wrong (e.g. sorted as text) shows.
    const first = Array.from({ length: 11 }, () => authenticated(outbox));
    await enqueueAll(database, outbox, first);
    // A poll too slow to matter: after the first batch only NOTIFY can wake the relay.
    const relay = newRelay(database, outbox, testNats(sharedNatsUrl), { pollIntervalMs: 60_000 });
    const published: PublishedEvent[] = [];
    relay.events.on("published", (batch) => published.push(...batch));
    let idle = 0;
    relay.events.on("idle", () => idle++);
    relay.start();
    await waitForOutboxEmpty(database);
    const second = [authenticated(outbox), authenticated(outbox)];
    await enqueueAll(database, outbox, second);
    await waitForOutboxEmpty(database, 5000);

    const all = [...first, ...second];
    const msgs = await streamMessages(sharedNatsUrl, outbox.stream);
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual(await outboxOrder(database));
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual(all.map((e) => e.eventId));
    expect(msgs.map((m) => m.seq)).toEqual(Array.from({ length: 13 }, (_, i) => i + 1));
    for (const [i, e] of all.entries()) {
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

    // Its events say the same: each event once, in order, with its stream sequence.
    expect(published.map((p) => [p.eventId, p.subject, p.seq, p.duplicate])).toEqual(
      all.map((e, i) => [e.eventId, e.subject, i + 1, false]),
    );
    expect(idle).toBeGreaterThanOrEqual(2);
    expect(relay.status).toEqual({ state: "leader", nats: "connected", published: 13, duplicates: 0, failures: 0 });

    const nc = await connect({ servers: sharedNatsUrl });
    const info = await (await jetstreamManager(nc)).streams.info(outbox.stream);
    await nc.close();
    expect(info.config).toMatchObject({
      subjects: [`${outbox.subjectPrefix}.>`],
      storage: "file",
      duplicate_window: nanos(120_000),
    });
  });

  it("creates its stream as soon as it leads, before there is anything to publish", async () => {
    const database = await postgresOutbox();
    const outbox = testOutbox(sharedNatsUrl);
    const relay = newRelay(database, outbox, testNats(sharedNatsUrl));
    relay.start();
    await expect
      .poll(() =>
        streamMessages(sharedNatsUrl, outbox.stream).then(
          () => true,
          () => false,
        ),
      )
      .toBe(true);
    expect(await streamMessages(sharedNatsUrl, outbox.stream)).toEqual([]);
  });

  it("stop with flush publishes what is pending before it returns", async () => {
    const database = await postgresOutbox();
    const outbox = testOutbox(sharedNatsUrl);
    const nats = testNats(sharedNatsUrl);
    const relay = newRelay(database, outbox, nats, { batchSize: 20 });
    const leading = new Promise<void>((resolve) => relay.events.once("leader", () => resolve()));
    relay.start();
    await leading;
    await vi.waitUntil(() => nats.status === "connected");
    await enqueueAll(
      database,
      outbox,
      Array.from({ length: 200 }, () => authenticated(outbox)),
    );
    const stopped = new Promise<void>((resolve) => relay.events.once("stopped", () => resolve()));
    await relay.stop({ flush: true, timeoutMs: 10_000 });
    await stopped;
    expect(await unsentEvents(database)).toBe(0);
    expect(relay.status).toMatchObject({ state: "stopped", published: 200 });
    // The connection is the process's: the relay leaves it open.
    expect(nats.status).toBe("connected");
  });

  it("goes on relaying when an event listener throws", async () => {
    const database = await postgresOutbox();
    const outbox = testOutbox(sharedNatsUrl);
    const { logger, count } = captureLogger();
    const relay = newRelay(database, outbox, testNats(sharedNatsUrl), { logger });
    relay.events.on("published", () => {
      throw new Error("listener bug");
    });
    relay.start();
    for (let i = 0; i < 3; i++) {
      await enqueueAll(database, outbox, [authenticated(outbox)]);
      await waitForOutboxEmpty(database);
    }
    // Each event once: a throwing listener does not fail the batch (which would publish it again).
    const msgs = await streamMessages(sharedNatsUrl, outbox.stream);
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual(await outboxOrder(database));
    expect(count("outbox relay event listener failed")).toBe(3);
    expect(relay.status.failures).toBe(0);
  });

  it("works on PGlite", async () => {
    const dir = mkdtempSync(join(tmpdir(), "outbox-pglite-"));
    afterThisTest(async () => rmSync(dir, { recursive: true, force: true }));
    const database = await outboxDatabase(`pglite:${dir}`);
    const outbox = testOutbox(sharedNatsUrl);
    const events = [authenticated(outbox), authenticated(outbox)];
    await enqueueAll(database, outbox, events);
    const relay = newRelay(database, outbox, testNats(sharedNatsUrl), { pollIntervalMs: 60_000 });
    relay.start();
    await waitForOutboxEmpty(database);
    const later = authenticated(outbox);
    await enqueueAll(database, outbox, [later]);
    await waitForOutboxEmpty(database, 5000);

    const msgs = await streamMessages(sharedNatsUrl, outbox.stream);
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual([...events, later].map((e) => e.eventId));
    expect(new Uint8Array((msgs[0] as StoredMsg).data)).toEqual(events[0]?.payload);
    expect(relay.status.published).toBe(3);
  });
});
