/**
 * Bad input at every layer: oversized messages, garbage bytes (HTTP/1.1,
 * HTTP/2, raw TCP), invalid UTF-8, malformed JSON, deadlines. Each gets a
 * precise answer, the server keeps serving, and stored data stays as it was.
 * Plus the health endpoints.
 */
import { randomBytes, randomUUID } from "node:crypto";
import type http2 from "node:http2";
import { Code } from "@connectrpc/connect";
import type { GetCustomerResponse } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "@customer-platform/gen/grpc/health/v1/health_pb.js";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { bearer, CORE_PROTOCOLS, PROTOCOLS, type Protocol, rpcError } from "../../test/support/clients.js";
import { startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { holdLock } from "../../test/support/postgres.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";
import { envelope, field, grpcRaw, httpPost, rawTcp } from "../../test/support/wire.js";

const MAX_BYTES = 4096;
const PATH = "/customer.v1.CustomerService";

let issuer: TestIssuer;
let svc: RunningCustomerService;
let sql: postgres.Sql;
/** A customer registered first, and GetCustomer's answer for it then. */
let known: { id: string; token: string; snapshot: GetCustomerResponse };

beforeAll(async () => {
  issuer = await startTestIssuer();
  svc = await startCustomerService({
    IDENTITY_ISSUER: issuer.issuer,
    IDENTITY_JWKS_URL: issuer.jwksUrl,
    CUSTOMER_MAX_REQUEST_BYTES: String(MAX_BYTES),
  });
  sql = svc.database.sql;
  const id = randomUUID();
  const token = await issuer.customer(id);
  await svc.clients.client(CustomerService).registerCustomer(
    {
      givenName: "Ada",
      familyName: "Lovelace",
      phoneNumber: "+4915123456789",
      address: { addressLines: ["1 Analytical St"], locality: "London", postalCode: "N1 9GU", countryCode: "GB" },
    },
    bearer(token),
  );
  const snapshot = await svc.clients.client(CustomerService).getCustomer({ customerId: id }, bearer(token));
  known = { id, token, snapshot };
});

afterAll(async () => {
  await svc?.close();
  await issuer?.close();
});

// After each test, whatever it sent and in whatever order the tests run: the known customer is
// unchanged over every protocol and in the table, and a new registration succeeds.
afterEach(async () => {
  for (const protocol of PROTOCOLS) await stillServing(protocol);
  const [row] = await sql<[{ version: string }]>`select version::text from customers where customer_id = ${known.id}`;
  expect(row.version).toBe("1");
  const id = randomUUID();
  const token = await issuer.customer(id);
  const res = await svc.clients
    .client(CustomerService, "grpc")
    .registerCustomer({ givenName: "New", familyName: "One" }, bearer(token));
  expect(res.customer).toMatchObject({ customerId: id, version: 1n });
});

/** The server still answers, with the known customer as it was. */
async function stillServing(protocol: Protocol = "connect-http1"): Promise<void> {
  const got = await svc.clients
    .client(CustomerService, protocol)
    .getCustomer({ customerId: known.id }, bearer(known.token));
  expect(got).toEqual(known.snapshot);
}

/** A raw HTTP/1.1 POST to path; the body parsed as JSON when it is some. */
const post = (path: string, body: Uint8Array | string, headers: Record<string, string>) =>
  httpPost(`${svc.url}${path}`, body, headers);

/** A gRPC call of method over raw HTTP/2, with the known customer's token unless extra names another. */
const grpcCall = (method: string, body: Uint8Array, extra: http2.OutgoingHttpHeaders = {}) =>
  grpcRaw(svc.url, `${PATH}/${method}`, body, { authorization: `Bearer ${known.token}`, ...extra });

/** A RegisterCustomerRequest whose address.region holds `region` as raw bytes. */
function registerRequest(email: string, region: Buffer): Buffer {
  const address = Buffer.concat([field(1, "1 Analytical St"), field(3, region), field(5, "GB")]);
  return Buffer.concat([field(1, email), field(2, "Ada"), field(3, "Lovelace"), field(5, address)]);
}

describe("request size limit", () => {
  it.each(PROTOCOLS)(
    "answers RESOURCE_EXHAUSTED for an oversized message over %s, then serves on",
    async (protocol) => {
      const client = svc.clients.client(CustomerService, protocol);
      const huge = `${randomUUID()}${"x".repeat(MAX_BYTES)}`;
      await expect(client.getCustomer({ customerId: huge }, bearer(known.token))).rejects.toMatchObject({
        code: Code.ResourceExhausted,
        rawMessage: expect.stringMatching(
          new RegExp(`^message size (\\d+ )?is larger than configured readMaxBytes ${MAX_BYTES}$`),
        ),
      });
      // The same client (on HTTP/2: the same session) goes on working.
      await stillServing(protocol);
    },
  );

  it("answers 429 resource_exhausted to a plain HTTP/1.1 POST", async () => {
    const body = JSON.stringify({ customer_id: "x".repeat(MAX_BYTES + 1) });
    const res = await post(`${PATH}/GetCustomer`, body, {
      "content-type": "application/json",
      authorization: `Bearer ${known.token}`,
    });
    expect(res.status).toBe(429);
    expect(res.json).toEqual({
      code: "resource_exhausted",
      message: `message size ${Buffer.byteLength(body)} is larger than configured readMaxBytes ${MAX_BYTES}`,
    });
  });

  it("answers RESOURCE_EXHAUSTED to a gRPC frame that only claims to be huge, without waiting for it", async () => {
    const res = await grpcCall("GetCustomer", envelope(Buffer.alloc(10), { declaredLength: 1 << 30 }));
    expect(res).toMatchObject({
      httpStatus: 200,
      status: Code.ResourceExhausted,
      message: `message size ${1 << 30} is larger than configured readMaxBytes ${MAX_BYTES}`,
    });
    await stillServing("grpc");
  });
});

describe("garbage on the wire", () => {
  it("answers a Connect error, not a crash, for random bytes posted as application/proto", async () => {
    // 0x0f is field 1 with wire type 7, which does not exist: the bytes never parse.
    const res = await post(`${PATH}/GetCustomer`, Buffer.concat([Buffer.from([0x0f]), randomBytes(64)]), {
      "content-type": "application/proto",
      authorization: `Bearer ${known.token}`,
    });
    // connect-es maps a request that does not parse to INTERNAL (as grpc-go does;
    // connect-go says INVALID_ARGUMENT). Pinned, so that a change is noticed.
    expect(res).toMatchObject({ status: 500, contentType: "application/json" });
    expect(res.json).toEqual({ code: "internal", message: "parse binary: illegal tag: field no 1 wire type 7" });
    await stillServing();
  });

  it.each(["text/plain", "application/xml", "multipart/form-data; boundary=x"])(
    "answers 415 to a POST with content-type %s",
    async (contentType) => {
      const res = await post(`${PATH}/GetCustomer`, "customer_id=1", {
        "content-type": contentType,
        authorization: `Bearer ${known.token}`,
      });
      expect(res.status).toBe(415);
      await stillServing();
    },
  );

  it("answers 405 to GET for a method with side effects, and serves GET for GetCustomer", async () => {
    const res = await fetch(`${svc.url}${PATH}/RegisterCustomer?encoding=json&message=%7B%7D`, {
      headers: { authorization: `Bearer ${known.token}` },
    });
    expect(res.status).toBe(405);
    const message = encodeURIComponent(JSON.stringify({ customer_id: known.id }));
    const get = await fetch(`${svc.url}${PATH}/GetCustomer?encoding=json&message=${message}`, {
      headers: { authorization: `Bearer ${known.token}` },
    });
    expect(get.status).toBe(200);
    expect(((await get.json()) as { customer: { customerId: string } }).customer.customerId).toBe(known.id);
  });

  it("answers a gRPC status for a truncated gRPC frame over HTTP/2", async () => {
    // The envelope promises 100 bytes; the stream ends after 10.
    const res = await grpcCall("GetCustomer", envelope(randomBytes(10), { declaredLength: 100 }));
    expect(res).toMatchObject({
      httpStatus: 200,
      status: Code.InvalidArgument,
      message: "protocol error: incomplete envelope",
    });
    expect(res.data.length).toBe(0);
    await stillServing("grpc");
  });

  it("answers HTTP 400 and closes a TCP connection that sends random bytes", async () => {
    // A leading NUL is no HTTP method and no HTTP/2 preface.
    const reply = await rawTcp(svc.server.port, Buffer.concat([Buffer.from([0]), randomBytes(512)]));
    expect(reply.toString("latin1")).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    await stillServing();
    await stillServing("grpc");
  });

  it("sends GOAWAY and closes an HTTP/2 connection whose frames are garbage", async () => {
    const preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
    // A frame header with an unknown type on stream 0 is ignored; a DATA frame on stream 0 is a protocol error.
    const badFrame = Buffer.from([0, 0, 4, 0x0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
    const reply = await rawTcp(svc.server.port, Buffer.concat([preface, badFrame, randomBytes(256)]));
    const types: number[] = [];
    for (let at = 0; at + 9 <= reply.length; ) {
      types.push(reply.readUInt8(at + 3));
      at += 9 + reply.readUIntBE(at, 3);
    }
    expect(types).toContain(0x7); // GOAWAY
    await stillServing("grpc");
    await stillServing("connect-http2");
  });

  it("rejects invalid UTF-8 in a string field and stores nothing", async () => {
    const id = randomUUID();
    const email = `utf8.${id.slice(0, 8)}@example.com`;
    const token = await issuer.customer(id, email);
    // 0xc3 0x28: a two-byte sequence whose second byte is no continuation byte.
    const bad = registerRequest(email, Buffer.from([0x4c, 0xc3, 0x28]));
    const overConnect = await post(`${PATH}/RegisterCustomer`, bad, {
      "content-type": "application/proto",
      authorization: `Bearer ${token}`,
    });
    expect(overConnect.status).toBe(500);
    expect(overConnect.json).toEqual({
      code: "internal",
      message: "parse binary: The encoded data was not valid for encoding utf-8",
    });
    const overGrpc = await grpcCall("RegisterCustomer", envelope(bad), { authorization: `Bearer ${token}` });
    expect(overGrpc).toMatchObject({
      status: Code.Internal,
      message: "parse binary: The encoded data was not valid for encoding utf-8",
    });
    await expect(
      svc.clients.client(CustomerService).getCustomer({ customerId: id }, bearer(token)),
    ).rejects.toMatchObject(rpcError("customer not found", Code.NotFound));
    const rows = await sql`select 1 from customers where customer_id = ${id}`;
    expect(rows.length).toBe(0);

    // The same bytes with valid UTF-8 register: the hand encoding is right, only the UTF-8 was wrong.
    const good = await grpcCall("RegisterCustomer", envelope(registerRequest(email, Buffer.from("Lé", "utf8"))), {
      authorization: `Bearer ${token}`,
    });
    expect(good).toMatchObject({ status: 0 });
    const got = await svc.clients.client(CustomerService).getCustomer({ customerId: id }, bearer(token));
    expect(got.customer?.address?.region).toBe("Lé");
  });

  it("answers INTERNAL, not a crash, for deeply nested groups in an unknown field", async () => {
    // Field 15, wire type 3 (start group), nested 2000 times and never closed.
    const nested = Buffer.alloc(2000, (15 << 3) | 3);
    const res = await grpcCall("GetCustomer", envelope(Buffer.concat([field(1, known.id), nested])));
    // protobuf-es stops at its recursion limit (100) instead of exhausting the stack.
    expect(res).toMatchObject({ status: Code.Internal, message: "parse binary: maximum recursion depth reached" });
    await stillServing("grpc");
  });
});

describe("malformed JSON", () => {
  const postJson = (method: string, body: string, token = known.token) =>
    post(`${PATH}/${method}`, body, { "content-type": "application/json", authorization: `Bearer ${token}` });

  it("answers 400 invalid_argument for JSON that does not parse", async () => {
    for (const body of ['{"customer_id": ', "{customer_id: 1}", "\u0000", '{"customer_id": "a"} trailing']) {
      const res = await postJson("GetCustomer", body);
      expect(res.status, body).toBe(400);
      expect(res.json, body).toMatchObject({
        code: "invalid_argument",
        message: expect.stringMatching(/^cannot decode message customer\.v1\.GetCustomerRequest from JSON: /),
      });
    }
    await stillServing();
  });

  it("answers 400 invalid_argument for deeply nested JSON", async () => {
    const depth = 1500;
    const arrays = `${"[".repeat(depth)}${"]".repeat(depth)}`;
    for (const [method, body] of [
      ["GetCustomer", arrays],
      ["GetCustomer", `{"customer_id": ${arrays}}`],
      [
        "UpdateCustomer",
        `{"customer": {"customer_id": "${known.id}", "address": ${arrays}}, "update_mask": "address"}`,
      ],
    ] as const) {
      expect(body.length).toBeLessThan(MAX_BYTES);
      const res = await postJson(method, body);
      expect(res.status, body.slice(0, 40)).toBe(400);
      expect((res.json as { code: string }).code).toBe("invalid_argument");
    }
    await stillServing();
  });

  it("answers 400 invalid_argument for JSON of the wrong shape", async () => {
    const res = await postJson("GetCustomer", '{"customer_id": 12}');
    expect(res.status).toBe(400);
    expect(res.json).toEqual({
      code: "invalid_argument",
      message: "cannot decode field customer.v1.GetCustomerRequest.customer_id from JSON: expected string, got 12",
    });
    const mask = await postJson(
      "UpdateCustomer",
      `{"customer": {"customer_id": "${known.id}", "given_name": "X"}, "update_mask": {"paths": ["given_name"]}}`,
    );
    expect(mask.status).toBe(400);
    expect((mask.json as { code: string }).code).toBe("invalid_argument");
    await stillServing();
  });
});

describe("deadlines", () => {
  it.each(PROTOCOLS)(
    "a call with timeoutMs 1 fails with DEADLINE_EXCEEDED over %s, then the server serves on",
    async (protocol) => {
      await expect(
        svc.clients
          .client(CustomerService, protocol)
          .getCustomer({ customerId: known.id }, { ...bearer(known.token), timeoutMs: 1 }),
      ).rejects.toMatchObject(rpcError("the operation timed out", Code.DeadlineExceeded));
      await stillServing(protocol);
    },
  );

  it("the server answers DEADLINE_EXCEEDED when the deadline passes, even while the handler still waits", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    await svc.clients.client(CustomerService).registerCustomer({ givenName: "D", familyName: "L" }, bearer(token));
    // Hold the row lock UpdateCustomer needs until the answers are in (or 5 s, so a failure cannot hang).
    const lock = await holdLock(sql, (tx) => tx`select 1 from customers where customer_id = ${id} for update`, 5_000);
    const update = JSON.stringify({ customer: { customer_id: id, given_name: "Late" }, update_mask: "givenName" });
    try {
      // No client-side timer here: only the server knows the deadline.
      const connect = await post(`${PATH}/UpdateCustomer`, update, {
        "content-type": "application/json",
        "connect-timeout-ms": "200",
        authorization: `Bearer ${token}`,
      });
      expect(connect).toMatchObject({
        status: 504,
        json: { code: "deadline_exceeded", message: "the operation timed out" },
      });
      const grpc = await grpcCall(
        "UpdateCustomer",
        envelope(
          Buffer.concat([field(1, Buffer.concat([field(1, id), field(3, "Late")])), field(2, field(1, "given_name"))]),
        ),
        { authorization: `Bearer ${token}`, "grpc-timeout": "200m" },
      );
      expect(grpc).toMatchObject({ status: Code.DeadlineExceeded, message: "the operation timed out" });
      // Both answers came while the handlers were still blocked.
      expect(lock.held).toBe(true);
    } finally {
      await lock.release();
    }
    await stillServing();
  });
});

describe("health", () => {
  it("grpc.health.v1.Health/Check says SERVING for the server and CustomerService", async () => {
    for (const protocol of CORE_PROTOCOLS) {
      const health = svc.clients.client(Health, protocol);
      expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      expect((await health.check({ service: "customer.v1.CustomerService" })).status).toBe(
        HealthCheckResponse_ServingStatus.SERVING,
      );
      await expect(health.check({ service: "orders.v1.OrderService" })).rejects.toMatchObject(
        rpcError("unknown service", Code.NotFound),
      );
    }
  });

  it("GET /readyz and /healthz answer 200", async () => {
    const ready = await fetch(`${svc.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ status: "SERVING" });
    const live = await fetch(`${svc.url}/healthz`);
    expect(live.status).toBe(200);
    expect(await live.text()).toBe("ok\n");
    expect((await fetch(`${svc.url}/nope`)).status).toBe(404);
  });
});
