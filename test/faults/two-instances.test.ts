/**
 * Two instances of each service on one database and one stream: writes go
 * to both, exactly one relays at a time (one advisory lock holder, one
 * relay in the `leader` state), stopping the leader mid-load hands relaying
 * to the other, and the stream ends up with exactly the outbox: no event
 * lost, and none sent twice (both relays count zero duplicate acks).
 *
 * The crash case: a leader cut off from the database (its lock session dies
 * with its connections) is replaced by the other instance without a
 * graceful hand-over. It cannot tell a dead session from a slow network, so
 * it claims to lead until it reaches the database again and then steps down
 * within one retry; meanwhile it reads and marks nothing (every statement is
 * fenced by its lock session). What it had read before the cut it may still
 * send, and the new leader sends that batch again: JetStream drops the
 * repeats by `Nats-Msg-Id` and the relays count them (`status.duplicates`),
 * at most one batch. A last test puts a batch in flight on purpose and
 * checks that exactly it is repeated.
 */

import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type { OutboxRelay, PublishedEvent } from "@customer-platform/runtime/outbox-relay";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { customerOutbox } from "../../customer-service/src/outbox.js";
import { bearer, type Clients } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import {
  checkCustomerEvents,
  checkSignInEvents,
  expectStoredMatchesEvents,
  expectStreamHoldsOutbox,
  startCustomerLoad,
  startIdentityLoad,
} from "../support/load.js";
import { deleteStreams, type StreamNames, sharedNatsUrl, uniqueStreamNames } from "../support/nats.js";
import { unsentEvents, waitForOutboxEmpty } from "../support/outbox.js";
import {
  adminUrl,
  connectSql,
  createTestDatabase,
  type HeldLock,
  holdLock,
  type TestDatabase,
} from "../support/postgres.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "../support/services.js";
import { readStream, streamCount } from "../support/streams.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { sleep } from "../support/timing.js";

let issuer: TestIssuer;
const databases: TestDatabase[] = [];
const streams: string[] = [];
const running: Array<{ close(): Promise<void> }> = [];

beforeAll(async () => {
  issuer = await startTestIssuer();
});

afterAll(async () => {
  for (const w of watchers) await w.stop();
  // Last started, first closed: a proxy outlives the instance behind it.
  for (const r of running.reverse()) await r.close();
  for (const d of databases) await d.drop();
  if (streams.length > 0) await deleteStreams(sharedNatsUrl, ...streams);
  await issuer?.close();
});

/** A fresh database and stream names for one describe, dropped and deleted after all. */
async function sharedStore(label: string, context: "customer" | "identity") {
  const database = await createTestDatabase(label);
  databases.push(database);
  const names = uniqueStreamNames(context);
  streams.push(names.stream);
  return { database, streams: names };
}

/** Clients of several instances taken in turn, as a load balancer would; take() one out of rotation. */
function roundRobin(instances: ReadonlyArray<{ clients: Clients }>) {
  const live = instances.map((i) => i.clients);
  let next = 0;
  return {
    client: <S extends typeof CustomerService | typeof AuthService>(service: S) =>
      (live[next++ % live.length] as Clients).client(service, "grpc"),
    take(index: number) {
      live.splice(live.indexOf(instances[index]?.clients as Clients), 1);
    },
  };
}

/** Two instances of a service on one database and one stream. */
interface Pair<T> {
  readonly instances: readonly [T, T];
  /** Their database, for the test's own queries. */
  readonly sql: postgres.Sql;
  /**
   * Once exactly one relay leads: which one, the leader and the follower, a
   * watch on their leadership from now on, and a round robin over both.
   */
  handOver(): Promise<{
    first: 0 | 1;
    leader: T;
    follower: T;
    watch: ReturnType<typeof watchLeadership>;
    balancer: ReturnType<typeof roundRobin>;
  }>;
}

