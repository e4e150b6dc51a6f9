/**
 * What one client may hold open (listen's `limits`), probed over loopback
 * with raw HTTP/2 frames, node:http2 and raw TCP: an idle connection is
 * closed, SETTINGS advertise the stream limit and streams beyond it are
 * refused, a request whose body never arrives is answered and its stream
 * closed, connections beyond the cap are closed; well-behaved calls keep
 * working throughout.
 */
import http2 from "node:http2";
import net from "node:net";
import { create, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus,
} from "@customer-platform/gen/grpc/health/v1/health_pb.js";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { until } from "../../test/support/timing.js";
import { envelope } from "../../test/support/wire.js";
import { createHealth, registerHealth } from "../src/health.js";
import { DEFAULT_HTTP_LIMITS, type HttpLimits, type HttpServer, listen } from "../src/http-server.js";

const logger = pino({ level: "silent" });
const { SERVING } = HealthCheckResponse_ServingStatus;
const { NGHTTP2_NO_ERROR, NGHTTP2_REFUSED_STREAM } = http2.constants;

/**
 * A server with Health over Connect/gRPC and plain routes: `/hang` never
 * answers, `/late` answers after `lateMs`, anything else answers "ok".
 * `inFlight` counts the requests the handler holds.
 */
async function start(limits: Partial<HttpLimits>, opts: { lateMs?: number } = {}) {
  const state = { inFlight: 0, maxInFlight: 0 };
  const adapter = connectNodeAdapter({
    routes: (router) => registerHealth(router, createHealth()),
    fallback: (req, res) => {
      if (req.url === "/hang") return;
      if (req.url === "/late") {
        // Reads the whole body first, then takes its time to answer.
        req.resume();
        req.on("end", () => setTimeout(() => res.end("late"), opts.lateMs ?? 0));
        return;
      }
      res.end("ok");
    },
  });
  const server = await listen({
    host: "127.0.0.1",
    port: 0,
    logger,
    limits,
    handler: (req, res) => {
      state.inFlight++;
      state.maxInFlight = Math.max(state.maxInFlight, state.inFlight);
      res.once("close", () => state.inFlight--);
      adapter(req, res);
    },
  });
  servers.push(server);
  return { server, state };
}

const servers: HttpServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close({ graceMs: 0 })));
});

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const HEADERS = 0x1;
const RST_STREAM = 0x3;
const SETTINGS = 0x4;
const GOAWAY = 0x7;
const END_STREAM = 0x1;
const END_HEADERS = 0x4;
const ACK = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS = 0x3;

interface Frame {
  type: number;
  flags: number;
  streamId: number;
  payload: Buffer;
}

function frame(type: number, flags: number, streamId: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(9);
  head.writeUIntBE(payload.length, 0, 3);
  head.writeUInt8(type, 3);
  head.writeUInt8(flags, 4);
  head.writeUInt32BE(streamId, 5);
  return Buffer.concat([head, payload]);
}

/** HPACK for `POST <path>` over http (static table entries, then a literal :authority). */
function requestHeaderBlock(path: "/" | "/hang"): Buffer {
  const literal = (s: string) => Buffer.concat([Buffer.from([s.length]), Buffer.from(s, "latin1")]);
  // :method POST (3), :scheme http (6), :path / (4) or a literal :path (name index 4), :authority x (name index 1).
  const pathField = path === "/" ? Buffer.from([0x84]) : Buffer.concat([Buffer.from([0x04]), literal(path)]);
  return Buffer.concat([Buffer.from([0x83, 0x86]), pathField, Buffer.from([0x01]), literal("x")]);
}

/**
 * A raw HTTP/2 client: sends the preface and an empty SETTINGS, records every
 * frame the server sends, and acknowledges the server's SETTINGS only if asked.
 */
