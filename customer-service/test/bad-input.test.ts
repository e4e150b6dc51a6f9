/**
 * Bad input at every layer: oversized messages, garbage bytes (HTTP/1.1,
 * HTTP/2, raw TCP), invalid UTF-8, malformed JSON, deadlines. Each gets a
 * precise answer, the server keeps serving, and stored data stays as it was.
 * Plus the health endpoints.
 */
import { randomBytes, randomUUID } from "node:crypto";
import http2 from "node:http2";
import net from "node:net";
import { Code } from "@connectrpc/connect";
import type { GetCustomerResponse } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "@customer-platform/gen/grpc/health/v1/health_pb.js";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, type Clients, createClients, PROTOCOLS, rpcError } from "../../test/support/clients.js";
import { startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";

const MAX_BYTES = 4096;
const PATH = "/customer.v1.CustomerService";

let issuer: TestIssuer;
let svc: RunningCustomerService;
let clients: Clients;
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
  clients = createClients(svc.url);
  sql = postgres(svc.database.url, { max: 2, onnotice: () => {} });
  const id = randomUUID();
  const token = await issuer.customer(id);
  await clients.client(CustomerService).registerCustomer(
    {
      email: `known.${id.slice(0, 8)}@example.com`,
      givenName: "Ada",
      familyName: "Lovelace",
      phoneNumber: "+4915123456789",
      address: { addressLines: ["1 Analytical St"], locality: "London", postalCode: "N1 9GU", countryCode: "GB" },
    },
    bearer(token),
  );
  const snapshot = await clients.client(CustomerService).getCustomer({ customerId: id }, bearer(token));
  known = { id, token, snapshot };
});

afterAll(async () => {
  clients?.close();
  await sql?.end();
  await svc?.close();
  await issuer?.close();
});

/** The server still answers, with the known customer as it was. */
async function stillServing(protocol: (typeof PROTOCOLS)[number] = "connect-http1"): Promise<void> {
  const got = await clients
    .client(CustomerService, protocol)
    .getCustomer({ customerId: known.id }, bearer(known.token));
  expect(got).toEqual(known.snapshot);
}

/** A raw HTTP/1.1 POST; the body parsed as JSON when it is some. */
async function post(path: string, body: Uint8Array | string, headers: Record<string, string>) {
  const res = await fetch(`${svc.url}${path}`, { method: "POST", body, headers });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, contentType: res.headers.get("content-type"), text, json };
}

interface H2Result {
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  data: Buffer;
}

/** One raw HTTP/2 request on its own session. */
function h2request(headers: http2.OutgoingHttpHeaders, body: Uint8Array): Promise<H2Result> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(svc.url);
    session.on("error", reject);
    const req = session.request({ ":method": "POST", ...headers });
    const result: H2Result = { headers: {}, trailers: {}, data: Buffer.alloc(0) };
    req.on("response", (h) => {
      result.headers = h;
    });
    req.on("trailers", (t) => {
      result.trailers = t;
    });
    req.on("data", (d: Buffer) => {
      result.data = Buffer.concat([result.data, d]);
    });
    req.on("error", reject);
    req.on("end", () => {
      session.close();
      resolve(result);
    });
    req.end(body);
  });
}

/** A gRPC call over raw HTTP/2: the status from the trailers (or a trailers-only response). */
async function grpcRaw(method: string, body: Uint8Array, extra: http2.OutgoingHttpHeaders = {}) {
  const res = await h2request(
    {
      ":path": `${PATH}/${method}`,
      "content-type": "application/grpc",
      te: "trailers",
      authorization: `Bearer ${known.token}`,
      ...extra,
    },
    body,
  );
  const status = res.trailers["grpc-status"] ?? res.headers["grpc-status"];
  const message = res.trailers["grpc-message"] ?? res.headers["grpc-message"];
  return {
    httpStatus: res.headers[":status"],
    status: Number(status),
    message: decodeURIComponent(String(message ?? "")),
    data: res.data,
  };
}

/** A gRPC length-prefixed message. */
function envelope(message: Uint8Array, declaredLength = message.length): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(0, 0);
  head.writeUInt32BE(declaredLength, 1);
  return Buffer.concat([head, message]);
}

/** Hand-encoded protobuf: a varint. */
function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

/** Hand-encoded protobuf: a length-delimited field (string, bytes, message). */
const field = (no: number, value: Buffer | string) => {
  const bytes = typeof value === "string" ? Buffer.from(value, "utf8") : value;
  return Buffer.concat([varint((no << 3) | 2), varint(bytes.length), bytes]);
};

/** A RegisterCustomerRequest whose address.region holds `region` as raw bytes. */
function registerRequest(email: string, region: Buffer): Buffer {
  const address = Buffer.concat([field(1, "1 Analytical St"), field(3, region), field(5, "GB")]);
  return Buffer.concat([field(1, email), field(2, "Ada"), field(3, "Lovelace"), field(5, address)]);
}

/** Writes bytes on a raw TCP connection; resolves with all the server sent until it closed the connection. */
function rawTcp(bytes: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(svc.server.port, "127.0.0.1");
    let received = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("server kept the connection open"));
    }, 10_000);
    socket.on("data", (d) => {
      received = Buffer.concat([received, d]);
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(received);
    });
    socket.write(bytes);
  });
}

