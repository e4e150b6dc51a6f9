/**
 * Events that anyone who can reach NATS could forge (issue 11), published
 * straight to NATS with a plain client, as an attacker would: a TokensRevoked
 * naming a valid token, unsigned, signed with a key of the attacker's own,
 * or carrying a genuine signature over another payload or other attributes,
 * leaves the token accepted at the customer service, while a genuine
 * revocation still works. A CustomerUpdated with a huge version never
 * reaches an SDK consumer or the example read model, and the genuine next
 * update is applied. A signed revocation naming too many ids is ignored. A
 * customer service that just started is not ready until it has applied the
 * revocations of the lookback window: the first call after ready with a
 * token revoked before it started is refused.
 */
import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { TokensRevokedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { CE_SUBJECT, CE_TYPE } from "@customer-platform/sdk/cloudevents";
import { EventSignatureError, type EventSigner } from "@customer-platform/sdk/event-signing";
import { consumeEvents } from "@customer-platform/sdk/events";
import { customerSubjects, identitySubjects } from "@customer-platform/sdk/subjects";
import { type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers, type MsgHdrs, type NatsConnection } from "@nats-io/transport-node";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AppliedEvent, readCustomer, startReadModel } from "../../examples/read-model/read-model.js";
import { bearer, failure, rpcError } from "../support/clients.js";
import { publishEvent, serviceEventSigner, startTestEventKeys, verifierFor } from "../support/events.js";
import { type Platform, type SignedUp, startPlatform } from "../support/platform.js";
import { connectSql, createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { startCustomerService } from "../support/services.js";
import { sleep, until } from "../support/timing.js";

const PASSWORD = "correct horse battery staple";
const REVOKED = rpcError("access token revoked", Code.Unauthenticated);
const PROPAGATION = { timeout: 5_000, interval: 50 };

let platform: Platform;
let nc: NatsConnection;
let js: JetStreamClient;
let jsm: JetStreamManager;

beforeAll(async () => {
  platform = await startPlatform();
  // A plain NATS client, as an attacker on the network would have.
  nc = await connect({ servers: platform.customer.natsUrl });
  js = jetstream(nc);
  jsm = await jetstreamManager(nc);
});

afterAll(async () => {
  await nc?.close();
  await platform?.close();
});

const read = (c: SignedUp, token = c.accessToken) =>
  platform.customers().getCustomer({ customerId: c.customerId }, bearer(token));
const accepted = (c: SignedUp, token = c.accessToken) =>
  expect(read(c, token)).resolves.toMatchObject({ customer: { customerId: c.customerId } });

/** The `jti` and `sid` of an access token. */
function claims(token: string): { jti: string; sid: string } {
  return JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()) as { jti: string; sid: string };
}

/** A TokensRevoked naming c's token and session, as the identity service would write it. */
function revocationOf(c: SignedUp, more: { jwtIds?: string[]; expireTime?: Date } = {}) {
  const { jti, sid } = claims(c.accessToken);
  return create(TokensRevokedSchema, {
    eventId: randomUUID(),
    occurTime: timestampFromDate(new Date()),
    customerId: c.customerId,
    jwtIds: more.jwtIds ?? [jti],
    sessionIds: [sid],
    expireTime: timestampFromDate(more.expireTime ?? new Date(Date.now() + 15 * 60_000)),
  });
}

/** Publishes a TokensRevoked on c's revocation subject, signed by signer (unsigned without). */
async function publishRevocation(c: SignedUp, event: ReturnType<typeof revocationOf>, signer?: EventSigner) {
  const subject = identitySubjects(platform.identity.streams.subjectPrefix).tokensRevoked({ customerId: c.customerId });
  await publishEvent(js, signer, subject, toBinary(TokensRevokedSchema, event), {
    id: event.eventId,
    type: TokensRevokedSchema.typeName,
    source: "identity-service",
    time: new Date(),
    subject: c.customerId,
  });
}

/** A stored message's headers, copied (without Nats-Msg-Id) so they can be published again. */
function copyHeaders(from: MsgHdrs): MsgHdrs {
  const h = headers();
  for (const key of from.keys()) if (key !== "Nats-Msg-Id") h.set(key, from.get(key));
  return h;
}

const ignoredReasons = (lines: readonly string[]) =>
  lines
    .map((l) => JSON.parse(l) as { msg: string; reason?: string })
    .filter((l) => l.msg === "TokensRevoked event ignored")
    .map((l) => l.reason);

