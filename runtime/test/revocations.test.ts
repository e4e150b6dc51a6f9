/**
 * The revocation list against the real JetStream: it waits (warning once)
 * for a stream that does not exist yet, reads what is in force from the
 * lookback on, follows new TokensRevoked events, forgets nothing it was told
 * until expire_time and takes nothing else; NATS unreachable at start is
 * retried quietly and a stop is prompt either way.
 */
import { randomUUID } from "node:crypto";
import { Writable } from "node:stream";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { CustomerAuthenticatedSchema, TokensRevokedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { createLogger } from "../src/logger.js";
import { createRevocationList, type RevocationList } from "../src/revocations.js";

const { stream, subjectPrefix } = uniqueStreamNames("identity");
let nc: NatsConnection;
let jsm: JetStreamManager;
const lists: RevocationList[] = [];

beforeAll(async () => {
  nc = await connect({ servers: sharedNatsUrl });
  jsm = await jetstreamManager(nc);
});

afterAll(async () => {
  await Promise.all(lists.map((l) => l.stop()));
  await jsm?.streams.delete(stream).catch(() => false);
  await nc?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const id = () => randomUUID();

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Publishes a TokensRevoked the way the identity service's relay does. */
async function publishRevoked(revoked: { jwtIds?: string[]; sessionIds?: string[]; expireTime: Date }) {
  const customerId = id();
  const eventId = id();
  const event = create(TokensRevokedSchema, {
    eventId,
    occurTime: timestampFromDate(new Date()),
    customerId,
    jwtIds: revoked.jwtIds ?? [],
    sessionIds: revoked.sessionIds ?? [],
    expireTime: timestampFromDate(revoked.expireTime),
  });
  await publish(
    `${subjectPrefix}.token.revoked.${customerId}`,
    TokensRevokedSchema.typeName,
    toBinary(TokensRevokedSchema, event),
  );
}

async function publish(subject: string, type: string, payload: Uint8Array) {
  const h = headers();
  h.set("ce-type", type);
  h.set("content-type", "application/protobuf");
  await jetstream(nc).publish(subject, payload, { headers: h });
}

function startList(natsUrl: string, name: string) {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split("\n").filter(Boolean));
      done();
    },
  });
  const logger = createLogger({ name, level: "debug", destination });
  const list = createRevocationList({
    natsUrl,
    stream,
    subjectPrefix,
    lookbackMs: 60_000,
    skewMs: 1_000,
    maxRetryMs: 500,
    logger,
  });
  lists.push(list);
  list.start();
  const messages = () => lines.map((l) => JSON.parse(l) as { level: number; msg: string });
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

    await until("the early revocation", () => list.isRevoked({ tokenId: early.jti }));
    expect(list.isRevoked({ tokenId: id(), sessionId: early.sid })).toBe(true);
    expect(list.isRevoked({ tokenId: early.sid })).toBe(false);
    expect(list.isRevoked({ tokenId: id(), sessionId: early.jti })).toBe(false);
    expect(list.isRevoked({ tokenId: expired })).toBe(false);
    expect(list.subscribed).toBe(true);

    const live = id();
    await publishRevoked({ sessionIds: [live], expireTime: inFuture() });
    await until("the live revocation", () => list.isRevoked({ tokenId: id(), sessionId: live }));
    expect(list.size).toBe(3);
    expect(messages().filter((m) => m.msg === "reading token revocations")).toHaveLength(1);
    expect(messages().filter((m) => m.level >= 40)).toEqual([
      expect.objectContaining({ msg: "undecodable TokensRevoked event skipped" }),
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
    await until("the revocation in the new stream", () => list.isRevoked({ tokenId: again }), 15_000);
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
