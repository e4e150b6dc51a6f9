/**
 * Ports for servers under test, and whether anything still listens on one.
 *
 * A port picked by binding port 0 and closing again races: until the server
 * takes it, the kernel may hand the same port to another test's port-0
 * server or to an outgoing connection. So ports here come from just below
 * the kernel's ephemeral range, where it hands out nothing by itself, and a
 * reserved port stays bound (by a listener of ours) until released, right
 * before the server that needs it listens.
 */
import { readFileSync } from "node:fs";
import net from "node:net";

/** True when a TCP connection to host:port is refused: nothing listens there (any more). */
export function refused(port: number, host = "127.0.0.1"): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, host);
    socket.once("connect", () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("error", (err: NodeJS.ErrnoException) => resolve(err.code === "ECONNREFUSED"));
  });
}

/** A port held by a listener of ours until release(). */
export interface ReservedPort extends AsyncDisposable {
  readonly port: number;
  /** Closes our listener: call it right before the server that takes the port listens. */
  release(): Promise<void>;
}

/** How many ports below the ephemeral range are handed out. */
const POOL_SIZE = 10_000;
/** Ports the test infrastructure itself uses (NATS cluster and monitoring, PostgreSQL). */
const TAKEN = new Set([4222, 5432, 6222, 8222]);

/** The first port of the kernel's ephemeral range (32768 unless configured otherwise). */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > 1024 + POOL_SIZE ? low : 32768;
  } catch {
    return 32768;
  }
}

const POOL_END = ephemeralLow();
const POOL_START = POOL_END - POOL_SIZE;
/** Where this process tries next: a random start, so parallel test processes seldom try the same ports. */
let cursor = Math.floor(Math.random() * POOL_SIZE);

/** Binds 127.0.0.1:port, or resolves undefined if that port is in use. */
function hold(port: number): Promise<net.Server | undefined> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once("error", (err: NodeJS.ErrnoException) =>
      err.code === "EADDRINUSE" || err.code === "EACCES" ? resolve(undefined) : reject(err),
    );
    server.listen(port, "127.0.0.1", () => resolve(server));
  });
}

/** Reserves a port on 127.0.0.1 that nothing else uses, held until release(). */
export async function reservePort(): Promise<ReservedPort> {
  for (let tries = 0; tries < POOL_SIZE; tries++) {
    const port = POOL_START + (cursor++ % POOL_SIZE);
    if (TAKEN.has(port)) continue;
    const server = await hold(port);
    if (!server) continue;
    let released: Promise<void> | undefined;
    const release = () => {
      released ??= new Promise<void>((resolve) => server.close(() => resolve()));
      return released;
    };
    return { port, release, [Symbol.asyncDispose]: release };
  }
  throw new Error(`no free port in ${POOL_START}-${POOL_END - 1}`);
}

/**
 * A free port on 127.0.0.1, released at once: for a child process that
 * listens on it (it cannot take over our listener), or for an address where
 * nothing may listen. A server in this process should use reservePort().
 */
export async function freePort(): Promise<number> {
  const reserved = await reservePort();
  await reserved.release();
  return reserved.port;
}
