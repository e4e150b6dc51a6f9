/**
 * Raw bytes on every protocol, at both services with their default limits:
 * bad gRPC frames (lying length prefixes, compressed flag without encoding,
 * unknown encodings, zip bombs, missing or extra messages), wrong content
 * types, truncated bodies, huge headers, invalid UTF-8 (hand-encoded
 * protobuf and JSON), deeply nested JSON, unknown JSON fields, oversized
 * messages, an HTTP/2 rapid reset.
 *
 * Each answer is pinned to its exact code and message. After every test
 * both servers still serve on every protocol and no stored row changed (a
 * garbage sign-in does not even count as a failed attempt).
 */
import { randomUUID } from "node:crypto";
import http2 from "node:http2";
import net from "node:net";
import { gzipSync } from "node:zlib";
import { Code } from "@connectrpc/connect";
import { CustomerService, type GetCustomerResponse } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { bearer, type Clients, createClients, PROTOCOLS } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "../support/services.js";
import { envelope, field, grpcRaw, h2request } from "./support.js";

/** Both services' default request size limit (CUSTOMER_MAX_REQUEST_BYTES, IDENTITY_MAX_REQUEST_BYTES). */
const LIMIT = 64 * 1024;
const CUSTOMER = "/customer.v1.CustomerService";
const AUTH = "/identity.v1.AuthService";
/** The seeded customer's id, known before it is registered (test tables use it). */
const KNOWN_ID = randomUUID();

let issuer: TestIssuer;
let customer: RunningCustomerService;
let identity: RunningIdentityService;
let customerClients: Clients;
let identityClients: Clients;
let customerSql: postgres.Sql;
let identitySql: postgres.Sql;
/** The seeded customer, its token and GetCustomer's answer for it. */
let known: { id: string; token: string; snapshot: GetCustomerResponse };
/** A login whose failed attempts must not grow. */
let login: { email: string; password: string };
/** Every stored row of both services, as it must stay. */
let stored: unknown;

async function storedRows(): Promise<unknown> {
  return {
    customers: await customerSql`select * from customers order by customer_id`,
    outbox: await customerSql`select id from outbox order by id`,
    identities: await identitySql`select * from identities order by customer_id`,
    throttles: await identitySql`select * from login_throttles order by key`,
    refreshTokens: await identitySql`select * from refresh_tokens order by id`,
    revoked: await identitySql`select * from revoked_access_tokens order by jti`,
  };
}

beforeAll(async () => {
  issuer = await startTestIssuer();
  customer = await startCustomerService({
    IDENTITY_ISSUER: issuer.issuer,
    IDENTITY_JWKS_URL: issuer.jwksUrl,
    LOG_LEVEL: "warn",
  });
  identity = await startIdentityService({ LOG_LEVEL: "warn" });
  customerClients = createClients(customer.url);
  identityClients = createClients(identity.url);
  customerSql = postgres(customer.database.url, { max: 2, onnotice: () => {} });
  identitySql = postgres(identity.database.url, { max: 2, onnotice: () => {} });
  const id = KNOWN_ID;
  const token = await issuer.customer(id);
  const customers = customerClients.client(CustomerService);
  await customers.registerCustomer(
    {
      email: `known.${id.slice(0, 8)}@example.com`,
      givenName: "Ada",
      familyName: "Lovelace",
      address: { addressLines: ["1 Analytical St"], locality: "London", postalCode: "N1 9GU", countryCode: "GB" },
    },
    bearer(token),
  );
  known = { id, token, snapshot: await customers.getCustomer({ customerId: id }, bearer(token)) };
  login = { email: `login.${id.slice(0, 8)}@example.com`, password: "correct horse battery staple" };
  await identityClients.client(AuthService).createCredentials(login);
  // One failed attempt, so that a counted attempt would show as a change.
  await identityClients
    .client(AuthService)
    .authenticateCustomer({ email: login.email, password: "wrong password" })
    .catch(() => {});
  stored = await storedRows();
});

afterAll(async () => {
  customerClients?.close();
  identityClients?.close();
  await customerSql?.end();
  await identitySql?.end();
  await customer?.close();
  await identity?.close();
  await issuer?.close();
});

