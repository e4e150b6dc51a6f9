/**
 * Two instances of each service on one database and one stream: writes go
 * to both, exactly one relays at a time (one advisory lock holder, one
 * relay in the `leader` state), stopping the leader mid-load hands relaying to the
 * other, and the stream ends up with exactly the outbox: no event lost, none
 * published twice. And the crash case: a leader cut off from the database
 * (its lock session dies with its connections) is replaced by the other
 * instance without a graceful hand-over.
 */

import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type { OutboxRelay } from "@customer-platform/runtime/outbox-relay";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type Clients, createClients } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../support/nats.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { adminUrl, createTestDatabase, type TestDatabase } from "../support/postgres.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "../support/services.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import {
  checkCustomerEvents,
  checkSignInEvents,
  createLedger,
  type Ledger,
  readStream,
  runCustomerLoad,
  runIdentityLoad,
  sleep,
  waitFor,
} from "./support.js";

let issuer: TestIssuer;
const databases: TestDatabase[] = [];
const streams: string[] = [];
const running: Array<{ close(): Promise<void> }> = [];
const clientSets: Clients[] = [];

beforeAll(async () => {
  issuer = await startTestIssuer();
});

afterAll(async () => {
  for (const w of watchers) await w.stop();
  for (const c of clientSets) c.close();
  // Last started, first closed: a proxy outlives the instance behind it.
  for (const r of running.reverse()) await r.close();
  for (const d of databases) await d.drop();
  if (streams.length > 0) await deleteStreams(sharedNatsUrl, ...streams);
  await issuer?.close();
});

interface Pair<T> {
  readonly instances: readonly [T, T];
  /** The index of the instance whose relay leads, once exactly one does. */
  leader(): Promise<0 | 1>;
}

/** Leadership watchers still running, stopped before their database clients close. */
const watchers: Array<{ stop(): Promise<unknown> }> = [];

const leads = (relay: OutboxRelay) => relay.status.state === "leader" || relay.status.state === "draining";

/**
 * Watches two relays on one database for the whole test: their leadership
 * events in order (`<index>:leader`, `<index>:follower:<reason>`), how often
 * both claimed to lead at once, and the most sessions ever seen holding the lock.
 */
function watchLeadership(relays: readonly [OutboxRelay, OutboxRelay], sql: postgres.Sql) {
  const lockKey = relays[0].outbox.lockKey.toString();
  let both = 0;
  let maxHolders = 0;
  let lockSamples = 0;
  const transitions: string[] = [];
  const leading = relays.map(leads);
  const unsubscribe = relays.map((relay, i) => {
    const leader = () => {
      transitions.push(`${i}:leader`);
      leading[i] = true;
      if (leading.every(Boolean)) both++;
    };
    const follower = ({ reason }: { reason: string }) => {
      transitions.push(`${i}:follower:${reason}`);
      leading[i] = false;
    };
    relay.events.on("leader", leader);
    relay.events.on("follower", follower);
    return () => {
      relay.events.off("leader", leader);
      relay.events.off("follower", follower);
    };
  });
  let polling = true;
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
      return { both, maxHolders, lockSamples, transitions };
    },
  };
  watchers.push(watcher);
  return watcher;
}

function pair<T extends { server: { relay: OutboxRelay } }>(instances: readonly [T, T]): Pair<T> {
  return {
    instances,
    leader: async () => {
      const { index } = await waitFor(
        () => {
          const [a, b] = instances.map((i) => leads(i.server.relay));
          return a !== b ? { index: a ? (0 as const) : (1 as const) } : undefined;
        },
        10_000,
        "exactly one relay leads",
      );
      return index;
    },
  };
}

