/**
 * NATS for tests: unique stream and subject names on the shared server, and
 * private nats-server processes that a fault test can kill and restart.
 * (Reading streams: streams.ts.)
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { connect } from "@nats-io/transport-node";
import { freePort } from "./ports.js";

/** Kept here for the files that import it from this module; it lives in ports.ts. */
export { freePort };

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

/**
 * Unique customer and identity streams for a spawned service or platform, and the
 * variables (`CUSTOMER_STREAM`, `…_SUBJECT_PREFIX`, `IDENTITY_…`) that point it at them.
 */
export function streamEnv() {
  const customer = uniqueStreamNames("customer");
  const identity = uniqueStreamNames("identity");
  return {
    customer,
    identity,
    env: {
      CUSTOMER_STREAM: customer.stream,
      CUSTOMER_SUBJECT_PREFIX: customer.subjectPrefix,
      IDENTITY_STREAM: identity.stream,
      IDENTITY_SUBJECT_PREFIX: identity.subjectPrefix,
    },
  };
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

/** How long a nats-server may take to say it is ready. */
const READY_TIMEOUT_MS = 10_000;

/** A server configuration (nats.conf text) for a private server's port and store directory. */
export type NatsServerConfig = (where: { port: number; storeDir: string }) => string;

export interface PrivateNatsOptions {
  /** Run `nats-server -c` with this configuration instead of `-js` on the port. */
  config?: NatsServerConfig;
  /** The server's environment on top of this process's (the `$VAR`s a configuration reads). */
  env?: Record<string, string>;
}

/**
 * Starts a private `nats-server -js` on a free port with its own store dir,
 * or, with `config`, a server with that configuration (e.g. deploy/nats/nats.conf
 * with the port and store rewritten: see natsConfigFor in test/security).
 */
export async function startPrivateNats(opts: PrivateNatsOptions = {}): Promise<PrivateNats> {
  const port = await freePort();
  const storeDir = mkdtempSync(join(tmpdir(), "nats-test-"));
  const url = `nats://127.0.0.1:${port}`;
  let proc: ChildProcess | undefined;
  const configFile = `${storeDir}.conf`;
  if (opts.config) writeFileSync(configFile, opts.config({ port, storeDir }));
  const args = opts.config ? ["-c", configFile] : ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", storeDir];

  // Ready when it logs "Server is ready" (after JetStream and the client listener are up).
  const start = async () => {
    if (proc) return;
    const child = spawn("nats-server", args, {
      stdio: ["ignore", "ignore", "pipe"],
      ...(opts.env && { env: { ...process.env, ...opts.env } }),
    });
    proc = child;
    const log: string[] = [];
    let ready = false;
    await new Promise<void>((resolve, reject) => {
      const fail = (why: string) => {
        clearTimeout(timer);
        reject(new Error(`private nats-server on ${url} did not start: ${why}\n${log.join("\n")}`));
      };
      const timer = setTimeout(() => {
        child.kill("SIGKILL");
        fail(`not ready after ${READY_TIMEOUT_MS} ms`);
      }, READY_TIMEOUT_MS);
      child.once("error", (err) => fail(err.message));
      child.once("exit", (code, signal) => {
        if (proc === child) proc = undefined;
        if (!ready) fail(`exited (${signal ?? code})`);
      });
      if (!child.stderr) return fail("no stderr");
      // Read to the end, so that a full pipe never blocks the server's logging.
      createInterface({ input: child.stderr }).on("line", (line) => {
        if (ready) return;
        log.push(line);
        if (line.endsWith("Server is ready")) {
          ready = true;
          clearTimeout(timer);
          resolve();
        }
      });
    });
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
    rmSync(configFile, { force: true });
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
