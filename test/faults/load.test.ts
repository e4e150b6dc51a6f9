/**
 * Sustained mixed load and racing writers. Both services run as child
 * processes (so their memory is their own), the identity service with cheap
 * argon2 parameters.
 * - Mixed load from several workers: register / update / get on the customer
 *   service, sign-up / sign-in on the identity service. No call fails; each
 *   stream holds exactly one event per successful command (registrations +
 *   changing updates, sign-ins).
 * - Memory: each service's live heap, measured after a full garbage
 *   collection with no call in flight, once the load has made 3N calls (warm:
 *   JIT, pools, caches) and again after 4N more, grows by less than
 *   MAX_GROWTH_PER_CALL bytes per call; resident memory stays within a
 *   coarse bound.
 * - Concurrent updates of one customer: without expected_version all
 *   succeed with versions 2..N+1, each its own event; with expected_version
 *   all on the same version, exactly one succeeds and the rest are ABORTED.
 */
import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { bearer } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import {
  type CallLedger,
  checkCustomerEvents,
  checkSignInEvents,
  type Ledger,
  type RunningLoad,
  type SignInLedger,
  startCustomerLoad,
  startIdentityLoad,
} from "../support/load.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../support/nats.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { type ChildService, spawnService } from "../support/processes.js";
import { readStream, type StreamEvent, streamCount } from "../support/streams.js";

/**
 * The customer service's calls are counted in N: 3N before the first
 * measurement (warm: JIT, pools, caches), the second after 4N more, so a leak
 * of MAX_GROWTH_PER_CALL would show as 2 MiB. The live heap after a full GC
 * moves by up to ±400 KiB between quiescent points with no trend (V8
 * compiles hot code and flushes cold bytecode), 200 bytes per call here.
 * After only N calls the services were still warming: N → 5N grew 550–740
 * (customer) and 750–1,070 (identity) bytes per call, then 5N → 9N shrank
 * and 9N → 13N moved by under ±200 (measured, three points per run, twice).
 */
const WARM_UP = 3;
const N = 500;
/** The same for sign-ups and sign-ins on the identity service (±300 KiB over 4N = 1000 calls: 300 bytes per call). */
const IDENTITY_N = 250;
/** Live-heap growth allowed per call between N and 5N calls, in bytes. */
const MAX_GROWTH_PER_CALL = 1024;

let issuer: TestIssuer;
let database: TestDatabase;
let identityDatabase: TestDatabase;
const names = uniqueStreamNames("customer");
const identityNames = uniqueStreamNames("identity");
let customer: ChildService;
let identity: ChildService;

beforeAll(async () => {
  issuer = await startTestIssuer();
  database = await createTestDatabase("faults_load");
  identityDatabase = await createTestDatabase("faults_load_identity");
  [customer, identity] = await Promise.all([
    spawnService(
      "customer-service",
      {
        CUSTOMER_DATABASE_URL: database.url,
        NATS_URL: sharedNatsUrl,
        CUSTOMER_STREAM: names.stream,
        CUSTOMER_SUBJECT_PREFIX: names.subjectPrefix,
        // An identity stream of its own (none): not the shared NATS's default IDENTITY, which `npm start` leaves.
        IDENTITY_STREAM: uniqueStreamNames("identity").stream,
        IDENTITY_ISSUER: issuer.issuer,
        IDENTITY_JWKS_URL: issuer.jwksUrl,
      },
      { memoryProbe: true },
    ),
    spawnService(
      "identity-service",
      {
        IDENTITY_DATABASE_URL: identityDatabase.url,
        NATS_URL: sharedNatsUrl,
        IDENTITY_STREAM: identityNames.stream,
        IDENTITY_SUBJECT_PREFIX: identityNames.subjectPrefix,
        IDENTITY_ARGON2_MEMORY_KIB: "1024",
        IDENTITY_ARGON2_ITERATIONS: "1",
      },
      { memoryProbe: true },
    ),
  ]);
});

afterAll(async () => {
  await customer?.stop();
  await identity?.stop();
  await database?.drop();
  await identityDatabase?.drop();
  await deleteStreams(sharedNatsUrl, names.stream, identityNames.stream);
  await issuer?.close();
});

const customers = () => customer.clients.client(CustomerService, "grpc");