describe("request size limit", () => {
  it.each(PROTOCOLS)(
    "answers RESOURCE_EXHAUSTED for an oversized message over %s, then serves on",
    async (protocol) => {
      const client = clients.client(CustomerService, protocol);
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
    const res = await grpcRaw("GetCustomer", envelope(Buffer.alloc(10), 1 << 30));
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
    const res = await grpcRaw("GetCustomer", envelope(randomBytes(10), 100));
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
    const reply = await rawTcp(Buffer.concat([Buffer.from([0]), randomBytes(512)]));
    expect(reply.toString("latin1")).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    await stillServing();
    await stillServing("grpc");
  });

  it("sends GOAWAY and closes an HTTP/2 connection whose frames are garbage", async () => {
    const preface = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
    // A frame header with an unknown type on stream 0 is ignored; a DATA frame on stream 0 is a protocol error.
    const badFrame = Buffer.from([0, 0, 4, 0x0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
    const reply = await rawTcp(Buffer.concat([preface, badFrame, randomBytes(256)]));
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
    const token = await issuer.customer(id);
    const email = `utf8.${id.slice(0, 8)}@example.com`;
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
    const overGrpc = await grpcRaw("RegisterCustomer", envelope(bad), { authorization: `Bearer ${token}` });
    expect(overGrpc).toMatchObject({
      status: Code.Internal,
      message: "parse binary: The encoded data was not valid for encoding utf-8",
    });
    await expect(clients.client(CustomerService).getCustomer({ customerId: id }, bearer(token))).rejects.toMatchObject(
      rpcError("customer not found", Code.NotFound),
    );
    const rows = await sql`select 1 from customers where customer_id = ${id}`;
    expect(rows.length).toBe(0);

    // The same bytes with valid UTF-8 register: the hand encoding is right, only the UTF-8 was wrong.
    const good = await grpcRaw("RegisterCustomer", envelope(registerRequest(email, Buffer.from("Lé", "utf8"))), {
      authorization: `Bearer ${token}`,
    });
    expect(good).toMatchObject({ status: 0 });
    const got = await clients.client(CustomerService).getCustomer({ customerId: id }, bearer(token));
    expect(got.customer?.address?.region).toBe("Lé");
  });

  it("answers INTERNAL, not a crash, for deeply nested groups in an unknown field", async () => {
    // Field 15, wire type 3 (start group), nested 2000 times and never closed.
    const nested = Buffer.alloc(2000, (15 << 3) | 3);
    const res = await grpcRaw("GetCustomer", envelope(Buffer.concat([field(1, known.id), nested])));
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
        clients
          .client(CustomerService, protocol)
          .getCustomer({ customerId: known.id }, { ...bearer(known.token), timeoutMs: 1 }),
      ).rejects.toMatchObject(rpcError("the operation timed out", Code.DeadlineExceeded));
      await stillServing(protocol);
    },
  );

  it("the server answers DEADLINE_EXCEEDED when the deadline passes, even while the handler still waits", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    await clients
      .client(CustomerService)
      .registerCustomer(
        { email: `deadline.${id.slice(0, 8)}@example.com`, givenName: "D", familyName: "L" },
        bearer(token),
      );
    // Hold the row lock UpdateCustomer needs until the answers are in (or 5 s, so a failure cannot hang).
    let release = () => {};
    const released = new Promise<void>((r) => {
      release = r;
      setTimeout(r, 5_000);
    });
    let locked = () => {};
    const isLocked = new Promise<void>((r) => {
      locked = r;
    });
    const holder = sql.begin(async (tx) => {
      await tx`select 1 from customers where customer_id = ${id} for update`;
      locked();
      await released;
    });
    await isLocked;
    let lockHeld = true;
    void holder.finally(() => {
      lockHeld = false;
    });
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
      const grpc = await grpcRaw(
        "UpdateCustomer",
        envelope(
          Buffer.concat([field(1, Buffer.concat([field(1, id), field(3, "Late")])), field(2, field(1, "given_name"))]),
        ),
        { authorization: `Bearer ${token}`, "grpc-timeout": "200m" },
      );
      expect(grpc).toMatchObject({ status: Code.DeadlineExceeded, message: "the operation timed out" });
      // Both answers came while the handlers were still blocked.
      expect(lockHeld).toBe(true);
    } finally {
      release();
      await holder;
    }
    await stillServing();
  });
});

describe("health", () => {
  it("grpc.health.v1.Health/Check says SERVING for the server and CustomerService", async () => {
    for (const protocol of ["grpc", "connect-http1"] as const) {
      const health = clients.client(Health, protocol);
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

describe("after all of it", () => {
  it("the known customer is unchanged and new calls succeed", async () => {
    for (const protocol of PROTOCOLS) await stillServing(protocol);
    const [row] = await sql<[{ version: string }]>`select version::text from customers where customer_id = ${known.id}`;
    expect(row.version).toBe("1");
    const id = randomUUID();
    const token = await issuer.customer(id);
    const res = await clients
      .client(CustomerService, "grpc")
      .registerCustomer(
        { email: `after.${id.slice(0, 8)}@example.com`, givenName: "New", familyName: "One" },
        bearer(token),
      );
    expect(res.customer).toMatchObject({ customerId: id, version: 1n });
  });
});