/** Starts two instances, one after the other (each migrates the shared database as it starts). */
async function startPair<T extends { clients: Clients; server: { relay: OutboxRelay } }>(
  label: string,
  context: "customer" | "identity",
  start: (store: { database: TestDatabase; streams: StreamNames }) => Promise<T & { close(): Promise<void> }>,
): Promise<Pair<T>> {
  const store = await sharedStore(label, context);
  const a = await start(store);
  running.push(a);
  const b = await start(store);
  running.push(b);
  const instances = [a, b] as const;
  return {
    instances,
    sql: store.database.sql,
    async handOver() {
      const { index: first } = await vi.waitUntil(
        () => {
          const [x, y] = instances.map((i) => leads(i.server.relay));
          return x !== y ? { index: x ? (0 as const) : (1 as const) } : undefined;
        },
        { timeout: 10_000, interval: 50 },
      );
      return {
        first,
        leader: instances[first],
        follower: instances[1 - first] as T,
        watch: watchLeadership([a.server.relay, b.server.relay], store.database.sql),
        balancer: roundRobin(instances),
      };
    },
  };
}

/** Rows a relay reads (and so may have in flight) at once: createOutboxRelay's default `batchSize`. */
const BATCH_SIZE = 256;

/**
 * How soon a leader that lost its session steps down once it reaches the
 * database again: its retry backoff (at most 5 s, the supervised loop's
 * maxBackoffMs) and one query, with room for a busy machine.
 */
const STEP_DOWN_MS = 7_000;

type Timed = { at: number; published: [number, number] };

/** Leadership watchers still running, stopped before their database clients close. */
const watchers: Array<{ stop(): Promise<unknown> }> = [];

const leads = (relay: OutboxRelay) => relay.status.state === "leader" || relay.status.state === "draining";

/**
 * Watches two relays on one database for the whole test: their leadership
 * events in order (`<index>:leader`, `<index>:follower:<reason>`) with when
 * each came and what each relay had published by then, how often both
 * claimed to lead at once, the events each marked sent (and which of those
 * JetStream reported as repeats), and the most sessions ever seen holding
 * the lock.
 */
function watchLeadership(relays: readonly [OutboxRelay, OutboxRelay], sql: postgres.Sql) {
  const lockKey = relays[0].outbox.lockKey.toString();
  let both = 0;
  let maxHolders = 0;
  let lockSamples = 0;
  const transitions: string[] = [];
  /** Per transition: performance.now() and each relay's `published` count at that moment. */
  const timeline: Array<{ at: number; published: [number, number] }> = [];
  const marked = [new Set<string>(), new Set<string>()] as const;
  const repeats: [string[], string[]] = [[], []];
  const leading = relays.map(leads);
  const note = (what: string) => {
    transitions.push(what);
    timeline.push({ at: performance.now(), published: [relays[0].status.published, relays[1].status.published] });
  };
  const unsubscribe = relays.map((relay, i) => {
    const leader = () => {
      note(`${i}:leader`);
      leading[i] = true;
      if (leading.every(Boolean)) both++;
    };
    const follower = ({ reason }: { reason: string }) => {
      note(`${i}:follower:${reason}`);
      leading[i] = false;
    };
    const published = (events: readonly PublishedEvent[]) => {
      for (const e of events) {
        marked[i]?.add(e.eventId);
        if (e.duplicate) repeats[i]?.push(e.eventId);
      }
    };
    relay.events.on("leader", leader);
    relay.events.on("follower", follower);
    relay.events.on("published", published);
    return () => {
      relay.events.off("leader", leader);
      relay.events.off("follower", follower);
      relay.events.off("published", published);
    };
  });
  let polling = true;
  // Sampled for the whole test: a loop rather than a wait, it ends with the test.
  const locks = (async () => {
    while (polling) {
      const [row] = await sql<[{ n: number }]>`
        select count(*)::int as n from pg_locks
        where locktype = 'advisory' and granted and classid = 0 and objid = ${lockKey} and objsubid = 1
          and database = (select oid from pg_database where datname = current_database())`;
      maxHolders = Math.max(maxHolders, row.n);
      lockSamples++;
      await sleep(50);
    }
  })().catch(() => {
    // Counted by lockSamples: a test that checks maxHolders checks there were samples.
  });
  const watcher = {
    async stop() {
      for (const off of unsubscribe) off();
      polling = false;
      await locks;
      // Every ack JetStream answered "already stored", marked sent or not (status.duplicates).
      const duplicates = relays.map((r) => r.status.duplicates);
      return { both, maxHolders, lockSamples, transitions, timeline, marked, repeats, duplicates };
    },
  };
  watchers.push(watcher);
  return watcher;
}

