import http2 from "node:http2";
import net from "node:net";
import { Duplex } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus,
  HealthCheckResponseSchema,
} from "@customer-platform/gen/grpc/health/v1/health_pb.js";
import * as grpc from "@grpc/grpc-js";
import { pino } from "pino";
import { afterEach, describe, expect, it, vi } from "vitest";
import { rawTcp } from "../../test/support/wire.js";
import { createHealth, registerHealth } from "../src/health.js";
import { type HttpServer, listen } from "../src/http-server.js";

const logger = pino({ level: "silent" });
const { SERVING } = HealthCheckResponse_ServingStatus;

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = () => {};
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

/**
 * A server with Health over Connect/gRPC and plain routes: `/slow` answers once
 * `release` is called, `/hang` never answers, anything else echoes
 * "<http version> <method> <url>". Every request's HTTP version and URL are recorded.
 */
async function start(opts: { readMaxBytes?: number } = {}) {
  const versions: string[] = [];
  const urls: string[] = [];
  const release = deferred();
  const adapter = connectNodeAdapter({
    ...opts,
    routes: (router) => registerHealth(router, createHealth()),
    fallback: (req, res) => {
      if (req.url === "/hang") return;
      if (req.url === "/slow") {
        void release.promise.then(() => res.end("slow done"));
        return;
      }
      res.end(`${req.httpVersion} ${req.method} ${req.url}`);
    },
  });
  const server = await listen({
    host: "127.0.0.1",
    port: 0,
    logger,
    sniffTimeoutMs: 300,
    handler: (req, res) => {
      versions.push(req.httpVersion);
      urls.push(req.url ?? "");
      adapter(req, res);
    },
  });
  servers.push(server);
  /** Resolves once `n` requests for `url` have reached the handler. */
  const arrived = (url: string, n: number) =>
    vi.waitFor(() => expect(urls.filter((u) => u === url)).toHaveLength(n), { interval: 5 });
  return { server, versions, arrived, release: release.resolve };
}

const servers: HttpServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close({ graceMs: 0 })));
});

/** Writes `bytes` one byte at a time with a pause between, then reads until the server closes. */
async function rawExchange(port: number, bytes: string, opts: { endAfterWrite?: boolean } = {}): Promise<string> {
  const socket = net.connect(port, "127.0.0.1").setNoDelay(true);
  let received = "";
  socket.on("data", (d) => {
    received += d.toString("latin1");
  });
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  socket.on("error", () => {});
  for (const byte of bytes) {
    socket.write(byte, "latin1");
    await sleep(3);
  }
  if (opts.endAfterWrite) socket.end();
  await closed;
  return received;
}

/** An HTTP/2 connection whose first `n` bytes (the preface) leave one per write, 5 ms apart. */
function tricklingConnection(port: number, n: number): Duplex {
  const socket = net.connect(port, "127.0.0.1").setNoDelay(true);
  let written = 0;
  const duplex = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      void (async () => {
        let rest = chunk;
        while (rest.length > 0 && written < n) {
          socket.write(rest.subarray(0, 1));
          rest = rest.subarray(1);
          written++;
          await sleep(5);
        }
        if (rest.length > 0) socket.write(rest);
      })().then(() => callback(), callback);
    },
    final(callback) {
      socket.end(callback);
    },
    destroy(err, callback) {
      socket.destroy();
      callback(err);
    },
  });
  socket.on("data", (d) => duplex.push(d));
  socket.on("end", () => duplex.push(null));
  socket.on("error", (err) => duplex.destroy(err));
  return duplex;
}

/** GET `path` on an HTTP/2 session; resolves with status and body. */
function h2Get(
  session: http2.ClientHttp2Session,
  path: string,
  headers: http2.OutgoingHttpHeaders = {},
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const stream = session.request({ ...headers, ":path": path });
    let status = 0;
    let body = "";
    stream.on("response", (headers) => {
      status = Number(headers[":status"]);
    });
    stream.setEncoding("utf8");
    stream.on("data", (d: string) => {
      body += d;
    });
    stream.on("error", reject);
    stream.on("close", () => {
      if (status === 0) reject(new Error(`stream closed without a response (code ${stream.rstCode})`));
      else resolve({ status, body });
    });
  });
}

const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");
const SETTINGS = 0x4;
const GOAWAY = 0x7;

/** The types of the HTTP/2 frames in `raw` (9-byte headers: length, type, flags, stream id). */
function frameTypes(raw: string): number[] {
  const bytes = Buffer.from(raw, "latin1");
  const types: number[] = [];
  for (let at = 0; at + 9 <= bytes.length; at += 9 + bytes.readUIntBE(at, 3)) types.push(bytes.readUInt8(at + 3));
  return types;
}