afterEach(async () => {
  // Still serving on every protocol, and nothing stored changed.
  for (const protocol of PROTOCOLS) {
    await expect(
      customerClients.client(CustomerService, protocol).getCustomer({ customerId: known.id }, bearer(known.token)),
      protocol,
    ).resolves.toEqual(known.snapshot);
    await expect(
      identityClients.client(AuthService, protocol).revokeToken({ token: "nothing" }),
      protocol,
    ).resolves.toBeDefined();
  }
  // Re-snapshot first, so that a change fails only the test that made it.
  const [before, now] = [stored, await storedRows()];
  stored = now;
  expect(now).toEqual(before);
});

const auth = () => ({ authorization: `Bearer ${known.token}` });
const getRequest = () => field(1, KNOWN_ID);

/** A RegisterCustomerRequest whose given_name holds `givenName` as raw bytes. */
const registerRequest = (email: string, givenName: Buffer) =>
  Buffer.concat([field(1, email), field(2, givenName), field(3, "Lovelace")]);
/** 0xc3 0x28: a two-byte sequence whose second byte is no continuation byte. */
const INVALID_UTF8 = Buffer.from([0x41, 0xc3, 0x28]);

interface HttpAnswer {
  status: number;
  headers: Headers;
  text: string;
  json: unknown;
}

/** A raw HTTP/1.1 POST. */
async function post(url: string, body: Uint8Array | string, headers: Record<string, string>): Promise<HttpAnswer> {
  const res = await fetch(url, { method: "POST", body, headers });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** Writes bytes on a raw TCP connection, half-closes it, and resolves with all the server sent until it closed. */
function rawTcp(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let received = "";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("server kept the connection open"));
    }, 10_000);
    socket.on("data", (d: Buffer) => {
      received += d.toString("latin1");
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(received);
    });
    socket.end(bytes);
  });
}

