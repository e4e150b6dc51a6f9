/**
 * Leadership: of two relays on one database exactly one leads at a time,
 * and their `leader` / `follower` events say so in an order in which no
 * listener ever sees two leaders; a stopping leader hands over, a leader
 * whose lock session dies notices and the other takes over; and a stop with
 * flush while NATS is down returns within its timeout and releases the lock.
 */
import { describe, expect, it, vi } from "vitest";
import { startPrivateNats } from "../../test/support/nats.js";
import { unsentEvents, waitForOutboxEmpty } from "../../test/support/outbox.js";
import { sleep } from "../../test/support/timing.js";
import type { OutboxRelay } from "../src/outbox-relay.js";
import {
  afterThisTest,
  authenticated,
  captureLogger,
  enqueueAll,
  newRelay,
  outboxOrder,
  postgresOutbox,
  sharedNatsUrl,
  streamMessages,
  testNats,
  testOutbox,
} from "./outbox-harness.js";

/** Leadership events of `relays` in order, as `<name>:leader` and `<name>:follower:<reason>`. */
function recordLeadership(relays: Record<string, OutboxRelay>) {
  const transitions: string[] = [];
  let leaders = 0;
  let most = 0;
  for (const [name, relay] of Object.entries(relays)) {
    relay.events.on("leader", () => {
      transitions.push(`${name}:leader`);
      most = Math.max(most, ++leaders);
    });
    relay.events.on("follower", ({ reason }) => {
      transitions.push(`${name}:follower:${reason}`);
      leaders--;
    });
  }
  return { transitions, mostLeadersAtOnce: () => most };
}

describe("outbox relay leadership", () => {
  it("two relays on one database: one leader at a time, hand-over on stop", async () => {
    const database = await postgresOutbox();
    const outbox = testOutbox(sharedNatsUrl);
    const nats = testNats(sharedNatsUrl);
    const a = newRelay(database, outbox, nats);
    const b = newRelay(database, outbox, nats);
    const seen = recordLeadership({ a, b });
    a.start();
    await vi.waitUntil(() => a.status.state === "leader");
    b.start();
    // b tries the lock every 100–200 ms meanwhile.
    await sleep(600);
    expect(b.status.state).toBe("follower");

    const batch = () => Array.from({ length: 10 }, () => authenticated(outbox));
    await enqueueAll(database, outbox, batch());
    await waitForOutboxEmpty(database);
    expect([a.status.published, b.status.published]).toEqual([10, 0]);

    await a.stop();
    expect(a.status.state).toBe("stopped");
    await vi.waitUntil(() => b.status.state === "leader");
    await enqueueAll(database, outbox, batch());
    await waitForOutboxEmpty(database);
    expect([a.status.published, b.status.published]).toEqual([10, 10]);
    expect(seen.transitions).toEqual(["a:leader", "a:follower:stopping", "b:leader"]);
    expect(seen.mostLeadersAtOnce()).toBe(1);

    const msgs = await streamMessages(sharedNatsUrl, outbox.stream);
    const ids = msgs.map((m) => m.header.get("ce-id"));
    expect(ids).toEqual(await outboxOrder(database));
    expect(new Set(ids).size).toBe(20);
  });

  it("a leader whose lock session dies steps down, and the lock is taken again", async () => {
    const database = await postgresOutbox();
    const outbox = testOutbox(sharedNatsUrl);
    const nats = testNats(sharedNatsUrl);
    const lost = captureLogger();
    const relay = newRelay(database, outbox, nats, { logger: lost.logger });
    const seen = recordLeadership({ relay });
    relay.start();
    await vi.waitUntil(() => relay.status.state === "leader");

    const [killed] = await database.query<{ ok: boolean }>(
      `select pg_terminate_backend(pid) as ok from pg_locks
       where locktype = 'advisory' and objid = $1 and granted and database = (select oid from pg_database where datname = current_database())`,
      [Number(outbox.lockKey)],
    );
    expect(killed?.ok).toBe(true);
    // It notices at its next read (the poll, 200 ms) and wins the lock again on a new session.
    await vi.waitUntil(() => seen.transitions.length === 3, { timeout: 10_000 });
    expect(seen.transitions).toEqual(["relay:leader", "relay:follower:lock session lost", "relay:leader"]);
    expect(lost.count("outbox relay lost its lock session; no longer the leader", 40)).toBe(1);

    const events = Array.from({ length: 5 }, () => authenticated(outbox));
    await enqueueAll(database, outbox, events);
    await waitForOutboxEmpty(database);
    const msgs = await streamMessages(sharedNatsUrl, outbox.stream);
    expect(msgs.map((m) => m.header.get("ce-id"))).toEqual(events.map((e) => e.eventId));
  });

  it("stop with flush while NATS is down returns within its timeout and releases the lock", async () => {
    const privateNats = await startPrivateNats();
    afterThisTest(() => privateNats.stop());
    await privateNats.kill();
    const database = await postgresOutbox();
    const outbox = testOutbox();
    const relay = newRelay(database, outbox, testNats(privateNats.url));
    const seen = recordLeadership({ relay });
    relay.start();
    await enqueueAll(database, outbox, [authenticated(outbox)]);
    await vi.waitUntil(() => relay.status.state === "leader");

    const t0 = Date.now();
    await relay.stop({ flush: true, timeoutMs: 500 });
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(relay.status.state).toBe("stopped");
    expect(seen.transitions).toEqual(["relay:leader", "relay:follower:stopping"]);
    expect(await unsentEvents(database)).toBe(1);
    const held = await database.query("select 1 from pg_locks where locktype = 'advisory' and objid = $1", [
      Number(outbox.lockKey),
    ]);
    expect(held).toEqual([]);
  });
});
