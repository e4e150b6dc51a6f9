/**
 * NATS for tests: unique stream and subject names on the shared server, and
 * private nats-server processes that a fault test can kill and restart.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { JetStreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";

/** The shared server tests run against; `TEST_NATS_URL` overrides it. */
export const sharedNatsUrl = process.env.TEST_NATS_URL ?? "nats://127.0.0.1:4222";

export interface StreamNames {
  /** A unique JetStream stream name, e.g. `CUSTOMER_T1A2B3C4`. */
  readonly stream: string;
  /** A unique subject prefix, e.g. `t1a2b3c4.customer`; the stream captures `<prefix>.>`. */
  readonly subjectPrefix: string;
}

/** Unique stream and subject names for one test file and one context. */
export function uniqueStreamNames(context: "customer" | "identity"): StreamNames {
  const id = `t${randomBytes(4).toString("hex")}`;
  return { stream: `${context.toUpperCase()}_${id.toUpperCase()}`, subjectPrefix: `${id}.${context}` };
}

/** Deletes streams on the shared server (best effort, for afterAll). */
export async function deleteStreams(url: string, ...streams: string[]): Promise<void> {
  const { jetstreamManager } = await import("@nats-io/jetstream");
  const nc = await connect({ servers: url });
  try {
    const jsm = await jetstreamManager(nc);
    for (const s of streams) await jsm.streams.delete(s).catch(() => false);
  } finally {
    await nc.close();
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

export interface PrivateNats extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  /** True while the process runs. */
  readonly running: boolean;
  /** Kills the server (SIGKILL): connections drop, JetStream data stays on disk. */
  kill(): Promise<void>;
  /** Starts the server again on the same port with the same store. */
  start(): Promise<void>;
  /** Kills the server and deletes its store. */
  stop(): Promise<void>;
}

/** Starts a private `nats-server -js` on a free port with its own store dir. */
export async function startPrivateNats(): Promise<PrivateNats> {
  const port = await freePort();
  const storeDir = mkdtempSync(join(tmpdir(), "nats-test-"));
  const url = `nats://127.0.0.1:${port}`;
  let proc: ChildProcess | undefined;

  const start = async () => {
    if (proc) return;
    const child = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir], {
      stdio: "ignore",
    });
    proc = child;
    child.once("exit", () => {
      if (proc === child) proc = undefined;
    });
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        const nc = await connect({ servers: url, reconnect: false, timeout: 500 });
        await nc.close();
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`private nats-server on ${url} did not start: ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  const kill = async () => {
    const child = proc;
    if (!child) return;
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGKILL");
    await exited;
  };
  const stop = async () => {
    await kill();
    rmSync(storeDir, { recursive: true, force: true });
  };
  await start();
  return {
    url,
    port,
    get running() {
      return proc !== undefined;
    },
    kill,
    start,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/**
 * Waits until stream exists: a service's relay creates its stream once it
 * leads, and tests that count messages must wait for that.
 */
export async function waitForStream(jsm: JetStreamManager, stream: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (
    !(await jsm.streams.info(stream).then(
      () => true,
      () => false,
    ))
  ) {
    if (Date.now() > deadline) throw new Error(`stream ${stream} was not created`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