describe("gRPC frames (HTTP/2)", () => {
  const bomb = gzipSync(Buffer.alloc(10 * 1024 * 1024));
  type FrameCase = [name: string, body: () => Buffer, headers: Record<string, string>, code: Code, message: string];
  const cases: FrameCase[] = [
    [
      "a length prefix longer than the message (truncated)",
      () => envelope(getRequest(), { declaredLength: 100 }),
      {},
      Code.InvalidArgument,
      "protocol error: incomplete envelope",
    ],
    [
      "a length prefix that claims 1 GiB",
      () => envelope(Buffer.alloc(10), { declaredLength: 1 << 30 }),
      {},
      Code.ResourceExhausted,
      `message size ${1 << 30} is larger than configured readMaxBytes ${LIMIT}`,
    ],
    [
      "a length prefix shorter than the message (the rest read as the next frame)",
      // field 1, length 36, then the id: the bytes after the first 5 are "next frame" header.
      () => envelope(getRequest(), { declaredLength: 5 }),
      {},
      Code.ResourceExhausted,
      `message size ${getRequest().subarray(6, 10).readUInt32BE(0)} is larger than configured readMaxBytes ${LIMIT}`,
    ],
    [
      "two messages for a unary method",
      () => Buffer.concat([envelope(getRequest()), envelope(getRequest())]),
      {},
      Code.Unimplemented,
      "protocol error: received extra input message for unary method",
    ],
    [
      "no message at all",
      () => Buffer.alloc(0),
      {},
      Code.Unimplemented,
      "protocol error: missing input message for unary method",
    ],
    [
      // gRPC's compression spec: a compressed message without grpc-encoding MUST fail with INTERNAL.
      "the compressed flag without grpc-encoding",
      () => envelope(getRequest(), { flags: 1 }),
      {},
      Code.Internal,
      "received compressed envelope, but do not know how to decompress",
    ],
    [
      "an unknown grpc-encoding",
      () => envelope(getRequest(), { flags: 1 }),
      { "grpc-encoding": "snappy" },
      Code.Unimplemented,
      'unknown compression "snappy": supported encodings are gzip,br',
    ],
    [
      "a gzip bomb (10 MiB of zeros in 10 KiB)",
      () => envelope(bomb, { flags: 1 }),
      { "grpc-encoding": "gzip" },
      Code.ResourceExhausted,
      `message is larger than configured readMaxBytes ${LIMIT} after decompression`,
    ],
    [
      "a compressed message that is not gzip",
      () => envelope(Buffer.from("not gzip at all"), { flags: 1 }),
      { "grpc-encoding": "gzip" },
      Code.InvalidArgument,
      "decompression failed",
    ],
    [
      "a message over the size limit",
      () => envelope(field(1, "x".repeat(LIMIT))),
      {},
      Code.ResourceExhausted,
      `message size ${LIMIT + 4} is larger than configured readMaxBytes ${LIMIT}`,
    ],
    [
      // connect-es maps an unparsable message to INTERNAL, as grpc-go does (connect-go says INVALID_ARGUMENT).
      "a protobuf message cut in the middle of a field",
      () => envelope(getRequest().subarray(0, 10)),
      {},
      Code.Internal,
      "parse binary: premature EOF",
    ],
    [
      "a malformed grpc-timeout",
      () => envelope(getRequest()),
      { "grpc-timeout": "xyz" },
      Code.InvalidArgument,
      "protocol error: invalid grpc timeout value: xyz",
    ],
  ];

  it.each(cases)("answers %s with its precise status", async (_name, body, headers, code, message) => {
    const res = await grpcRaw(customer.url, `${CUSTOMER}/GetCustomer`, body(), { ...auth(), ...headers });
    expect(res).toMatchObject({ httpStatus: 200, status: code, message, rstCode: 0 });
    expect(res.data.length).toBe(0);
  });

  it("answers invalid UTF-8 in a string field with INTERNAL and stores nothing", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    const res = await grpcRaw(
      customer.url,
      `${CUSTOMER}/RegisterCustomer`,
      envelope(registerRequest(`utf8.${id.slice(0, 8)}@example.com`, INVALID_UTF8)),
      { authorization: `Bearer ${token}` },
    );
    expect(res).toMatchObject({
      status: Code.Internal,
      message: "parse binary: The encoded data was not valid for encoding utf-8",
    });
    // The hand encoding is right: the same bytes with valid UTF-8 parse (and are refused only for the token).
    const good = await grpcRaw(
      customer.url,
      `${CUSTOMER}/RegisterCustomer`,
      envelope(registerRequest(`utf8.${id.slice(0, 8)}@example.com`, Buffer.from("Ada"))),
      { authorization: "Bearer x" },
    );
    expect(good).toMatchObject({ status: Code.Unauthenticated, message: "invalid access token" });
  });

  it("answers HTTP 415 to a gRPC content type it has no codec for", async () => {
    const res = await grpcRaw(customer.url, `${CUSTOMER}/GetCustomer`, envelope(getRequest()), {
      ...auth(),
      "content-type": "application/grpc+xml",
    });
    expect(res.httpStatus).toBe(415);
  });

  it("refuses a stream whose header block is over 64 KiB (HTTP/2 has no 431), and serves the next session", async () => {
    const headers = {
      ":path": `${CUSTOMER}/GetCustomer`,
      "content-type": "application/grpc",
      te: "trailers",
      ...auth(),
    };
    const huge = await h2request(customer.url, { ...headers, "x-big": "a".repeat(70_000) }, envelope(getRequest()));
    expect(huge).toMatchObject({ rstCode: http2.constants.NGHTTP2_REFUSED_STREAM, headers: {} });
    const next = await h2request(customer.url, headers, envelope(getRequest()));
    expect(next).toMatchObject({ rstCode: 0, headers: { ":status": 200 }, trailers: { "grpc-status": "0" } });
  });

  it("survives a rapid reset: 500 streams opened and cancelled at once", async () => {
    const session = http2.connect(customer.url);
    session.on("error", () => {});
    await new Promise<void>((resolve) => session.once("connect", () => resolve()));
    for (let i = 0; i < 500 && !session.destroyed && !session.closed; i++) {
      const req = session.request({
        ":method": "POST",
        ":path": `${CUSTOMER}/GetCustomer`,
        "content-type": "application/grpc",
        te: "trailers",
        ...auth(),
      });
      req.on("error", () => {});
      req.close(http2.constants.NGHTTP2_CANCEL);
    }
    await new Promise((r) => setTimeout(r, 200));
    session.destroy();
  });
});

