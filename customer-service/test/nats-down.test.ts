/**
 * NATS going away never fails a command and never loses an event: the
 * customer service runs on a private nats-server that the test kills; the
 * commands made meanwhile succeed at once, their events wait in the outbox,
 * and once NATS is back every event reaches the stream exactly once, in
 * version order per customer.
 */

import { randomUUID } from "node:crypto";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { bearer } from "../../test/support/clients.js";
import { startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { type PrivateNats, startPrivateNats } from "../../test/support/nats.js";
import { waitForOutboxEmpty } from "../../test/support/outbox.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";
import {
  readStream as readWholeStream,
  type StreamEvent,
  streamCount,
  waitForStream,
} from "../../test/support/streams.js";

let issuer: TestIssuer;
let nats: PrivateNats;
let svc: RunningCustomerService;
let sql: postgres.Sql;

beforeAll(async () => {
  issuer = await startTestIssuer();
  nats = await startPrivateNats();
  svc = await startCustomerService(
    { IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl },
    { natsUrl: nats.url },
  );
  sql = svc.database.sql;
  // The relay creates the stream once it leads; wait for it so each test can count messages.
  await waitForStream(nats.url, svc.streams.stream);
});

afterAll(async () => {
  await svc?.close();
  await nats?.stop();
  await issuer?.close();
});

const client = () => svc.clients.client(CustomerService, "grpc");

/** Every event in the stream, in stream order; each message's Nats-Msg-Id is its event id. */
async function readStream(): Promise<StreamEvent[]> {
  const events = await readWholeStream(nats.url, svc.streams.stream);
  expect(events.filter((e) => e.msgId !== e.eventId)).toEqual([]);
  return events;
}

/** The number of messages in the stream. */
async function streamMessages(): Promise<number> {
  const n = await streamCount(nats.url, svc.streams.stream);
  if (n === undefined) throw new Error(`stream ${svc.streams.stream} is not there`);
  return n;
}

/** Runs call and checks it did not wait for NATS (a publish would wait up to 5 s for its ack). */
async function quickly<T>(call: Promise<T>): Promise<T> {
  const start = performance.now();
  const res = await call;
  expect(performance.now() - start).toBeLessThan(2_000);
  return res;
}

describe("with NATS down", () => {
  it("commands succeed, and every event arrives once NATS is back, in order, none twice", async () => {
    // Counted from here: the other tests in this file may have run first.
    const before = await streamMessages();
    const [{ id: lastRow }] = await sql<[{ id: string }]>`select coalesce(max(id), 0)::text as id from outbox`;
    // Before the outage: one customer, its event relayed.
    const early = { id: randomUUID(), token: "" };
    early.token = await issuer.customer(early.id);
    await client().registerCustomer({ givenName: "Early", familyName: "Bird" }, bearer(early.token));
    await waitForOutboxEmpty(svc.database.url);
    expect(await streamMessages()).toBe(before + 1);

    await nats.kill();
    expect(nats.running).toBe(false);

    // During the outage: two new customers, updates interleaved with the early one's.
    const customers = [early];
    for (const name of ["Grace", "Hedy"]) {
      const id = randomUUID();
      const token = await issuer.customer(id);
      const res = await quickly(client().registerCustomer({ givenName: name, familyName: "Down" }, bearer(token)));
      expect(res.customer?.version).toBe(1n);
      customers.push({ id, token });
    }
    const updatesEach = 3;
    for (let i = 0; i < updatesEach; i++) {
      for (const c of customers) {
        const res = await quickly(
          client().updateCustomer(
            { customer: { customerId: c.id, familyName: `Outage ${i}` }, updateMask: { paths: ["family_name"] } },
            bearer(c.token),
          ),
        );
        expect(res.customer?.familyName).toBe(`Outage ${i}`);
      }
    }
    // Reads and readiness do not depend on NATS either.
    const got = await quickly(client().getCustomer({ customerId: early.id }, bearer(early.token)));
    expect(got.customer?.version).toBe(BigInt(1 + updatesEach));
    expect((await fetch(`${svc.url}/readyz`)).status).toBe(200);

    // Held in the outbox: 2 registrations + 3 × 3 updates.
    const heldCount = 2 + customers.length * updatesEach;
    const [{ n: held }] = await sql<[{ n: number }]>`
      select count(*)::int as n from outbox where published_at is null and id > ${lastRow}::bigint`;
    expect(held).toBe(heldCount);
    expect(svc.server.relay.status.nats).toBe("disconnected");

    await nats.start();
    await waitForOutboxEmpty(svc.database.url, 20_000);

    const total = 1 + heldCount;
    const events = (await readStream()).filter((e) => e.seq > before);
    expect(events).toHaveLength(total);
    expect(await streamMessages()).toBe(before + total);
    // None twice.
    expect(new Set(events.map((e) => e.eventId)).size).toBe(total);
    // Exactly the events the outbox recorded.
    const rows = await sql<{ event_id: string }[]>`
      select event_id::text as event_id from outbox where id > ${lastRow}::bigint order by id`;
    expect(events.map((e) => e.eventId)).toEqual(rows.map((r) => r.event_id));
    // Per customer: version 1 (registered), then 2, 3, 4 (updated), in stream order.
    for (const c of customers) {
      const mine = events.filter((e) => e.customerId === c.id);
      expect(mine.map((e) => e.version)).toEqual([1, 2, 3, 4]);
      expect(mine.map((e) => e.type)).toEqual([
        "customer.v1.CustomerRegistered",
        "customer.v1.CustomerUpdated",
        "customer.v1.CustomerUpdated",
        "customer.v1.CustomerUpdated",
      ]);
    }
    expect(svc.server.relay.status.nats).toBe("connected");
  });

  it("keeps relaying after a second outage", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    const before = await streamMessages();
    await nats.kill();
    await quickly(client().registerCustomer({ givenName: "Again", familyName: "Down" }, bearer(token)));
    await nats.start();
    await waitForOutboxEmpty(svc.database.url, 20_000);
    expect(await streamMessages()).toBe(before + 1);
  });
  it("repeats nothing when NATS dies in the middle of relaying a backlog", async () => {
    const before = await streamMessages();
    await nats.kill();
    // A backlog of 200 customers × (1 registration + 4 updates), made while NATS is down: big
    // enough that the relay, which pipelines its publishes, is still at it when NATS dies again.
    const made = await Promise.all(
      Array.from({ length: 200 }, async () => {
        const id = randomUUID();
        const token = await issuer.customer(id);
        await client().registerCustomer({ givenName: "Backlog", familyName: "0" }, bearer(token));
        for (let v = 1; v <= 4; v++) {
          await client().updateCustomer(
            { customer: { customerId: id, familyName: String(v) }, updateMask: { paths: ["family_name"] } },
            bearer(token),
          );
        }
        return id;
      }),
    );
    const backlog = made.length * 5;
    await nats.start();
    // Kill again as soon as the relay has published part of the backlog.
    const probe = await connect({ servers: nats.url, reconnect: false });
    const jsm = await jetstreamManager(probe);
    // As often as the server answers: the first count above `before` is the moment to strike.
    const seen = await vi
      .waitUntil(
        async () => {
          const n = (await jsm.streams.info(svc.streams.stream)).state.messages;
          return n > before ? n : false;
        },
        { timeout: 15_000, interval: 1 },
      )
      .finally(() => probe.close());
    await nats.kill();
    // Killed mid-relay: some of the backlog is in the stream, not all of it.
    expect(seen).toBeGreaterThan(before);
    expect(seen).toBeLessThan(before + backlog);
    await nats.start();
    // A publish cut off by the kill waits out its ack timeout (5 s) before the retry.
    await waitForOutboxEmpty(svc.database.url, 20_000);

    const events = (await readStream()).slice(before);
    expect(events).toHaveLength(backlog);
    expect(new Set(events.map((e) => e.eventId)).size).toBe(backlog);
    expect(await streamMessages()).toBe(before + backlog);
    for (const id of made) {
      expect(events.filter((e) => e.customerId === id).map((e) => e.version)).toEqual([1, 2, 3, 4, 5]);
    }
  });
});
