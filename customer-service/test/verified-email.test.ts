/**
 * The profile's email is the identity's verified email: it follows
 * identity.v1.CustomerEmailVerified (signed by the identity service,
 * consumed durably, applied once per version), and no caller can set
 * another one or learn whose an address is.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { CustomerEmailVerifiedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { customerSubjects } from "@customer-platform/sdk/subjects";
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, rpcError } from "../../test/support/clients.js";
import { startTestEventKeys } from "../../test/support/events.js";
import {
  type CutOffService,
  type IdentityFeed,
  type PublishOptions,
  startCutOffService,
  startIdentityFeed,
} from "../../test/support/identity-feed.js";
import { customerEmail, type TestIssuer } from "../../test/support/issuer.js";
import { deleteStreams, type StreamNames, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { createTestDatabase, holdLock } from "../../test/support/postgres.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";
import { readSubject, waitForStream } from "../../test/support/streams.js";
import { sleep, until } from "../../test/support/timing.js";

const DURABLE = "customer-service-identity";
/** The consumer's first event waits for the identity service's keys to be fetched: more than poll's 1 s default. */
const POLL = { timeout: 15_000 };

let feed: IdentityFeed;
let issuer: TestIssuer;
let identity: StreamNames;
let svc: RunningCustomerService;
let nc: NatsConnection;
let jsm: JetStreamManager;

beforeAll(async () => {
  feed = await startIdentityFeed();
  ({ issuer, streams: identity, nc, jsm } = feed);
  svc = await startCustomerService(feed.env(), { identityStreams: identity });
  // The relay creates the stream at its first step; the tests read it from their start.
  await waitForStream(jsm, svc.streams.stream);
});

afterAll(async () => {
  await svc?.close();
  await feed?.close();
});

/** Publishes a CustomerEmailVerified as the identity service does; resolves with its stream sequence. */
function publishVerified(customerId: string, email: string, version: number, opts: PublishOptions = {}) {
  const fields = { email, emailVersion: BigInt(version) };
  return feed.publish(
    CustomerEmailVerifiedSchema,
    customerId,
    fields,
    (s) => s.customerEmailVerified(customerId),
    opts,
  );
}

/** Waits until the service's durable consumer has settled every event up to stream sequence `seq`. */
const consumed = (seq: number, streams: StreamNames = identity, durable = DURABLE, timeoutMs?: number) =>
  feed.consumed(seq, durable, streams, timeoutMs);

const client = () => svc.clients.client(CustomerService);
const profile = { givenName: "Ada", familyName: "Lovelace" };

async function register(email?: string) {
  const id = crypto.randomUUID();
  const token = await issuer.customer(id, email);
  const res = await client().registerCustomer(profile, bearer(token));
  return { id, token, customer: res.customer };
}

/** The update masks of the CustomerUpdated events the service wrote for `id`, oldest first. */
async function updateMasks(service: RunningCustomerService, id: string): Promise<string[][]> {
  const rows = await service.database.sql<{ payload: Uint8Array }[]>`
    select payload from outbox where ce_subject = ${id} and type = ${CustomerUpdatedSchema.typeName} order by id`;
  return rows.map((r) => fromBinary(CustomerUpdatedSchema, r.payload).updateMask?.paths ?? []);
}

async function storedEmail(service: RunningCustomerService, id: string) {
  const [row] = await service.database.sql<[{ email: string; email_version: string }?]>`
    select email, email_version::text from verified_emails where customer_id = ${id}`;
  return row && { email: row.email, version: Number(row.email_version) };
}