function rawH2(port: number, opts: { ackSettings: boolean }) {
  const socket = net.connect(port, "127.0.0.1");
  const frames: Frame[] = [];
  let pending = Buffer.alloc(0);
  let closed = false;
  socket.on("data", (chunk: Buffer) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 9) {
      const length = pending.readUIntBE(0, 3);
      if (pending.length < 9 + length) break;
      const f = {
        type: pending.readUInt8(3),
        flags: pending.readUInt8(4),
        streamId: pending.readUInt32BE(5) & 0x7fffffff,
        payload: pending.subarray(9, 9 + length),
      };
      frames.push(f);
      if (f.type === SETTINGS && !(f.flags & ACK) && opts.ackSettings) socket.write(frame(SETTINGS, ACK, 0));
      pending = pending.subarray(9 + length);
    }
  });
  socket.on("error", () => {});
  socket.on("close", () => {
    closed = true;
  });
  socket.write(Buffer.concat([H2_PREFACE, frame(SETTINGS, 0, 0)]));
  return {
    socket,
    frames,
    get closed() {
      return closed;
    },
    /** Opens stream `id` with a POST to `path` whose body never comes. */
    open(id: number, path: "/" | "/hang" = "/hang") {
      socket.write(frame(HEADERS, END_HEADERS, id, requestHeaderBlock(path)));
    },
    /** A complete POST to `path` with an empty body. */
    request(id: number, path: "/" | "/hang" = "/") {
      socket.write(frame(HEADERS, END_HEADERS | END_STREAM, id, requestHeaderBlock(path)));
    },
  };
}

/** The server's (non-ACK) SETTINGS as id → value. */
function serverSettings(frames: Frame[]): Map<number, number> {
  const settings = frames.find((f) => f.type === SETTINGS && !(f.flags & ACK));
  const values = new Map<number, number>();
  for (let at = 0; settings && at + 6 <= settings.payload.length; at += 6) {
    values.set(settings.payload.readUInt16BE(at), settings.payload.readUInt32BE(at + 2));
  }
  return values;
}

function h2Connect(url: string): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url);
    session.once("connect", () => resolve(session));
    session.once("error", reject);
  });
}

interface StreamResult {
  headers: http2.IncomingHttpHeaders;
  body: string;
  rstCode: number | undefined;
}

/** Sends the request headers and `body` on `session` and, unless `end`, never ends the request. */
function h2Send(
  session: http2.ClientHttp2Session,
  headers: http2.OutgoingHttpHeaders,
  body: Uint8Array,
  end: boolean,
): Promise<StreamResult> {
  return new Promise((resolve) => {
    const stream = session.request({ ":method": "POST", ...headers }, { endStream: false });
    const result: StreamResult = { headers: {}, body: "", rstCode: undefined };
    stream.on("response", (h) => {
      result.headers = h;
    });
    stream.setEncoding("utf8");
    stream.on("data", (d: string) => {
      result.body += d;
    });
    stream.on("error", () => {});
    stream.on("close", () => resolve({ ...result, rstCode: stream.rstCode }));
    if (end) stream.end(body);
    else stream.write(body);
  });
}

/** Resolves once `socket` is closed, with the bytes the server sent. */
function received(socket: net.Socket): Promise<string> {
  let text = "";
  socket.on("data", (d: Buffer) => {
    text += d.toString("latin1");
  });
  return new Promise((resolve) => socket.once("close", () => resolve(text)));
}

const checkRequest = toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, {}));

describe("idle connections", () => {
  it("closes an HTTP/2 connection with no stream open after the idle timeout, with a GOAWAY", async () => {
    const { server } = await start({ idleTimeoutMs: 300 });
    // Never opens a stream.
    const silent = rawH2(server.port, { ackSettings: true });
    // One request, then nothing.
    const used = rawH2(server.port, { ackSettings: true });
    used.request(1);
    await until("both idle connections closed", () => silent.closed && used.closed);
    expect(silent.frames.map((f) => f.type)).toContain(GOAWAY);
    expect(used.frames.filter((f) => f.type === HEADERS).map((f) => f.streamId)).toEqual([1]);
    expect(used.frames.map((f) => f.type)).toContain(GOAWAY);
  });

  it("keeps a connection whose stream is still in flight, and closes it once it is idle", async () => {
    const { server } = await start({ idleTimeoutMs: 200 }, { lateMs: 600 });
    const session = await h2Connect(server.url);
    const closed = new Promise<void>((resolve) => session.once("close", () => resolve()));
    session.on("error", () => {});
    const late = await h2Send(session, { ":path": "/late" }, new Uint8Array(0), true);
    expect([late.headers[":status"], late.body]).toEqual([200, "late"]);
    await closed;
  });

  it("closes an idle HTTP/1.1 keep-alive connection after the idle timeout", async () => {
    const { server } = await start({ idleTimeoutMs: 300 });
    const socket = net.connect(server.port, "127.0.0.1");
    const answer = received(socket);
    socket.write("GET /idle HTTP/1.1\r\nHost: x\r\n\r\n");
    expect(await answer).toMatch(/^HTTP\/1\.1 200 OK\r\n[\s\S]*\r\n\r\nok$/);
  });
});

