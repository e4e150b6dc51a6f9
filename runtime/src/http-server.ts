/**
 * One TCP port for HTTP/2 cleartext with prior knowledge (gRPC clients) and
 * HTTP/1.1 (curl, browsers, Connect's HTTP/1.1 transport), told apart by the
 * HTTP/2 connection preface, with limits on what a client may hold open and a
 * graceful close.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import http2, {
  type Http2ServerRequest,
  type Http2ServerResponse,
  type IncomingHttpHeaders,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from "node:http2";
import net from "node:net";
import type { Logger } from "./logger.js";

/** The first bytes of every HTTP/2 connection (RFC 9113, section 3.4). */
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/** gRPC's status code DEADLINE_EXCEEDED. */
const GRPC_DEADLINE_EXCEEDED = 4;
const { NGHTTP2_NO_ERROR, NGHTTP2_CANCEL } = http2.constants;

/** How long a connection whose side we ended (closing, or idle) may take to close its own. */
const PEER_CLOSE_WAIT_MS = 1_000;

/** What one client may hold open, for both protocols. */
export interface HttpLimits {
  /** Open connections, all clients together; one more is closed as soon as it is accepted. */
  maxConnections: number;
  /** HTTP/2 streams in flight on one connection, advertised in SETTINGS_MAX_CONCURRENT_STREAMS. */
  maxConcurrentStreams: number;
  /**
   * A connection with no request in flight for this long is closed: HTTP/2
   * with a GOAWAY (gRPC's max connection idle), HTTP/1.1 by its keep-alive
   * timeout. 0: never.
   */
  idleTimeoutMs: number;
  /**
   * Time a client has to send a whole request, headers and body. Then an
   * HTTP/2 request still incomplete is answered (gRPC: DEADLINE_EXCEEDED;
   * otherwise 408 with a Connect `deadline_exceeded` error) and its stream
   * closed; HTTP/1.1 answers 408 and closes the connection. 0: no limit.
   */
  requestTimeoutMs: number;
}

/**
 * Limits when none are given: 100 streams as gRPC servers default, an idle
 * timeout above the common 60 s of load balancers (nginx's 75 s), and 30 s
 * for a request body that is at most a few MiB.
 */
export const DEFAULT_HTTP_LIMITS: Readonly<HttpLimits> = {
  maxConnections: 1_000,
  maxConcurrentStreams: 100,
  idleTimeoutMs: 75_000,
  requestTimeoutMs: 30_000,
};

/** A request listener for both protocols, such as `connectNodeAdapter(…)`. */
export type RequestHandler = (
  req: IncomingMessage | Http2ServerRequest,
  res: ServerResponse | Http2ServerResponse,
) => void;

/**
 * Takes an HTTP/2 stream before Node's compatibility layer builds a request
 * and a response for it (`Http2ServerRequest`/`Response`, a quarter of a
 * small call's CPU); returns false to leave it to the `RequestHandler`.
 */
export type StreamHandler = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boolean;

export interface ListenOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  handler: RequestHandler;
  /** Tried first for every HTTP/2 stream (the request limits apply either way). */
  streamHandler?: StreamHandler;
  logger: Logger;
  /** Largest request header block in bytes, for both protocols (Node's default: 16 KiB). */
  maxHeaderSize?: number;
  /** How long a new connection may take to show which protocol it speaks (default 10 s). */
  sniffTimeoutMs?: number;
  /** Each one not given is taken from DEFAULT_HTTP_LIMITS. */
  limits?: Partial<HttpLimits>;
}

export interface HttpServer {
  /** The port bound, useful with `port: 0`. */
  readonly port: number;
  /** `http://host:port` */
  readonly url: string;
  /**
   * Stops accepting connections, lets in-flight requests finish for up to `graceMs`
   * (default 10 s) while idle connections are closed (HTTP/2 sessions get a GOAWAY;
   * a client that has not closed its side a second after ours is disconnected),
   * then destroys whatever is left. Safe to call more than once.
   */
  close(opts?: { graceMs?: number }): Promise<void>;
}

