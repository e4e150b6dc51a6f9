/**
 * Two instances of each service on one database and one stream: writes go
 * to both, exactly one relays at a time (one advisory lock holder, one
 * `relay.isLeader`), stopping the leader mid-load hands relaying to the
 * other, and the stream ends up with exactly the outbox: no event lost, none
 * published twice. And the crash case: a leader cut off from the database
 * (its lock session dies with its connections) is replaced by the other
 * instance without a graceful hand-over.
 */

import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { OutboxRelay } from "@customer-platform/runtime/outbox";
import { type Clients, createClients } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../support/nats.js";
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

// The relays' advisory lock keys (customer-service/src/server.ts, identity-service/src/server.ts).
const CUSTOMER_RELAY_LOCK = 7_310_002;
const IDENTITY_RELAY_LOCK = 7_310_003;

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

/**
 * Watches two relays on one database for the whole test: how often both
 * claimed to lead at once, and the most sessions ever seen holding the lock.
 */
function watchLeadership(relays: readonly [OutboxRelay, OutboxRelay], sql: postgres.Sql, lockKey: number) {
  let both = 0;
  let maxHolders = 0;
  let samples = 0;
  let lockSamples = 0;
  const flags = setInterval(() => {
    samples++;
    if (relays[0].isLeader && relays[1].isLeader) both++;
  }, 10);
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
      clearInterval(flags);
      polling = false;
      await locks;
      return { both, maxHolders, samples, lockSamples };
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
          const [a, b] = instances.map((i) => i.server.relay.isLeader);
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
    const watch = watchLeadership([a.server.relay, b.server.relay], sql, CUSTOMER_RELAY_LOCK);

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
      await waitFor(() => leader.server.relay.published > 0, 5_000, "the leader publishes");
      expect(follower.server.relay.published).toBe(0);
      expect(follower.server.relay.isLeader).toBe(false);

      // Stop the leader: no new calls to it, in-flight ones finish, its relay flushes and lets go.
      // As a load balancer would: out of rotation first, then stopped.
      live.splice(live.indexOf(clients[first] as Clients), 1);
      await sleep(250);
      await leader.server.stop();
      const handedOver = performance.now();
      await waitFor(() => follower.server.relay.isLeader, 10_000, "the other instance takes over relaying");
      const takeoverMs = performance.now() - handedOver;
      expect(takeoverMs).toBeLessThan(5_000);
      const atTakeover = ledger.commands();
      await waitFor(() => ledger.commands() > atTakeover + 40, 10_000, "writes continue on the survivor");
    } finally {
      stop = true;
      await load;
    }
    expect(ledger.unexpected).toEqual([]);

    await follower.server.relay.waitIdle(20_000);
    const leadership = await watch.stop();
    expect(leadership.both).toBe(0);
    expect(leadership.maxHolders).toBe(1);
    expect(leadership.samples).toBeGreaterThan(100);
    expect(leadership.lockSamples).toBeGreaterThan(10);
    expect(follower.server.relay.published).toBeGreaterThan(0);

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
    const watch = watchLeadership([a.server.relay, b.server.relay], sql, IDENTITY_RELAY_LOCK);

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
      await waitFor(() => leader.server.relay.published > 0, 5_000, "the leader publishes");
      expect(follower.server.relay.published).toBe(0);

      // As a load balancer would: out of rotation first, then stopped.
      live.splice(live.indexOf(clients[first] as Clients), 1);
      await sleep(250);
      await leader.server.stop();
      await waitFor(() => follower.server.relay.isLeader, 10_000, "the other instance takes over relaying");
      await waitFor(() => follower.server.relay.published > 10, 10_000, "the survivor publishes");
    } finally {
      stop = true;
      ledger = await load;
    }
    expect(ledger.unexpected).toEqual([]);
    expect(ledger.total()).toBeGreaterThan(20);

    await follower.server.relay.waitIdle(20_000);
    const leadership = await watch.stop();
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
    await waitFor(() => cutOff.server.relay.isLeader, 10_000, "the first instance leads");
    other = await startCustomerService(env, { database, streams: names });
    running.push(other);
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
    running.push({ close: () => sql.end() });
  });

  it("hands relaying to the other instance, loses and repeats nothing", async () => {
    const watch = watchLeadership([cutOff.server.relay, other.server.relay], sql, CUSTOMER_RELAY_LOCK);
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
      await waitFor(() => cutOff.server.relay.published > 20, 10_000, "the leader publishes");
      expect(other.server.relay.published).toBe(0);

      proxy.cut();
      // Its lock went with its session: the other instance takes the lock and relays.
      await waitFor(() => other.server.relay.isLeader, 10_000, "the other instance takes over relaying");
      const atTakeover = ledger.commands();
      await waitFor(() => ledger.commands() > atTakeover + 40, 10_000, "writes go on through the other instance");
      await waitFor(() => other.server.relay.published > 20, 10_000, "the new leader publishes");

      // Back on the network, the old leader finds its lock gone and stays a follower.
      proxy.restore();
      await waitFor(() => !cutOff.server.relay.isLeader, 10_000, "the old leader steps down");
      const atRestore = ledger.commands();
      await waitFor(() => ledger.commands() > atRestore + 20, 10_000, "writes go on through both");
    } finally {
      stop = true;
      await load;
    }
    expect(ledger.unexpected).toEqual([]);
    await other.server.relay.waitIdle(20_000);
    expect(other.server.relay.isLeader).toBe(true);
    expect(cutOff.server.relay.isLeader).toBe(false);
    const leadership = await watch.stop();
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
