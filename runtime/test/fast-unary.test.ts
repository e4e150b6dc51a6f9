/**
 * The fast path for unary gRPC (fast-unary.ts) against connect-node: the same
 * handler served by two servers, one with the fast path and one without,
 * answers every kind of call with the same headers, body and trailers; calls
 * take the fast path (its counter), and what it does not cover falls back.
 */
import http from "node:http";
import http2 from "node:http2";
import { gzipSync } from "node:zlib";
import { create, toBinary } from "@bufbuild/protobuf";
import { StringValueSchema } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  createClient,
  type Interceptor,
  type ServiceImpl,
} from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { CustomerService, GetCustomerRequestSchema } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ConnectServer, startConnectServer } from "../src/connect-server.js";
import { createFastUnaryAdapter } from "../src/fast-unary.js";
import { listen } from "../src/http-server.js";

const PATH = "/customer.v1.CustomerService/GetCustomer";
const ID = {
  ok: "00000000-0000-4000-8000-000000000001",
  notFound: "00000000-0000-4000-8000-000000000002",
  crash: "00000000-0000-4000-8000-000000000003",
  slow: "00000000-0000-4000-8000-000000000004",
  unicode: "00000000-0000-4000-8000-000000000005",
  big: "00000000-0000-4000-8000-000000000006",
};

/** Why the slow handler's signal was aborted, call by call. */
const abortReasons: unknown[] = [];
let slowCalls = 0;

const impl: Partial<ServiceImpl<typeof CustomerService>> = {
  async getCustomer(req, ctx) {
    switch (req.customerId) {
      case ID.ok: {
        // Names are case-insensitive; iteration sees every header (and no pseudo-header).
        ctx.responseHeader.set("x-echo", ctx.requestHeader.get("X-Echo") ?? "");
        ctx.responseHeader.set("x-has", String(ctx.requestHeader.has("X-ECHO") && !ctx.requestHeader.has("x-none")));
        let invalid = "no error";
        try {
          ctx.requestHeader.get(":path");
        } catch (err) {
          invalid = err instanceof TypeError ? "TypeError" : "another error";
        }
        ctx.responseHeader.set("x-invalid", invalid);
        ctx.responseHeader.set("x-seen", [...ctx.requestHeader.keys()].filter((k) => k.startsWith("x-")).join(","));
        ctx.responseTrailer.set("x-trailer", "t");
        return { customer: { customerId: req.customerId, email: "a@example.com" } };
      }
      case ID.notFound:
        ctx.responseTrailer.set("x-trailer", "t");
        throw new ConnectError("customer not found", Code.NotFound, { "x-error-meta": "m" }, [
          { desc: StringValueSchema, value: { value: "detail" } },
        ]);
      case ID.crash:
        throw new Error("boom");
      case ID.slow:
        slowCalls++;
        await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
        abortReasons.push(ctx.signal.reason);
        return {};
      case ID.unicode:
        throw new ConnectError("ünïcode 100% / ok?", Code.FailedPrecondition);
      case ID.big:
        return { customer: { customerId: req.customerId, givenName: "x".repeat(4_000) } };
    }
    return {};
  },
};

let fast: ConnectServer;
let slow: ConnectServer;

/** The test handler behind the server under test, with or without the fast path. */
const start = (fastPath: boolean, limits?: { requestTimeoutMs: number }) =>
  startConnectServer({
    host: "127.0.0.1",
    port: 0,
    logger: pino({ level: "silent" }),
    service: CustomerService,
    impl: impl as ServiceImpl<typeof CustomerService>,
    readMaxBytes: 1024,
    probe: async () => true,
    fastPath,
    ...(limits && { limits }),
  });

beforeAll(async () => {
  [fast, slow] = await Promise.all([start(true), start(false)]);
});
afterAll(async () => {
  await Promise.all([fast?.close(1_000), slow?.close(1_000)]);
});

interface Answer {
  status: number | undefined;
  headers: Record<string, unknown>;
  body: string;
  trailers: Record<string, unknown>;
  /** Whether a trailing HEADERS frame came (HTTP/2), even an empty one. */
  trailersFrame: boolean;
}