describe("two customer-service instances on one database and one stream", () => {
  let svc: Pair<RunningCustomerService>;

  beforeAll(async () => {
    const env = { IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl };
    svc = await startPair("faults_two_customer", "customer", (store) => startCustomerService(env, store));
  });

  it("relays from one at a time, hands over when the leader stops, loses and repeats nothing", async () => {
    const { first, leader, follower, watch, balancer } = await svc.handOver();
    const load = startCustomerLoad({
      // Round robin: a customer registered on one instance is updated on the other.
      client: () => balancer.client(CustomerService),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      timeoutMs: 10_000,
    });
    const { ledger } = load;
    try {
      await sleep(1_500);
      // Both took writes; only the leader published.
      await expect
        .poll(() => leader.server.relay.status.published, { timeout: 5_000, message: "the leader publishes" })
        .toBeGreaterThan(0);
      expect(follower.server.relay.status).toMatchObject({ state: "follower", published: 0 });

      // Stop the leader: no new calls to it, in-flight ones finish, its relay flushes and lets go.
      // As a load balancer would: out of rotation first, then stopped.
      balancer.take(first);
      await sleep(250);
      await leader.server.stop();
      const handedOver = performance.now();
      await vi.waitUntil(() => leads(follower.server.relay), { timeout: 10_000, interval: 10 });
      const takeoverMs = performance.now() - handedOver;
      expect(takeoverMs).toBeLessThan(5_000);
      const atTakeover = ledger.commands();
      await expect
        .poll(() => ledger.commands(), { timeout: 10_000, message: "writes continue on the survivor" })
        .toBeGreaterThan(atTakeover + 40);
    } finally {
      await load.stop();
    }
    expect(ledger.unexpected).toEqual([]);

    await waitForOutboxEmpty(follower.database.url, 20_000);
    const leadership = await watch.stop();
    // One hand-over: the leader let go as it stopped, then the other took the lock.
    expect(leadership.transitions).toEqual([`${first}:follower:stopping`, `${1 - first}:leader`]);
    expect(leadership.both).toBe(0);
    expect(leadership.maxHolders).toBe(1);
    expect(leadership.lockSamples).toBeGreaterThan(10);
    expect(follower.server.relay.status.published).toBeGreaterThan(0);
    // Nothing sent twice, counted at the relays: JetStream never had to drop a repeat.
    expect(leadership.duplicates).toEqual([0, 0]);
    expect(leadership.repeats).toEqual([[], []]);

    const events = await readStream(sharedNatsUrl, leader.streams.stream);
    checkCustomerEvents(events, ledger, { exact: true });
    await expectStreamHoldsOutbox(events, svc.sql);
    expect(events).toHaveLength(ledger.commands());
  });
});