describe("concurrent streams", () => {
  it("advertises 100 concurrent streams by default and refuses the 101st with REFUSED_STREAM", async () => {
    const { server, state } = await start({});
    expect(DEFAULT_HTTP_LIMITS.maxConcurrentStreams).toBe(100);
    // Opens its streams right after the preface, before acknowledging the server's SETTINGS.
    const client = rawH2(server.port, { ackSettings: false });
    await until("the server's SETTINGS", () => serverSettings(client.frames).size > 0);
    expect(serverSettings(client.frames).get(SETTINGS_MAX_CONCURRENT_STREAMS)).toBe(100);
    for (let i = 0; i < 101; i++) client.open(2 * i + 1);
    await until("a reset", () => client.frames.some((f) => f.type === RST_STREAM));
    await until("100 requests in the handler", () => state.inFlight === 100);
    const resets = client.frames.filter((f) => f.type === RST_STREAM);
    expect(resets.map((f) => [f.streamId, f.payload.readUInt32BE(0)])).toEqual([[201, NGHTTP2_REFUSED_STREAM]]);
    expect(client.closed).toBe(false);

    // A client that acknowledged the limit and still opens one more loses its connection, no one else's.
    const violator = rawH2(server.port, { ackSettings: true });
    await until("the SETTINGS acknowledged", () => violator.frames.some((f) => f.type === SETTINGS && f.flags & ACK));
    for (let i = 0; i < 101; i++) violator.open(2 * i + 1);
    await until("the violator disconnected", () => violator.closed);
    expect(violator.frames.map((f) => f.type)).toContain(GOAWAY);

    const grpc = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    expect((await grpc.check({})).status).toBe(SERVING);
    expect(client.closed).toBe(false);
  });

  it("lets a well-behaved client queue beyond the limit: every call completes, at most the limit at once", async () => {
    const { server, state } = await start({ maxConcurrentStreams: 5 }, { lateMs: 20 });
    const session = await h2Connect(server.url);
    try {
      // Wait for the server's SETTINGS so that the client knows the limit.
      await until("remote settings", () => session.remoteSettings.maxConcurrentStreams === 5);
      const calls = Array.from({ length: 30 }, () => h2Send(session, { ":path": "/late" }, new Uint8Array(0), true));
      const results = await Promise.all(calls);
      expect(results.map((r) => r.body)).toEqual(Array(30).fill("late"));
      expect(state.maxInFlight).toBe(5);
    } finally {
      session.close();
    }
  });
});