/** One raw HTTP/2 request; the answer without its date. */
async function raw(url: string, body: Uint8Array, headers: Record<string, string> = {}, path = PATH): Promise<Answer> {
  const session = http2.connect(url);
  try {
    return await new Promise<Answer>((resolve, reject) => {
      const req = session.request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc",
        te: "trailers",
        ...headers,
      });
      const answer: Answer = { status: undefined, headers: {}, body: "", trailers: {}, trailersFrame: false };
      const chunks: Buffer[] = [];
      req.on("response", (h) => {
        const { date: _date, ...rest } = h;
        answer.status = rest[":status"];
        answer.headers = { ...rest };
      });
      req.on("trailers", (t) => {
        answer.trailers = { ...t };
        answer.trailersFrame = true;
      });
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("error", reject);
      req.on("close", () => {
        answer.body = Buffer.concat(chunks).toString("hex");
        resolve(answer);
      });
      req.end(body);
    });
  } finally {
    session.close();
  }
}

/** One raw HTTP/1.1 request on a fresh connection; the answer without its date. */
function rawH1(url: string, body: Uint8Array | string, headers: Record<string, string>, path = PATH): Promise<Answer> {
  return new Promise<Answer>((resolve, reject) => {
    const req = http.request(`${url}${path}`, { method: "POST", headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const { date: _date, ...rest } = res.headers;
        const body = Buffer.concat(chunks).toString("hex");
        resolve({ status: res.statusCode, headers: rest, body, trailers: {}, trailersFrame: false });
      });
    });
    req.on("error", reject);
    req.end(body);
  });
}

function envelope(payload: Uint8Array, flags = 0, length = payload.length): Uint8Array {
  const out = new Uint8Array(5 + payload.length);
  out[0] = flags;
  new DataView(out.buffer).setUint32(1, length);
  out.set(payload, 5);
  return out;
}

const message = (customerId: string) =>
  toBinary(GetCustomerRequestSchema, create(GetCustomerRequestSchema, { customerId }));

/**
 * Sends the same request to both servers; the fast one must have served it on
 * the fast path, straight from its HTTP/2 stream.
 */
async function both(body: Uint8Array, headers: Record<string, string> = {}) {
  const before = { ...fast.stats };
  const [a, b] = await Promise.all([raw(fast.url, body, headers), raw(slow.url, body, headers)]);
  expect(fast.stats.fast).toBe(before.fast + 1);
  expect(fast.stats.streams).toBe(before.streams + 1);
  expect(a).toEqual(b);
  return a;
}

describe("the fast path answers as connect-node does", () => {
  it("a success, with response headers and trailers set by the handler, and request metadata echoed", async () => {
    const a = await both(envelope(message(ID.ok)), { "x-echo": "hello", "x-other": "1" });
    expect(a.headers).toMatchObject({
      ":status": 200,
      "content-type": "application/grpc+proto",
      "x-echo": "hello",
      "x-has": "true",
      "x-seen": "x-echo,x-other",
      "x-invalid": "TypeError",
    });
    expect(a.trailers).toMatchObject({ "grpc-status": "0", "x-trailer": "t" });
    expect(a.body.length).toBeGreaterThan(10);
  });

  it("application/grpc+proto is served as application/grpc", async () => {
    await both(envelope(message(ID.ok)), { "content-type": "application/grpc+proto" });
  });

  it("an error with details and metadata: grpc-status, grpc-message, grpc-status-details-bin", async () => {
    const a = await both(envelope(message(ID.notFound)));
    expect(a.trailers).toMatchObject({
      "grpc-status": String(Code.NotFound),
      "grpc-message": "customer%20not%20found",
      "x-error-meta": "m",
      "x-trailer": "t",
    });
    expect(a.trailers["grpc-status-details-bin"]).toEqual(expect.any(String));
  });

  it("a message that needs percent-encoding", async () => {
    const a = await both(envelope(message(ID.unicode)));
    expect(a.trailers["grpc-message"]).toBe(encodeURIComponent("ünïcode 100% / ok?"));
  });

  it("an unexpected error is internal error", async () => {
    const a = await both(envelope(message(ID.crash)));
    expect(a.trailers).toMatchObject({ "grpc-status": String(Code.Internal), "grpc-message": "internal%20error" });
  });

  it("a protovalidate violation is INVALID_ARGUMENT with its details", async () => {
    const a = await both(envelope(message("not-a-uuid")));
    expect(a.trailers["grpc-status"]).toBe(String(Code.InvalidArgument));
    expect(a.trailers["grpc-status-details-bin"]).toEqual(expect.any(String));
  });

  it("a passed deadline is DEADLINE_EXCEEDED", async () => {
    const a = await both(envelope(message(ID.slow)), { "grpc-timeout": "50m" });
    expect(a.trailers["grpc-status"]).toBe(String(Code.DeadlineExceeded));
  });

  it("a response compressed as the client accepts, once it is large enough", async () => {
    const a = await both(envelope(message(ID.big)), { "grpc-accept-encoding": "gzip" });
    expect(a.headers["grpc-encoding"]).toBe("gzip");
    expect(a.body.slice(0, 2)).toBe("01");
    await both(envelope(message(ID.ok)), { "grpc-accept-encoding": "gzip" });
  });

  it("malformed requests get connect-node's codes", async () => {
    const codes: unknown[] = [];
    const bad = [
      new Uint8Array(0), // no message
      envelope(message(ID.ok)).subarray(0, 8), // cut envelope
      new Uint8Array([...envelope(message(ID.ok)), ...envelope(message(ID.ok))]), // two messages
      envelope(new Uint8Array([0xff, 0xff, 0xff])), // not protobuf
      envelope(message(ID.ok), 1), // compressed flag without grpc-encoding
      envelope(new Uint8Array(2_000)), // over readMaxBytes
      envelope(new Uint8Array(0), 0, 1_000_000), // a length over readMaxBytes, body never sent
      envelope(message(ID.ok), 0, 5), // a length shorter than the message: the rest read as the next envelope
    ];
    for (const body of bad) codes.push((await both(body)).trailers["grpc-status"]);
    expect(codes).toEqual(
      [
        Code.Unimplemented,
        Code.InvalidArgument,
        Code.Unimplemented,
        Code.Internal,
        Code.Internal,
        Code.ResourceExhausted,
        Code.ResourceExhausted,
        Code.ResourceExhausted,
      ].map(String),
    );
  });
});