/** Serves `handler` on one port over HTTP/1.1 and HTTP/2 cleartext. */
export async function listen(opts: ListenOptions): Promise<HttpServer> {
  const { handler, logger } = opts;
  const sniffTimeoutMs = opts.sniffTimeoutMs ?? 10_000;
  const limits = { ...DEFAULT_HTTP_LIMITS, ...opts.limits };
  let closing = false;
  const sockets = new Set<net.Socket>();
  const undecided = new Set<net.Socket>();
  const sessions = new Set<ServerHttp2Session>();

  const h1 = http.createServer(
    {
      ...(opts.maxHeaderSize === undefined ? {} : { maxHeaderSize: opts.maxHeaderSize }),
      keepAliveTimeout: limits.idleTimeoutMs,
      // Node answers 408 and closes the connection; the headers get the same time as the whole request.
      requestTimeout: limits.requestTimeoutMs,
      ...(limits.requestTimeoutMs > 0 ? { headersTimeout: limits.requestTimeoutMs } : {}),
      // How often both are checked (Node's default: every 30 s).
      connectionsCheckingInterval: checkInterval(limits.requestTimeoutMs),
    },
    (req, res) => {
      if (closing) res.setHeader("connection", "close");
      // A keep-alive connection whose response ends while we drain is idle now: close it.
      res.once("finish", () => {
        if (closing) setImmediate(() => h1.closeIdleConnections());
      });
      serveGuarded(handler, req, res, logger);
    },
  );
  // Node tracks HTTP/1.1 connections (headersTimeout, requestTimeout,
  // closeIdleConnections) from "listening"; this server never listens itself.
  h1.emit("listening");

  const h2 = http2.createServer(
    {
      settings: {
        maxConcurrentStreams: limits.maxConcurrentStreams,
        ...(opts.maxHeaderSize === undefined ? {} : { maxHeaderListSize: opts.maxHeaderSize }),
      },
    },
    (req, res) => serveGuarded(handler, req, res, logger),
  );
  // The compatibility layer's own "stream" listener (Node adds it with the
  // request listener) runs only for streams nobody took before it.
  const [compat, ...others] = h2.listeners("stream") as StreamListener[];
  if (compat === undefined || others.length > 0) throw new Error("unexpected HTTP/2 server listeners");
  h2.removeListener("stream", compat);
  const take = opts.streamHandler;
  const onStreamError = (err: Error) => logger.debug({ err }, "http2 stream error");
  h2.on("stream", (stream: ServerHttp2Stream, headers: IncomingHttpHeaders, flags: number, rawHeaders: string[]) => {
    // A client's reset with an error code (INTERNAL_ERROR, PROTOCOL_ERROR, …) is an 'error' on the
    // stream; with no listener, an uncaught exception that ends the process. The compatibility layer
    // listens on the streams it takes; these are the streams taken before it. What the reset means
    // for the call reaches its handler through the stream's close.
    stream.on("error", onStreamError);
    discardUnreadRequest(stream);
    if (limits.requestTimeoutMs > 0) limitRequestTime(stream, headers["content-type"], limits.requestTimeoutMs);
    if (take?.(stream, headers) !== true) compat(stream, headers, flags, rawHeaders);
  });
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    if (limits.idleTimeoutMs > 0) closeWhenIdle(session, limits.idleTimeoutMs);
  });
  h2.on("sessionError", (err) => logger.debug({ err }, "http2 session error"));

  function sniff(socket: net.Socket): void {
    let seen: Buffer = Buffer.alloc(0);
    const decide = (target: http.Server | http2.Http2Server | undefined) => {
      socket.off("data", onData).off("error", onError).off("timeout", onTimeout).setTimeout(0);
      undecided.delete(socket);
      if (target === undefined) {
        socket.destroy();
        return;
      }
      socket.pause();
      socket.unshift(seen);
      target.emit("connection", socket);
      // HTTP/1.1 gets the unshifted bytes as "data" events; HTTP/2 reads them
      // itself with socket.read() on the next tick, so it must stay paused.
      if (target === h1) socket.resume();
    };
    const onData = (chunk: Buffer) => {
      seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
      const n = Math.min(seen.length, H2_PREFACE.length);
      if (!seen.subarray(0, n).equals(H2_PREFACE.subarray(0, n))) decide(h1);
      else if (n === H2_PREFACE.length) decide(h2);
    };
    const onError = (err: Error) => {
      logger.debug({ err }, "connection failed before its first request");
      decide(undefined);
    };
    const onTimeout = () => decide(undefined);
    undecided.add(socket);
    socket.once("close", () => undecided.delete(socket));
    socket.on("data", onData).on("error", onError).on("timeout", onTimeout).setTimeout(sniffTimeoutMs);
  }

  const tcp = net.createServer((socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    // When we end our side (closing, or an idle HTTP/2 session after its GOAWAY), a
    // client answers by closing its own; one that does not is disconnected soon after.
    socket.once("finish", () => {
      setTimeout(() => socket.destroy(), PEER_CLOSE_WAIT_MS).unref();
    });
    sniff(socket);
  });
  await new Promise<void>((resolve, reject) => {
    const fail = (err: Error) => {
      h1.close();
      reject(err);
    };
    tcp.once("error", fail);
    tcp.listen(opts.port, opts.host, () => {
      tcp.off("error", fail);
      resolve();
    });
  });
  tcp.on("error", (err) => logger.error({ err }, "http server error"));
  // Node closes a connection beyond maxConnections as soon as it is accepted.
  tcp.maxConnections = limits.maxConnections;
  let dropped = 0;
  let droppedSince = 0;
  tcp.on("drop", () => {
    // One warning a minute at most: a flood of connections must not become a flood of log lines.
    dropped++;
    const now = Date.now();
    if (now - droppedSince < 60_000) return;
    logger.warn(
      { dropped, maxConnections: limits.maxConnections },
      "connection limit reached, closing new connections",
    );
    dropped = 0;
    droppedSince = now;
  });
  const port = (tcp.address() as net.AddressInfo).port;
  const url = `http://${opts.host.includes(":") ? `[${opts.host}]` : opts.host}:${port}`;
  logger.info({ url }, "listening");

  let closed: Promise<void> | undefined;
  async function close(graceMs: number): Promise<void> {
    closing = true;
    // Resolves once every accepted socket, whichever protocol it spoke, has closed.
    const drained = new Promise<void>((resolve) => tcp.close(() => resolve()));
    for (const socket of undecided) socket.destroy();
    h1.close();
    for (const session of sessions) session.close();
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(true), graceMs);
    });
    const late = await Promise.race([drained.then(() => false), expired]);
    clearTimeout(timer);
    if (late) {
      logger.warn({ connections: sockets.size, graceMs }, "grace period over, closing remaining connections");
      for (const session of sessions) session.destroy();
      for (const socket of sockets) socket.destroy();
      await drained;
    }
    logger.info({ url }, "closed");
  }

  return {
    port,
    url,
    close: (o) => {
      closed ??= close(o?.graceMs ?? 10_000);
      return closed;
    },
  };
}