describe("two customer-service instances on one database and one stream", () => {
  let svc: Pair<RunningCustomerService>;
  let sql: postgres.Sql;

  beforeAll(async () => {
    const database = await createTestDatabase("faults_two_customer");
    databases.push(database);
    const names = uniqueStreamNames("customer");
    streams.push(names.stream);
    const env = { IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl };
    const a = await startCustomerService(env, { database, streams: names });
    running.push(a);
    const b = await startCustomerService(env, { database, streams: names });
    running.push(b);
    svc = pair([a, b]);
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
    running.push({ close: () => sql.end() });
  });

  it("relays from one at a time, hands over when the leader stops, loses and repeats nothing", async () => {
    const [a, b] = svc.instances;
    const first = await svc.leader();
    const leader = svc.instances[first];
    const follower = svc.instances[1 - first] as RunningCustomerService;
    const watch = watchLeadership([a.server.relay, b.server.relay], sql);

    const clients = [createClients(a.url), createClients(b.url)];
    clientSets.push(...clients);
    const live = [...clients];
    let next = 0;
    let stop = false;
    const ledger = createLedger();
    const load = runCustomerLoad({
      ledger,
      // Round robin: a customer registered on one instance is updated on the other.
      client: () => (live[next++ % live.length] as Clients).client(CustomerService, "grpc"),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      done: () => stop,
      timeoutMs: 10_000,
    });
    try {
      await sleep(1_500);
      // Both took writes; only the leader published.
      await expect
        .poll(() => leader.server.relay.status.published, { timeout: 5_000, message: "the leader publishes" })
        .toBeGreaterThan(0);
      expect(follower.server.relay.status).toMatchObject({ state: "follower", published: 0 });

      // Stop the leader: no new calls to it, in-flight ones finish, its relay flushes and lets go.
      // As a load balancer would: out of rotation first, then stopped.
      live.splice(live.indexOf(clients[first] as Clients), 1);
      await sleep(250);
      await leader.server.stop();
      const handedOver = performance.now();
      await vi.waitUntil(() => leads(follower.server.relay), { timeout: 10_000, interval: 10 });
      const takeoverMs = performance.now() - handedOver;
      expect(takeoverMs).toBeLessThan(5_000);
      const atTakeover = ledger.commands();
      await waitFor(() => ledger.commands() > atTakeover + 40, 10_000, "writes continue on the survivor");
    } finally {
      stop = true;
      await load;
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

    const events = await readStream(sharedNatsUrl, a.streams.stream);
    checkCustomerEvents(events, ledger, { exact: true });
    const outbox = await sql<{ event_id: string }[]>`select event_id::text as event_id from outbox`;
    expect(events).toHaveLength(outbox.length);
    expect(events.map((e) => e.eventId).sort()).toEqual(outbox.map((r) => r.event_id).sort());
    expect(events).toHaveLength(ledger.commands());
  });
});

describe("two identity-service instances on one database and one stream", () => {
  let svc: Pair<RunningIdentityService>;
  let sql: postgres.Sql;

  beforeAll(async () => {
    const database = await createTestDatabase("faults_two_identity");
    databases.push(database);
    const names = uniqueStreamNames("identity");
    streams.push(names.stream);
    const a = await startIdentityService({}, { database, streams: names });
    running.push(a);
    const b = await startIdentityService({}, { database, streams: names });
    running.push(b);
    svc = pair([a, b]);
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
    running.push({ close: () => sql.end() });
  });

  it("relays from one at a time, hands over when the leader stops, loses and repeats nothing", async () => {
    const [a, b] = svc.instances;
    const first = await svc.leader();
    const leader = svc.instances[first];
    const follower = svc.instances[1 - first] as RunningIdentityService;
    const watch = watchLeadership([a.server.relay, b.server.relay], sql);

    const clients = [createClients(a.url), createClients(b.url)];
    clientSets.push(...clients);
    const live = [...clients];
    let next = 0;
    let stop = false;
    const load = runIdentityLoad({
      // Sign-up on one instance, sign-ins alternating between both.
      client: () => (live[next++ % live.length] as Clients).client(AuthService, "grpc"),
      workers: 4,
      signInsPerLogin: 3,
      done: () => stop,
      timeoutMs: 10_000,
    });
    let ledger: Awaited<typeof load> | undefined;
    try {
      await sleep(1_500);
      await expect
        .poll(() => leader.server.relay.status.published, { timeout: 5_000, message: "the leader publishes" })
        .toBeGreaterThan(0);
      expect(follower.server.relay.status.published).toBe(0);

      // As a load balancer would: out of rotation first, then stopped.
      live.splice(live.indexOf(clients[first] as Clients), 1);
      await sleep(250);
      await leader.server.stop();
      await vi.waitUntil(() => leads(follower.server.relay), { timeout: 10_000, interval: 10 });
      await expect
        .poll(() => follower.server.relay.status.published, { timeout: 10_000, message: "the survivor publishes" })
        .toBeGreaterThan(10);
    } finally {
      stop = true;
      ledger = await load;
    }
    expect(ledger.unexpected).toEqual([]);
    expect(ledger.total()).toBeGreaterThan(20);

    await waitForOutboxEmpty(follower.database.url, 20_000);
    const leadership = await watch.stop();
    expect(leadership.transitions).toEqual([`${first}:follower:stopping`, `${1 - first}:leader`]);
    expect(leadership.both).toBe(0);
    expect(leadership.maxHolders).toBe(1);
    expect(leadership.lockSamples).toBeGreaterThan(10);

    const events = await readStream(sharedNatsUrl, a.streams.stream);
    checkSignInEvents(events, ledger);
    const outbox = await sql<{ event_id: string }[]>`select event_id::text as event_id from outbox`;
    expect(events.map((e) => e.eventId).sort()).toEqual(outbox.map((r) => r.event_id).sort());
    expect(events).toHaveLength(ledger.total());
  });
});

describe("a customer-service leader cut off from the database", () => {
  let proxy: TcpProxy;
  let database: TestDatabase;
  let names: ReturnType<typeof uniqueStreamNames>;
  let cutOff: RunningCustomerService;
  let other: RunningCustomerService;
  let sql: postgres.Sql;

  beforeAll(async () => {
    database = await createTestDatabase("faults_two_cut");
    databases.push(database);
    names = uniqueStreamNames("customer");
    streams.push(names.stream);
    const target = new URL(adminUrl);
    proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    running.push({ close: () => proxy.close() });
    const env = { IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl };
    // The instance behind the proxy starts first, so it is the one that leads.
    cutOff = await startCustomerService(
      { ...env, CUSTOMER_DATABASE_URL: proxy.rewrite(database.url) },
      { database, streams: names },
    );
    running.push({
      close: () => {
        proxy.restore();
        return cutOff.close();
      },
    });
    await vi.waitUntil(() => leads(cutOff.server.relay), { timeout: 10_000, interval: 20 });
    other = await startCustomerService(env, { database, streams: names });
    running.push(other);
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
    running.push({ close: () => sql.end() });
  });

  it("hands relaying to the other instance, loses and repeats nothing", async () => {
    const watch = watchLeadership([cutOff.server.relay, other.server.relay], sql);
    const clients = [createClients(cutOff.url), createClients(other.url)];
    clientSets.push(...clients);
    let next = 0;
    let stop = false;
    const ledger: Ledger = createLedger();
    const load = runCustomerLoad({
      ledger,
      client: () => (clients[next++ % clients.length] as Clients).client(CustomerService, "grpc"),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      done: () => stop,
      // Calls to the cut-off instance fail while it is cut off.
      allowed: [Code.Unavailable],
      timeoutMs: 10_000,
      backoffMs: 20,
    });
    try {
      await expect
        .poll(() => cutOff.server.relay.status.published, { timeout: 10_000, message: "the leader publishes" })
        .toBeGreaterThan(20);
      expect(other.server.relay.status.published).toBe(0);

      proxy.cut();
      // Its lock went with its session: the other instance takes the lock and relays.
      await vi.waitUntil(() => leads(other.server.relay), { timeout: 10_000, interval: 20 });
      const atTakeover = ledger.commands();
      await waitFor(() => ledger.commands() > atTakeover + 40, 10_000, "writes go on through the other instance");
      await expect
        .poll(() => other.server.relay.status.published, { timeout: 10_000, message: "the new leader publishes" })
        .toBeGreaterThan(20);

      // Back on the network, the old leader finds its lock gone and stays a follower.
      proxy.restore();
      await vi.waitUntil(() => !leads(cutOff.server.relay), { timeout: 10_000, interval: 20 });
      const atRestore = ledger.commands();
      await waitFor(() => ledger.commands() > atRestore + 20, 10_000, "writes go on through both");
    } finally {
      stop = true;
      await load;
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

    const events = await readStream(sharedNatsUrl, names.stream);
    const latest = checkCustomerEvents(events, ledger, { exact: false });
    const outbox = await sql<{ event_id: string }[]>`select event_id::text as event_id from outbox`;
    expect(events.map((e) => e.eventId).sort()).toEqual(outbox.map((r) => r.event_id).sort());
    // A call cut off mid-way either committed with its event or not at all.
    const rows = await sql<{ customer_id: string; version: number }[]>`
      select customer_id::text as customer_id, version from customers`;
    expect(rows.filter((r) => latest.get(r.customer_id) !== Number(r.version))).toEqual([]);
  });
});
