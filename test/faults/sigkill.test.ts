/**
 * The customer service killed with SIGKILL mid-load, then restarted: it runs
 * as a real child process (`node --import tsx customer-service/src/main.ts`); every
 * command it acknowledged before the kill is in the database, and once it is
 * restarted on the same database every one of their events is published,
 * none twice. Its NATS connection goes through a TCP proxy that is cut just
 * before the kill, so the kill always leaves events behind in the outbox
 * (and a publish or two unacknowledged).
 */
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import {
  checkCustomerEvents,
  expectStoredMatchesEvents,
  expectStreamHoldsOutbox,
  startCustomerLoad,
  storedVersions,
} from "../support/load.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../support/nats.js";
import { unsentEvents, waitForOutboxEmpty } from "../support/outbox.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { type ChildService, spawnService } from "../support/processes.js";
import { readStream } from "../support/streams.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { sleep } from "../support/timing.js";

const ALL_CODES = Object.values(Code).filter((c): c is Code => typeof c === "number");

let issuer: TestIssuer;
let database: TestDatabase;
let natsProxy: TcpProxy;
const names = uniqueStreamNames("customer");
const children: ChildService[] = [];
let env: Record<string, string>;

beforeAll(async () => {
  issuer = await startTestIssuer();
  database = await createTestDatabase("faults_sigkill");
  const nats = new URL(sharedNatsUrl);
  natsProxy = await startTcpProxy({ host: nats.hostname, port: Number(nats.port || 4222) });
  env = {
    CUSTOMER_DATABASE_URL: database.url,
    NATS_URL: natsProxy.rewrite(sharedNatsUrl),
    CUSTOMER_STREAM: names.stream,
    CUSTOMER_SUBJECT_PREFIX: names.subjectPrefix,
    // An identity stream of its own (none): not the shared NATS's default IDENTITY, which `npm start` leaves.
    IDENTITY_STREAM: uniqueStreamNames("identity").stream,
    IDENTITY_ISSUER: issuer.issuer,
    IDENTITY_JWKS_URL: issuer.jwksUrl,
    SHUTDOWN_GRACE_MS: "2000",
  };
});

afterAll(async () => {
  for (const child of children) await child.kill();
  await natsProxy?.close();
  await database?.drop();
  await deleteStreams(sharedNatsUrl, names.stream);
  await issuer?.close();
});

async function start(): Promise<ChildService> {
  const child = await spawnService("customer-service", env);
  children.push(child);
  return child;
}

describe("the customer service killed with SIGKILL under load", () => {
  it("keeps every acknowledged command and publishes its event after a restart, once", async () => {
    const first = await start();
    const load = startCustomerLoad({
      client: () => first.clients.client(CustomerService, "grpc"),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      // Calls in flight at the kill fail however the client sees a dead server.
      allowed: ALL_CODES,
      timeoutMs: 10_000,
    });
    const { ledger } = load;
    let killedAt = 0;
    try {
      await expect
        .poll(() => ledger.commands(), { timeout: 20_000, message: "the load gets going" })
        .toBeGreaterThanOrEqual(100);
      natsProxy.cut();
      const atCut = ledger.commands();
      await expect
        .poll(() => ledger.commands(), { timeout: 10_000, message: "commands go on without NATS" })
        .toBeGreaterThanOrEqual(atCut + 20);
      killedAt = performance.now();
      await first.kill();
      // The workers see it dead: stop them once each has failed a call.
      await sleep(200);
    } finally {
      await load.stop();
    }
    // Nothing failed before the kill.
    expect(ledger.failedAt.filter((t) => t < killedAt)).toEqual([]);
    expect(ledger.failedAt.length).toBeGreaterThan(0);

    // Durable: every acknowledged registration is stored, at least at its acknowledged version.
    const sql = database.sql;
    const stored = await storedVersions(sql);
    const lost: string[] = [];
    for (const id of ledger.registered) {
      const acked = Math.max(1, ...(ledger.updated.get(id) ?? []));
      if ((stored.get(id) ?? 0) < acked) lost.push(`${id}: acknowledged v${acked}, stored v${stored.get(id)}`);
    }
    expect(lost).toEqual([]);
    const pending = await unsentEvents(database.url);
    expect(pending).toBeGreaterThanOrEqual(20);

    // Restarted on the same database: the outbox drains, each event once.
    natsProxy.restore();
    const second = await start();
    await waitForOutboxEmpty(database.url, 20_000);
    const events = await readStream(sharedNatsUrl, names.stream);
    const latest = checkCustomerEvents(events, ledger, { exact: false });
    await expectStreamHoldsOutbox(events, sql);
    // Calls cut off by the kill may have committed: then they are stored with their event too.
    await expectStoredMatchesEvents(latest, sql);

    // And it serves again.
    const [someone] = ledger.registered;
    if (!someone) throw new Error("nothing was registered");
    const got = await second.clients
      .client(CustomerService, "grpc")
      .getCustomer({ customerId: someone }, bearer(await issuer.customer(someone)));
    expect(Number(got.customer?.version)).toBe(stored.get(someone));
    await second.stop();
  });
});