describe("the profile follows CustomerEmailVerified", () => {
  it("takes a newer verified email: a new version, and a CustomerUpdated with update_mask [email]", async () => {
    const { id, token } = await register();
    const updates = await readSubject(nc, svc.streams.stream, customerSubjects(svc.streams.subjectPrefix).updated(id));
    const email = `moved.${id.slice(0, 8)}@example.com`;
    await publishVerified(id, email, 2);
    await expect
      .poll(async () => (await client().getCustomer({ customerId: id }, bearer(token))).customer, POLL)
      .toMatchObject({ email, version: 2n, givenName: "Ada" });
    const published = fromBinary(CustomerUpdatedSchema, (await updates.next()).data);
    expect(published.updateMask?.paths).toEqual(["email"]);
    expect(published.customer).toMatchObject({ customerId: id, email, version: 2n, familyName: "Lovelace" });
    expect(await storedEmail(svc, id)).toEqual({ email, version: 2 });
  });

  it("changes nothing for the same version again, or for a version it has already passed", async () => {
    const { id, token } = await register();
    const newest = `newest.${id.slice(0, 8)}@example.com`;
    await publishVerified(id, newest, 4);
    // The same version once more (a redelivery under another id), then an older one.
    await publishVerified(id, newest, 4);
    await publishVerified(id, `again.${id.slice(0, 8)}@example.com`, 4);
    await consumed(await publishVerified(id, `older.${id.slice(0, 8)}@example.com`, 3));
    const got = await client().getCustomer({ customerId: id }, bearer(token));
    expect(got.customer).toMatchObject({ email: newest, version: 2n });
    expect(await updateMasks(svc, id)).toEqual([["email"]]);
    expect(await storedEmail(svc, id)).toEqual({ email: newest, version: 4 });
  });

  it("writes no event for a verified email the profile already has", async () => {
    const { id, token } = await register();
    // Version 1 of sign-up, arriving after the registration that used the token's claim.
    await consumed(await publishVerified(id, customerEmail(id), 1));
    const got = await client().getCustomer({ customerId: id }, bearer(token));
    expect(got.customer).toMatchObject({ email: customerEmail(id), version: 1n });
    expect(await updateMasks(svc, id)).toEqual([]);
    expect(await storedEmail(svc, id)).toEqual({ email: customerEmail(id), version: 1 });
  });

  it("remembers the email of a customer without a profile, for RegisterCustomer, whatever the token says", async () => {
    const id = crypto.randomUUID();
    const verified = `Verified.${id.slice(0, 8)}@example.com`;
    await consumed(await publishVerified(id, verified, 3));
    expect(await storedEmail(svc, id)).toEqual({ email: verified, version: 3 });
    // A token issued before the change still carries the old address.
    const stale = await issuer.customer(id, `old.${id.slice(0, 8)}@example.com`);
    await expect(
      client().registerCustomer({ ...profile, email: `old.${id.slice(0, 8)}@example.com` }, bearer(stale)),
    ).rejects.toMatchObject(rpcError("email: value must be the customer's verified email", Code.InvalidArgument));
    const res = await client().registerCustomer({ ...profile, email: verified.toLowerCase() }, bearer(stale));
    expect(res.customer).toMatchObject({ customerId: id, email: verified, version: 1n });
    // And a token without an email at all.
    const other = crypto.randomUUID();
    await consumed(await publishVerified(other, `quiet.${other.slice(0, 8)}@example.com`, 1));
    const quiet = await client().registerCustomer(profile, bearer(await issuer.issue({ sub: other })));
    expect(quiet.customer?.email).toBe(`quiet.${other.slice(0, 8)}@example.com`);
  });

  it("registers with an email being verified meanwhile: RegisterCustomer waits for the consumer's transaction", async () => {
    const id = crypto.randomUUID();
    const verified = `racing.${id.slice(0, 8)}@example.com`;
    // The consumer's transaction for a customer without a profile, stopped before it commits:
    // it has stored the email, and found no profile to change.
    const consumer = await holdLock(
      svc.database.sql,
      (tx) => tx`insert into verified_emails (customer_id, email, email_version, updated_at)
        values (${id}, ${verified}, 2, now())`,
      10_000,
    );
    let settled = false;
    const registering = client()
      .registerCustomer(profile, bearer(await issuer.customer(id)))
      .finally(() => {
        settled = true;
      });
    // Registering with the token's older email now would leave the profile behind for good.
    await sleep(500);
    expect(settled).toBe(false);
    await consumer.release();
    expect((await registering).customer).toMatchObject({ email: verified, version: 1n });
  });

  it("applies no event that the identity service did not sign: unsigned or signed with another key", async () => {
    const { id, token } = await register();
    const stranger = await startTestEventKeys();
    try {
      await publishVerified(id, `unsigned.${id.slice(0, 8)}@example.com`, 5, { signer: null });
      await consumed(await publishVerified(id, `forged.${id.slice(0, 8)}@example.com`, 6, { signer: stranger.signer }));
    } finally {
      await stranger.close();
    }
    const got = await client().getCustomer({ customerId: id }, bearer(token));
    expect(got.customer).toMatchObject({ email: customerEmail(id), version: 1n });
    expect(await updateMasks(svc, id)).toEqual([]);
    expect(await storedEmail(svc, id)).toEqual({ email: customerEmail(id), version: 0 });
    const refused = svc.logs.lines
      .map((l) => JSON.parse(l) as { msg: string; reason?: string; subject?: string })
      .filter((l) => l.msg.startsWith("identity event refused") && l.subject?.endsWith(id));
    expect(refused.map((l) => l.reason)).toEqual(["unsigned", "unknown_key"]);
    // A genuine event after them is applied: the consumer did not stop at them.
    await publishVerified(id, `genuine.${id.slice(0, 8)}@example.com`, 7);
    await expect
      .poll(async () => (await client().getCustomer({ customerId: id }, bearer(token))).customer?.email, POLL)
      .toBe(`genuine.${id.slice(0, 8)}@example.com`);
  });
});