/** grpc.health.v1.Health/Check of `service` from @grpc/grpc-js; resolves with the status code. */
function grpcJsCheck(client: grpc.Client, service: string): Promise<grpc.status> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (req: { service: string }) =>
        Buffer.from(toBinary(HealthCheckRequestSchema, create(HealthCheckRequestSchema, req))),
      (bytes: Buffer) => fromBinary(HealthCheckResponseSchema, bytes),
      { service },
      (err) => resolve(err ? err.code : grpc.status.OK),
    );
  });
}

function h2Connect(url: string, opts: http2.ClientSessionOptions = {}): Promise<http2.ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(url, opts);
    session.once("connect", () => resolve(session));
    session.once("error", reject);
  });
}

describe("listen", () => {
  it("serves HTTP/1.1 and HTTP/2 with prior knowledge on one port", async () => {
    const { server, versions } = await start();
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`);

    const h1 = createClient(Health, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    expect((await h1.check({})).status).toBe(SERVING);
    const h2 = createClient(Health, createConnectTransport({ baseUrl: server.url, httpVersion: "2" }));
    expect((await h2.check({})).status).toBe(SERVING);
    const grpc = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    expect((await grpc.check({})).status).toBe(SERVING);
    const res = await fetch(`${server.url}/hello?x=1`);
    expect(await res.text()).toBe("1.1 GET /hello?x=1");

    expect(versions).toEqual(["1.1", "2.0", "2.0", "1.1"]);
  });

  it("recognizes an HTTP/2 preface that arrives one byte at a time", async () => {
    const { server, versions } = await start();
    const session = await h2Connect(server.url, { createConnection: () => tricklingConnection(server.port, 24) });
    try {
      expect(await h2Get(session, "/trickle")).toEqual({ status: 200, body: "2.0 GET /trickle" });
    } finally {
      session.close();
    }
    expect(versions).toEqual(["2.0"]);
  });

  it("serves an HTTP/1.1 request that arrives one byte at a time", async () => {
    const { server } = await start();
    const response = await rawExchange(server.port, "GET /bytes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    expect(response).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
    expect(response.endsWith("\r\n\r\n1.1 GET /bytes")).toBe(true);
  });

  it("survives garbage, early closes and silent connections, and keeps serving", async () => {
    const { server } = await start();
    // Not HTTP at all: the HTTP/1.1 parser rejects it.
    expect(await rawExchange(server.port, "\x16\x03\x01garbage\r\n\r\n")).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    // Half a preface, then the client hangs up.
    expect(await rawExchange(server.port, "PRI * HTTP/2", { endAfterWrite: true })).toBe("");
    // Half a preface, then silence: dropped after the sniff timeout (300 ms here).
    expect(await rawExchange(server.port, "PRI * ")).toBe("");
    // Connects and resets at once.
    await new Promise((resolve) => {
      const socket = net.connect(server.port, "127.0.0.1");
      socket.on("connect", () => socket.resetAndDestroy()).on("close", resolve);
    });
    // Right preface, then not a frame: the HTTP/2 session answers SETTINGS, then GOAWAY.
    const h2Garbage = await rawExchange(server.port, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nnot a frame at all");
    expect(frameTypes(h2Garbage)).toEqual([SETTINGS, GOAWAY]);

    const res = await fetch(`${server.url}/still-here`);
    expect(await res.text()).toBe("1.1 GET /still-here");
  });
});

describe("a request connect-node cannot make a URL of", () => {
  it("no authority (HTTP/1.0 without Host) or an invalid one is 400, and the server keeps serving", async () => {
    const { server } = await start();
    const path = "/grpc.health.v1.Health/Check";
    const ask = async (head: string) => {
      const answer = (await rawTcp(server.port, Buffer.from(`${head}\r\n\r\n`))).toString("latin1");
      return answer.split("\r\n")[0];
    };
    expect(await ask(`POST ${path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 0`)).toBe(
      "HTTP/1.1 400 Bad Request",
    );
    expect(
      await ask(`POST ${path} HTTP/1.1\r\nHost: bad host\r\nContent-Type: application/json\r\nConnection: close`),
    ).toBe("HTTP/1.1 400 Bad Request");
    const health = createClient(Health, createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }));
    expect((await health.check({})).status).toBe(SERVING);
  });
});

describe("listen options", () => {
  it("limits the request header size on both protocols", async () => {
    const server = await listen({
      host: "127.0.0.1",
      port: 0,
      logger,
      maxHeaderSize: 1024,
      handler: (_, res) => res.end("ok"),
    });
    servers.push(server);
    expect((await fetch(server.url, { headers: { "x-big": "a".repeat(500) } })).status).toBe(200);
    expect((await fetch(server.url, { headers: { "x-big": "a".repeat(2000) } })).status).toBe(431);
    const session = await h2Connect(server.url);
    try {
      // The server applies its SETTINGS once the client has acknowledged them: one round trip.
      expect(await h2Get(session, "/", { "x-big": "a".repeat(500) })).toEqual({ status: 200, body: "ok" });
      await expect(h2Get(session, "/", { "x-big": "a".repeat(2000) })).rejects.toThrow(
        "Stream closed with error code NGHTTP2_ENHANCE_YOUR_CALM",
      );
    } finally {
      session.close();
    }
  });

  it("rejects when the port is taken", async () => {
    const { server } = await start();
    await expect(listen({ host: "127.0.0.1", port: server.port, logger, handler: () => {} })).rejects.toMatchObject({
      code: "EADDRINUSE",
    });
  });
});

describe("close", () => {
  it("lets in-flight requests finish and closes idle connections without waiting for the grace period", async () => {
    const { server, arrived, release } = await start();
    // An HTTP/2 session left open by a Connect client after its call.
    const grpc = createClient(Health, createGrpcTransport({ baseUrl: server.url }));
    expect((await grpc.check({})).status).toBe(SERVING);
    // An idle HTTP/1.1 keep-alive connection.
    const idle = net.connect(server.port, "127.0.0.1");
    idle.write("GET /idle HTTP/1.1\r\nHost: x\r\n\r\n");
    await new Promise((resolve) => idle.once("data", resolve));
    const idleClosed = new Promise((resolve) => idle.once("close", resolve));
    // An in-flight HTTP/1.1 request and an in-flight HTTP/2 request.
    const slowH1 = fetch(`${server.url}/slow`).then(async (r) => [r.status, await r.text()]);
    const session = await h2Connect(server.url);
    const goaway = new Promise((resolve) => session.once("goaway", resolve));
    const slowH2 = h2Get(session, "/slow");
    await arrived("/slow", 2);

    const started = Date.now();
    let closed = false;
    const closing = server.close({ graceMs: 10_000 }).then(() => {
      closed = true;
    });
    await goaway;
    await idleClosed;
    const refused = await new Promise<string>((resolve) => {
      net
        .connect(server.port, "127.0.0.1")
        .on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? ""))
        .on("connect", () => resolve("connected"));
    });
    expect(refused).toBe("ECONNREFUSED");
    await sleep(50);
    expect(closed).toBe(false);

    release();
    expect(await slowH1).toEqual([200, "slow done"]);
    expect(await slowH2).toEqual({ status: 200, body: "slow done" });
    await closing;
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(session.closed || session.destroyed).toBe(true);
  });

  it("closes an idle grpc-js connection at once, also after a request it answered without reading it all", async () => {
    const { server } = await start({ readMaxBytes: 1024 });
    const client = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    try {
      expect(await grpcJsCheck(client, "")).toBe(grpc.status.OK);
      // Rejected after its first bytes: the rest of its 64 KiB is never read by the handler.
      expect(await grpcJsCheck(client, "x".repeat(64 * 1024))).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(await grpcJsCheck(client, "")).toBe(grpc.status.OK);
      const started = Date.now();
      await server.close({ graceMs: 10_000 });
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      client.close();
    }
  });

  it("does not wait the grace period for a client that never closes its side", async () => {
    const { server } = await start();
    // A client that speaks HTTP/2 (preface, empty SETTINGS), then ignores everything, even the server's FIN.
    const socket = net.connect({ port: server.port, host: "127.0.0.1", allowHalfOpen: true });
    let received = "";
    socket.on("data", (d) => {
      received += d.toString("latin1");
    });
    const ended = new Promise<void>((resolve) => socket.once("end", () => resolve()));
    socket.on("error", () => {});
    socket.write(Buffer.concat([H2_PREFACE, Buffer.from([0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])]));
    await vi.waitFor(() => expect(frameTypes(received)).toContain(SETTINGS), { interval: 5 });
    const started = Date.now();
    await server.close({ graceMs: 10_000 });
    expect(Date.now() - started).toBeLessThan(3_000);
    await ended;
    expect(frameTypes(received)).toContain(GOAWAY);
    socket.destroy();
  });

  it("destroys the connections still busy when the grace period ends", async () => {
    const { server, arrived } = await start();
    const hungH1 = fetch(`${server.url}/hang`);
    const session = await h2Connect(server.url);
    const hungH2 = h2Get(session, "/hang");
    await arrived("/hang", 2);
    await server.close({ graceMs: 100 });
    await expect(hungH1).rejects.toThrow("fetch failed");
    await expect(hungH2).rejects.toThrow("stream closed without a response");
    session.destroy();
  });
});