describe("two identity-service instances on one database and one stream", () => {
  let svc: Pair<RunningIdentityService>;

  beforeAll(async () => {
    svc = await startPair("faults_two_identity", "identity", (store) => startIdentityService({}, store));
  });

  it("relays from one at a time, hands over when the leader stops, loses and repeats nothing", async () => {
    const { first, leader, follower, watch, balancer } = await svc.handOver();
    const load = startIdentityLoad({
      // Sign-up on one instance, sign-ins alternating between both.
      client: () => balancer.client(AuthService),
      workers: 4,
      signInsPerLogin: 3,
      timeoutMs: 10_000,
    });
    const { ledger } = load;
    try {
      await sleep(1_500);
      await expect
        .poll(() => leader.server.relay.status.published, { timeout: 5_000, message: "the leader publishes" })
        .toBeGreaterThan(0);
      expect(follower.server.relay.status.published).toBe(0);

      // As a load balancer would: out of rotation first, then stopped.
      balancer.take(first);
      await sleep(250);
      await leader.server.stop();
      await vi.waitUntil(() => leads(follower.server.relay), { timeout: 10_000, interval: 10 });
      await expect
        .poll(() => follower.server.relay.status.published, { timeout: 10_000, message: "the survivor publishes" })
        .toBeGreaterThan(10);
    } finally {
      await load.stop();
    }
    expect(ledger.unexpected).toEqual([]);
    expect(ledger.total()).toBeGreaterThan(20);

    await waitForOutboxEmpty(follower.database.url, 20_000);
    const leadership = await watch.stop();
    expect(leadership.transitions).toEqual([`${first}:follower:stopping`, `${1 - first}:leader`]);
    expect(leadership.both).toBe(0);
    expect(leadership.maxHolders).toBe(1);
    expect(leadership.lockSamples).toBeGreaterThan(10);
    expect(leadership.duplicates).toEqual([0, 0]);
    expect(leadership.repeats).toEqual([[], []]);

    const events = await readStream(sharedNatsUrl, leader.streams.stream);
    checkSignInEvents(events, ledger);
    await expectStreamHoldsOutbox(events, svc.sql);
    expect(events).toHaveLength(ledger.total());
  });
});