describe("Connect unary (HTTP/1.1)", () => {
  const url = (method = "GetCustomer") => `${customer.url}${CUSTOMER}/${method}`;

  it.each([
    "text/plain",
    "application/xml",
    "application/x-www-form-urlencoded",
    "application/connect+proto",
    "application/connect+json",
    "",
  ])("answers 415 to content-type %j", async (contentType) => {
    const res = await post(url(), getRequest(), { ...auth(), ...(contentType && { "content-type": contentType }) });
    expect(res.status).toBe(415);
  });

  type ErrorCase = [
    name: string,
    body: () => Buffer | string,
    headers: Record<string, string>,
    status: number,
    error: object,
  ];
  const cases: ErrorCase[] = [
    [
      "a protobuf body cut in the middle of a field",
      () => getRequest().subarray(0, 10),
      { "content-type": "application/proto" },
      500,
      { code: "internal", message: "parse binary: premature EOF" },
    ],
    [
      "a JSON body cut in the middle of a string",
      () => `{"customer_id": "${KNOWN_ID}`,
      { "content-type": "application/json" },
      400,
      {
        code: "invalid_argument",
        message: `cannot decode message customer.v1.GetCustomerRequest from JSON: Unterminated string in JSON at position ${17 + KNOWN_ID.length}`,
      },
    ],
    [
      "100 000 unclosed [ (over the size limit before any parsing)",
      () => "[".repeat(100_000),
      { "content-type": "application/json" },
      429,
      { code: "resource_exhausted", message: `message size 100000 is larger than configured readMaxBytes ${LIMIT}` },
    ],
    [
      "30 000 nested arrays (under the size limit)",
      () => `${"[".repeat(30_000)}${"]".repeat(30_000)}`,
      { "content-type": "application/json" },
      400,
      { code: "invalid_argument", message: "cannot decode message customer.v1.GetCustomerRequest from JSON: Array(1)" },
    ],
    [
      "30 000 nested arrays as a field value",
      () => `{"customer_id": ${"[".repeat(30_000)}${"]".repeat(30_000)}}`,
      { "content-type": "application/json" },
      400,
      {
        code: "invalid_argument",
        message:
          "cannot decode field customer.v1.GetCustomerRequest.customer_id from JSON: expected string, got Array(1)",
      },
    ],
    [
      "a JSON message over the size limit",
      () => JSON.stringify({ customer_id: "x".repeat(LIMIT) }),
      { "content-type": "application/json" },
      429,
      {
        code: "resource_exhausted",
        message: `message size ${LIMIT + 18} is larger than configured readMaxBytes ${LIMIT}`,
      },
    ],
    [
      "a gzip bomb as content-encoding",
      () => gzipSync(Buffer.alloc(10 * 1024 * 1024)),
      { "content-type": "application/proto", "content-encoding": "gzip" },
      429,
      {
        code: "resource_exhausted",
        message: `message is larger than configured readMaxBytes ${LIMIT} after decompression`,
      },
    ],
    [
      "an unknown content-encoding",
      () => getRequest(),
      { "content-type": "application/proto", "content-encoding": "compress" },
      501,
      { code: "unimplemented", message: 'unknown compression "compress": supported encodings are gzip,br' },
    ],
    [
      "a malformed connect-timeout-ms",
      () => getRequest(),
      { "content-type": "application/proto", "connect-timeout-ms": "soon" },
      400,
      { code: "invalid_argument", message: "protocol error: invalid connect timeout value: soon" },
    ],
  ];

  it.each(cases)("answers %s precisely", async (_name, body, headers, status, error) => {
    const res = await post(url(), body(), { ...auth(), ...headers });
    expect(res.status).toBe(status);
    expect(res.json).toEqual(error);
  });

  it("answers invalid UTF-8 with INTERNAL in protobuf and INVALID_ARGUMENT in JSON, storing nothing", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    const email = `utf8.${id.slice(0, 8)}@example.com`;
    const binary = await post(url("RegisterCustomer"), registerRequest(email, INVALID_UTF8), {
      "content-type": "application/proto",
      authorization: `Bearer ${token}`,
    });
    expect(binary.status).toBe(500);
    expect(binary.json).toEqual({
      code: "internal",
      message: "parse binary: The encoded data was not valid for encoding utf-8",
    });
    // JSON text must be UTF-8 (RFC 8259): not silently stored as U+FFFD.
    const json = Buffer.concat([
      Buffer.from(`{"email": "${email}", "given_name": "`),
      INVALID_UTF8,
      Buffer.from(`", "family_name": "Lovelace"}`),
    ]);
    const res = await post(url("RegisterCustomer"), json, {
      "content-type": "application/json",
      authorization: `Bearer ${token}`,
    });
    expect(res.status).toBe(400);
    expect(res.json).toEqual({
      code: "invalid_argument",
      message: "The encoded data was not valid for encoding utf-8",
    });
  });

  it("ignores unknown JSON fields and output-only fields: no mass assignment", async () => {
    const res = await post(url(), JSON.stringify({ customer_id: known.id, admin: true, "@type": "x", version: 99 }), {
      ...auth(),
      "content-type": "application/json",
    });
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ customer: { customerId: known.id } });
    // A field under both of its JSON names is not "last one wins".
    const twice = await post(url(), JSON.stringify({ customerId: randomUUID(), customer_id: known.id }), {
      ...auth(),
      "content-type": "application/json",
    });
    expect(twice.status).toBe(400);
    expect(twice.json).toEqual({
      code: "invalid_argument",
      message: "cannot decode field customer.v1.GetCustomerRequest.customer_id from JSON: set multiple times",
    });
    // An update that names no real change, while trying to set version, create_time and another id.
    const update = await post(
      url("UpdateCustomer"),
      JSON.stringify({
        customer: {
          customer_id: known.id,
          given_name: known.snapshot.customer?.givenName,
          version: "999",
          create_time: "1970-01-01T00:00:00Z",
          is_admin: true,
        },
        update_mask: "givenName",
        owner: randomUUID(),
      }),
      { ...auth(), "content-type": "application/json" },
    );
    expect(update.status).toBe(200);
    expect(update.json).toMatchObject({ customer: { customerId: known.id, version: "1" } });
  });

  it("answers 400 and closes the connection when the body is shorter than its content-length", async () => {
    const body = getRequest();
    const head =
      `POST ${CUSTOMER}/GetCustomer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/proto\r\n` +
      `authorization: Bearer ${known.token}\r\ncontent-length: ${body.length + 50}\r\n\r\n`;
    const reply = await rawTcp(customer.server.port, Buffer.concat([Buffer.from(head), body]));
    expect(reply).toBe("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
  });

  it("answers 400 and closes the connection when a chunked body never ends", async () => {
    const body = getRequest();
    const head =
      `POST ${CUSTOMER}/GetCustomer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/proto\r\n` +
      `authorization: Bearer ${known.token}\r\ntransfer-encoding: chunked\r\n\r\n`;
    const chunk = `${(body.length + 10).toString(16)}\r\n`;
    const reply = await rawTcp(customer.server.port, Buffer.concat([Buffer.from(head + chunk), body]));
    expect(reply).toBe("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
  });

  it("answers 431 to headers over 16 KiB, in a header or in a GET URL", async () => {
    const header = await post(url(), getRequest(), {
      ...auth(),
      "content-type": "application/proto",
      "x-padding": "a".repeat(20_000),
    });
    expect(header.status).toBe(431);
    const message = encodeURIComponent(JSON.stringify({ customer_id: known.id, pad: "a".repeat(20_000) }));
    const get = await fetch(`${url()}?encoding=json&message=${message}`, { headers: auth() });
    expect(get.status).toBe(431);
  });

  it("answers 405 to other HTTP methods and to GET on a method with side effects", async () => {
    for (const method of ["PUT", "DELETE", "PATCH"]) {
      const res = await fetch(url(), {
        method,
        body: "{}",
        headers: { ...auth(), "content-type": "application/json" },
      });
      expect(res.status, method).toBe(405);
    }
    const get = await fetch(`${url("UpdateCustomer")}?encoding=json&message=%7B%7D`, { headers: auth() });
    expect(get.status).toBe(405);
  });
});