describe("while NATS is unreachable", () => {
  let cutOff: CutOffService;
  const durable = "email-outage";

  beforeAll(async () => {
    cutOff = await startCutOffService(feed, durable);
  });

  afterAll(async () => {
    await cutOff?.close();
  });

  it("applies what was published meanwhile once NATS is back, once", async () => {
    const id = crypto.randomUUID();
    const token = await issuer.customer(id);
    await cutOff.service.clients.client(CustomerService).registerCustomer(profile, bearer(token));
    // The durable consumer exists (the service has bound it) before the outage begins.
    await cutOff.bound();

    cutOff.proxy.cut();
    const email = `during.${id.slice(0, 8)}@example.com`;
    await publishVerified(id, email, 2, { streams: cutOff.streams });
    const last = await publishVerified(id, email, 2, { streams: cutOff.streams });
    // Long enough for a connected consumer to have applied them (it pulls every second at most).
    await sleep(2_000);
    const unchanged = await cutOff.service.clients
      .client(CustomerService)
      .getCustomer({ customerId: id }, bearer(token));
    expect(unchanged.customer?.email).toBe(customerEmail(id));
    cutOff.proxy.restore();

    // An event handed to a pull the cut left behind comes again after the ack wait (10 s).
    await consumed(last, cutOff.streams, durable, 30_000);
    const got = await cutOff.service.clients.client(CustomerService).getCustomer({ customerId: id }, bearer(token));
    expect(got.customer).toMatchObject({ email, version: 2n });
    expect(await updateMasks(cutOff.service, id)).toEqual([["email"]]);
  });
});

