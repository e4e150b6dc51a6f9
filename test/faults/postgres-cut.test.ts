/**
 * PostgreSQL connections cut mid-load: the customer service reaches its
 * database through a TCP proxy of ours, which the test cuts (every
 * connection reset, new ones refused) for three seconds and restores, then
 * flaps six times, while four workers register, update and read customers.
 * While it is down calls fail fast with UNAVAILABLE (never INTERNAL, never a
 * hang), health goes NOT_SERVING; once it is back the service recovers by
 * itself, health goes SERVING, calls succeed and the outbox resumes. No
 * state is partial: every acknowledged command is stored with its event, and
 * every stored customer's version matches its events. Nothing crashes the
 * process on the way (no uncaught exception, no unhandled rejection).
 */
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "@customer-platform/gen/grpc/health/v1/health_pb.js";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Clients, createClients } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { adminUrl, createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { type RunningCustomerService, startCustomerService } from "../support/services.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import {
  checkCustomerEvents,
  createLedger,
  readStream,
  runCustomerLoad,
  sleep,
  streamCount,
  waitFor,
} from "./support.js";

const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

let issuer: TestIssuer;
let database: TestDatabase;
let proxy: TcpProxy;
let svc: RunningCustomerService;
let clients: Clients;
let sql: postgres.Sql;
const crashes: string[] = [];
const onUncaught = (err: unknown) => crashes.push(`uncaught exception: ${(err as Error)?.stack ?? err}`);
const onUnhandled = (err: unknown) => crashes.push(`unhandled rejection: ${(err as Error)?.stack ?? err}`);

beforeAll(async () => {
  process.on("uncaughtException", onUncaught);
  process.on("unhandledRejection", onUnhandled);
  issuer = await startTestIssuer();
  database = await createTestDatabase("faults_pg_cut");
  const target = new URL(adminUrl);
  proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
  svc = await startCustomerService(
    {
      IDENTITY_ISSUER: issuer.issuer,
      IDENTITY_JWKS_URL: issuer.jwksUrl,
      CUSTOMER_DATABASE_URL: proxy.rewrite(database.url),
    },
    { database },
  );
  clients = createClients(svc.url);
  // The test's own connection goes around the proxy.
  sql = postgres(database.url, { max: 2, onnotice: () => {} });
  await waitFor(
    async () => (await streamCount(svc.natsUrl, svc.streams.stream)) !== undefined,
    10_000,
    "the relay creates the stream",
  );
});

afterAll(async () => {
  clients?.close();
  proxy?.restore();
  await svc?.close();
  await sql?.end();
  await proxy?.close();
  await database?.drop();
  await issuer?.close();
  process.off("uncaughtException", onUncaught);
  process.off("unhandledRejection", onUnhandled);
});

const health = () => clients.client(Health, "grpc");

async function status(): Promise<HealthCheckResponse_ServingStatus> {
  return (await health().check({ service: "" }, { timeoutMs: 2_000 })).status;
}

async function readyz(): Promise<number> {
  return (await fetch(`${svc.url}/readyz`, { signal: AbortSignal.timeout(2_000) })).status;
}

describe("PostgreSQL cut and restored during sustained writes", () => {
  it("answers UNAVAILABLE while down, recovers by itself, loses and corrupts nothing", async () => {
    expect(await status()).toBe(SERVING);
    let stop = false;
    const ledger = createLedger();
    const load = runCustomerLoad({
      ledger,
      client: () => clients.client(CustomerService, "grpc"),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      reads: true,
      done: () => stop,
      allowed: [Code.Unavailable],
      // A broken connection must fail the call at once, not after a long TCP timeout; a
      // reconnect attempt through the cut proxy is refused immediately too.
      slowMs: 6_000,
      timeoutMs: 15_000,
      backoffMs: 20,
    });
    try {
      await waitFor(() => ledger.commands() >= 30, 10_000, "the load gets going");
      expect(ledger.failures).toEqual({});

      proxy.cut();
      const cutAt = performance.now();
      // The readiness probe runs every 2 s and gives up after 3 s.
      await waitFor(async () => (await status()) === NOT_SERVING, 6_000, "health goes NOT_SERVING");
      expect(await readyz()).toBe(503);
      await sleep(Math.max(0, 3_000 - (performance.now() - cutAt)));
      // Calls were refused while it was down.
      expect(ledger.failures.Unavailable ?? 0).toBeGreaterThan(4);
      expect(await status()).toBe(NOT_SERVING);

      proxy.restore();
      await waitFor(async () => (await status()) === SERVING, 6_000, "health goes SERVING again");
      expect(await readyz()).toBe(200);
      // Calls succeed again: a good number of commands after recovery.
      const recovered = ledger.commands();
      await waitFor(() => ledger.commands() >= recovered + 40, 10_000, "commands succeed after recovery");

      // Flapping: short cuts catch transactions mid-way far more often than one long cut.
      for (let i = 0; i < 6; i++) {
        proxy.cut();
        await sleep(100 + i * 20);
        proxy.restore();
        await sleep(250);
      }
      const settled = ledger.commands();
      await waitFor(() => ledger.commands() >= settled + 40, 10_000, "commands succeed after the flapping");
      await waitFor(async () => (await status()) === SERVING, 10_000, "health goes SERVING after the flapping");
    } finally {
      stop = true;
      await load;
    }
    expect.soft(crashes).toEqual([]);
    expect.soft(ledger.unexpected).toEqual([]);
    expect.soft(ledger.slow).toEqual([]);

    // The outbox resumes: everything committed, before the cut and after it, is published.
    await waitForOutboxEmpty(svc.database.url, 20_000);
    const events = await readStream(svc.natsUrl, svc.streams.stream);
    const latest = checkCustomerEvents(events, ledger, { exact: false });

    // Every acknowledged registration is stored; every stored customer's version is its last event's.
    const rows = await sql<{ customer_id: string; version: number }[]>`
      select customer_id::text as customer_id, version from customers`;
    const stored = new Map(rows.map((r) => [r.customer_id, Number(r.version)]));
    expect([...ledger.registered].filter((id) => !stored.has(id))).toEqual([]);
    const disagree = rows.filter((r) => latest.get(r.customer_id) !== Number(r.version));
    expect(disagree).toEqual([]);
    expect([...latest.keys()].filter((id) => !stored.has(id))).toEqual([]);
    // And the stream holds exactly the outbox.
    const outbox = await sql<{ event_id: string }[]>`select event_id::text as event_id from outbox`;
    expect(events.map((e) => e.eventId).sort()).toEqual(outbox.map((r) => r.event_id).sort());
    expect(svc.server.relay.status.state).toBe("leader");
  });
});