describe("Connect unary answers as connect-node does, over HTTP/1.1 and HTTP/2", () => {
  const json = (customerId: string) => JSON.stringify({ customerId });
  const protoHeaders = { "content-type": "application/proto" };
  const jsonHeaders = { "content-type": "application/json" };

  async function connectBoth(body: Uint8Array | string, headers: Record<string, string>) {
    const before = { ...fast.stats };
    const bytes = typeof body === "string" ? Buffer.from(body) : body;
    const [a, b, c, d] = await Promise.all([
      rawH1(fast.url, bytes, headers),
      rawH1(slow.url, bytes, headers),
      raw(fast.url, bytes, headers),
      raw(slow.url, bytes, headers),
    ]);
    // Both on the fast path: HTTP/1.1 through Node's request API, HTTP/2 straight from its stream.
    expect(fast.stats.fast).toBe(before.fast + 2);
    expect(fast.stats.streams).toBe(before.streams + 1);
    expect(a).toEqual(b);
    expect(c).toEqual(d);
    return { h1: a, h2: c };
  }

  it("a success in JSON and in proto, with response headers and trailers set by the handler", async () => {
    const { h1, h2 } = await connectBoth(json(ID.ok), { ...jsonHeaders, "x-echo": "hello" });
    expect(h1).toMatchObject({ status: 200, headers: { "x-echo": "hello", "trailer-x-trailer": "t" } });
    expect(h2.headers).toMatchObject({ ":status": 200, "content-type": "application/json", "x-echo": "hello" });
    await connectBoth(message(ID.ok), protoHeaders);
    await connectBoth(json(ID.ok), { ...jsonHeaders, "content-length": String(json(ID.ok).length) });
  });

  it("errors: details and metadata, percent signs, internal error, violations, a passed deadline", async () => {
    const statuses: unknown[] = [];
    for (const [body, headers] of [
      [json(ID.notFound), jsonHeaders],
      [message(ID.notFound), protoHeaders],
      [json(ID.unicode), jsonHeaders],
      [json(ID.crash), jsonHeaders],
      [json("not-a-uuid"), jsonHeaders],
      [json(ID.slow), { ...jsonHeaders, "connect-timeout-ms": "50" }],
    ] as const) {
      statuses.push((await connectBoth(body, headers)).h1.status);
    }
    expect(statuses).toEqual([404, 404, 400, 500, 400, 504]);
  });

  it("malformed and oversized bodies", async () => {
    const statuses: unknown[] = [];
    for (const [body, headers] of [
      ["{", jsonHeaders],
      [Buffer.from([0x7b, 0x22, 0x63, 0xff, 0x22, 0x3a, 0x31, 0x7d]), jsonHeaders], // invalid UTF-8
      [new Uint8Array([0xff, 0xff, 0xff]), protoHeaders],
      [json("x".repeat(2_000)), jsonHeaders],
      [json("x".repeat(2_000)), { ...jsonHeaders, "content-length": String(json("x".repeat(2_000)).length) }],
      ["", jsonHeaders],
    ] as const) {
      statuses.push((await connectBoth(body, headers)).h1.status);
    }
    expect(statuses).toEqual([400, 400, 500, 429, 429, 400]);
  });

  it("a response compressed as the client accepts, once it is large enough", async () => {
    const { h1 } = await connectBoth(json(ID.big), { ...jsonHeaders, "accept-encoding": "gzip" });
    expect(h1.headers["content-encoding"]).toBe("gzip");
  });
});

