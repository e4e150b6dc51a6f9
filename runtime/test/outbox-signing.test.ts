/**
 * The relay signs every event as it publishes it: each message carries a
 * `ce-signature` that verifies against the service's published keys; an
 * event published again (a relay that restarts before marking it sent)
 * carries the same `Nats-Msg-Id` and the same, still valid, signature, and
 * JetStream drops the repeat.
 */
import { connect, type Msg } from "@nats-io/transport-node";
import { describe, expect, it } from "vitest";
import { startTestEventKeys } from "../../test/support/events.js";
import { waitForOutboxEmpty } from "../../test/support/outbox.js";
import { until } from "../../test/support/timing.js";
import {
  afterThisTest,
  authenticated,
  enqueueAll,
  newRelay,
  postgresOutbox,
  sharedNatsUrl,
  streamMessages,
  testNats,
  testOutbox,
} from "./outbox-harness.js";

describe("outbox relay signing", () => {
  it("signs each event verifiably, and a re-sent event with the same id and signature", async () => {
    const keys = await startTestEventKeys();
    afterThisTest(() => keys.close());
    const verifier = keys.verifier("identity-service");
    const database = await postgresOutbox();
    const outbox = testOutbox(sharedNatsUrl);
    // Every publish as it goes over the wire, repeats included (JetStream stores only the first).
    const nc = await connect({ servers: sharedNatsUrl });
    afterThisTest(() => nc.close());
    const wire: Msg[] = [];
    nc.subscribe(`${outbox.subjectPrefix}.>`, {
      callback: (_err, msg) => {
        wire.push(msg);
      },
    });
    await nc.flush();

    const events = Array.from({ length: 5 }, () => authenticated(outbox));
    await enqueueAll(database, outbox, events);
    const first = newRelay(database, outbox, testNats(sharedNatsUrl), { signer: keys.signer });
    first.start();
    await waitForOutboxEmpty(database);
    await first.stop();
    for (const m of await streamMessages(sharedNatsUrl, outbox.stream)) {
      await expect(verifier.verify({ subject: m.subject, headers: m.header, data: m.data })).resolves.toMatchObject({
        source: "identity-service",
        kid: keys.signer.kid,
      });
    }

    // As if the relay had died between the acks and marking the rows sent.
    await database.query("update outbox set published_at = null");
    const second = newRelay(database, outbox, testNats(sharedNatsUrl), { signer: keys.signer });
    second.start();
    await waitForOutboxEmpty(database);
    await until("every event twice on the wire", () => wire.length === 10);
    expect(second.status.duplicates).toBe(5);
    expect(await streamMessages(sharedNatsUrl, outbox.stream)).toHaveLength(5);
    for (const [i, e] of events.entries()) {
      const [once, again] = [wire[i], wire[i + 5]];
      expect(again?.headers?.get("Nats-Msg-Id")).toBe(e.eventId);
      expect(again?.headers?.get("Nats-Msg-Id")).toBe(once?.headers?.get("Nats-Msg-Id"));
      expect(again?.headers?.get("ce-signature")).toBe(once?.headers?.get("ce-signature"));
      if (!again) throw new Error("no repeat");
      await expect(verifier.verify(again)).resolves.toMatchObject({ kid: keys.signer.kid });
    }
  });
});
