/**
 * What the revocation list believes, against the real JetStream: only
 * revocations signed by the identity provider (a forged one is ignored and
 * logged); no entry outlives what an access token can live after the
 * revocation, whatever its expire_time (year 9999 is pruned); events and the
 * list are capped; `caughtUp` only once the window's revocations are
 * applied, never by applying one it could not verify. Each test has its own
 * stream.
 */
import { randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { TokensRevokedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { publishEvent, startTestEventKeys, type TestEventKeys } from "../../test/support/events.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { until } from "../../test/support/timing.js";
import type { EventSigner } from "../src/event-signing.js";
import { createRevocationList, type RevocationList, type RevocationListOptions } from "../src/revocations.js";
import { identitySubjects } from "../src/subjects.js";

let nc: NatsConnection;
// The identity provider's event keys, as the identity service serves them.
let keys: TestEventKeys;
const lists: RevocationList[] = [];
const streams: string[] = [];

beforeAll(async () => {
  nc = await connect({ servers: sharedNatsUrl });
  keys = await startTestEventKeys();
});

afterAll(async () => {
  await Promise.all(lists.map((l) => l.stop()));
  await deleteStreams(sharedNatsUrl, ...streams);
  await nc?.close();
  await keys?.close();
});

const id = () => randomUUID();
const inFuture = (ms = 60_000) => new Date(Date.now() + ms);

/** A stream of the test's own, a publisher of TokensRevoked on it, and a list that follows it. */
async function setUp(name: string, more: Partial<Omit<RevocationListOptions, "nats" | "natsUrl">> = {}) {
  const { stream, subjectPrefix } = uniqueStreamNames("identity");
  streams.push(stream);
  await (await jetstreamManager(nc)).streams.add({ name: stream, subjects: [`${subjectPrefix}.>`] });
  const js = jetstream(nc);
  const revoke = async (
    revoked: { jwtIds?: string[]; sessionIds?: string[]; expireTime: Date; occurTime?: Date },
    // null: unsigned (undefined would take the default).
    signer: EventSigner | null = keys.signer,
  ) => {
    const customerId = id();
    const event = create(TokensRevokedSchema, {
      eventId: id(),
      occurTime: timestampFromDate(revoked.occurTime ?? new Date()),
      customerId,
      jwtIds: revoked.jwtIds ?? [],
      sessionIds: revoked.sessionIds ?? [],
      expireTime: timestampFromDate(revoked.expireTime),
    });
    await publishEvent(
      js,
      signer ?? undefined,
      identitySubjects(subjectPrefix).tokensRevoked({ customerId }),
      toBinary(TokensRevokedSchema, event),
      {
        id: event.eventId,
        type: TokensRevokedSchema.typeName,
        source: "identity-service",
        time: new Date(),
        subject: customerId,
      },
    );
    return event.eventId;
  };
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split("\n").filter(Boolean));
      done();
    },
  });
  const start = () => {
    const list = createRevocationList({
      natsUrl: sharedNatsUrl,
      stream,
      subjectPrefix,
      lookbackMs: 60_000,
      skewMs: 1_000,
      maxRetryMs: 500,
      verifier: keys.verifier("identity-service"),
      logger: pino({ name, level: "debug" }, destination),
      ...more,
    });
    lists.push(list);
    list.start();
    return list;
  };
  const messages = () =>
    lines.map((l) => JSON.parse(l) as { level: number; msg: string; reason?: string; eventId?: string });
  return { revoke, start, messages };
}

/** Whether list refuses a token with these ids (of no client in particular). */
const isRevoked = (list: RevocationList, ids: { tokenId: string; sessionId?: string }) =>
  list.isRevoked({ clientId: "", issuedAt: new Date(), ...ids });