/** Waits until the child's relay has published everything in the outbox. */
const customerOutboxDrained = () => waitForOutboxEmpty(database.url, 20_000);

/** Runs a customer load and an identity load until each has made `calls` calls; resolves once both have stopped. */
async function loadUntil(calls: { customer: number; identity: number }): Promise<[Ledger, SignInLedger]> {
  const loads: [RunningLoad<Ledger>, RunningLoad<SignInLedger>] = [
    startCustomerLoad({
      client: customers,
      issuer,
      workers: 8,
      updatesPerCustomer: 4,
      reads: true,
      timeoutMs: 15_000,
    }),
    startIdentityLoad({
      client: () => identity.clients.client(AuthService, "grpc"),
      workers: 2,
      signInsPerLogin: 4,
      timeoutMs: 15_000,
    }),
  ];
  // Each stops at its target (or its first unexpected failure); the other goes on meanwhile.
  const until = async (load: RunningLoad<CallLedger>, target: number) => {
    try {
      await vi.waitUntil(() => load.ledger.calls >= target || load.ledger.unexpected.length > 0, {
        timeout: 120_000,
        interval: 20,
      });
    } finally {
      await load.stop();
    }
  };
  const stopped = await Promise.allSettled([until(loads[0], calls.customer), until(loads[1], calls.identity)]);
  for (const s of stopped) if (s.status === "rejected") throw s.reason;
  return [loads[0].ledger, loads[1].ledger];
}

/** Each service's live heap after a full GC, and its resident set, with no call in flight and the outbox drained. */
async function memory() {
  await customerOutboxDrained();
  await waitForOutboxEmpty(identityDatabase.url, 20_000);
  const of = async (svc: ChildService) => {
    // The second of two: the first may still free what finalizers of the previous collection let go.
    await svc.memoryAfterGc();
    const { heapUsed, rss } = await svc.memoryAfterGc();
    return { heapUsed, rss };
  };
  return { customer: await of(customer), identity: await of(identity) };
}

/** The events of a stream whose customer is among `ids`. */
const eventsOf = (events: readonly StreamEvent[], ids: Iterable<string>) => {
  const wanted = new Set(ids);
  return events.filter((e) => wanted.has(e.customerId));
};

describe("sustained mixed load", () => {
  it("fails nothing, publishes one event per command, and grows the heap by under 1 KiB per call", async () => {
    // Warm-up: 3N calls, then the first measurement.
    const [warmCustomers, warmSignIns] = await loadUntil({ customer: WARM_UP * N, identity: WARM_UP * IDENTITY_N });
    const warm = await memory();
    // 4N more.
    const [customerLedger, signInLedger] = await loadUntil({ customer: 4 * N, identity: 4 * IDENTITY_N });
    const measured = await memory();

    for (const ledger of [warmCustomers, warmSignIns, customerLedger, signInLedger]) {
      expect(ledger.unexpected).toEqual([]);
    }
    expect(customerLedger.calls).toBeGreaterThanOrEqual(4 * N);
    expect(signInLedger.calls).toBeGreaterThanOrEqual(4 * IDENTITY_N);

    // One event per successful command, in each stream (the customer stream also holds the
    // events of the race tests below when they happen to run first).
    const customerEvents = await readStream(sharedNatsUrl, names.stream);
    for (const ledger of [warmCustomers, customerLedger]) {
      checkCustomerEvents(eventsOf(customerEvents, ledger.registered), ledger, { exact: true });
    }
    expect(eventsOf(customerEvents, [...warmCustomers.registered, ...customerLedger.registered])).toHaveLength(
      warmCustomers.commands() + customerLedger.commands(),
    );
    const identityEvents = await readStream(sharedNatsUrl, identityNames.stream);
    for (const ledger of [warmSignIns, signInLedger]) {
      checkSignInEvents(eventsOf(identityEvents, ledger.signIns.keys()), ledger);
    }
    expect(identityEvents).toHaveLength(warmSignIns.total() + signInLedger.total());

    // Memory: live-heap growth per call over the 4N calls after the warm-up; RSS (allocator slack, freed pages
    // kept) only within a coarse bound.
    const growth = {
      customerBytesPerCall: (measured.customer.heapUsed - warm.customer.heapUsed) / customerLedger.calls,
      identityBytesPerCall: (measured.identity.heapUsed - warm.identity.heapUsed) / signInLedger.calls,
    };
    const report = JSON.stringify({ warm, measured, calls: [customerLedger.calls, signInLedger.calls], growth });
    expect(growth.customerBytesPerCall, report).toBeLessThan(MAX_GROWTH_PER_CALL);
    expect(growth.identityBytesPerCall, report).toBeLessThan(MAX_GROWTH_PER_CALL);
    const MiB = 2 ** 20;
    expect(measured.customer.rss, report).toBeLessThanOrEqual(warm.customer.rss * 1.2 + 32 * MiB);
    expect(measured.identity.rss, report).toBeLessThanOrEqual(warm.identity.rss * 1.2 + 32 * MiB);
  }, 300_000);
});

