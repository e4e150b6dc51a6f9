/**
 * One TCP port for HTTP/2 cleartext with prior knowledge (gRPC clients) and
 * HTTP/1.1 (curl, browsers, Connect's HTTP/1.1 transport), told apart by the
 * HTTP/2 connection preface, with a graceful close.
 */
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import http2, {
  type Http2ServerRequest,
  type Http2ServerResponse,
  type ServerHttp2Session,
  type ServerHttp2Stream,
} from "node:http2";
import net from "node:net";
import type { Logger } from "./logger.js";

/** The first bytes of every HTTP/2 connection (RFC 9113, section 3.4). */
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1");

/** How long a connection whose side we ended, closing, may take to close its own. */
const PEER_CLOSE_WAIT_MS = 1_000;

/** A request listener for both protocols, such as `connectNodeAdapter(…)`. */
export type RequestHandler = (
  req: IncomingMessage | Http2ServerRequest,
  res: ServerResponse | Http2ServerResponse,
) => void;

export interface ListenOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  handler: RequestHandler;
  logger: Logger;
  /** Largest request header block in bytes, for both protocols (Node's default: 16 KiB). */
  maxHeaderSize?: number;
  /** How long a new connection may take to show which protocol it speaks (default 10 s). */
  sniffTimeoutMs?: number;
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
  let closing = false;
  const sockets = new Set<net.Socket>();
  const undecided = new Set<net.Socket>();
  const sessions = new Set<ServerHttp2Session>();

  const h1 = http.createServer(
    opts.maxHeaderSize === undefined ? {} : { maxHeaderSize: opts.maxHeaderSize },
    (req, res) => {
      if (closing) res.setHeader("connection", "close");
      // A keep-alive connection whose response ends while we drain is idle now: close it.
      res.once("finish", () => {
        if (closing) setImmediate(() => h1.closeIdleConnections());
      });
      handler(req, res);
    },
  );
  // Node tracks HTTP/1.1 connections (headersTimeout, requestTimeout,
  // closeIdleConnections) from "listening"; this server never listens itself.
  h1.emit("listening");

  const h2 = http2.createServer(
    opts.maxHeaderSize === undefined ? {} : { settings: { maxHeaderListSize: opts.maxHeaderSize } },
    (req, res) => {
      discardUnreadRequest(res.stream);
      handler(req, res);
    },
  );
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
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
    // Closing, we end our side (after a GOAWAY on HTTP/2) and a client answers by
    // closing its own; one that does not is not waited for until the grace period ends.
    socket.once("finish", () => {
      if (closing) setTimeout(() => socket.destroy(), PEER_CLOSE_WAIT_MS).unref();
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
