/**
 * Raw gRPC bytes at the customer service with its default limits, over
 * HTTP/2 and as gRPC-Web over HTTP/1.1: lying length prefixes, compressed
 * flag without encoding, unknown encodings, zip bombs, missing or extra
 * messages, a malformed grpc-timeout, invalid UTF-8 in hand-encoded
 * protobuf, content types without a codec, huge header blocks, an HTTP/2
 * rapid reset. (Connect and the identity service: wire-connect.test.ts.)
 *
 * Each answer is pinned to its exact code and message. After every test
 * both servers still serve on every protocol and no stored row changed.
 */
import { randomUUID } from "node:crypto";
import http2 from "node:http2";
import { gzipSync } from "node:zlib";
import { Code } from "@connectrpc/connect";
import { describe, expect, it } from "vitest";
import { sleep } from "../support/timing.js";
import { envelope, field, grpcRaw, h2request } from "../support/wire.js";
import { CUSTOMER, INVALID_UTF8, LIMIT, useWireTargets } from "../support/wire-targets.js";

const t = useWireTargets();

/** A RegisterCustomerRequest whose given_name holds `givenName` as raw bytes. */
const registerRequest = (email: string, givenName: Buffer) =>
  Buffer.concat([field(1, email), field(2, givenName), field(3, "Lovelace")]);

describe("gRPC frames (HTTP/2)", () => {
  const bomb = gzipSync(Buffer.alloc(10 * 1024 * 1024));
  type FrameCase = [name: string, body: () => Buffer, headers: Record<string, string>, code: Code, message: string];
  const cases: FrameCase[] = [
    [
      "a length prefix longer than the message (truncated)",
      () => envelope(t.getRequest(), { declaredLength: 100 }),
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
      () => envelope(t.getRequest(), { declaredLength: 5 }),
      {},
      Code.ResourceExhausted,
      `message size ${t.getRequest().subarray(6, 10).readUInt32BE(0)} is larger than configured readMaxBytes ${LIMIT}`,
    ],
    [
      "two messages for a unary method",
      () => Buffer.concat([envelope(t.getRequest()), envelope(t.getRequest())]),
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
      () => envelope(t.getRequest(), { flags: 1 }),
      {},
      Code.Internal,
      "received compressed envelope, but do not know how to decompress",
    ],
    [
      "an unknown grpc-encoding",
      () => envelope(t.getRequest(), { flags: 1 }),
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
      () => envelope(t.getRequest().subarray(0, 10)),
      {},
      Code.Internal,
      "parse binary: premature EOF",
    ],
    [
      "a malformed grpc-timeout",
      () => envelope(t.getRequest()),
      { "grpc-timeout": "xyz" },
      Code.InvalidArgument,
      "protocol error: invalid grpc timeout value: xyz",
    ],
  ];

  it.each(cases)("answers %s with its precise status", async (_name, body, headers, code, message) => {
    const res = await grpcRaw(t.customer.url, `${CUSTOMER}/GetCustomer`, body(), { ...t.auth(), ...headers });
    expect(res).toMatchObject({ httpStatus: 200, status: code, message, rstCode: 0 });
    expect(res.data.length).toBe(0);
  });

  it("answers invalid UTF-8 in a string field with INTERNAL and stores nothing", async () => {
    const id = randomUUID();
    const token = await t.issuer.customer(id);
    const res = await grpcRaw(
      t.customer.url,
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
      t.customer.url,
      `${CUSTOMER}/RegisterCustomer`,
      envelope(registerRequest(`utf8.${id.slice(0, 8)}@example.com`, Buffer.from("Ada"))),
      { authorization: "Bearer x" },
    );
    expect(good).toMatchObject({ status: Code.Unauthenticated, message: "invalid access token" });
  });

  it("answers HTTP 415 to a gRPC content type it has no codec for", async () => {
    const res = await grpcRaw(t.customer.url, `${CUSTOMER}/GetCustomer`, envelope(t.getRequest()), {
      ...t.auth(),
      "content-type": "application/grpc+xml",
    });
    expect(res.httpStatus).toBe(415);
  });

  it("refuses a stream whose header block is over 64 KiB (HTTP/2 has no 431), and serves the next session", async () => {
    const headers = {
      ":path": `${CUSTOMER}/GetCustomer`,
      "content-type": "application/grpc",
      te: "trailers",
      ...t.auth(),
    };
    const huge = await h2request(t.customer.url, { ...headers, "x-big": "a".repeat(70_000) }, envelope(t.getRequest()));
    expect(huge).toMatchObject({ rstCode: http2.constants.NGHTTP2_REFUSED_STREAM, headers: {} });
    const next = await h2request(t.customer.url, headers, envelope(t.getRequest()));
    expect(next).toMatchObject({ rstCode: 0, headers: { ":status": 200 }, trailers: { "grpc-status": "0" } });
  });

  it("survives a rapid reset: 500 streams opened and cancelled at once", async () => {
    const session = http2.connect(t.customer.url);
    session.on("error", () => {});
    await new Promise<void>((resolve) => session.once("connect", () => resolve()));
    for (let i = 0; i < 500 && !session.destroyed && !session.closed; i++) {
      const req = session.request({
        ":method": "POST",
        ":path": `${CUSTOMER}/GetCustomer`,
        "content-type": "application/grpc",
        te: "trailers",
        ...t.auth(),
      });
      req.on("error", () => {});
      req.close(http2.constants.NGHTTP2_CANCEL);
    }
    await sleep(200);
    session.destroy();
  });
});

describe("gRPC-Web (HTTP/1.1)", () => {
  /** The grpc-status and grpc-message of a gRPC-Web response's trailer frame. */
  async function grpcWeb(body: Buffer, headers: Record<string, string> = {}) {
    const res = await fetch(`${t.customer.url}${CUSTOMER}/GetCustomer`, {
      method: "POST",
      body,
      headers: { ...t.auth(), "content-type": "application/grpc-web+proto", ...headers },
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
      () => envelope(t.getRequest(), { declaredLength: 100 }),
      Code.InvalidArgument,
      "protocol error: incomplete envelope",
    ],
    [
      "the compressed flag without grpc-encoding",
      () => envelope(t.getRequest(), { flags: 1 }),
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