describe("what the fast path does not cover goes to connect-node", () => {
  async function fellBack(call: () => Promise<unknown>) {
    const before = { ...fast.stats };
    await call();
    expect(fast.stats.fast).toBe(before.fast);
    expect(fast.stats.fallback).toBeGreaterThan(before.fallback);
  }

  it("a compressed request", async () => {
    const body = envelope(gzipSync(message(ID.ok)), 1);
    await fellBack(async () => {
      const [a, b] = await Promise.all([
        raw(fast.url, body, { "grpc-encoding": "gzip" }),
        raw(slow.url, body, { "grpc-encoding": "gzip" }),
      ]);
      expect(a).toEqual(b);
      expect(a.trailers["grpc-status"]).toBe("0");
    });
  });

  it("an authority that is not one (the URL of the call could not be built)", async () => {
    const headers = { "content-type": "application/json", host: "bad host" };
    await fellBack(async () => {
      const [a, b] = await Promise.all([
        rawH1(fast.url, JSON.stringify({ customerId: ID.ok }), headers),
        rawH1(slow.url, JSON.stringify({ customerId: ID.ok }), headers),
      ]);
      expect(a).toEqual(b);
      // connect-node cannot build the call's URL; the server answers 400 rather than crash.
      expect(a.status).toBe(400);
    });
  });

  it("gRPC-Web, Connect GET, a compressed Connect request and an unknown path", async () => {
    const web = createClient(CustomerService, createGrpcWebTransport({ baseUrl: fast.url, httpVersion: "2" }));
    await fellBack(() => web.getCustomer({ customerId: ID.ok }));
    const get = createClient(
      CustomerService,
      createConnectTransport({ baseUrl: fast.url, httpVersion: "1.1", useHttpGet: true }),
    );
    await fellBack(() => get.getCustomer({ customerId: ID.ok }));
    await fellBack(async () => {
      const body = gzipSync(JSON.stringify({ customerId: ID.ok }));
      const headers = { "content-type": "application/json", "content-encoding": "gzip" };
      const [a, b] = await Promise.all([rawH1(fast.url, body, headers), rawH1(slow.url, body, headers)]);
      expect(a).toEqual(b);
      expect(a.status).toBe(200);
    });
    await fellBack(async () => {
      const a = await raw(fast.url, envelope(message(ID.ok)), {}, "/customer.v1.CustomerService/Nope");
      expect(a.headers[":status"]).toBe(404);
    });
  });

  it("a streaming method (reflection)", async () => {
    const a = await raw(fast.url, new Uint8Array(0), {}, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
    expect(a.status).toBe(200);
    expect(fast.stats.fallback).toBeGreaterThan(0);
  });
});

describe("the HTTP limits hold on the fast path", () => {
  let limited: ConnectServer;
  beforeAll(async () => {
    limited = await start(true, { requestTimeoutMs: 300 });
  });
  afterAll(async () => {
    await limited?.close(1_000);
  });

  /** Sends the headers and `body` and never ends the request. */
  function stalled(headers: Record<string, string>, body: Uint8Array) {
    const session = http2.connect(limited.url);
    return new Promise<{ headers: http2.IncomingHttpHeaders; body: string; rstCode: number | undefined }>((resolve) => {
      const req = session.request({ ":method": "POST", ":path": PATH, ...headers }, { endStream: false });
      let answer: http2.IncomingHttpHeaders = {};
      let text = "";
      req.on("response", (h) => {
        answer = h;
      });
      req.setEncoding("utf8");
      req.on("data", (d: string) => {
        text += d;
      });
      req.on("error", () => {});
      req.on("close", () => {
        resolve({ headers: answer, body: text, rstCode: req.rstCode });
        session.close();
      });
      req.write(body);
    });
  }

  it("a gRPC call whose body never completes is DEADLINE_EXCEEDED, its stream closed", async () => {
    const before = limited.stats.fast;
    const res = await stalled({ "content-type": "application/grpc", te: "trailers" }, envelope(message(ID.ok), 0, 100));
    expect(limited.stats.fast).toBe(before + 1);
    expect(res.headers).toMatchObject({
      ":status": 200,
      "grpc-status": String(Code.DeadlineExceeded),
      "grpc-message": "request%20not%20received%20within%20300%20ms",
    });
    expect(res.rstCode).toBe(http2.constants.NGHTTP2_NO_ERROR);
  });

  it("a Connect call whose body never completes is 408 with deadline_exceeded", async () => {
    const before = limited.stats.fast;
    const res = await stalled({ "content-type": "application/json", "content-length": "100" }, Buffer.from("{"));
    expect(limited.stats.fast).toBe(before + 1);
    expect(res.headers[":status"]).toBe(408);
    expect(JSON.parse(res.body)).toEqual({ code: "deadline_exceeded", message: "request not received within 300 ms" });
  });

  it.each([
    ["CANCEL", http2.constants.NGHTTP2_CANCEL, Code.Canceled],
    ["INTERNAL_ERROR", http2.constants.NGHTTP2_INTERNAL_ERROR, Code.Internal],
    ["PROTOCOL_ERROR", http2.constants.NGHTTP2_PROTOCOL_ERROR, Code.Internal],
    ["REFUSED_STREAM", http2.constants.NGHTTP2_REFUSED_STREAM, Code.Unavailable],
  ])("a reset with %s aborts the handler as connect-node does, and the server serves on", async (name, rst, code) => {
    // Node turns a reset with an error code into an 'error' on the stream: with nobody listening, an
    // uncaught exception.
    const calls = slowCalls;
    const seen = abortReasons.length;
    const session = http2.connect(limited.url);
    session.on("error", () => {});
    const req = session.request({
      ":method": "POST",
      ":path": PATH,
      "content-type": "application/grpc",
      te: "trailers",
    });
    req.on("error", () => {});
    req.end(envelope(message(ID.slow)));
    await expect.poll(() => slowCalls).toBe(calls + 1);
    req.close(rst);
    await expect.poll(() => abortReasons.length).toBe(seen + 1);
    expect(abortReasons[seen]).toEqual(
      new ConnectError(`http/2 stream closed with error code ${name} (0x${rst.toString(16)})`, code),
    );
    session.close();
    const a = await raw(limited.url, envelope(message(ID.ok)));
    expect(a.trailers["grpc-status"]).toBe("0");
  });

  it("a call in flight when the server closes gets its answer", async () => {
    const server = await start(true);
    const call = raw(server.url, envelope(message(ID.slow)), { "grpc-timeout": "300m" });
    await expect.poll(() => server.stats.fast).toBe(1);
    const closed = server.close(10_000);
    expect((await call).trailers["grpc-status"]).toBe(String(Code.DeadlineExceeded));
    await closed;
  });
});

describe("an interceptor that replaces the request", () => {
  // It adds a header to a copy of the request; the handler must see the copy's headers and a live signal,
  // and what it sets on the response must reach the client, on the fast path as through connect-node.
  const addHeader: Interceptor = (next) => (req) => {
    const header = new Headers(req.header);
    header.set("x-added", "by interceptor");
    return next({ ...req, header });
  };
  const echo: Partial<ServiceImpl<typeof CustomerService>> = {
    async getCustomer(req, ctx) {
      ctx.responseHeader.set("x-added", ctx.requestHeader.get("x-added") ?? "missing");
      ctx.responseTrailer.set("x-signal", String(ctx.signal.aborted));
      return { customer: { customerId: req.customerId } };
    },
  };
  const serve = async (fastPath: boolean) => {
    const adapterOptions = {
      routes: (r: ConnectRouter) => r.service(CustomerService, echo),
      interceptors: [addHeader],
    };
    const fast = fastPath ? createFastUnaryAdapter(adapterOptions) : undefined;
    return {
      fast,
      server: await listen({
        host: "127.0.0.1",
        port: 0,
        handler: fast?.handler ?? connectNodeAdapter(adapterOptions),
        ...(fast && { streamHandler: fast.streamHandler }),
        logger: pino({ level: "silent" }),
      }),
    };
  };

  it("gets the interceptor's headers, its signal, and answers with what the handler set", async () => {
    const [a, b] = await Promise.all([serve(true), serve(false)]);
    try {
      const [x, y] = await Promise.all([
        raw(a.server.url, envelope(message(ID.ok))),
        raw(b.server.url, envelope(message(ID.ok))),
      ]);
      expect(a.fast?.stats.streams).toBe(1);
      expect(x).toEqual(y);
      expect(x.headers).toMatchObject({ "x-added": "by interceptor" });
      expect(x.trailers).toMatchObject({ "grpc-status": "0", "x-signal": "false" });
    } finally {
      await Promise.all([a.server.close({ graceMs: 100 }), b.server.close({ graceMs: 100 })]);
    }
  });
});