describe("forged TokensRevoked", () => {
  it("leaves a valid token accepted, whatever the forgery, while a genuine revocation works", async () => {
    const c = await platform.newCustomer(PASSWORD, "forged-revocation");
    await accepted(c);
    const revocations = platform.customer.server.revocations;
    const rejectedBefore = revocations.rejected;

    // Unsigned, and signed with the attacker's own key.
    await publishRevocation(c, revocationOf(c));
    const attacker = await startTestEventKeys();
    try {
      await publishRevocation(c, revocationOf(c), attacker.signer);
    } finally {
      await attacker.close();
    }

    // A genuine revocation of someone else's token, its signature then reused.
    const other = await platform.newCustomer(PASSWORD, "forged-revocation-other");
    await platform.auth().revokeToken({ token: other.accessToken });
    await expect.poll(() => failure(read(other)), PROPAGATION).toMatchObject(REVOKED);
    const revokedSubjects = identitySubjects(platform.identity.streams.subjectPrefix);
    const genuine = await jsm.streams.getMessage(platform.identity.streams.stream, {
      last_by_subj: revokedSubjects.tokensRevoked({ customerId: other.customerId }),
    });
    if (!genuine) throw new Error("no genuine TokensRevoked");
    const target = revokedSubjects.tokensRevoked({ customerId: c.customerId });
    // Its payload replaced by one naming c's token (on its own subject: every attribute as signed).
    await js.publish(genuine.subject, toBinary(TokensRevokedSchema, revocationOf(c)), {
      headers: copyHeaders(genuine.header),
      msgID: randomUUID(),
    });
    // Its attributes changed: ce-subject (and the NATS subject), then ce-type on a sign-in event.
    const moved = copyHeaders(genuine.header);
    moved.set(CE_SUBJECT, c.customerId);
    await js.publish(target, genuine.data, { headers: moved, msgID: randomUUID() });
    await platform.auth().authenticateCustomer({ email: c.email, password: c.password });
    const signedIn = { last_by_subj: revokedSubjects.customerAuthenticated(c.customerId) };
    await until("the sign-in event", () =>
      jsm.streams.getMessage(platform.identity.streams.stream, signedIn).then(Boolean, () => false),
    );
    const signIn = await jsm.streams.getMessage(platform.identity.streams.stream, signedIn);
    if (!signIn) throw new Error("no CustomerAuthenticated");
    const retyped = copyHeaders(signIn.header);
    retyped.set(CE_TYPE, TokensRevokedSchema.typeName);
    await js.publish(target, signIn.data, { headers: retyped, msgID: randomUUID() });

    await until("five forgeries ignored", () => revocations.rejected === rejectedBefore + 5);
    await accepted(c);
    expect(ignoredReasons(platform.customer.logs.lines).slice(-5)).toEqual([
      "unsigned",
      "unknown_key",
      "bad_signature",
      "attributes_mismatch",
      "attributes_mismatch",
    ]);

    await platform.auth().revokeToken({ token: c.accessToken });
    await expect.poll(() => failure(read(c)), PROPAGATION).toMatchObject(REVOKED);
  });

  it("ignores a revocation signed with the identity service's real key that names more than 1,000 ids", async () => {
    const c = await platform.newCustomer(PASSWORD, "oversized-revocation");
    const revocations = platform.customer.server.revocations;
    const rejectedBefore = revocations.rejected;
    const signer = await serviceEventSigner(platform.identity.database.url);
    const padding = Array.from({ length: 1_000 }, () => randomUUID());
    await publishRevocation(c, revocationOf(c, { jwtIds: [claims(c.accessToken).jti, ...padding] }), signer);
    await until("the oversized event ignored", () => revocations.rejected === rejectedBefore + 1);
    await accepted(c);
    expect(ignoredReasons(platform.customer.logs.lines).at(-1)).toBe("too many ids");
    // The same key's ordinary revocation, even one that claims to last until year 9999, is honoured.
    await publishRevocation(c, revocationOf(c, { expireTime: new Date("9999-12-31T23:59:59Z") }), signer);
    await expect.poll(() => failure(read(c)), PROPAGATION).toMatchObject(REVOKED);
  });
});