describe("gRPC-Web (HTTP/1.1)", () => {
  /** The grpc-status and grpc-message of a gRPC-Web response's trailer frame. */
  async function grpcWeb(body: Buffer, headers: Record<string, string> = {}) {
    const res = await fetch(`${customer.url}${CUSTOMER}/GetCustomer`, {
      method: "POST",
      body,
      headers: { ...auth(), "content-type": "application/grpc-web+proto", ...headers },
    });
    const bytes = Buffer.from(await res.arrayBuffer());
    expect(bytes[0]).toBe(0x80); // a trailers frame, and nothing else
    const trailers = bytes.subarray(5, 5 + bytes.readUInt32BE(1)).toString("latin1");
    const get = (name: string) => new RegExp(`^${name}: (.*)$`, "mi").exec(trailers)?.[1]?.trim();
    return {
      status: res.status,
      grpcStatus: Number(get("grpc-status")),
      message: decodeURIComponent(get("grpc-message") ?? ""),
    };
  }

  it.each([
    [
      "a truncated envelope",
      () => envelope(getRequest(), { declaredLength: 100 }),
      Code.InvalidArgument,
      "protocol error: incomplete envelope",
    ],
    [
      "the compressed flag without grpc-encoding",
      () => envelope(getRequest(), { flags: 1 }),
      Code.Internal,
      "received compressed envelope, but do not know how to decompress",
    ],
    [
      "a message over the size limit",
      () => envelope(field(1, "x".repeat(LIMIT))),
      Code.ResourceExhausted,
      `message size ${LIMIT + 4} is larger than configured readMaxBytes ${LIMIT}`,
    ],
  ] as const)("answers %s precisely", async (_name, body, code, message) => {
    expect(await grpcWeb(body())).toEqual({ status: 200, grpcStatus: code, message });
  });
});

