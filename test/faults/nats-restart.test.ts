/**
 * NATS killed and restarted under load: the customer service runs on a
 * private nats-server; four workers register and update customers while
 * NATS is killed (once events are flowing) and started again a second later
 * (once commands have gone on without it). No command fails or waits for
 * NATS, and afterwards every acknowledged command has exactly its event in
 * the stream, in per-customer version order, none twice.
 */
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Clients, createClients } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import { type PrivateNats, startPrivateNats } from "../support/nats.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { type RunningCustomerService, startCustomerService } from "../support/services.js";
import {
  checkCustomerEvents,
  createLedger,
  readStream,
  runCustomerLoad,
  sleep,
  streamCount,
  waitFor,
} from "./support.js";

let issuer: TestIssuer;
let nats: PrivateNats;
let svc: RunningCustomerService;
let clients: Clients;
let sql: postgres.Sql;

beforeAll(async () => {
  issuer = await startTestIssuer();
  nats = await startPrivateNats();
  svc = await startCustomerService(
    { IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl },
    { natsUrl: nats.url },
  );
  clients = createClients(svc.url);
  sql = postgres(svc.database.url, { max: 2, onnotice: () => {} });
  await waitFor(
    async () => (await streamCount(nats.url, svc.streams.stream)) !== undefined,
    10_000,
    "the relay creates the stream",
  );
});

afterAll(async () => {
  clients?.close();
  await sql?.end();
  await svc?.close();
  await nats?.stop();
  await issuer?.close();
});

describe("NATS killed and restarted during sustained writes", () => {
  it("fails no command and publishes exactly the acknowledged events, in order", async () => {
    let stop = false;
    const ledger = createLedger();
    const load = runCustomerLoad({
      ledger,
      client: () => clients.client(CustomerService, "grpc"),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      done: () => stop,
      timeoutMs: 10_000,
      // A command never waits for NATS (a publish would wait 5 s for its ack).
      slowMs: 4_000,
    });
    try {
      // Events flow before the kill, commands go on while NATS is down (for at least a
      // second) and after it is back.
      await waitFor(
        async () => ((await streamCount(nats.url, svc.streams.stream)) ?? 0) >= 50,
        10_000,
        "events are relayed before the kill",
      );
      await nats.kill();
      const atKill = ledger.commands();
      await sleep(1_000);
      await waitFor(() => ledger.commands() >= atKill + 50, 10_000, "commands go on while NATS is down");
      expect(svc.server.relay.status.nats).toBe("disconnected");
      await nats.start();
      const atRestart = ledger.commands();
      await waitFor(() => ledger.commands() >= atRestart + 50, 10_000, "commands go on after the restart");
    } finally {
      stop = true;
      await load;
    }

    expect(ledger.unexpected).toEqual([]);
    expect(ledger.failures).toEqual({});
    expect(ledger.slow).toEqual([]);

    await waitForOutboxEmpty(svc.database.url, 20_000);
    const events = await readStream(nats.url, svc.streams.stream);
    checkCustomerEvents(events, ledger, { exact: true });
    expect(events).toHaveLength(ledger.commands());

    // The stream holds exactly the outbox. (Across customers the order may differ: rows are
    // published in commit order, which need not be id order.)
    const rows = await sql<{ event_id: string }[]>`select event_id::text as event_id from outbox`;
    expect(events.map((e) => e.eventId).sort()).toEqual(rows.map((r) => r.event_id).sort());
  });
});