describe("request body deadline", () => {
  const limits = { requestTimeoutMs: 300 };
  const grpcHeaders = {
    ":path": "/grpc.health.v1.Health/Check",
    "content-type": "application/grpc",
    te: "trailers",
  };

  it("answers a gRPC call whose body never completes with DEADLINE_EXCEEDED and closes its stream", async () => {
    const { server, state } = await start(limits);
    const session = await h2Connect(server.url);
    try {
      // Half an envelope: a 5-byte prefix announcing more than is sent.
      const stalled = await h2Send(session, grpcHeaders, envelope(checkRequest, { declaredLength: 100 }), false);
      expect(stalled.headers).toMatchObject({
        ":status": 200,
        "grpc-status": "4",
        "grpc-message": "request%20not%20received%20within%20300%20ms",
      });
      expect(stalled.rstCode).toBe(NGHTTP2_NO_ERROR);
      await until("the handler released", () => state.inFlight === 0);
      // The session is still good for a complete call.
      const ok = await h2Send(session, grpcHeaders, envelope(checkRequest), true);
      expect(ok.headers[":status"]).toBe(200);
    } finally {
      session.close();
    }
  });

  it("answers a Connect call whose body never completes with 408 and a deadline_exceeded error", async () => {
    const { server } = await start(limits);
    const session = await h2Connect(server.url);
    try {
      const stalled = await h2Send(
        session,
        { ":path": "/grpc.health.v1.Health/Check", "content-type": "application/json", "content-length": "100" },
        Buffer.from("{"),
        false,
      );
      expect(stalled.headers[":status"]).toBe(408);
      expect(JSON.parse(stalled.body)).toEqual({
        code: "deadline_exceeded",
        message: "request not received within 300 ms",
      });
      expect(stalled.rstCode).toBe(NGHTTP2_NO_ERROR);
    } finally {
      session.close();
    }
    // A generated client sees the precise code.
    const connect = createClient(Health, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
    expect((await connect.check({})).status).toBe(SERVING);
  });

  it("frees every stream slot: 300 stalled requests on 3 connections all end, and calls keep working", async () => {
    const { server, state } = await start({ ...limits, maxConcurrentStreams: 100 });
    const clients = [0, 1, 2].map(() => rawH2(server.port, { ackSettings: true }));
    for (const client of clients) {
      await until("SETTINGS acknowledged", () => client.frames.some((f) => f.type === SETTINGS && f.flags & ACK));
      for (let i = 0; i < 100; i++) client.open(2 * i + 1);
    }
    await until("every stalled stream reset", () =>
      clients.every((c) => c.frames.filter((f) => f.type === RST_STREAM).length === 100),
    );
    await until("the handler released them all", () => state.inFlight === 0);
    expect(clients.some((c) => c.closed)).toBe(false);
    const grpc = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    expect((await grpc.check({})).status).toBe(SERVING);
  });

  it("leaves a call alone whose body arrived in time, however long its answer takes, and calls with deadlines", async () => {
    const { server } = await start(limits, { lateMs: 900 });
    const session = await h2Connect(server.url);
    try {
      const late = await h2Send(session, { ":path": "/late" }, Buffer.from("body"), true);
      expect([late.headers[":status"], late.body, late.rstCode]).toEqual([200, "late", NGHTTP2_NO_ERROR]);
    } finally {
      session.close();
    }
    const grpc = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    expect((await grpc.check({}, { timeoutMs: 5_000 })).status).toBe(SERVING);
  });

  it("answers an HTTP/1.1 request whose body never completes with 408 and closes the connection", async () => {
    const { server } = await start(limits);
    const socket = net.connect(server.port, "127.0.0.1");
    const answer = received(socket);
    socket.write("POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n");
    socket.write("Content-Length: 100\r\n\r\n{");
    expect(await answer).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    // Headers that never end get the same.
    const slowloris = net.connect(server.port, "127.0.0.1");
    const slow = received(slowloris);
    slowloris.write("GET / HTTP/1.1\r\nHost: x\r\n");
    expect(await slow).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
  });
});

describe("connection cap", () => {
  it("closes connections beyond the cap at once, serves those within it, and accepts again once one closes", async () => {
    const { server } = await start({ maxConnections: 3 });
    const sessions = await Promise.all([0, 1, 2].map(() => h2Connect(server.url)));
    for (const session of sessions) session.on("error", () => {});
    // The fourth is accepted by the kernel, then closed by the server without a byte.
    const extra = net.connect(server.port, "127.0.0.1");
    expect(await received(extra)).toBe("");
    const h1 = await fetch(server.url).catch((err: Error) => err);
    expect(h1).toBeInstanceOf(Error);

    // Those within the cap still work.
    for (const session of sessions) {
      const ok = await h2Send(session, { ":path": "/" }, new Uint8Array(0), true);
      expect(ok.body).toBe("ok");
    }
    // One closes: a new connection gets its place.
    const first = sessions.shift();
    await new Promise<void>((resolve) => first?.close(() => resolve()));
    await until("a new connection served", async () => {
      const res = await fetch(server.url, { headers: { connection: "close" } }).catch(() => undefined);
      return (await res?.text()) === "ok";
    });
    for (const session of sessions) session.close();
  });
});

describe("limits", () => {
  it("refuses nothing a generated client does with the defaults", async () => {
    const { server } = await start({});
    for (const transport of [
      createGrpcTransport({ baseUrl: server.url }),
      createConnectTransport({ baseUrl: server.url, httpVersion: "2" }),
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
    ]) {
      const client = createClient(Health, transport);
      const answers = await Promise.all(Array.from({ length: 150 }, () => client.check({})));
      expect(answers.every((a) => a.status === SERVING)).toBe(true);
    }
  });
});
