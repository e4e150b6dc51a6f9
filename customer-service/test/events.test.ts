/**
 * CustomerRegistered and CustomerUpdated on JetStream, as a consumer sees
 * them: subjects, the CloudEvents headers DESIGN.md lists, payloads that
 * decode with the generated schemas and carry the full profile, versions in
 * order; and nothing at all for an update that changes nothing.
 */
import { randomUUID } from "node:crypto";
import { type DescMessage, fromBinary, type MessageShape } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import type { Customer } from "@customer-platform/gen/customer/v1/customer_pb.js";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { CustomerRegisteredSchema, CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { type JetStreamManager, type JsMsg, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer } from "../../test/support/clients.js";
import { customerEmail, startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { waitForOutboxEmpty } from "../../test/support/outbox.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";
import { cloudEventHeaders, headersOf, readSubject, waitForStream } from "../../test/support/streams.js";

const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/;

let issuer: TestIssuer;
let svc: RunningCustomerService;
let nc: NatsConnection;
let jsm: JetStreamManager;

beforeAll(async () => {
  issuer = await startTestIssuer();
  svc = await startCustomerService({ IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl });
  nc = await connect({ servers: svc.natsUrl });
  jsm = await jetstreamManager(nc);
  await waitForStream(jsm, svc.streams.stream);
});

afterAll(async () => {
  await nc?.close();
  await svc?.close();
  await issuer?.close();
});

const client = () => svc.clients.client(CustomerService, "grpc");

async function register(): Promise<{ id: string; token: string; customer: Customer }> {
  const id = randomUUID();
  const token = await issuer.customer(id);
  const res = await client().registerCustomer(
    {
      givenName: "Ada",
      familyName: "Lovelace",
      phoneNumber: "+4915123456789",
      address: {
        addressLines: ["1 Analytical St", "Flat 2"],
        locality: "London",
        region: "",
        postalCode: "N1 9GU",
        countryCode: "GB",
      },
    },
    bearer(token),
  );
  if (!res.customer) throw new Error("no customer");
  return { id, token, customer: res.customer };
}

async function messageCount(): Promise<number> {
  return (await jsm.streams.info(svc.streams.stream)).state.messages;
}

/** Every event of one customer, read from the start by an ordered consumer; ends when none arrives within 1 s. */
async function eventsOf(customerId: string, expected: number): Promise<JsMsg[]> {
  return (await readSubject(nc, svc.streams.stream, `${svc.streams.subjectPrefix}.*.${customerId}`)).all(expected);
}

function dateOf(ts: Timestamp | undefined): Date {
  if (!ts) throw new Error("timestamp missing");
  return timestampDate(ts);
}

/** The milliseconds a UUIDv7 was minted at (its first 48 bits). */
const uuidv7Millis = (id: string) => Number.parseInt(id.replaceAll("-", "").slice(0, 12), 16);

/** Decodes msg as schema and checks every header against the event. */
function decodeAndCheck<Desc extends typeof CustomerRegisteredSchema | typeof CustomerUpdatedSchema>(
  msg: JsMsg,
  schema: Desc,
  customerId: string,
): MessageShape<Desc> {
  const event = fromBinary(schema as DescMessage, msg.data) as MessageShape<Desc>;
  expect(event.eventId).toMatch(UUID_V7);
  const occurred = dateOf(event.occurTime);
  // The id is minted from the same clock, in the same transaction.
  expect(Math.abs(uuidv7Millis(event.eventId) - occurred.getTime())).toBeLessThan(1_000);
  const headers = headersOf(msg);
  expect(headers).toEqual(
    cloudEventHeaders({
      id: event.eventId,
      type: schema.typeName,
      source: "customer-service",
      time: expect.stringMatching(RFC3339),
      subject: customerId,
    }),
  );
  expect(new Date(headers["ce-time"]?.[0] ?? "").getTime()).toBe(occurred.getTime());
  return event;
}

describe("customer events", () => {
  it("delivers CustomerRegistered (version 1) then CustomerUpdated (version 2) with headers and full profile", async () => {
    const { id, token, customer: registered } = await register();
    const upd = await client().updateCustomer(
      {
        customer: { customerId: id, givenName: "Augusta" },
        updateMask: { paths: ["given_name"] },
        expectedVersion: 1n,
      },
      bearer(token),
    );
    const updated = upd.customer;
    if (!updated) throw new Error("no customer");

    const msgs = await eventsOf(id, 2);
    expect(msgs.map((m) => m.subject)).toEqual([
      `${svc.streams.subjectPrefix}.registered.${id}`,
      `${svc.streams.subjectPrefix}.updated.${id}`,
    ]);
    const [first, second] = msgs as [JsMsg, JsMsg];
    expect(first.seq).toBeLessThan(second.seq);

    const reg = decodeAndCheck(first, CustomerRegisteredSchema, id);
    expect(reg.$typeName).toBe("customer.v1.CustomerRegistered");
    // The full snapshot, equal to what RegisterCustomer answered.
    expect(reg.customer).toEqual(registered);
    expect(reg.customer).toMatchObject({
      customerId: id,
      email: customerEmail(id),
      givenName: "Ada",
      familyName: "Lovelace",
      phoneNumber: "+4915123456789",
      address: {
        addressLines: ["1 Analytical St", "Flat 2"],
        locality: "London",
        region: "",
        postalCode: "N1 9GU",
        countryCode: "GB",
      },
      version: 1n,
    });
    expect(dateOf(reg.occurTime)).toEqual(dateOf(registered.createTime));

    const change = decodeAndCheck(second, CustomerUpdatedSchema, id);
    expect(change.$typeName).toBe("customer.v1.CustomerUpdated");
    expect(change.updateMask?.paths).toEqual(["given_name"]);
    expect(change.customer).toEqual(updated);
    expect(change.customer).toMatchObject({
      customerId: id,
      givenName: "Augusta",
      familyName: "Lovelace",
      version: 2n,
    });
    expect(change.customer?.createTime).toEqual(registered.createTime);
    expect(dateOf(change.occurTime)).toEqual(dateOf(updated.updateTime));
    expect(change.eventId).not.toBe(reg.eventId);
    expect(change.eventId > reg.eventId).toBe(true);
  });

  it("names only the fields whose values changed in update_mask", async () => {
    const { id, token } = await register();
    await client().updateCustomer(
      {
        customer: { customerId: id, givenName: "Ada", familyName: "Byron" },
        updateMask: { paths: ["given_name", "family_name", "phone_number"] },
      },
      bearer(token),
    );
    const msgs = await eventsOf(id, 2);
    expect(msgs).toHaveLength(2);
    const change = decodeAndCheck(msgs[1] as JsMsg, CustomerUpdatedSchema, id);
    expect(change.updateMask?.paths).toEqual(["family_name", "phone_number"]);
    expect(change.customer).toMatchObject({ familyName: "Byron", version: 2n });
    expect(change.customer?.phoneNumber).toBeUndefined();
  });

  it("publishes nothing for an update that changes nothing", async () => {
    const { id, token } = await register();
    await waitForOutboxEmpty(svc.database.url);
    const before = await messageCount();
    const sql = svc.database.sql;
    const [{ n: rowsBefore }] = await sql<[{ n: number }]>`select count(*)::int as n from outbox`;

    const res = await client().updateCustomer(
      {
        customer: { customerId: id, givenName: " Ada ", familyName: "Lovelace" },
        updateMask: { paths: ["given_name", "family_name"] },
        expectedVersion: 1n,
      },
      bearer(token),
    );
    expect(res.customer?.version).toBe(1n);
    const [{ n: rowsAfter }] = await sql<[{ n: number }]>`select count(*)::int as n from outbox`;
    expect(rowsAfter).toBe(rowsBefore);
    await waitForOutboxEmpty(svc.database.url);
    expect(await messageCount()).toBe(before);

    // The pipeline works: a real change adds exactly one event, so nothing above was merely late.
    await client().updateCustomer(
      { customer: { customerId: id, givenName: "Augusta" }, updateMask: { paths: ["given_name"] } },
      bearer(token),
    );
    await waitForOutboxEmpty(svc.database.url);
    expect(await messageCount()).toBe(before + 1);
    const msgs = await eventsOf(id, 2);
    expect(msgs.map((m) => m.subject.split(".").at(-2))).toEqual(["registered", "updated"]);
    expect(decodeAndCheck(msgs[1] as JsMsg, CustomerUpdatedSchema, id).customer?.version).toBe(2n);
  });

  it("delivers several updates of one customer in version order, one event each", async () => {
    const { id, token } = await register();
    for (let i = 0; i < 5; i++) {
      await client().updateCustomer(
        { customer: { customerId: id, givenName: `Name ${i}` }, updateMask: { paths: ["given_name"] } },
        bearer(token),
      );
    }
    const msgs = await eventsOf(id, 6);
    const versions = msgs.map((m, i) =>
      i === 0
        ? decodeAndCheck(m, CustomerRegisteredSchema, id).customer?.version
        : decodeAndCheck(m, CustomerUpdatedSchema, id).customer?.version,
    );
    expect(versions).toEqual([1n, 2n, 3n, 4n, 5n, 6n]);
    const last = fromBinary(CustomerUpdatedSchema, (msgs[5] as JsMsg).data);
    expect(last.customer?.givenName).toBe("Name 4");
  });
});