describe("forged CustomerUpdated", () => {
  let readDb: TestDatabase;
  let sql: postgres.Sql;

  beforeAll(async () => {
    readDb = await createTestDatabase("forged_read_model");
    sql = connectSql(readDb.url, 2);
  });
  afterAll(async () => {
    await sql?.end();
    await readDb?.drop();
  });

  it("with a huge version reaches neither an SDK consumer nor the read model; the genuine next update does", async () => {
    const { stream, subjectPrefix } = platform.customer.streams;
    const c = await platform.newCustomer(PASSWORD, "forged-update");
    const subject = customerSubjects(subjectPrefix).updated(c.customerId);
    const applied: AppliedEvent[] = [];
    const errors: unknown[] = [];
    const readModel = await startReadModel({
      sql,
      js,
      stream,
      consumer: `forged-read-model-${randomUUID().slice(0, 8)}`,
      subjects: [customerSubjects(subjectPrefix).all],
      verifier: verifierFor("customer-service", platform.customer.url),
      onApplied: (e) => applied.push(e),
      onError: (err) => errors.push(err),
    });
    const seen: bigint[] = [];
    const consumer = await consumeEvents({
      js,
      stream,
      consumer: `forged-sdk-${randomUUID().slice(0, 8)}`,
      subjects: [subject],
      verifier: verifierFor("customer-service", platform.customer.url),
      handlers: {
        "customer.v1.CustomerUpdated": async (e) => {
          seen.push(e.customer?.version ?? 0n);
        },
      },
    });
    try {
      await until("the registration applied", async () => (await readCustomer(sql, c.customerId))?.version === 1n);
      const held = await readCustomer(sql, c.customerId);
      if (!held) throw new Error("not in the read model");
      const forged = create(CustomerUpdatedSchema, {
        eventId: randomUUID(),
        occurTime: timestampFromDate(new Date()),
        customer: { ...held, givenName: "Mallory", version: 2n ** 62n },
        updateMask: { paths: ["given_name"] },
      });
      const attrs = {
        id: forged.eventId,
        type: CustomerUpdatedSchema.typeName,
        source: "customer-service",
        time: new Date(),
        subject: c.customerId,
      };
      await publishEvent(js, undefined, subject, toBinary(CustomerUpdatedSchema, forged), attrs);
      const attacker = await startTestEventKeys();
      try {
        // Another event id: JetStream would drop a second message with the same Nats-Msg-Id.
        const again = { ...forged, eventId: randomUUID() };
        await publishEvent(js, attacker.signer, subject, toBinary(CustomerUpdatedSchema, again), {
          ...attrs,
          id: again.eventId,
        });
      } finally {
        await attacker.close();
      }
      await until("both forgeries refused", () => consumer.rejected === 2 && readModel.rejected === 2);

      await platform
        .customers()
        .updateCustomer(
          { customer: { customerId: c.customerId, givenName: "Ada 2" }, updateMask: { paths: ["given_name"] } },
          bearer(c.accessToken),
        );
      await until("the genuine update applied", async () => (await readCustomer(sql, c.customerId))?.version === 2n);
      expect(await readCustomer(sql, c.customerId)).toMatchObject({ givenName: "Ada 2", version: 2n });
      await until("the SDK consumer's genuine update", () => seen.length === 1);
      expect(seen).toEqual([2n]);
      expect(applied.filter((e) => e.customerId === c.customerId).map((e) => [e.version, e.applied])).toEqual([
        [1n, true],
        [2n, true],
      ]);
      expect(errors.map((e) => (e instanceof EventSignatureError ? e.reason : e))).toEqual(["unsigned", "unknown_key"]);
    } finally {
      await consumer.stop();
      await readModel.stop();
    }
  });
});

describe("a customer service that just started", () => {
  it("is not ready until it has applied the revocations of the window: the first call after ready is refused", async () => {
    const c = await platform.newCustomer(PASSWORD, "revoked-before-start");
    await platform.auth().revokeToken({ token: c.accessToken });
    await expect.poll(() => failure(read(c)), PROPAGATION).toMatchObject(REVOKED);

    // The identity service's event keys, through a door the test holds shut at first:
    // the new instance cannot verify (so cannot apply) the revocation it replays.
    let open = false;
    const door: Server = createServer((req, res) => {
      if (!open) {
        res.writeHead(503).end();
        return;
      }
      fetch(`${platform.issuer}${req.url ?? ""}`).then(
        async (r) => {
          res.writeHead(r.status, {
            "content-type": r.headers.get("content-type") ?? "application/json",
            "cache-control": r.headers.get("cache-control") ?? "no-store",
          });
          res.end(Buffer.from(await r.arrayBuffer()));
        },
        () => res.writeHead(502).end(),
      );
    });
    await new Promise<void>((resolve) => door.listen(0, "127.0.0.1", resolve));
    const doorUrl = `http://127.0.0.1:${(door.address() as AddressInfo).port}/.well-known/event-keys.json`;
    try {
      await using late = await startCustomerService(
        { IDENTITY_ISSUER: platform.issuer, IDENTITY_EVENT_KEYS_URL: doorUrl, LOG_LEVEL: "warn" },
        { identityStreams: platform.identity.streams },
      );
      const readyz = async () => (await fetch(`${late.url}/readyz`)).status;
      const customers = late.clients.client(CustomerService);
      const lateRead = () => customers.getCustomer({ customerId: c.customerId }, bearer(c.accessToken));
      // Two probe periods with the database up: still not ready, nothing caught up.
      await sleep(4_500);
      expect(await readyz()).toBe(503);
      expect(late.server.revocations.caughtUp).toBe(false);
      // What readiness keeps traffic away from: the revoked token still passes here (its own
      // database has no profile, so a valid token gets NOT_FOUND).
      await expect(lateRead()).rejects.toMatchObject({ code: Code.NotFound });

      open = true;
      await until("ready", async () => (await readyz()) === 200, 15_000);
      await expect(lateRead()).rejects.toMatchObject(REVOKED);
    } finally {
      await new Promise<void>((resolve) => {
        door.closeAllConnections();
        door.close(() => resolve());
      });
    }
  });
});
