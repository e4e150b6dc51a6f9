/**
 * Raw bytes over Connect (HTTP/1.1) at the customer service, and garbage at
 * the identity service, both with their default limits: wrong content
 * types, truncated and never-ending bodies, huge headers, invalid UTF-8
 * (hand-encoded protobuf and JSON), deeply nested JSON, unknown JSON fields,
 * oversized messages, gzip bombs, other HTTP methods. (gRPC frames:
 * wire-grpc.test.ts.)
 *
 * Each answer is pinned to its exact code and message. After every test
 * both servers still serve on every protocol and no stored row changed (a
 * garbage sign-in does not even count as a failed attempt).
 */
import { randomUUID } from "node:crypto";
import { gzipSync } from "node:zlib";
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { envelope, field, grpcRaw, httpPost, rawTcp } from "../support/wire.js";
import { AUTH, CUSTOMER, INVALID_UTF8, LIMIT, useWireTargets } from "../support/wire-targets.js";

const t = useWireTargets();

/** A RegisterCustomerRequest whose given_name holds `givenName` as raw bytes. */
const registerRequest = (email: string, givenName: Buffer) =>
  Buffer.concat([field(1, email), field(2, givenName), field(3, "Lovelace")]);

describe("Connect unary (HTTP/1.1)", () => {
  const url = (method = "GetCustomer") => `${t.customer.url}${CUSTOMER}/${method}`;

  it.each([
    "text/plain",
    "application/xml",
    "application/x-www-form-urlencoded",
    "application/connect+proto",
    "application/connect+json",
    "",
  ])("answers 415 to content-type %j", async (contentType) => {
    const res = await httpPost(url(), t.getRequest(), {
      ...t.auth(),
      ...(contentType && { "content-type": contentType }),
    });
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
      () => t.getRequest().subarray(0, 10),
      { "content-type": "application/proto" },
      500,
      { code: "internal", message: "parse binary: premature EOF" },
    ],
    [
      "a JSON body cut in the middle of a string",
      () => `{"customer_id": "${t.knownId}`,
      { "content-type": "application/json" },
      400,
      {
        code: "invalid_argument",
        message: `cannot decode message customer.v1.GetCustomerRequest from JSON: Unterminated string in JSON at position ${17 + t.knownId.length}`,
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
      () => t.getRequest(),
      { "content-type": "application/proto", "content-encoding": "compress" },
      501,
      { code: "unimplemented", message: 'unknown compression "compress": supported encodings are gzip,br' },
    ],
    [
      "a malformed connect-timeout-ms",
      () => t.getRequest(),
      { "content-type": "application/proto", "connect-timeout-ms": "soon" },
      400,
      { code: "invalid_argument", message: "protocol error: invalid connect timeout value: soon" },
    ],
  ];

  it.each(cases)("answers %s precisely", async (_name, body, headers, status, error) => {
    const res = await httpPost(url(), body(), { ...t.auth(), ...headers });
    expect(res.status).toBe(status);
    expect(res.json).toEqual(error);
  });

  it("answers invalid UTF-8 with INTERNAL in protobuf and INVALID_ARGUMENT in JSON, storing nothing", async () => {
    const id = randomUUID();
    const email = `utf8.${id.slice(0, 8)}@example.com`;
    const token = await t.issuer.customer(id, email);
    const binary = await httpPost(url("RegisterCustomer"), registerRequest(email, INVALID_UTF8), {
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
    const res = await httpPost(url("RegisterCustomer"), json, {
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
    const res = await httpPost(
      url(),
      JSON.stringify({ customer_id: t.known.id, admin: true, "@type": "x", version: 99 }),
      {
        ...t.auth(),
        "content-type": "application/json",
      },
    );
    expect(res.status).toBe(200);
    expect(res.json).toMatchObject({ customer: { customerId: t.known.id } });
    // A field under both of its JSON names is not "last one wins".
    const twice = await httpPost(url(), JSON.stringify({ customerId: randomUUID(), customer_id: t.known.id }), {
      ...t.auth(),
      "content-type": "application/json",
    });
    expect(twice.status).toBe(400);
    expect(twice.json).toEqual({
      code: "invalid_argument",
      message: "cannot decode field customer.v1.GetCustomerRequest.customer_id from JSON: set multiple times",
    });
    // An update that names no real change, while trying to set version, create_time and another id.
    const update = await httpPost(
      url("UpdateCustomer"),
      JSON.stringify({
        customer: {
          customer_id: t.known.id,
          given_name: t.known.snapshot.customer?.givenName,
          version: "999",
          create_time: "1970-01-01T00:00:00Z",
          is_admin: true,
        },
        update_mask: "givenName",
        owner: randomUUID(),
      }),
      { ...t.auth(), "content-type": "application/json" },
    );
    expect(update.status).toBe(200);
    expect(update.json).toMatchObject({ customer: { customerId: t.known.id, version: "1" } });
  });

  it("answers 400 and closes the connection when the body is shorter than its content-length", async () => {
    const body = t.getRequest();
    const head =
      `POST ${CUSTOMER}/GetCustomer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/proto\r\n` +
      `authorization: Bearer ${t.known.token}\r\ncontent-length: ${body.length + 50}\r\n\r\n`;
    const reply = (
      await rawTcp(t.customer.server.port, Buffer.concat([Buffer.from(head), body]), { halfClose: true })
    ).toString("latin1");
    expect(reply).toBe("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
  });

  it("answers 400 and closes the connection when a chunked body never ends", async () => {
    const body = t.getRequest();
    const head =
      `POST ${CUSTOMER}/GetCustomer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/proto\r\n` +
      `authorization: Bearer ${t.known.token}\r\ntransfer-encoding: chunked\r\n\r\n`;
    const chunk = `${(body.length + 10).toString(16)}\r\n`;
    const reply = (
      await rawTcp(t.customer.server.port, Buffer.concat([Buffer.from(head + chunk), body]), { halfClose: true })
    ).toString("latin1");
    expect(reply).toBe("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
  });

  it("answers 431 to headers over 16 KiB, in a header or in a GET URL", async () => {
    const header = await httpPost(url(), t.getRequest(), {
      ...t.auth(),
      "content-type": "application/proto",
      "x-padding": "a".repeat(20_000),
    });
    expect(header.status).toBe(431);
    const message = encodeURIComponent(JSON.stringify({ customer_id: t.known.id, pad: "a".repeat(20_000) }));
    const get = await fetch(`${url()}?encoding=json&message=${message}`, { headers: t.auth() });
    expect(get.status).toBe(431);
  });

  it("answers 405 to other HTTP methods and to GET on a method with side effects", async () => {
    for (const method of ["PUT", "DELETE", "PATCH"]) {
      const res = await fetch(url(), {
        method,
        body: "{}",
        headers: { ...t.auth(), "content-type": "application/json" },
      });
      expect(res.status, method).toBe(405);
    }
    const get = await fetch(`${url("UpdateCustomer")}?encoding=json&message=%7B%7D`, { headers: t.auth() });
    expect(get.status).toBe(405);
  });
});

describe("identity service: garbage never counts as a sign-in attempt", () => {
  const signInUrl = () => `${t.identity.url}${AUTH}/AuthenticateCustomer`;
  const signIn = (password: Buffer) => Buffer.concat([field(1, t.login.email), field(2, password)]);

  it("answers invalid UTF-8 in the password with INTERNAL over gRPC and Connect", async () => {
    const grpc = await grpcRaw(t.identity.url, `${AUTH}/AuthenticateCustomer`, envelope(signIn(INVALID_UTF8)));
    expect(grpc).toMatchObject({
      status: Code.Internal,
      message: "parse binary: The encoded data was not valid for encoding utf-8",
    });
    const connect = await httpPost(signInUrl(), signIn(INVALID_UTF8), { "content-type": "application/proto" });
    expect(connect.status).toBe(500);
    expect(await t.storedRows()).toEqual(t.stored);
    // The same bytes with valid UTF-8 reach the password check, and that attempt is counted.
    const valid = await httpPost(signInUrl(), signIn(Buffer.from("right bytes, wrong password")), {
      "content-type": "application/proto",
    });
    expect(valid.json).toEqual({ code: "unauthenticated", message: "invalid email or password" });
    const [throttle] = await t.identity.database.sql<{ failures: number }[]>`select failures from login_throttles
      where key = sha256(convert_to(${`login:${t.login.email}`}, 'UTF8'))`;
    expect(throttle?.failures).toBe(2);
    await t.resnapshot();
  });

  it("answers an oversized sign-in with RESOURCE_EXHAUSTED before reading the password", async () => {
    const res = await grpcRaw(
      t.identity.url,
      `${AUTH}/AuthenticateCustomer`,
      envelope(signIn(Buffer.alloc(LIMIT, 0x61))),
    );
    expect(res).toMatchObject({
      status: Code.ResourceExhausted,
      message: `message size ${signIn(Buffer.alloc(LIMIT, 0x61)).length} is larger than configured readMaxBytes ${LIMIT}`,
    });
  });

  it("answers nested, non-UTF-8 and oversized JSON with 400 / 429", async () => {
    const nested = await httpPost(signInUrl(), `{"email": ${"[".repeat(30_000)}${"]".repeat(30_000)}}`, {
      "content-type": "application/json",
    });
    expect(nested.status).toBe(400);
    expect(nested.json).toMatchObject({ code: "invalid_argument" });
    const utf8 = await httpPost(
      signInUrl(),
      Buffer.concat([Buffer.from(`{"email": "${t.login.email}", "password": "`), INVALID_UTF8, Buffer.from('"}')]),
      { "content-type": "application/json" },
    );
    expect(utf8.json).toEqual({
      code: "invalid_argument",
      message: "The encoded data was not valid for encoding utf-8",
    });
    const big = await httpPost(signInUrl(), JSON.stringify({ email: t.login.email, password: "x".repeat(LIMIT) }), {
      "content-type": "application/json",
    });
    expect(big.status).toBe(429);
  });

  it("answers the JWKS endpoint's misuse: 405 for POST, 431 for huge headers", async () => {
    const jwks = `${t.identity.url}/.well-known/jwks.json`;
    expect((await fetch(jwks, { method: "POST", body: "{}" })).status).toBe(405);
    expect((await fetch(jwks, { headers: { "x-padding": "a".repeat(20_000) } })).status).toBe(431);
    expect((await fetch(jwks)).status).toBe(200);
  });
});
