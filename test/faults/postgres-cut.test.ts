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
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import {
  checkCustomerEvents,
  expectStoredMatchesEvents,
  expectStreamHoldsOutbox,
  startCustomerLoad,
  storedVersions,
} from "../support/load.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { adminUrl, createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { type RunningCustomerService, startCustomerService } from "../support/services.js";
import { readStream, waitForStream } from "../support/streams.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { sleep } from "../support/timing.js";

const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

let issuer: TestIssuer;
let database: TestDatabase;
let proxy: TcpProxy;
let svc: RunningCustomerService;
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
  await waitForStream(svc.natsUrl, svc.streams.stream);
});

afterAll(async () => {
  proxy?.restore();
  await svc?.close();
  await proxy?.close();
  await database?.drop();
  await issuer?.close();
  process.off("uncaughtException", onUncaught);
  process.off("unhandledRejection", onUnhandled);
});

async function servingStatus(): Promise<HealthCheckResponse_ServingStatus> {
  return (await svc.clients.client(Health, "grpc").check({ service: "" }, { timeoutMs: 2_000 })).status;
}

async function readyz(): Promise<number> {
  return (await fetch(`${svc.url}/readyz`, { signal: AbortSignal.timeout(2_000) })).status;
}

describe("PostgreSQL cut and restored during sustained writes", () => {
  it("answers UNAVAILABLE while down, recovers by itself, loses and corrupts nothing", async () => {
    // Ready once the revocations of the lookback window are applied (moments after start).
    await expect.poll(servingStatus, { timeout: 10_000 }).toBe(SERVING);
    const load = startCustomerLoad({
      client: () => svc.clients.client(CustomerService, "grpc"),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      reads: true,
      allowed: [Code.Unavailable],
      // A broken connection must fail the call at once, not after a long TCP timeout; a
      // reconnect attempt through the cut proxy is refused immediately too.
      slowMs: 6_000,
      timeoutMs: 15_000,
      backoffMs: 20,
    });
    const { ledger } = load;
    const commands = (atLeast: number, timeout: number, message: string) =>
      expect.poll(() => ledger.commands(), { timeout, message }).toBeGreaterThanOrEqual(atLeast);
    const health = (status: HealthCheckResponse_ServingStatus, timeout: number, message: string) =>
      expect.poll(servingStatus, { timeout, message }).toBe(status);
    try {
      await commands(30, 10_000, "the load gets going");
      expect(ledger.failures).toEqual({});

      proxy.cut();
      const cutAt = performance.now();
      // The readiness probe runs every 2 s and gives up after 3 s.
      await health(NOT_SERVING, 6_000, "health goes NOT_SERVING");
      expect(await readyz()).toBe(503);
      await sleep(Math.max(0, 3_000 - (performance.now() - cutAt)));
      // Calls were refused while it was down.
      expect(ledger.failures.Unavailable ?? 0).toBeGreaterThan(4);
      expect(await servingStatus()).toBe(NOT_SERVING);

      proxy.restore();
      await health(SERVING, 6_000, "health goes SERVING again");
      expect(await readyz()).toBe(200);
      // Calls succeed again: a good number of commands after recovery.
      await commands(ledger.commands() + 40, 10_000, "commands succeed after recovery");

      // Flapping: short cuts catch transactions mid-way far more often than one long cut.
      for (let i = 0; i < 6; i++) {
        proxy.cut();
        await sleep(100 + i * 20);
        proxy.restore();
        await sleep(250);
      }
      await commands(ledger.commands() + 40, 10_000, "commands succeed after the flapping");
      await health(SERVING, 10_000, "health goes SERVING after the flapping");
    } finally {
      await load.stop();
    }
    expect.soft(crashes).toEqual([]);
    expect.soft(ledger.unexpected).toEqual([]);
    expect.soft(ledger.slow).toEqual([]);

    // The outbox resumes: everything committed, before the cut and after it, is published.
    await waitForOutboxEmpty(svc.database.url, 20_000);
    const events = await readStream(svc.natsUrl, svc.streams.stream);
    const latest = checkCustomerEvents(events, ledger, { exact: false });

    // Every acknowledged registration is stored; every stored customer's version is its last event's.
    const stored = await storedVersions(database.sql);
    expect([...ledger.registered].filter((id) => !stored.has(id))).toEqual([]);
    await expectStoredMatchesEvents(latest, database.sql);
    expect([...latest.keys()].filter((id) => !stored.has(id))).toEqual([]);
    // And the stream holds exactly the outbox.
    await expectStreamHoldsOutbox(events, database.sql);
    expect(svc.server.relay.status.state).toBe("leader");
  });
});
