/**
 * The revocation list against the real JetStream: it waits (warning once)
 * for a stream that does not exist yet, reads what is in force from the
 * lookback on, follows new TokensRevoked events, forgets nothing it was told
 * until expire_time and takes nothing else; NATS unreachable at start is
 * retried quietly and a stop is prompt either way. On the caller's NATS
 * connection it survives a NATS restart, never closes that connection, and
 * says so when the caller closed it. Every event here is signed as the
 * identity service signs it; revocations-trust.test.ts covers forged ones,
 * the bounds and catching up.
 */
import { randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { CustomerAuthenticatedSchema, TokensRevokedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { eventHeaders, startTestEventKeys, type TestEventKeys } from "../../test/support/events.js";
import { sharedNatsUrl, startPrivateNats, uniqueStreamNames } from "../../test/support/nats.js";
import { freePort } from "../../test/support/ports.js";
import { sleep, until } from "../../test/support/timing.js";
import type { EventVerifier } from "../src/event-signing.js";
import {
  createRevocationList,
  type RevocationList,
  type RevocationListOptions,
  type RevocationSource,
} from "../src/revocations.js";
import { identitySubjects } from "../src/subjects.js";

const { stream, subjectPrefix } = uniqueStreamNames("identity");
let nc: NatsConnection;
let jsm: JetStreamManager;
const lists: RevocationList[] = [];
// The identity provider's event keys, as the identity service serves them.
let keys: TestEventKeys;
let verifier: EventVerifier;

beforeAll(async () => {
  nc = await connect({ servers: sharedNatsUrl });
  jsm = await jetstreamManager(nc);
  keys = await startTestEventKeys();
  verifier = keys.verifier("identity-service");
});

afterAll(async () => {
  await Promise.all(lists.map((l) => l.stop()));
  await jsm?.streams.delete(stream).catch(() => false);
  await nc?.close();
  await keys?.close();
});

/** Whether list refuses a token with these ids (of no client in particular). */
const isRevoked = (list: RevocationList, ids: { tokenId: string; sessionId?: string }) =>
  list.isRevoked({ clientId: "", issuedAt: new Date(), ...ids });

const id = () => randomUUID();

/** Publishes a TokensRevoked the way the identity service's relay does. */
async function publishRevoked(
  revoked: { jwtIds?: string[]; sessionIds?: string[]; expireTime: Date; occurTime?: Date },
  conn: NatsConnection = nc,
) {
  const customerId = id();
  const eventId = id();
  const event = create(TokensRevokedSchema, {
    eventId,
    occurTime: timestampFromDate(revoked.occurTime ?? new Date()),
    customerId,
    jwtIds: revoked.jwtIds ?? [],
    sessionIds: revoked.sessionIds ?? [],
    expireTime: timestampFromDate(revoked.expireTime),
  });
  await publish(
    identitySubjects(subjectPrefix).tokensRevoked({ customerId }),
    TokensRevokedSchema.typeName,
    toBinary(TokensRevokedSchema, event),
    conn,
  );
  return eventId;
}

async function publish(subject: string, type: string, payload: Uint8Array, conn: NatsConnection = nc) {
  const h = await eventHeaders(keys.signer, subject, payload, {
    id: id(),
    type,
    source: "identity-service",
    time: new Date(),
    subject: subject.split(".").at(-1) ?? "",
  });
  await jetstream(conn).publish(subject, payload, { headers: h });
}

function startList(
  source: RevocationSource | string,
  name: string,
  more: Partial<Omit<RevocationListOptions, "nats" | "natsUrl">> = {},
) {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split("\n").filter(Boolean));
      done();
    },
  });
  // The list takes any pino-compatible logger.
  const logger = pino({ name, level: "debug" }, destination);
  const list = createRevocationList({
    ...(typeof source === "string" ? { natsUrl: source } : source),
    stream,
    subjectPrefix,
    lookbackMs: 60_000,
    skewMs: 1_000,
    maxRetryMs: 500,
    verifier,
    logger,
    ...more,
  });
  lists.push(list);
  list.start();
  const messages = () =>
    lines.map((l) => JSON.parse(l) as { level: number; msg: string; from?: unknown; reason?: string });
  return { list, messages };
}

const inFuture = (ms = 60_000) => new Date(Date.now() + ms);