describe("identity service: garbage never counts as a sign-in attempt", () => {
  const signInUrl = () => `${identity.url}${AUTH}/AuthenticateCustomer`;
  const signIn = (password: Buffer) => Buffer.concat([field(1, login.email), field(2, password)]);

  it("answers invalid UTF-8 in the password with INTERNAL over gRPC and Connect", async () => {
    const grpc = await grpcRaw(identity.url, `${AUTH}/AuthenticateCustomer`, envelope(signIn(INVALID_UTF8)));
    expect(grpc).toMatchObject({
      status: Code.Internal,
      message: "parse binary: The encoded data was not valid for encoding utf-8",
    });
    const connect = await post(signInUrl(), signIn(INVALID_UTF8), { "content-type": "application/proto" });
    expect(connect.status).toBe(500);
    expect(await storedRows()).toEqual(stored);
    // The same bytes with valid UTF-8 reach the password check, and that attempt is counted.
    const valid = await post(signInUrl(), signIn(Buffer.from("right bytes, wrong password")), {
      "content-type": "application/proto",
    });
    expect(valid.json).toEqual({ code: "unauthenticated", message: "invalid email or password" });
    const [throttle] = await identitySql<{ failures: number }[]>`select failures from login_throttles
      where key = sha256(convert_to(${`login:${login.email}`}, 'UTF8'))`;
    expect(throttle?.failures).toBe(2);
    stored = await storedRows();
  });

  it("answers an oversized sign-in with RESOURCE_EXHAUSTED before reading the password", async () => {
    const res = await grpcRaw(
      identity.url,
      `${AUTH}/AuthenticateCustomer`,
      envelope(signIn(Buffer.alloc(LIMIT, 0x61))),
    );
    expect(res).toMatchObject({
      status: Code.ResourceExhausted,
      message: `message size ${signIn(Buffer.alloc(LIMIT, 0x61)).length} is larger than configured readMaxBytes ${LIMIT}`,
    });
  });

  it("answers nested, non-UTF-8 and oversized JSON with 400 / 429", async () => {
    const nested = await post(signInUrl(), `{"email": ${"[".repeat(30_000)}${"]".repeat(30_000)}}`, {
      "content-type": "application/json",
    });
    expect(nested.status).toBe(400);
    expect(nested.json).toMatchObject({ code: "invalid_argument" });
    const utf8 = await post(
      signInUrl(),
      Buffer.concat([Buffer.from(`{"email": "${login.email}", "password": "`), INVALID_UTF8, Buffer.from('"}')]),
      { "content-type": "application/json" },
    );
    expect(utf8.json).toEqual({
      code: "invalid_argument",
      message: "The encoded data was not valid for encoding utf-8",
    });
    const big = await post(signInUrl(), JSON.stringify({ email: login.email, password: "x".repeat(LIMIT) }), {
      "content-type": "application/json",
    });
    expect(big.status).toBe(429);
  });

  it("answers the JWKS endpoint's misuse: 405 for POST, 431 for huge headers", async () => {
    const jwks = `${identity.url}/.well-known/jwks.json`;
    expect((await fetch(jwks, { method: "POST", body: "{}" })).status).toBe(405);
    expect((await fetch(jwks, { headers: { "x-padding": "a".repeat(20_000) } })).status).toBe(431);
    expect((await fetch(jwks)).status).toBe(200);
  });
});