describe("a customer-service leader cut off from the database", () => {
  let proxy: TcpProxy;
  let names: StreamNames;
  let cutOff: RunningCustomerService;
  let other: RunningCustomerService;
  let sql: postgres.Sql;

  beforeAll(async () => {
    const store = await sharedStore("faults_two_cut", "customer");
    names = store.streams;
    const target = new URL(adminUrl);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    running.push({ close: () => proxy.close() });
    const env = { IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl };
    // The instance behind the proxy starts first, so it is the one that leads.
    cutOff = await startCustomerService({ ...env, CUSTOMER_DATABASE_URL: proxy.rewrite(store.database.url) }, store);
    running.push({
      close: () => {
        proxy.restore();
        return cutOff.close();
      },
    });
    await vi.waitUntil(() => leads(cutOff.server.relay), { timeout: 10_000, interval: 20 });
    other = await startCustomerService(env, store);
    running.push(other);
    sql = store.database.sql;
  });

  it("hands relaying to the other instance, loses and repeats nothing", async () => {
    const watch = watchLeadership([cutOff.server.relay, other.server.relay], sql);
    const balancer = roundRobin([cutOff, other]);
    const load = startCustomerLoad({
      client: () => balancer.client(CustomerService),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      // Calls to the cut-off instance fail while it is cut off.
      allowed: [Code.Unavailable],
      timeoutMs: 10_000,
      backoffMs: 20,
    });
    const { ledger } = load;
    let restoredAt = Number.NaN;
    try {
      await expect
        .poll(() => cutOff.server.relay.status.published, { timeout: 10_000, message: "the leader publishes" })
        .toBeGreaterThan(20);
      expect(other.server.relay.status.published).toBe(0);

      proxy.cut();
      // Its lock went with its session: the other instance takes the lock and relays.
      await vi.waitUntil(() => leads(other.server.relay), { timeout: 10_000, interval: 20 });
      const atTakeover = ledger.commands();
      await expect
        .poll(() => ledger.commands(), { timeout: 10_000, message: "writes go on through the other instance" })
        .toBeGreaterThan(atTakeover + 40);
      await expect
        .poll(() => other.server.relay.status.published, { timeout: 10_000, message: "the new leader publishes" })
        .toBeGreaterThan(20);

      // Back on the network, the old leader finds its lock gone and stays a follower.
      proxy.restore();
      restoredAt = performance.now();
      await vi.waitUntil(() => !leads(cutOff.server.relay), { timeout: 10_000, interval: 20 });
      const atRestore = ledger.commands();
      await expect
        .poll(() => ledger.commands(), { timeout: 10_000, message: "writes go on through both" })
        .toBeGreaterThan(atRestore + 20);
    } finally {
      await load.stop();
    }
    expect(ledger.unexpected).toEqual([]);
    await waitForOutboxEmpty(other.database.url, 20_000);
    expect(other.server.relay.status.state).toBe("leader");
    expect(cutOff.server.relay.status.state).toBe("follower");
    const leadership = await watch.stop();
    // The old leader learnt of its lost session only after the other had taken the lock.
    expect(leadership.transitions).toEqual(["1:leader", "0:follower:lock session lost"]);
    expect(leadership.maxHolders).toBe(1);
    expect(leadership.lockSamples).toBeGreaterThan(10);
    const [otherLeads, cutOffFollows] = leadership.timeline as [Timed, Timed];
    // Both claimed to lead from the other's `leader` event until the old leader could reach the
    // database again and found its session gone, within one retry backoff (at most 5 s) of that...
    expect(cutOffFollows.at - restoredAt).toBeLessThan(STEP_DOWN_MS);
    // ...but in that time the old leader marked nothing (every statement is fenced by its dead
    // session), and the only events it could still send were the one batch it had read before
    // the cut: the new leader sent those again. JetStream dropped the repeats (checkCustomerEvents
    // below: each event once in the stream); the relays counted them, at most one batch.
    expect(cutOffFollows.published[0]).toBe(otherLeads.published[0]);
    expect(cutOff.server.relay.status.published).toBe(otherLeads.published[0]);
    expect(leadership.repeats[1].filter((id) => leadership.marked[0].has(id))).toEqual([]);
    expect(leadership.duplicates[0] + leadership.duplicates[1]).toBeLessThanOrEqual(BATCH_SIZE);

    const events = await readStream(sharedNatsUrl, names.stream);
    const latest = checkCustomerEvents(events, ledger, { exact: false });
    await expectStreamHoldsOutbox(events, sql);
    // A call cut off mid-way either committed with its event or not at all.
    await expectStoredMatchesEvents(latest, sql);
  });
});

