/**
 * The customer service killed with SIGKILL mid-load, then restarted: it runs
 * as a real child process (`npx tsx customer-service/src/main.ts`); every
 * command it acknowledged before the kill is in the database, and once it is
 * restarted on the same database every one of their events is published,
 * none twice. Its NATS connection goes through a TCP proxy that is cut just
 * before the kill, so the kill always leaves events behind in the outbox
 * (and a publish or two unacknowledged).
 */
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, createClients } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../support/nats.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import {
  type ChildService,
  checkCustomerEvents,
  createLedger,
  readStream,
  runCustomerLoad,
  sleep,
  spawnCustomerService,
  waitFor,
} from "./support.js";

const ALL_CODES = Object.values(Code).filter((c): c is Code => typeof c === "number");

let issuer: TestIssuer;
let database: TestDatabase;
let sql: postgres.Sql;
let natsProxy: TcpProxy;
const names = uniqueStreamNames("customer");
const children: ChildService[] = [];
let env: Record<string, string>;

beforeAll(async () => {
  issuer = await startTestIssuer();
  database = await createTestDatabase("faults_sigkill");
  sql = postgres(database.url, { max: 2, onnotice: () => {} });
  const nats = new URL(sharedNatsUrl);
  natsProxy = await startTcpProxy({ host: nats.hostname, port: Number(nats.port || 4222) });
  env = {
    CUSTOMER_DATABASE_URL: database.url,
    NATS_URL: natsProxy.rewrite(sharedNatsUrl),
    CUSTOMER_STREAM: names.stream,
    CUSTOMER_SUBJECT_PREFIX: names.subjectPrefix,
    IDENTITY_ISSUER: issuer.issuer,
    IDENTITY_JWKS_URL: issuer.jwksUrl,
    SHUTDOWN_GRACE_MS: "2000",
  };
});

afterAll(async () => {
  for (const child of children) await child.kill();
  await sql?.end();
  await natsProxy?.close();
  await database?.drop();
  await deleteStreams(sharedNatsUrl, names.stream);
  await issuer?.close();
});

async function start(): Promise<ChildService> {
  const child = await spawnCustomerService(env);
  children.push(child);
  return child;
}

describe("the customer service killed with SIGKILL under load", () => {
  it("keeps every acknowledged command and publishes its event after a restart, once", async () => {
    const first = await start();
    const clients = createClients(first.url);
    let stop = false;
    const ledger = createLedger();
    const load = runCustomerLoad({
      ledger,
      client: () => clients.client(CustomerService, "grpc"),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      done: () => stop,
      // Calls in flight at the kill fail however the client sees a dead server.
      allowed: ALL_CODES,
      timeoutMs: 10_000,
    });
    let killedAt = 0;
    try {
      await waitFor(() => ledger.commands() >= 100, 20_000, "the load gets going");
      natsProxy.cut();
      const atCut = ledger.commands();
      await waitFor(() => ledger.commands() >= atCut + 20, 10_000, "commands go on without NATS");
      killedAt = performance.now();
      await first.kill();
      // The workers see it dead: stop them once each has failed a call.
      await sleep(200);
    } finally {
      stop = true;
      await load;
      clients.close();
    }
    // Nothing failed before the kill.
    expect(ledger.failedAt.filter((t) => t < killedAt)).toEqual([]);
    expect(ledger.failedAt.length).toBeGreaterThan(0);

    // Durable: every acknowledged registration is stored, at least at its acknowledged version.
    const rows = await sql<{ customer_id: string; version: number }[]>`
      select customer_id::text as customer_id, version from customers`;
    const stored = new Map(rows.map((r) => [r.customer_id, Number(r.version)]));
    const lost: string[] = [];
    for (const id of ledger.registered) {
      const acked = Math.max(1, ...(ledger.updated.get(id) ?? []));
      if ((stored.get(id) ?? 0) < acked) lost.push(`${id}: acknowledged v${acked}, stored v${stored.get(id)}`);
    }
    expect(lost).toEqual([]);
    const [{ pending }] = await sql<[{ pending: number }]>`
      select count(*)::int as pending from outbox where published_at is null`;
    expect(pending).toBeGreaterThanOrEqual(20);

    // Restarted on the same database: the outbox drains, each event once.
    natsProxy.restore();
    const second = await start();
    await waitFor(
      async () => {
        const [row] = await sql<[{ n: number }]>`select count(*)::int as n from outbox where published_at is null`;
        return row.n === 0;
      },
      20_000,
      `the restarted relay publishes the ${pending} events left behind`,
    );
    const events = await readStream(sharedNatsUrl, names.stream);
    const latest = checkCustomerEvents(events, ledger, { exact: false });
    const outbox = await sql<{ event_id: string }[]>`select event_id::text as event_id from outbox`;
    expect(events.map((e) => e.eventId).sort()).toEqual(outbox.map((r) => r.event_id).sort());
    // Calls cut off by the kill may have committed: then they are stored with their event too.
    expect(rows.filter((r) => latest.get(r.customer_id) !== Number(r.version))).toEqual([]);

    // And it serves again.
    const [someone] = ledger.registered;
    if (!someone) throw new Error("nothing was registered");
    const restartedClients = createClients(second.url);
    try {
      const got = await restartedClients
        .client(CustomerService, "grpc")
        .getCustomer({ customerId: someone }, bearer(await issuer.customer(someone)));
      expect(Number(got.customer?.version)).toBe(stored.get(someone));
    } finally {
      restartedClients.close();
    }
    await second.stop();
  });
});
