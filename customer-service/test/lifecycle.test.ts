/**
 * The customer service as a real process, the way it runs in production:
 * `node --import tsx customer-service/src/main.ts` configured by environment
 * variables. It becomes ready, answers, and on SIGTERM stops accepting,
 * finishes the calls in flight, flushes the outbox and exits 0, logging JSON
 * lines. A bad configuration exits non-zero with a message naming the variable.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, type CoreProtocol, createClients } from "../../test/support/clients.js";
import { startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { freePort, refused } from "../../test/support/ports.js";
import { createTestDatabase, holdLock, type TestDatabase } from "../../test/support/postgres.js";
import { waitWhileRunning } from "../../test/support/processes.js";
import { within } from "../../test/support/timing.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
const MAIN = "customer-service/src/main.ts";

interface Running {
  readonly child: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  /** Resolves with the exit code and signal. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const started: ChildProcess[] = [];

/** Starts main.ts with env on top of a minimal environment. */
function run(env: Record<string, string>): Running {
  const child = spawn(process.execPath, ["--conditions=source", "--import", "tsx", MAIN], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  started.push(child);
  const stdout: string[] = [];
  const stderr: string[] = [];
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d.toString("utf8");
    const lines = out.split("\n");
    out = lines.pop() ?? "";
    stdout.push(...lines.filter(Boolean));
  });
  child.stderr?.on("data", (d: Buffer) => stderr.push(d.toString("utf8")));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => {
      if (out) stdout.push(out);
      resolve({ code, signal });
    }),
  );
  return { child, stdout, stderr, exited };
}

/** Waits until check returns true; fails after ms, or at once if the process has exited. */
async function until(what: string, proc: Running, check: () => Promise<boolean> | boolean, ms = 20_000) {
  await waitWhileRunning(
    proc.exited,
    async () => {
      if (!(await check())) throw new Error(`timed out waiting for ${what}`);
    },
    { timeout: ms, exitedError: () => new Error(`process exited while waiting for ${what}: ${proc.stderr.join("")}`) },
  );
}

afterAll(() => {
  for (const child of started) if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
});