describe("the revocation list", () => {
  it("waits for the stream, saying so once, then holds what is in force and follows new events", async () => {
    const { list, messages } = startList(sharedNatsUrl, "waiting");
    await sleep(2_000); // four attempts at least, at maxRetryMs
    expect(list.subscribed).toBe(false);
    // Nothing can be missed while there is no stream: no warning.
    expect(messages().filter((m) => m.level >= 30)).toEqual([
      expect.objectContaining({ level: 30, msg: "no revocations stream yet; reading it once it exists" }),
    ]);

    // Published before the list could read: still caught up, being within the lookback.
    await jsm.streams.add({ name: stream, subjects: [`${subjectPrefix}.>`] });
    const early = { jti: id(), sid: id() };
    await publishRevoked({ jwtIds: [early.jti], sessionIds: [early.sid], expireTime: inFuture() });
    const expired = id();
    await publishRevoked({ jwtIds: [expired], expireTime: new Date(Date.now() - 5_000) });
    // Another event type on a matching subject, and garbage, are skipped.
    await publish(
      `${subjectPrefix}.token.revoked.x`,
      CustomerAuthenticatedSchema.typeName,
      toBinary(CustomerAuthenticatedSchema, create(CustomerAuthenticatedSchema, { customerId: id() })),
    );
    await publish(`${subjectPrefix}.token.revoked.y`, TokensRevokedSchema.typeName, new Uint8Array([0xff, 0xff]));

    await until("the early revocation", () => isRevoked(list, { tokenId: early.jti }));
    expect(isRevoked(list, { tokenId: id(), sessionId: early.sid })).toBe(true);
    expect(isRevoked(list, { tokenId: early.sid })).toBe(false);
    expect(isRevoked(list, { tokenId: id(), sessionId: early.jti })).toBe(false);
    expect(isRevoked(list, { tokenId: expired })).toBe(false);
    expect(list.subscribed).toBe(true);

    const live = id();
    await publishRevoked({ sessionIds: [live], expireTime: inFuture() });
    await until("the live revocation", () => isRevoked(list, { tokenId: id(), sessionId: live }));
    expect(list.size).toBe(3);
    expect(messages().filter((m) => m.msg === "reading token revocations")).toHaveLength(1);
    expect(messages().filter((m) => m.level >= 40)).toEqual([
      expect.objectContaining({ msg: "TokensRevoked event ignored", reason: "undecodable" }),
    ]);
  });

  it("starts over when the stream is deleted and created again", async () => {
    const { list } = startList(sharedNatsUrl, "recreated");
    await until("the subscription", () => list.subscribed);
    await publishRevoked({ jwtIds: [id()], expireTime: inFuture() });
    await until("the first revocation", () => list.size > 0);
    await jsm.streams.delete(stream);
    await jsm.streams.add({ name: stream, subjects: [`${subjectPrefix}.>`] });
    // Sequence 1 again, below what the list had read.
    const again = id();
    await publishRevoked({ jwtIds: [again], expireTime: inFuture() });
    await until("the revocation in the new stream", () => isRevoked(list, { tokenId: again }), 15_000);
  });

  it("warns once while NATS is unreachable, retrying quietly, and stops promptly", async () => {
    const { list, messages } = startList(`nats://127.0.0.1:${await freePort()}`, "no-nats");
    await sleep(1_500);
    expect(list.subscribed).toBe(false);
    expect(messages().filter((m) => m.level >= 40)).toEqual([
      expect.objectContaining({ level: 40, msg: expect.stringMatching(/^cannot read token revocations; /) }),
    ]);
    const started = Date.now();
    await list.stop();
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it("stops promptly while subscribed", async () => {
    const { list } = startList(sharedNatsUrl, "subscribed");
    await until("the subscription", () => list.subscribed);
    const started = Date.now();
    await list.stop();
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(list.subscribed).toBe(false);
  });
});

describe("the revocation list on the caller's NATS connection", () => {
  it("follows revocations and leaves the connection open when it stops", async () => {
    const conn = await connect({ servers: sharedNatsUrl });
    try {
      const { list } = startList({ nats: conn }, "shared");
      await until("the subscription", () => list.subscribed);
      const revoked = id();
      await publishRevoked({ jwtIds: [revoked], expireTime: inFuture() });
      await until("the revocation", () => isRevoked(list, { tokenId: revoked }));
      const started = Date.now();
      await list.stop();
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(conn.isClosed()).toBe(false);
      await expect(conn.flush()).resolves.toBeUndefined();
    } finally {
      await conn.close();
    }
  });

  it("survives a NATS restart, resuming after the last event it applied", async () => {
    await using nats = await startPrivateNats();
    const conn = await connect({ servers: nats.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    try {
      await (await jetstreamManager(conn)).streams.add({ name: stream, subjects: [`${subjectPrefix}.>`] });
      const { list, messages } = startList({ nats: conn }, "restart");
      const before = id();
      await publishRevoked({ jwtIds: [before], expireTime: inFuture() }, conn);
      await until("the first revocation", () => isRevoked(list, { tokenId: before }));

      await nats.kill();
      await until("the consumer to end", () => !list.subscribed);
      await nats.start();
      const after = id();
      // JetStream answers a moment after the server accepts connections again.
      await expect
        .poll(
          () =>
            publishRevoked({ jwtIds: [after], expireTime: inFuture() }, conn).then(
              () => true,
              () => false,
            ),
          {
            timeout: 10_000,
            interval: 200,
          },
        )
        .toBe(true);
      await until("the revocation after the restart", () => isRevoked(list, { tokenId: after }), 15_000);
      expect(isRevoked(list, { tokenId: before })).toBe(true);
      // From the lookback at start, then after sequence 1, the one event applied before the restart.
      const reading = messages().filter((m) => m.msg === "reading token revocations");
      expect(reading.map((m) => m.from)).toEqual([expect.any(String), 2]);
      expect(messages().filter((m) => m.level >= 40)).toEqual([
        expect.objectContaining({ level: 40, msg: expect.stringMatching(/^NATS connection lost; /) }),
      ]);
      await list.stop();
      expect(conn.isClosed()).toBe(false);
    } finally {
      await conn.close();
    }
  });

  it("says once that it stopped following when the caller closed the connection", async () => {
    const conn = await connect({ servers: sharedNatsUrl });
    const { list, messages } = startList({ nats: conn }, "closed");
    await until("the subscription", () => list.subscribed);
    await conn.close();
    const closed = "the NATS connection was closed; token revocations are no longer followed";
    await until("the warning", () => messages().some((m) => m.msg === closed));
    await sleep(1_000); // two retry periods: nothing more is attempted
    expect(messages().filter((m) => m.level >= 40)).toEqual([expect.objectContaining({ level: 40, msg: closed })]);
    expect(list.subscribed).toBe(false);
    const started = Date.now();
    await list.stop();
    expect(Date.now() - started).toBeLessThan(500);
  });
});
