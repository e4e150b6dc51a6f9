/**
 * A tiny TCP proxy on 127.0.0.1 for fault tests: put it between a service and
 * its database, then `cut()` to drop every connection at once (and refuse new
 * ones) and `restore()` to let traffic through again.
 */
import net from "node:net";

export interface TcpProxy extends AsyncDisposable {
  /** The port the proxy listens on. */
  readonly port: number;
  /** True between cut() and restore(). */
  readonly isCut: boolean;
  /** Client connections currently open through the proxy. */
  readonly connections: number;
  /** Connections accepted and forwarded since the start. */
  readonly accepted: number;
  /** `url` with its host and port replaced by the proxy's. */
  rewrite(url: string): string;
  /**
   * Resets every open connection (both sides see ECONNRESET, as after a
   * network failure) and from now on resets each new connection at once.
   */
  cut(): void;
  /** Forwards new connections again. */
  restore(): void;
  close(): Promise<void>;
}

/** Starts a proxy on a free port of 127.0.0.1 that forwards to target. */
export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  let isCut = false;
  let accepted = 0;
  const open = new Set<net.Socket>();
  const clients = new Set<net.Socket>();
  const reset = (socket: net.Socket) => {
    // resetAndDestroy needs a connected handle; a socket still connecting is just destroyed.
    if (socket.connecting || socket.destroyed) socket.destroy();
    else socket.resetAndDestroy();
  };
  const track = (socket: net.Socket) => {
    open.add(socket);
    socket.once("close", () => open.delete(socket));
    // A reset peer is the point of the exercise, not an error of the proxy.
    socket.on("error", () => {});
  };

  const server = net.createServer((client) => {
    track(client);
    clients.add(client);
    client.once("close", () => clients.delete(client));
    if (isCut) {
      reset(client);
      return;
    }
    accepted++;
    const upstream = net.connect(target.port, target.host);
    track(upstream);
    client.pipe(upstream);
    upstream.pipe(client);
    // When either side goes, the other goes the same way.
    client.once("close", (hadError) => (hadError ? reset(upstream) : upstream.end()));
    upstream.once("close", (hadError) => (hadError ? reset(client) : client.end()));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;

  const close = async () => {
    isCut = true;
    for (const socket of open) socket.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return {
    port,
    get isCut() {
      return isCut;
    },
    get connections() {
      return clients.size;
    },
    get accepted() {
      return accepted;
    },
    rewrite(url) {
      const u = new URL(url);
      u.hostname = "127.0.0.1";
      u.port = String(port);
      return u.toString();
    },
    cut() {
      isCut = true;
      for (const socket of open) reset(socket);
    },
    restore() {
      isCut = false;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