type StreamListener = (
  stream: ServerHttp2Stream,
  headers: IncomingHttpHeaders,
  flags: number,
  rawHeaders: string[],
) => void;

/**
 * Calls `handler`, answering what it throws instead of letting it escape the
 * request event (which would end the process). connect-node builds each
 * request's URL synchronously and throws for an authority that is not one
 * (`Host: a b`) or none (an HTTP/1.0 request without Host): one such request
 * would stop the service. Those are the client's fault: 400. Anything else
 * thrown is ours: 500, logged.
 */
function serveGuarded(
  handler: RequestHandler,
  req: IncomingMessage | Http2ServerRequest,
  res: ServerResponse | Http2ServerResponse,
  logger: Logger,
): void {
  try {
    handler(req, res);
  } catch (err) {
    const malformed =
      (err as { code?: unknown }).code === "ERR_INVALID_URL" ||
      (err instanceof Error && err.message.includes("unable to determine request authority"));
    if (!malformed) logger.error({ err }, "request handler failed");
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const status = malformed ? 400 : 500;
    const body = malformed ? "bad request: no valid authority (Host)\n" : "internal error\n";
    (res as ServerResponse).writeHead(status, { "content-type": "text/plain; charset=utf-8" });
    res.end(body);
  }
}

/** How often Node checks HTTP/1.1 header and request timeouts: often enough for a short timeout. */
function checkInterval(requestTimeoutMs: number): number {
  if (requestTimeoutMs <= 0) return 30_000;
  return Math.max(50, Math.min(1_000, Math.floor(requestTimeoutMs / 4)));
}