describe("a customer-service leader cut off with a batch in flight", () => {
  it("is followed by a leader that sends that batch again: JetStream drops the repeats, the relays count them", async () => {
    const K = 5;
    const store = await sharedStore("faults_two_inflight", "customer");
    // The test's own client: a lock holder, a row lock and the watch need a connection each.
    const sql = connectSql(store.database.url, 4);
    running.push({ close: () => sql.end() });
    const target = new URL(adminUrl);
    const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    running.push({ close: () => proxy.close() });
    const env = { IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl };
    const lockKey = customerOutbox(store.streams).lockKey.toString();
    const outboxUpdates = async () => {
      const [row] = await sql<[{ n: number }]>`
        select count(*)::int as n from pg_stat_activity
        where datname = ${store.database.name} and wait_event_type = 'Lock' and query like '%update outbox set published_at%'`;
      return row.n;
    };

    // No relay leads until the test lets go of the lock, so K events wait in the outbox; and
    // marking them sent waits for the test: a relay can read and send them, not mark them.
    const holder = await sql.reserve();
    let cutOff: RunningCustomerService;
    let rows: HeldLock;
    try {
      await holder`select pg_advisory_lock(${lockKey}::bigint)`;
      const behindProxy = await startCustomerService(
        { ...env, CUSTOMER_DATABASE_URL: proxy.rewrite(store.database.url) },
        store,
      );
      cutOff = behindProxy;
      running.push({
        close: () => {
          proxy.restore();
          return behindProxy.close();
        },
      });
      for (let i = 0; i < K; i++) {
        const id = randomUUID();
        await cutOff.clients
          .client(CustomerService, "grpc")
          .registerCustomer({ givenName: "In", familyName: "Flight" }, bearer(await issuer.customer(id)));
      }
      expect(await unsentEvents(store.database.url)).toBe(K);
      rows = await holdLock(sql, (tx) => tx`select id from outbox for update`);
    } finally {
      await holder`select pg_advisory_unlock(${lockKey}::bigint)`;
      holder.release();
    }
    const eventIds = (await sql<{ event_id: string }[]>`select event_id::text as event_id from outbox`)
      .map((r) => r.event_id)
      .sort();
    try {
      // The instance behind the proxy leads, sends the batch, and waits to mark it.
      await vi.waitUntil(() => leads(cutOff.server.relay), { timeout: 10_000, interval: 20 });
      await expect.poll(() => streamCount(sharedNatsUrl, store.streams.stream), { timeout: 10_000 }).toBe(K);
      await expect.poll(outboxUpdates, { timeout: 10_000 }).toBe(1);
      const other = await startCustomerService(env, store);
      running.push(other);
      const watch = watchLeadership([cutOff.server.relay, other.server.relay], sql);

      // Cut off with the batch sent and not marked: its lock goes with its session.
      proxy.cut();
      await vi.waitUntil(() => leads(other.server.relay), { timeout: 10_000, interval: 20 });
      // The new leader reads the same rows, unsent, and sends them again: every ack says duplicate.
      await expect.poll(() => other.server.relay.status.duplicates, { timeout: 10_000 }).toBe(K);
      expect(await streamCount(sharedNatsUrl, store.streams.stream)).toBe(K);
      await rows.release();
      await waitForOutboxEmpty(store.database.url);
      await expect.poll(() => other.server.relay.status.published, { timeout: 10_000 }).toBe(K);

      // Back on the network, the old leader steps down within one retry of reaching the database.
      proxy.restore();
      const restoredAt = performance.now();
      await vi.waitUntil(() => !leads(cutOff.server.relay), { timeout: 10_000, interval: 20 });

      // A new event is sent once, as usual.
      const id = randomUUID();
      await other.clients
        .client(CustomerService, "grpc")
        .registerCustomer({ givenName: "After", familyName: "Cut" }, bearer(await issuer.customer(id)));
      await waitForOutboxEmpty(store.database.url);
      await expect.poll(() => other.server.relay.status.published, { timeout: 10_000 }).toBe(K + 1);

      const leadership = await watch.stop();
      expect(leadership.transitions).toEqual(["1:leader", "0:follower:lock session lost"]);
      expect((leadership.timeline[1] as Timed).at - restoredAt).toBeLessThan(STEP_DOWN_MS);
      // Exactly the batch in flight was sent twice, counted by the relay that sent it second;
      // the old leader marked nothing after the cut.
      expect(leadership.duplicates).toEqual([0, K]);
      expect([...leadership.repeats[1]].sort()).toEqual(eventIds);
      expect(leadership.marked[0].size).toBe(0);
      expect(leadership.marked[1].size).toBe(K + 1);
      expect(cutOff.server.relay.status).toMatchObject({ state: "follower", published: 0, duplicates: 0 });

      // The stream holds each event once: JetStream dropped the repeats by Nats-Msg-Id.
      const events = await readStream(sharedNatsUrl, store.streams.stream);
      expect(new Set(events.map((e) => e.eventId)).size).toBe(K + 1);
      await expectStreamHoldsOutbox(events, sql);
    } finally {
      await rows.release();
    }
  });
});