describe("the customer service process", () => {
  let issuer: TestIssuer;
  let database: TestDatabase;
  let sql: postgres.Sql;
  const streams = uniqueStreamNames("customer");
  const identityStream = uniqueStreamNames("identity").stream;

  beforeAll(async () => {
    issuer = await startTestIssuer();
    database = await createTestDatabase("lifecycle");
    sql = database.sql;
  });

  afterAll(async () => {
    await database?.drop();
    await deleteStreams(sharedNatsUrl, streams.stream);
    await issuer?.close();
  });

  it("serves, then on SIGTERM finishes calls in flight, flushes its events and exits 0", async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const proc = run({
      CUSTOMER_HOST: "127.0.0.1",
      CUSTOMER_PORT: String(port),
      CUSTOMER_DATABASE_URL: database.url,
      NATS_URL: sharedNatsUrl,
      CUSTOMER_STREAM: streams.stream,
      // An identity stream of its own (none): not the shared NATS's default IDENTITY, which `npm start` leaves.
      IDENTITY_STREAM: identityStream,
      CUSTOMER_SUBJECT_PREFIX: streams.subjectPrefix,
      IDENTITY_ISSUER: issuer.issuer,
      IDENTITY_JWKS_URL: issuer.jwksUrl,
      LOG_LEVEL: "info",
      SHUTDOWN_GRACE_MS: "10000",
    });
    await until("/readyz 200", proc, () =>
      fetch(`${url}/readyz`).then(
        (r) => r.status === 200,
        () => false,
      ),
    );

    const clients = createClients(url);
    try {
      const id = randomUUID();
      const token = await issuer.customer(id);
      const reg = await clients
        .client(CustomerService, "grpc")
        .registerCustomer({ givenName: "Ada", familyName: "L" }, bearer(token));
      expect(reg.customer?.version).toBe(1n);

      // Two calls in flight, over HTTP/1.1 and HTTP/2, both held up by a row lock the test owns.
      const lock = await holdLock(sql, (tx) => tx`select 1 from customers where customer_id = ${id} for update`);
      const update = (protocol: CoreProtocol, familyName: string) =>
        clients
          .client(CustomerService, protocol)
          .updateCustomer(
            { customer: { customerId: id, familyName }, updateMask: { paths: ["family_name"] } },
            bearer(token),
          );
      const inFlight = [update("connect-http1", "Byron"), update("grpc", "King")];
      await until("both updates waiting for the row lock", proc, async () => {
        const [row] = await sql<[{ n: number }]>`
          select count(*)::int as n from pg_stat_activity
          where datname = ${database.name} and wait_event_type = 'Lock'`;
        return row.n === 2;
      });

      proc.child.kill("SIGTERM");
      await until("the shutting down log line", proc, () => proc.stdout.some((l) => l.includes('"shutting down"')));
      // It stops accepting while the calls are still in flight.
      await until("the port to refuse connections", proc, () => refused(port), 5_000);
      expect(proc.child.exitCode).toBeNull();

      await lock.release();
      const results = await within(Promise.all(inFlight), 5_000, "the calls in flight");
      expect(results.map((r) => r.customer?.version).sort()).toEqual([2n, 3n]);
      const exit = await within(proc.exited, 10_000, "the exit");
      expect(exit).toEqual({ code: 0, signal: null });
    } finally {
      clients.close();
    }

    expect(proc.stderr.join("")).toBe("");
    // One "service" key per line: a log call's own fields must not shadow the logger's.
    for (const raw of proc.stdout) expect(raw.match(/"service":/g), raw).toHaveLength(1);
    const lines = proc.stdout.map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const line of lines) {
      expect(line).toMatchObject({ level: expect.any(Number), time: expect.any(String), service: "customer-service" });
    }
    const msgs = lines.map((l) => l.msg);
    expect(msgs).toContain("customer service listening");
    const shuttingDown = msgs.indexOf("shutting down");
    expect(lines[shuttingDown]).toMatchObject({ signal: "SIGTERM" });
    expect(msgs.at(-1)).toBe("stopped");
    // The calls in flight finished after the signal, and were logged as ok.
    const updates = lines
      .map((l, i) => ({ l, i }))
      .filter(({ l }) => l.msg === "rpc" && l.procedure === "customer.v1.CustomerService/UpdateCustomer");
    expect(updates.map(({ l }) => l.code)).toEqual(["ok", "ok"]);
    for (const { i } of updates) expect(i).toBeGreaterThan(shuttingDown);
    expect(proc.stdout.join("\n")).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\./);

    // Every event reached the stream before the process exited: registered + two updates.
    const [{ n: unsent }] = await sql<
      [{ n: number }]
    >`select count(*)::int as n from outbox where published_at is null`;
    expect(unsent).toBe(0);
    const nc = await connect({ servers: sharedNatsUrl });
    try {
      const info = await (await jetstreamManager(nc)).streams.info(streams.stream);
      expect(info.state.messages).toBe(3);
    } finally {
      await nc.close();
    }
  });

  it("exits 0 on SIGINT when idle", async () => {
    const port = await freePort();
    const proc = run({
      CUSTOMER_PORT: String(port),
      CUSTOMER_DATABASE_URL: database.url,
      NATS_URL: sharedNatsUrl,
      CUSTOMER_STREAM: streams.stream,
      // An identity stream of its own (none): not the shared NATS's default IDENTITY, which `npm start` leaves.
      IDENTITY_STREAM: identityStream,
      CUSTOMER_SUBJECT_PREFIX: streams.subjectPrefix,
      IDENTITY_JWKS_URL: issuer.jwksUrl,
    });
    await until("/readyz 200", proc, () =>
      fetch(`http://127.0.0.1:${port}/readyz`).then(
        (r) => r.status === 200,
        () => false,
      ),
    );
    proc.child.kill("SIGINT");
    expect(await within(proc.exited, 10_000, "the exit")).toEqual({ code: 0, signal: null });
    const msgs = proc.stdout.map((l) => (JSON.parse(l) as { msg: string }).msg);
    expect(msgs).toContain("shutting down");
    expect(msgs.at(-1)).toBe("stopped");
  });
});

describe("a bad configuration", () => {
  it.each([
    ["CUSTOMER_PORT", "abc", 'CUSTOMER_PORT must be an integer, got "abc"'],
    ["CUSTOMER_PORT", "70000", "CUSTOMER_PORT must be between 0 and 65535, got 70000"],
    [
      "CUSTOMER_DATABASE_URL",
      "mysql://db/customers",
      'CUSTOMER_DATABASE_URL must use postgres: or postgresql: or pglite:, got "mysql:"',
    ],
    ["LOG_LEVEL", "loud", 'LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent, got "loud"'],
    [
      "CUSTOMER_REVOCATION_SUBJECT_PREFIX",
      "identity.>",
      'CUSTOMER_REVOCATION_SUBJECT_PREFIX must be dot-separated NATS subject tokens, got "identity.>"',
    ],
    ["CUSTOMER_REVOCATION_LOOKBACK", "5", "CUSTOMER_REVOCATION_LOOKBACK must be between 30 and 86400, got 5"],
  ])("%s=%s exits non-zero, naming the variable on stderr", async (name, value, message) => {
    const proc = run({ [name]: value });
    const exit = await within(proc.exited, 15_000, "the exit");
    expect(exit.code).toBe(78);
    expect(proc.stderr.join("")).toBe(`customer-service: configuration error: ${message}\n`);
    expect(proc.stdout).toEqual([]);
  });
});
