/**
 * NATS killed and restarted under load: the customer service runs on a
 * private nats-server; four workers register and update customers while
 * NATS is killed (once events are flowing) and started again a second later
 * (once commands have gone on without it). No command fails or waits for
 * NATS, and afterwards every acknowledged command has exactly its event in
 * the stream, in per-customer version order, none twice.
 */
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import { checkCustomerEvents, expectStreamHoldsOutbox, startCustomerLoad } from "../support/load.js";
import { type PrivateNats, startPrivateNats } from "../support/nats.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { type RunningCustomerService, startCustomerService } from "../support/services.js";
import { readStream, streamCount, waitForStream } from "../support/streams.js";
import { sleep } from "../support/timing.js";

let issuer: TestIssuer;
let nats: PrivateNats;
let svc: RunningCustomerService;

beforeAll(async () => {
  issuer = await startTestIssuer();
  nats = await startPrivateNats();
  svc = await startCustomerService(
    { IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl },
    { natsUrl: nats.url },
  );
  await waitForStream(nats.url, svc.streams.stream);
});

afterAll(async () => {
  await svc?.close();
  await nats?.stop();
  await issuer?.close();
});

describe("NATS killed and restarted during sustained writes", () => {
  it("fails no command and publishes exactly the acknowledged events, in order", async () => {
    const load = startCustomerLoad({
      client: () => svc.clients.client(CustomerService, "grpc"),
      issuer,
      workers: 4,
      updatesPerCustomer: 3,
      timeoutMs: 10_000,
      // A command never waits for NATS (a publish would wait 5 s for its ack).
      slowMs: 4_000,
    });
    const { ledger } = load;
    try {
      // Events flow before the kill, commands go on while NATS is down (for at least a
      // second) and after it is back.
      await expect
        .poll(async () => (await streamCount(nats.url, svc.streams.stream)) ?? 0, {
          timeout: 10_000,
          message: "events are relayed before the kill",
        })
        .toBeGreaterThanOrEqual(50);
      await nats.kill();
      const atKill = ledger.commands();
      await sleep(1_000);
      await expect
        .poll(() => ledger.commands(), { timeout: 10_000, message: "commands go on while NATS is down" })
        .toBeGreaterThanOrEqual(atKill + 50);
      expect(svc.server.relay.status.nats).toBe("disconnected");
      await nats.start();
      const atRestart = ledger.commands();
      await expect
        .poll(() => ledger.commands(), { timeout: 10_000, message: "commands go on after the restart" })
        .toBeGreaterThanOrEqual(atRestart + 50);
    } finally {
      await load.stop();
    }

    expect(ledger.unexpected).toEqual([]);
    expect(ledger.failures).toEqual({});
    expect(ledger.slow).toEqual([]);

    await waitForOutboxEmpty(svc.database.url, 20_000);
    const events = await readStream(nats.url, svc.streams.stream);
    checkCustomerEvents(events, ledger, { exact: true });
    expect(events).toHaveLength(ledger.commands());

    await expectStreamHoldsOutbox(events, svc.database.sql);
  });
});