describe("across a restart", () => {
  it("stops its consumer before NATS closes, and applies what was published while stopped", async () => {
    const database = await createTestDatabase("customer");
    const streams = uniqueStreamNames("customer");
    const names = await feed.newStream();
    const durable = "email-restart";
    const start = () =>
      startCustomerService(
        { ...feed.env(), CUSTOMER_IDENTITY_CONSUMER: durable },
        { database, streams, identityStreams: names },
      );
    try {
      const first = await start();
      const id = crypto.randomUUID();
      const token = await issuer.customer(id);
      await first.clients.client(CustomerService).registerCustomer(profile, bearer(token));
      await until("the durable consumer", async () => (await jsm.consumers.info(names.stream, durable)) !== null);
      const released: string[] = [];
      first.server.events.on("released", (name) => released.push(name));
      await first.close();
      // Last acquired, first released: after the server (no call writes any more), before NATS.
      const at = (name: string) => released.indexOf(name);
      expect(at("identity events")).toBeGreaterThan(at("http server"));
      expect(at("identity events")).toBeLessThan(at("nats"));

      const email = `while.stopped.${id.slice(0, 8)}@example.com`;
      const seq = await publishVerified(id, email, 2, { streams: names });
      const second = await start();
      try {
        await consumed(seq, names, durable);
        const got = await second.clients.client(CustomerService).getCustomer({ customerId: id }, bearer(token));
        expect(got.customer).toMatchObject({ email, version: 2n });
        expect(await updateMasks(second, id)).toEqual([["email"]]);
      } finally {
        await second.close();
      }
    } finally {
      await database.drop();
      await deleteStreams(sharedNatsUrl, streams.stream, names.stream);
    }
  });
});

describe("no caller sets an email it has not proven", () => {
  it("answers INVALID_ARGUMENT, with a violation on email, for another address than the verified one", async () => {
    const id = crypto.randomUUID();
    const squatted = `someone.else.${id.slice(0, 8)}@example.com`;
    const err = await client()
      .registerCustomer({ ...profile, email: squatted }, bearer(await issuer.customer(id)))
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject(rpcError("email: value must be the customer's verified email", Code.InvalidArgument));
    const [violations] = (err as ConnectError).findDetails(ViolationsSchema);
    expect(violations?.violations.map((v) => [v.field?.elements[0]?.fieldName, v.ruleId])).toEqual([
      ["email", "email.verified"],
    ]);
    const rows = await svc.database.sql`select 1 from customers where customer_id = ${id}`;
    expect(rows.length).toBe(0);
  });

  it("answers INVALID_ARGUMENT the same whether or not another customer has the address", async () => {
    const owner = await register();
    const id = crypto.randomUUID();
    const token = await issuer.customer(id);
    const attempt = (email: string) =>
      client()
        .registerCustomer({ ...profile, email }, bearer(token))
        .catch((e: unknown) => ConnectError.from(e).rawMessage);
    expect(await attempt(customerEmail(owner.id))).toBe(await attempt(`nobody.${id.slice(0, 8)}@example.com`));
  });

  it("answers FAILED_PRECONDITION when no verified email is known", async () => {
    const id = crypto.randomUUID();
    await expect(client().registerCustomer(profile, bearer(await issuer.issue({ sub: id })))).rejects.toMatchObject(
      rpcError(
        "the customer has no verified email: verify it with the identity service first",
        Code.FailedPrecondition,
      ),
    );
    expect(await storedEmail(svc, id)).toBeUndefined();
  });

  it("answers INVALID_ARGUMENT for an update mask naming email, and changes nothing", async () => {
    const { id, token } = await register();
    const err = await client()
      .updateCustomer(
        { customer: { customerId: id, email: `new.${id.slice(0, 8)}@example.com` }, updateMask: { paths: ["email"] } },
        bearer(token),
      )
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toMatchObject({ code: Code.InvalidArgument });
    const [violations] = (err as ConnectError).findDetails(ViolationsSchema);
    expect(violations?.violations.map((v) => [v.field?.elements[0]?.fieldName, v.ruleId])).toEqual([
      ["update_mask", "field_mask.in"],
    ]);
    const got = await client().getCustomer({ customerId: id }, bearer(token));
    expect(got.customer).toMatchObject({ email: customerEmail(id), version: 1n });
  });
});