/**
 * Closes `session` with a GOAWAY once no stream has been open on it for
 * `idleMs`, as gRPC servers do with max connection idle: a client that keeps
 * a connection for later reconnects when it needs one.
 */
function closeWhenIdle(session: ServerHttp2Session, idleMs: number): void {
  let open = 0;
  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    timer = setTimeout(() => session.close(), idleMs);
    timer.unref();
  };
  session.on("stream", (stream: ServerHttp2Stream) => {
    open++;
    clearTimeout(timer);
    stream.once("close", () => {
      if (--open === 0 && !session.closed) arm();
    });
  });
  session.once("close", () => clearTimeout(timer));
  arm();
}

/**
 * Ends a request whose body has not fully arrived `timeoutMs` after its
 * headers: answers it if nothing was answered yet (gRPC: DEADLINE_EXCEEDED;
 * otherwise 408 with a Connect error), then closes the stream. Without this a
 * stream that never sends its body stays open for good, holding a stream slot
 * and a handler waiting for it.
 */
function limitRequestTime(stream: ServerHttp2Stream, contentType: string | undefined, timeoutMs: number): void {
  const timer = setTimeout(() => {
    // The request side is complete once the client sent END_STREAM, read or not.
    if (stream.destroyed || stream.closed || stream.state.remoteClose) return;
    const message = `request not received within ${timeoutMs} ms`;
    // A response under way is abandoned; after a complete one, NO_ERROR asks the
    // client to stop sending (RFC 9113, section 8.1).
    let code = stream.writableEnded ? NGHTTP2_NO_ERROR : NGHTTP2_CANCEL;
    if (!stream.headersSent) {
      code = NGHTTP2_NO_ERROR;
      if (contentType?.startsWith("application/grpc")) {
        // A trailers-only response, for gRPC and gRPC-Web alike.
        stream.respond(
          {
            ":status": 200,
            "content-type": contentType,
            "grpc-status": String(GRPC_DEADLINE_EXCEEDED),
            "grpc-message": encodeURIComponent(message),
          },
          { endStream: true },
        );
      } else {
        stream.respond({ ":status": 408, "content-type": "application/json" });
        stream.end(JSON.stringify({ code: "deadline_exceeded", message }));
      }
    }
    if (stream.writableEnded && !stream.writableFinished) stream.once("finish", () => stream.close(code));
    else stream.close(code);
  }, timeoutMs);
  timer.unref();
  stream.once("close", () => clearTimeout(timer));
}

/**
 * Reads and drops what is left of a request once its response is complete,
 * e.g. the rest of a message over readMaxBytes, answered without being read.
 * Node frees a closed stream only when its request side has ended, which a
 * reader that stopped halfway never lets happen: the stream would stay in its
 * session for good, counting against the client's concurrent streams, and a
 * graceful close would wait the whole grace period for an idle client.
 * (HTTP/1.1 does the same: Node dumps an unread request body.)
 */
function discardUnreadRequest(stream: ServerHttp2Stream): void {
  stream.once("finish", () => {
    const drain = () => {
      while (stream.read() !== null);
    };
    stream.on("readable", drain);
    drain();
  });
}