describe("concurrent updates of one customer", () => {
  const N = 16;
  let id: string;
  let token: string;

  beforeAll(async () => {
    id = randomUUID();
    token = await issuer.customer(id);
    await customers().registerCustomer(
      // No email: the profile takes the verified one from the token.
      { givenName: "Race", familyName: "start" },
      bearer(token),
    );
    // Counted from here on: the registration's event is out.
    await customerOutboxDrained();
  });

  it("without expected_version: every update lands, as versions 2..N+1, none lost", async () => {
    const before = (await streamCount(sharedNatsUrl, names.stream)) ?? 0;
    const results = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        customers().updateCustomer(
          { customer: { customerId: id, familyName: `writer ${i}` }, updateMask: { paths: ["family_name"] } },
          bearer(token),
        ),
      ),
    );
    const versions = results.map((r) => Number(r.customer?.version)).sort((a, b) => a - b);
    expect(versions).toEqual(Array.from({ length: N }, (_, i) => i + 2));
    // Each answer is that writer's own change.
    expect(results.map((r) => r.customer?.familyName)).toEqual(results.map((_, i) => `writer ${i}`));
    const got = await customers().getCustomer({ customerId: id }, bearer(token));
    expect(got.customer?.version).toBe(BigInt(N + 1));

    await customerOutboxDrained();
    const events = (await readStream(sharedNatsUrl, names.stream)).filter((e) => e.customerId === id);
    expect(events.map((e) => e.version)).toEqual(Array.from({ length: N + 1 }, (_, i) => i + 1));
    // The event of version v carries the change of the writer that got version v.
    const byVersion = new Map(results.map((r) => [Number(r.customer?.version), r.customer?.familyName]));
    for (const e of events.slice(1)) expect(e.familyName).toBe(byVersion.get(e.version));
    expect(await streamCount(sharedNatsUrl, names.stream)).toBe(before + N);
  });

  it("with expected_version: exactly one of the racers wins, the rest are ABORTED", async () => {
    const current = (await customers().getCustomer({ customerId: id }, bearer(token))).customer?.version ?? 0n;
    await customerOutboxDrained();
    const before = (await streamCount(sharedNatsUrl, names.stream)) ?? 0;
    const outcomes = await Promise.allSettled(
      Array.from({ length: N }, (_, i) =>
        customers().updateCustomer(
          {
            customer: { customerId: id, familyName: `racer ${i}` },
            updateMask: { paths: ["family_name"] },
            expectedVersion: current,
          },
          bearer(token),
        ),
      ),
    );
    const won = outcomes.flatMap((o) => (o.status === "fulfilled" ? [o.value] : []));
    const lost = outcomes.flatMap((o) => (o.status === "rejected" ? [o.reason as unknown] : []));
    expect(won).toHaveLength(1);
    expect(won[0]?.customer?.version).toBe(current + 1n);
    expect(lost).toHaveLength(N - 1);
    for (const err of lost) {
      expect(err).toBeInstanceOf(ConnectError);
      expect(err).toMatchObject({
        code: Code.Aborted,
        rawMessage: `customer is at version ${current + 1n}, not the expected ${current}`,
      });
    }
    const got = await customers().getCustomer({ customerId: id }, bearer(token));
    expect(got.customer).toMatchObject({ version: current + 1n, familyName: won[0]?.customer?.familyName });

    await customerOutboxDrained();
    expect(await streamCount(sharedNatsUrl, names.stream)).toBe(before + 1);
  });
});
