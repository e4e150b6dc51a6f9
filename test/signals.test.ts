/**
 * The npm scripts as a process manager, an IDE's stop button or systemd run
 * them: `npm run <script>` in its own process group, and a signal sent to
 * the npm process only (not to the group, as a terminal's Ctrl-C would).
 * SIGTERM and SIGINT each stop every process the script started, cleanly:
 * npm exits 0 (as the README documents), no process of its group is left,
 * and no port is still served, the services `npm start` runs in their own
 * process groups included. With an idle @grpc/grpc-js client connected the
 * customer service stops in well under its 10 s grace period.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Code } from "@connectrpc/connect";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { loadGrpcJsClient } from "./support/grpc-js.js";
import { deleteStreams, freePort, sharedNatsUrl, uniqueStreamNames } from "./support/nats.js";
import { refused } from "./support/ports.js";
import { createTestDatabase, type TestDatabase } from "./support/postgres.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const SIGNALS = ["SIGTERM", "SIGINT"] as const;

interface NpmRun {
  readonly child: ChildProcess;
  /** The npm process: also its process group, since it was started in a new one. */
  readonly pid: number;
  readonly stderr: string[];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const runs: NpmRun[] = [];
const cleanups: Array<() => Promise<unknown> | unknown> = [];

/** `npm run <args>` from the repository root in a process group of its own, env on top of a clean environment. */
function npmRun(args: string[], env: Record<string, string>): NpmRun {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k, v]) => v !== undefined && !/^(CUSTOMER|IDENTITY|NATS|npm)_/i.test(k) && k !== "LOG_LEVEL",
    ),
  ) as Record<string, string>;
  const child = spawn("npm", ["run", "--silent", ...args], {
    cwd: ROOT,
    env: { ...base, LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "ignore", "pipe"],
    detached: true,
  });
  const stderr: string[] = [];
  if (child.stderr) createInterface({ input: child.stderr }).on("line", (l) => stderr.push(l));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  if (child.pid === undefined) throw new Error("npm did not start");
  const run = { child, pid: child.pid, stderr, exited };
  runs.push(run);
  return run;
}

