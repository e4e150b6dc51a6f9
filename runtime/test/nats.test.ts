/**
 * The process's NATS connection, on a private nats-server the test kills
 * and restarts: it starts while NATS is down, connects when it appears,
 * follows an outage and the reconnect, emits each transition once, offers
 * the connection only while connected, and closes promptly even mid-retry.
 */
import { describe, expect, it, vi } from "vitest";
import { startPrivateNats } from "../../test/support/nats.js";
import { sleep } from "../../test/support/timing.js";
import type { NatsStatus } from "../src/nats.js";
import { afterThisTest, captureLogger, testNats } from "./outbox-harness.js";

describe("createNats", () => {
  it("connects in the background, follows outages, and says each transition once", async () => {
    const server = await startPrivateNats();
    afterThisTest(() => server.stop());
    await server.kill();
    const { logger, count } = captureLogger();
    const nats = testNats(server.url, logger);
    const seen: string[] = [];
    nats.events.on("connected", () => seen.push("connected"));
    nats.events.on("disconnected", () => seen.push("disconnected"));
    nats.events.on("closed", () => seen.push("closed"));
    expect(nats.status).toBe("connecting");

    await vi.waitUntil(() => nats.status === "disconnected");
    await sleep(1000);
    expect(nats.connection).toBeUndefined();
    expect(count("cannot connect to NATS; retrying", 40)).toBe(1);

    await server.start();
    await vi.waitUntil(() => nats.status === "connected", { timeout: 5_000 });
    expect(nats.connection?.isClosed()).toBe(false);
    // The connection works: a round trip to the server.
    expect(await nats.connection?.rtt()).toBeGreaterThanOrEqual(0);

    await server.kill();
    await vi.waitUntil(() => nats.status === ("disconnected" as NatsStatus));
    expect(nats.connection).toBeUndefined();
    await server.start();
    await vi.waitUntil(() => nats.status === ("connected" as NatsStatus), { timeout: 10_000 });

    await nats.close();
    expect(nats.status).toBe("closed");
    expect(nats.connection).toBeUndefined();
    expect(seen).toEqual(["disconnected", "connected", "disconnected", "connected", "closed"]);
    expect(
      ["connected to NATS", "NATS connection lost; reconnecting", "reconnected to NATS"].map((m) => count(m)),
    ).toEqual([1, 1, 1]);
  });

  it("closes promptly while it is still trying to connect", async () => {
    const server = await startPrivateNats();
    afterThisTest(() => server.stop());
    await server.kill();
    const nats = testNats(server.url);
    await vi.waitUntil(() => nats.status === "disconnected");
    const t0 = performance.now();
    await nats.close();
    expect(performance.now() - t0).toBeLessThan(1_000);
    // Nothing connects after close, even once NATS is there.
    await server.start();
    await sleep(1_000);
    expect(nats.status).toBe("closed");
    expect(nats.connection).toBeUndefined();
  });
});
