/**
 * The relay and NATS outages, on a private nats-server the tests kill: the
 * relay holds events while NATS is down, says so once, and publishes each
 * once, in order, when it is back; and it starts (and leads) while NATS is
 * unreachable.
 */
import { describe, expect, it, vi } from "vitest";
import { startPrivateNats } from "../../test/support/nats.js";
import { unsentEvents, waitForOutboxEmpty } from "../../test/support/outbox.js";
import { sleep } from "../../test/support/timing.js";
import {
  afterThisTest,
  authenticated,
  captureLogger,
  enqueueAll,
  newRelay,
  outboxOrder,
  postgresOutbox,
  streamMessages,
  testNats,
  testOutbox,
} from "./outbox-harness.js";

const HELD = "NATS unavailable; events are held in the outbox";
const WARN = 40;

describe("outbox relay and NATS outages", () => {
  it("holds events while NATS is down and publishes each once, in order, when it is back", async () => {
    const nats = await startPrivateNats();
    afterThisTest(() => nats.stop());
    const database = await postgresOutbox();
    const outbox = testOutbox();
    const { logger, count } = captureLogger();
    const connection = testNats(nats.url, logger);
    const relay = newRelay(database, outbox, connection, { logger });
    await enqueueAll(database, outbox, [authenticated(outbox), authenticated(outbox)]);
    relay.start();
    await waitForOutboxEmpty(database);

    await nats.kill();
    await vi.waitUntil(() => relay.status.nats === "disconnected");
    for (let i = 0; i < 10; i++) await enqueueAll(database, outbox, [authenticated(outbox), authenticated(outbox)]);
    await sleep(500);
    expect(await unsentEvents(database)).toBe(20);
    expect(count(HELD, WARN)).toBe(1);

    await nats.start();
    await waitForOutboxEmpty(database, 15_000);
    const msgs = await streamMessages(nats.url, outbox.stream);
    expect(msgs.map((m) => m.seq)).toEqual(Array.from({ length: 22 }, (_, i) => i + 1));
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual(await outboxOrder(database));
    // Each transition once: the connection's, and the relay's consequence of it.
    expect(count("NATS connection lost; reconnecting", WARN)).toBe(1);
    expect(count("reconnected to NATS")).toBe(1);
    expect(count(HELD)).toBe(1);
    expect(relay.status).toMatchObject({ state: "leader", nats: "connected", published: 22 });
  });

  it("starts while NATS is unreachable, says so once, and publishes once it is up", async () => {
    const nats = await startPrivateNats();
    afterThisTest(() => nats.stop());
    await nats.kill();
    const database = await postgresOutbox();
    const outbox = testOutbox();
    const { logger, count } = captureLogger();
    const relay = newRelay(database, outbox, testNats(nats.url, logger), { logger });
    relay.start();
    const events = [authenticated(outbox), authenticated(outbox), authenticated(outbox)];
    await enqueueAll(database, outbox, events);
    // It leads without NATS, holds the events, says so, and keeps trying to connect (backing off up to 500 ms).
    await vi.waitUntil(() => relay.status.state === "leader", { timeout: 10_000 });
    await expect.poll(() => count(HELD, WARN), { timeout: 10_000 }).toBe(1);
    await expect.poll(() => count("cannot connect to NATS; retrying"), { timeout: 10_000 }).toBeGreaterThan(2);
    expect(relay.status).toMatchObject({ state: "leader", nats: "disconnected", published: 0 });
    expect(await unsentEvents(database)).toBe(3);
    expect(count("cannot connect to NATS; retrying", WARN)).toBe(1);

    await nats.start();
    await waitForOutboxEmpty(database, 15_000);
    const msgs = await streamMessages(nats.url, outbox.stream);
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual(events.map((e) => e.eventId));
    expect(count(HELD)).toBe(1);
    expect(count("connected to NATS")).toBe(1);
  });
});