describe("the revocation list's trust and bounds", () => {
  it("ignores and logs revocations not signed by the identity provider, and applies the genuine one", async () => {
    const { revoke, start, messages } = await setUp("forged");
    const list = start();
    await until("the subscription", () => list.subscribed);
    const forged = { jti: id(), sid: id() };
    const unsigned = await revoke({ jwtIds: [forged.jti], sessionIds: [forged.sid], expireTime: inFuture() }, null);
    const attacker = await startTestEventKeys();
    let foreign: string;
    try {
      foreign = await revoke({ jwtIds: [forged.jti], expireTime: inFuture() }, attacker.signer);
    } finally {
      await attacker.close();
    }
    const genuine = id();
    await revoke({ jwtIds: [genuine], expireTime: inFuture() });
    await until("the genuine revocation", () => isRevoked(list, { tokenId: genuine }));
    expect(isRevoked(list, { tokenId: forged.jti })).toBe(false);
    expect(isRevoked(list, { tokenId: id(), sessionId: forged.sid })).toBe(false);
    expect(list.rejected).toBe(2);
    expect(list.size).toBe(1);
    const ignored = messages().filter((m) => m.msg === "TokensRevoked event ignored");
    expect(ignored.map((m) => [m.level, m.reason, m.eventId])).toEqual([
      [40, "unsigned", unsigned],
      [40, "unknown_key", foreign],
    ]);
  });

  it("keeps no entry longer than lookback + skew, whatever expire_time says (year 9999), and prunes it", async () => {
    // lookback + skew = 2 s: the list prunes every 2 s.
    const { revoke, start } = await setUp("clamp", { lookbackMs: 1_500, skewMs: 500 });
    const list = start();
    await until("the subscription", () => list.subscribed);
    const year9999 = new Date("9999-12-31T23:59:59Z");
    const ids = Array.from({ length: 20 }, () => ({ jti: id(), sid: id() }));
    for (const i of ids) await revoke({ jwtIds: [i.jti], sessionIds: [i.sid], expireTime: year9999 });
    // A revocation that occurred before the window revokes nothing that can still be used.
    const old = id();
    await revoke({ jwtIds: [old], expireTime: year9999, occurTime: new Date(Date.now() - 10_000) });
    await until("the 20 revocations", () => ids.every((i) => isRevoked(list, { tokenId: i.jti })));
    expect(isRevoked(list, { tokenId: old })).toBe(false);
    await until("the year-9999 entries pruned", () => list.size === 0, 10_000);
    expect(ids.some((i) => isRevoked(list, { tokenId: i.jti }))).toBe(false);
  });

  it("ignores an event naming more ids than maxIdsPerEvent, and holds at most maxEntries, oldest dropped first", async () => {
    const { revoke, start, messages } = await setUp("caps", { maxIdsPerEvent: 30, maxEntries: 50 });
    const list = start();
    await until("the subscription", () => list.subscribed);
    const big = Array.from({ length: 31 }, id);
    await revoke({ jwtIds: big.slice(0, 20), sessionIds: big.slice(20), expireTime: inFuture() });
    const batches = Array.from({ length: 3 }, () => Array.from({ length: 30 }, id));
    for (const jwtIds of batches) await revoke({ jwtIds, expireTime: inFuture() });
    const last = batches[2] as string[];
    await until("the last batch", () => last.every((jti) => isRevoked(list, { tokenId: jti })));
    expect(big.some((jti) => isRevoked(list, { tokenId: jti }))).toBe(false);
    expect(list.rejected).toBe(1);
    expect(list.size).toBe(50);
    expect(list.evicted).toBe(40);
    expect(batches[0]?.some((jti) => isRevoked(list, { tokenId: jti }))).toBe(false);
    expect(
      messages()
        .filter((m) => m.msg === "TokensRevoked event ignored")
        .map((m) => m.reason),
    ).toEqual(["too many ids"]);
    expect(messages().filter((m) => m.msg.startsWith("revocation list full"))).toHaveLength(1);
  });

  it("is caught up only once the window's revocations are applied, applying nothing unverified meanwhile", async () => {
    const keysDown = await startTestEventKeys();
    keysDown.available = false;
    const { revoke, start, messages } = await setUp("catch-up", {
      verifier: keysDown.verifier("identity-service", { cooldownMs: 0 }),
    });
    const jtis = Array.from({ length: 30 }, id);
    for (const jti of jtis) await revoke({ jwtIds: [jti], expireTime: inFuture() }, keysDown.signer);
    try {
      // The identity provider's keys cannot be fetched: nothing applied, not caught up.
      const list = start();
      await until("two attempts", () => keysDown.fetches >= 2);
      expect(list.caughtUp).toBe(false);
      expect(jtis.some((jti) => isRevoked(list, { tokenId: jti }))).toBe(false);
      expect(list.rejected).toBe(0);
      expect(
        messages()
          .filter((m) => m.level >= 40)
          .map((m) => m.msg),
      ).toEqual([
        expect.stringMatching(/^cannot verify token revocations: the identity provider's event keys are unavailable; /),
      ]);
      // Back: every revocation of the window is applied by the time it says it caught up.
      keysDown.available = true;
      await until("caught up", () => list.caughtUp, 10_000);
      expect(jtis.every((jti) => isRevoked(list, { tokenId: jti }))).toBe(true);
    } finally {
      await keysDown.close();
    }
  });
});
