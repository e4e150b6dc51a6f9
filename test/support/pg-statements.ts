/**
 * A TCP proxy between a service and PostgreSQL that reads what the service
 * sends and records every statement it executes: simple queries ('Q') and
 * extended-protocol executions ('E' of a portal bound to a statement that
 * 'P' prepared), with the connection and the time. The real database
 * answers everything; the proxy forwards every byte unchanged and only
 * reads. With it a test can tell how many round trips a call costs and
 * which statements they are, without a hook in the service.
 */
import net from "node:net";

/** One statement the service executed. */
export interface Statement {
  /** Which of the proxy's connections sent it (1, 2, …). */
  readonly connection: number;
  /** The SQL text, whitespace collapsed. */
  readonly text: string;
  /** performance.now() when it passed the proxy. */
  readonly at: number;
}

export interface StatementLog extends AsyncDisposable {
  readonly port: number;
  /** Every statement executed through the proxy so far, in order. */
  readonly statements: readonly Statement[];
  /** `url` with its host and port replaced by the proxy's. */
  rewrite(url: string): string;
  close(): Promise<void>;
}

// Requests a client may send before its startup message, answered with one byte.
const SSL_REQUEST = 80_877_103;
const GSSENC_REQUEST = 80_877_104;

/** Starts the proxy on a free port of 127.0.0.1, forwarding to target. */
export async function startStatementLog(target: { host: string; port: number }): Promise<StatementLog> {
  const statements: Statement[] = [];
  const sockets = new Set<net.Socket>();
  let connections = 0;

  const server = net.createServer((client) => {
    const connection = ++connections;
    const upstream = net.connect(target.port, target.host);
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.once("close", () => sockets.delete(socket));
      socket.on("error", () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.once("close", () => upstream.destroy());
    upstream.once("close", () => client.destroy());
    const reader = frontendReader((text) => statements.push({ connection, text, at: performance.now() }));
    client.on("data", reader);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  const close = async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return {
    port,
    statements,
    rewrite(url) {
      const u = new URL(url);
      u.hostname = "127.0.0.1";
      u.port = String(port);
      return u.toString();
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}

/**
 * A reader of one connection's frontend messages (PostgreSQL protocol 3.0)
 * that calls executed for each statement executed.
 */
function frontendReader(executed: (text: string) => void): (chunk: Buffer) => void {
  let pending = Buffer.alloc(0);
  let startup = true;
  const prepared = new Map<string, string>();
  const portals = new Map<string, string>();
  return (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      if (startup) {
        // Untyped: Int32 length (itself included), Int32 code, then the rest.
        if (pending.length < 8) return;
        const length = pending.readInt32BE(0);
        if (pending.length < length) return;
        const code = pending.readInt32BE(4);
        if (code !== SSL_REQUEST && code !== GSSENC_REQUEST) startup = false;
        pending = pending.subarray(length);
        continue;
      }
      // Typed: Byte1 type, Int32 length (itself included, the type not).
      if (pending.length < 5) return;
      const length = pending.readInt32BE(1);
      if (pending.length < 1 + length) return;
      const type = String.fromCharCode(pending[0] ?? 0);
      const body = pending.subarray(5, 1 + length);
      pending = pending.subarray(1 + length);
      const [first, afterFirst] = cString(body, 0);
      if (type === "Q") executed(collapse(first));
      else if (type === "P") prepared.set(first, collapse(cString(body, afterFirst)[0]));
      else if (type === "B") portals.set(first, prepared.get(cString(body, afterFirst)[0]) ?? "?");
      else if (type === "E") executed(portals.get(first) ?? "?");
    }
  };
}

/** The NUL-terminated string at offset, and the offset after it. */
function cString(buf: Buffer, offset: number): [string, number] {
  const end = buf.indexOf(0, offset);
  return end < 0 ? ["", buf.length] : [buf.toString("utf8", offset, end), end + 1];
}

const collapse = (sql: string) => sql.replace(/\s+/g, " ").trim();