/** True while a process of group pgid (or process pid, when positive) exists. */
function alive(id: number): boolean {
  try {
    process.kill(id, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== "ESRCH";
  }
}

async function ready(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/readyz`);
    await res.body?.cancel();
    return res.status === 200;
  } catch {
    return false;
  }
}

/** Polls until check holds; fails early, with npm's stderr, if npm has exited. */
async function until(what: string, run: NpmRun, check: () => boolean | Promise<boolean>, ms = 60_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (run.child.exitCode !== null || run.child.signalCode !== null) {
      throw new Error(`npm exited while waiting for ${what}:\n${run.stderr.join("\n")}`);
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${run.stderr.join("\n")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Sends `signal` to the npm process only; resolves with npm's exit and how
 * long the whole group took to be gone. `others` are processes outside the
 * group (npm start's services) that must be gone too.
 */
async function stopWith(run: NpmRun, signal: NodeJS.Signals, others: number[] = []) {
  const sent = Date.now();
  process.kill(run.pid, signal);
  const exit = await Promise.race([
    run.exited,
    new Promise<"still running">((r) => setTimeout(() => r("still running"), 30_000)),
  ]);
  // npm may exit before what it ran: every process must be gone, not just npm.
  const deadline = Date.now() + 5_000;
  while ((alive(-run.pid) || others.some(alive)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return { exit, groupGone: !alive(-run.pid), othersGone: others.filter(alive), ms: Date.now() - sent };
}

afterEach(async () => {
  // A failed test must not leave anything serving.
  for (const run of runs.splice(0)) {
    if (alive(-run.pid)) process.kill(-run.pid, "SIGKILL");
  }
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe("signalling only the npm process", () => {
  let customerDb: TestDatabase;
  let identityDb: TestDatabase;
  const customerStreams = uniqueStreamNames("customer");
  const identityStreams = uniqueStreamNames("identity");

  beforeAll(async () => {
    [customerDb, identityDb] = await Promise.all([createTestDatabase("signals_c"), createTestDatabase("signals_i")]);
  });

  afterAll(async () => {
    await customerDb?.drop();
    await identityDb?.drop();
    await deleteStreams(sharedNatsUrl, customerStreams.stream, identityStreams.stream);
  });

  const customerEnv = (port: number) => ({
    CUSTOMER_PORT: String(port),
    CUSTOMER_DATABASE_URL: customerDb.url,
    NATS_URL: sharedNatsUrl,
    CUSTOMER_STREAM: customerStreams.stream,
    CUSTOMER_SUBJECT_PREFIX: customerStreams.subjectPrefix,
    CUSTOMER_REVOCATION_STREAM: identityStreams.stream,
    CUSTOMER_REVOCATION_SUBJECT_PREFIX: identityStreams.subjectPrefix,
    IDENTITY_ISSUER: "https://identity.test",
    // Never fetched: the calls below carry no token.
    IDENTITY_JWKS_URL: "http://127.0.0.1:9/.well-known/jwks.json",
    SHUTDOWN_GRACE_MS: "10000",
  });

  it.each(SIGNALS)(
    "npm run start:customer stops on %s, in well under the grace period with an idle grpc-js client connected",
    async (signal) => {
      const port = await freePort();
      const run = npmRun(["start:customer"], customerEnv(port));
      await until("/readyz", run, () => ready(port));

      const client = await loadGrpcJsClient("customer/v1/customer_service.proto", "customer.v1.CustomerService", port);
      cleanups.push(() => client.close());
      const getCustomer = client.unary<{ customer_id: string }, unknown>("GetCustomer");
      await expect(getCustomer({ customer_id: randomUUID() })).rejects.toMatchObject({ code: Code.Unauthenticated });
      // Answered without being read to the end (over CUSTOMER_MAX_REQUEST_BYTES), on the same connection.
      const registerCustomer = client.unary<{ email: string }, unknown>("RegisterCustomer");
      await expect(registerCustomer({ email: "x".repeat(100 * 1024) })).rejects.toMatchObject({
        code: Code.ResourceExhausted,
      });

      const stopped = await stopWith(run, signal);
      expect(stopped).toMatchObject({ exit: { code: 0, signal: null }, groupGone: true });
      expect(stopped.ms).toBeLessThan(3_000);
      expect(await refused(port)).toBe(true);
    },
  );

  it.each(SIGNALS)("npm run start:identity stops on %s", async (signal) => {
    const port = await freePort();
    const run = npmRun(["start:identity"], {
      IDENTITY_PORT: String(port),
      IDENTITY_DATABASE_URL: identityDb.url,
      NATS_URL: sharedNatsUrl,
      IDENTITY_STREAM: identityStreams.stream,
      IDENTITY_SUBJECT_PREFIX: identityStreams.subjectPrefix,
      IDENTITY_ARGON2_MEMORY_KIB: "1024",
      IDENTITY_ARGON2_ITERATIONS: "1",
      SHUTDOWN_GRACE_MS: "10000",
    });
    await until("/readyz", run, () => ready(port));
    const stopped = await stopWith(run, signal);
    expect(stopped).toMatchObject({ exit: { code: 0, signal: null }, groupGone: true });
    expect(await refused(port)).toBe(true);
  });

  it.each(SIGNALS)(
    "npm start stops both services on %s",
    async (signal) => {
      const [customerPort, identityPort] = [await freePort(), await freePort()];
      const dataRoot = mkdtempSync(join(tmpdir(), "signals-start-"));
      cleanups.push(() => rmSync(dataRoot, { recursive: true, force: true, maxRetries: 5 }));
      const run = npmRun(["start"], {
        CUSTOMER_PORT: String(customerPort),
        IDENTITY_PORT: String(identityPort),
        CUSTOMER_DATABASE_URL: `pglite:${join(dataRoot, "customer")}`,
        IDENTITY_DATABASE_URL: `pglite:${join(dataRoot, "identity")}`,
        NATS_URL: sharedNatsUrl,
        CUSTOMER_STREAM: customerStreams.stream,
        CUSTOMER_SUBJECT_PREFIX: customerStreams.subjectPrefix,
        IDENTITY_STREAM: identityStreams.stream,
        IDENTITY_SUBJECT_PREFIX: identityStreams.subjectPrefix,
        SHUTDOWN_GRACE_MS: "2000",
      });
      // A fresh PGlite directory takes seconds to initialise, more on a busy machine.
      await until("the summary", run, () => run.stderr.some((l) => l.includes("platform ready")), 120_000);
      // The services run in process groups of their own (so a terminal's Ctrl-C reaches them once).
      const pids = ["identity", "customer"].map((name) => {
        const line = run.stderr.find((l) => l.trimStart().startsWith(`${name} `) && / pid \d+/.test(l));
        return Number(line?.match(/ pid (\d+)/)?.[1]);
      });
      expect(pids.every((pid) => pid > 0 && alive(pid))).toBe(true);
      cleanups.push(async () => {
        for (const pid of pids) if (alive(pid)) process.kill(pid, "SIGKILL");
        while (pids.some(alive)) await new Promise((r) => setTimeout(r, 50));
      });

      const stopped = await stopWith(run, signal, pids);
      expect(stopped).toMatchObject({ exit: { code: 0, signal: null }, groupGone: true, othersGone: [] });
      expect(await refused(customerPort)).toBe(true);
      expect(await refused(identityPort)).toBe(true);
    },
    180_000,
  );

  it.each(SIGNALS)("npm run events -- tail stops on %s", async (signal) => {
    const streams = uniqueStreamNames("customer");
    const nc = await connect({ servers: sharedNatsUrl });
    try {
      const jsm = await jetstreamManager(nc);
      await jsm.streams.add({ name: streams.stream, subjects: [`${streams.subjectPrefix}.>`] });
    } finally {
      await nc.close();
    }
    cleanups.push(() => deleteStreams(sharedNatsUrl, streams.stream));
    const subject = `${streams.subjectPrefix}.>`;
    const run = npmRun(["events", "--", "tail", subject], { NATS_URL: sharedNatsUrl });
    await until("the tail to listen", run, () => run.stderr.some((l) => l.includes(`tailing ${subject}`)));
    const stopped = await stopWith(run, signal);
    expect(stopped).toMatchObject({ exit: { code: 0, signal: null }, groupGone: true });
  });
});
