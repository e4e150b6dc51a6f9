/**
 * `npm start` itself (scripts/start.ts, spawned as npm runs it): both
 * services on embedded PGlite in temporary directories, free ports, their
 * own stream names. They answer /readyz, complete the walkthrough, publish
 * their events (also when NATS only appears later), and stop cleanly on a
 * signal; if one dies the other is stopped and the exit code says so.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { bearer, createClients } from "./support/clients.js";
import { signUpByMail } from "./support/mailbox.js";
import { deleteStreams, freePort, sharedNatsUrl, streamEnv } from "./support/nats.js";
import { type Finished, runToEnd } from "./support/processes.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const PASSWORD = "correct horse battery staple";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Platform {
  readonly child: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  readonly customerUrl: string;
  readonly identityUrl: string;
  readonly env: Record<string, string>;
  /** Exit code, or 128 + signal number. */
  exit(): Promise<number>;
  /** Child pids from the summary. */
  pids(): { identity: number; customer: number };
}

const running: Platform[] = [];
const cleanups: Array<() => Promise<void> | void> = [];

afterEach(async () => {
  // A failed test must not leave services behind: ask nicely, then kill.
  for (const p of running.splice(0)) {
    if (p.child.exitCode !== null || p.child.signalCode !== null) continue;
    p.child.kill("SIGTERM");
    const stopped = await Promise.race([p.exit().then(() => true), sleep(15_000).then(() => false)]);
    if (!stopped) {
      for (const pid of Object.values(safePids(p))) tryKill(pid);
      p.child.kill("SIGKILL");
    }
  }
  for (const c of cleanups.splice(0).reverse()) await c();
});

function safePids(p: Platform): Record<string, number> {
  try {
    return p.pids();
  } catch {
    return {};
  }
}

function tryKill(pid: number, signal: NodeJS.Signals = "SIGKILL"): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

function tempDir(label: string): string {
  const dir = mkdtempSync(join(tmpdir(), `start-${label}-`));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** This environment without the platform's own variables. */
function cleanEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(process.env).filter(
      ([k, v]) => v !== undefined && !/^(CUSTOMER|IDENTITY|NATS|DATABASE)_/.test(k) && k !== "LOG_LEVEL",
    ),
  ) as Record<string, string>;
}

/** Runs scripts/start.ts the way `npm start` does, with env on top of a clean environment. */
async function startPlatform(env: Record<string, string>): Promise<Platform> {
  const customerPort = await freePort();
  const identityPort = await freePort();
  const fullEnv: Record<string, string> = {
    CUSTOMER_PORT: String(customerPort),
    IDENTITY_PORT: String(identityPort),
    CUSTOMER_DATABASE_URL: `pglite:${join(tempDir("customer"), "db")}`,
    IDENTITY_DATABASE_URL: `pglite:${join(tempDir("identity"), "db")}`,
    // Sign-up codes go to the dev mailbox; here a temporary one rather than the repository's .data/mailbox.
    IDENTITY_MAILBOX_DIR: tempDir("mailbox"),
    SHUTDOWN_GRACE_MS: "2000",
    ...env,
  };
  const child = spawn(process.execPath, ["--conditions=source", "--import", "tsx", "scripts/start.ts"], {
    cwd: ROOT,
    env: { ...cleanEnv(), ...fullEnv },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const stdout: string[] = [];
  const stderr: string[] = [];
  if (child.stdout) createInterface({ input: child.stdout }).on("line", (l) => stdout.push(l));
  if (child.stderr) createInterface({ input: child.stderr }).on("line", (l) => stderr.push(l));
  const exited = new Promise<number>((resolve) =>
    child.once("exit", (code, signal) => resolve(code ?? 128 + (signal === "SIGKILL" ? 9 : 15))),
  );
  const platform: Platform = {
    child,
    stdout,
    stderr,
    customerUrl: `http://127.0.0.1:${fullEnv.CUSTOMER_PORT}`,
    identityUrl: `http://127.0.0.1:${fullEnv.IDENTITY_PORT}`,
    env: fullEnv,
    exit: () => exited,
    pids() {
      const pid = (name: string) => {
        const line = stderr.find((l) => l.trimStart().startsWith(`${name} `) && / pid \d+/.test(l));
        const m = line?.match(/ pid (\d+)/);
        if (!m?.[1]) throw new Error(`no pid for ${name} in:\n${stderr.join("\n")}`);
        return Number(m[1]);
      };
      return { identity: pid("identity"), customer: pid("customer") };
    },
  };
  running.push(platform);
  return platform;
}

async function until(what: string, p: Platform, check: () => boolean | Promise<boolean>, ms = 30_000) {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (p.child.exitCode !== null) {
      throw new Error(`npm start exited (${p.child.exitCode}) while waiting for ${what}:\n${p.stderr.join("\n")}`);
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${p.stderr.join("\n")}`);
    await sleep(50);
  }
}

async function ready(url: string): Promise<boolean> {
  try {
    const res = await fetch(`${url}/readyz`);
    await res.body?.cancel();
    return res.status === 200;
  } catch {
    return false;
  }
}

async function listening(url: string): Promise<boolean> {
  try {
    const res = await fetch(`${url}/healthz`);
    await res.body?.cancel();
    return true;
  } catch {
    return false;
  }
}

/** Waits for both /readyz and for the summary. */
async function whenReady(p: Platform): Promise<void> {
  // A fresh PGlite data directory takes seconds to initialise, more on a busy machine.
  await until("both /readyz", p, async () => (await ready(p.identityUrl)) && (await ready(p.customerUrl)), 90_000);
  await until("the summary", p, () => p.stderr.some((l) => l.includes("platform ready")));
}

/** The PGlite directory a service of p runs on. */
function dataDir(p: Platform, prefix: "CUSTOMER" | "IDENTITY"): string {
  return (p.env[`${prefix}_DATABASE_URL`] ?? "").replace(/^pglite:/, "");
}

function logs(p: Platform): Array<Record<string, unknown>> {
  return p.stdout.map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** The README walkthrough with generated Connect clients; returns the customer id. */
async function walkthrough(p: Platform): Promise<string> {
  const id = createClients(p.identityUrl);
  const cust = createClients(p.customerUrl);
  try {
    const auth = id.client(AuthService);
    const customers = cust.client(CustomerService);
    const email = `ada.${randomUUID().slice(0, 8)}@example.com`;
    // Signs up as a customer does: the code from the mailbox, then the password; the email is verified.
    const signUp = await signUpByMail(auth, p.env.IDENTITY_MAILBOX_DIR ?? "", { email, password: PASSWORD });
    const customerId = signUp.customerId;
    // The profile takes the verified email from the access token.
    const registered = await customers.registerCustomer(
      { givenName: "Ada", familyName: "Lovelace" },
      bearer(signUp.tokens?.accessToken ?? ""),
    );
    expect(registered.customer).toMatchObject({ customerId, email, version: 1n });
    const signIn = await auth.authenticateCustomer({ email, password: PASSWORD });
    expect(signIn.customerId).toBe(customerId);
    const token = signIn.tokens?.accessToken ?? "";
    const got = await customers.getCustomer({ customerId }, bearer(token));
    expect(got.customer).toEqual(registered.customer);
    const updated = await customers.updateCustomer(
      { customer: { customerId, givenName: "Augusta" }, updateMask: { paths: ["given_name"] }, expectedVersion: 1n },
      bearer(token),
    );
    expect(updated.customer).toMatchObject({ customerId, givenName: "Augusta", familyName: "Lovelace", version: 2n });
    return customerId;
  } finally {
    id.close();
    cust.close();
  }
}

/** True once the stream holds a message on subject. */
async function hasMessage(nc: NatsConnection, stream: string, subject: string): Promise<boolean> {
  const jsm = await jetstreamManager(nc);
  return jsm.streams.getMessage(stream, { last_by_subj: subject }).then(
    (m) => m !== null,
    () => false,
  );
}

let nc: NatsConnection | undefined;
afterAll(async () => {
  await nc?.close();
});

describe("npm start", () => {
  it("runs both services on embedded PGlite, completes the walkthrough, and exits 0 on SIGTERM", async () => {
    const streams = streamEnv();
    cleanups.push(() => deleteStreams(sharedNatsUrl, streams.customer.stream, streams.identity.stream));
    // No IDENTITY_ISSUER: it follows IDENTITY_PORT, so the customer service trusts this identity service.
    const p = await startPlatform({ NATS_URL: sharedNatsUrl, ...streams.env });
    await whenReady(p);

    const summary = p.stderr.join("\n");
    expect(summary).toContain(`identity  ${p.identityUrl}  embedded PGlite at ${dataDir(p, "IDENTITY")}`);
    expect(summary).toContain(`customer  ${p.customerUrl}  embedded PGlite at ${dataDir(p, "CUSTOMER")}`);
    // The URLs were given: npm start chose no database itself.
    expect(summary).not.toContain("no database URL set");
    expect(summary).toContain(
      `issuer ${p.identityUrl}, customer service verifies with ${p.identityUrl}/.well-known/jwks.json`,
    );
    expect(summary).toContain(`NATS      ${sharedNatsUrl} (reachable)`);

    const customerId = await walkthrough(p);
    nc ??= await connect({ servers: sharedNatsUrl });
    const conn = nc;
    const { customer, identity } = streams;
    await until("the events", p, async () => {
      const found = await Promise.all([
        hasMessage(conn, customer.stream, `${customer.subjectPrefix}.registered.${customerId}`),
        hasMessage(conn, customer.stream, `${customer.subjectPrefix}.updated.${customerId}`),
        hasMessage(conn, identity.stream, `${identity.subjectPrefix}.customer.authenticated.${customerId}`),
      ]);
      return found.every(Boolean);
    });

    p.child.kill("SIGTERM");
    const code = await Promise.race([p.exit(), sleep(10_000).then(() => "still running")]);
    expect(code).toBe(0);
    expect(await listening(p.customerUrl)).toBe(false);
    expect(await listening(p.identityUrl)).toBe(false);
    // Logs pass through as JSON lines; both services went through their graceful stop.
    const stopped = logs(p)
      .filter((l) => l.msg === "stopped")
      .map((l) => l.service);
    expect(stopped.sort()).toEqual(["customer-service", "identity-service"]);
    expect(existsSync(join(dataDir(p, "CUSTOMER"), "PG_VERSION"))).toBe(true);
    expect(existsSync(join(dataDir(p, "IDENTITY"), "PG_VERSION"))).toBe(true);
  }, 150_000);

  it("serves without NATS, says so once per service, and delivers the held events when NATS appears", async () => {
    // The port is held by a listener that hangs up on every connection, so no
    // other test takes it before nats-server does.
    const blocker: Server = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
    const natsPort = (blocker.address() as { port: number }).port;
    const closeBlocker = () => new Promise<void>((resolve) => blocker.close(() => resolve()));
    cleanups.push(() => (blocker.listening ? closeBlocker() : undefined));
    const natsUrl = `nats://127.0.0.1:${natsPort}`;
    const streams = streamEnv();
    const p = await startPlatform({ NATS_URL: natsUrl, ...streams.env });
    await whenReady(p);
    expect(p.stderr.join("\n")).toContain(
      `NATS      ${natsUrl} (not reachable: events wait in the outbox until it is)`,
    );

    const customerId = await walkthrough(p);
    // The relays keep retrying (backing off up to 2 s) without repeating the warning.
    await sleep(4_000);
    const warnings = logs(p).filter((l) => l.msg === "NATS unavailable; events are held in the outbox");
    expect(warnings.map((l) => l.service).sort()).toEqual(["customer-service", "identity-service"]);

    const store = tempDir("nats");
    await closeBlocker();
    const nats = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(natsPort), "-js", "-sd", store], {
      stdio: "ignore",
    });
    cleanups.push(async () => {
      if (nats.exitCode !== null || nats.signalCode !== null) return;
      const gone = new Promise((r) => nats.once("exit", r));
      nats.kill("SIGKILL");
      await gone;
    });
    let conn: NatsConnection | undefined;
    await until("NATS", p, async () => {
      conn = await connect({ servers: natsUrl, reconnect: false, timeout: 500 }).catch(() => undefined);
      return conn !== undefined;
    });
    cleanups.push(() => conn?.close());
    const { customer, identity } = streams;
    await until("the held events", p, async () => {
      if (!conn) return false;
      const found = await Promise.all([
        hasMessage(conn, customer.stream, `${customer.subjectPrefix}.registered.${customerId}`),
        hasMessage(conn, customer.stream, `${customer.subjectPrefix}.updated.${customerId}`),
        hasMessage(conn, identity.stream, `${identity.subjectPrefix}.customer.authenticated.${customerId}`),
      ]);
      return found.every(Boolean);
    });
    // Log lines reach stdout within 200 ms (written in chunks), not necessarily before the events.
    await expect
      .poll(() =>
        logs(p)
          .filter((l) => l.msg === "connected to NATS")
          .map((l) => l.service)
          .sort(),
      )
      .toEqual(["customer-service", "identity-service"]);

    p.child.kill("SIGINT");
    expect(await Promise.race([p.exit(), sleep(10_000).then(() => "still running")])).toBe(0);
  }, 150_000);

  it("stops the other service and exits non-zero when one dies", async () => {
    const p = await startPlatform({ NATS_URL: `nats://127.0.0.1:${await freePort()}` });
    await whenReady(p);
    const { customer } = p.pids();
    process.kill(customer, "SIGKILL");
    expect(await Promise.race([p.exit(), sleep(15_000).then(() => "still running")])).toBe(1);
    expect(p.stderr.join("\n")).toContain(
      "start: customer service exited unexpectedly (SIGKILL); stopping the other one",
    );
    expect(await listening(p.identityUrl)).toBe(false);
    expect(logs(p).some((l) => l.service === "identity-service" && l.msg === "stopped")).toBe(true);
  }, 150_000);

  it("refuses a bad configuration, and a port in use, before starting anything", async () => {
    const bad = await startPlatform({ CUSTOMER_PORT: "eighty" });
    expect(await bad.exit()).toBe(78);
    expect(bad.stderr).toEqual(['start: configuration error: CUSTOMER_PORT must be an integer, got "eighty"']);

    // A plain DATABASE_URL is not taken for either service, nor replaced by the embedded database.
    const plain = await startPlatform({
      DATABASE_URL: "postgres://postgres@127.0.0.1:5432/postgres",
      IDENTITY_DATABASE_URL: "",
    });
    expect(await plain.exit()).toBe(78);
    expect(plain.stderr).toEqual([
      "start: configuration error: IDENTITY_DATABASE_URL is required; DATABASE_URL is ignored (each service has its own): set IDENTITY_DATABASE_URL",
    ]);

    const taken: Server = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise<void>((resolve) => taken.close(() => resolve())));
    const port = (taken.address() as { port: number }).port;
    const busy = await startPlatform({ IDENTITY_PORT: String(port) });
    expect(await busy.exit()).toBe(1);
    expect(busy.stderr).toEqual([
      `start: IDENTITY_PORT: port ${port} on 127.0.0.1 is already in use (is the platform already running?)`,
    ]);
    expect(busy.stdout).toEqual([]);
  }, 30_000);
});

/** `npm run identity -- <args>` as a user types it, with the platform's configuration. */
function identityCli(p: Platform, args: string[]): Promise<Finished> {
  return runToEnd("npm", ["run", "--silent", "identity", "--", ...args], { ...cleanEnv(), ...p.env });
}

describe("the identity CLI while npm start runs", () => {
  it("refuses the embedded database the platform holds, loses nothing, and works once the platform stopped", async () => {
    const streams = streamEnv();
    cleanups.push(() => deleteStreams(sharedNatsUrl, streams.customer.stream, streams.identity.stream));
    const p = await startPlatform({ NATS_URL: sharedNatsUrl, ...streams.env });
    await whenReady(p);
    const email = `ada.${randomUUID().slice(0, 8)}@example.com`;
    const id = createClients(p.identityUrl);
    cleanups.push(() => id.close());
    const { customerId } = await signUpByMail(id.client(AuthService), p.env.IDENTITY_MAILBOX_DIR ?? "", {
      email,
      password: PASSWORD,
    });

    const dir = dataDir(p, "IDENTITY");
    const lock = JSON.parse(readFileSync(join(dir, "pglite.lock"), "utf8")) as { since: string };
    const inUse = `error: IDENTITY_DATABASE_URL: the embedded database ${dir} is in use by identity-service (pid ${p.pids().identity}, since ${lock.since}); stop it first, or use PostgreSQL (IDENTITY_DATABASE_URL=postgres://…)\n`;
    const create = ["clients", "create", "orders-service", "--scopes", "customer:read"];
    expect(await identityCli(p, create)).toEqual({ code: 75, stdout: "", stderr: inUse });
    expect(await identityCli(p, ["keys", "rotate"])).toEqual({ code: 75, stdout: "", stderr: inUse });
    // The platform did not notice: it still signs the customer in.
    expect((await id.client(AuthService).authenticateCustomer({ email, password: PASSWORD })).customerId).toBe(
      customerId,
    );
    p.child.kill("SIGTERM");
    expect(await p.exit()).toBe(0);

    // Stopped, the directory is free: the same commands work on the same data.
    const created = await identityCli(p, create);
    expect({ code: created.code, stderr: created.stderr }).toEqual({ code: 0, stderr: "" });
    const secret = (
      JSON.parse(created.stdout.slice(0, created.stdout.lastIndexOf("}") + 1)) as { client_secret: string }
    ).client_secret;
    const rotated = await identityCli(p, ["keys", "rotate"]);
    expect({ code: rotated.code, stderr: rotated.stderr }).toEqual({ code: 0, stderr: "" });

    // And after a restart everything is there: the customer from before, the client, both keys.
    const again = await startPlatform({
      NATS_URL: sharedNatsUrl,
      ...streams.env,
      IDENTITY_DATABASE_URL: p.env.IDENTITY_DATABASE_URL ?? "",
      CUSTOMER_DATABASE_URL: p.env.CUSTOMER_DATABASE_URL ?? "",
    });
    await whenReady(again);
    const auth = createClients(again.identityUrl);
    cleanups.push(() => auth.close());
    expect((await auth.client(AuthService).authenticateCustomer({ email, password: PASSWORD })).customerId).toBe(
      customerId,
    );
    const token = await auth
      .client(AuthService)
      .authenticateClient({ clientId: "orders-service", clientSecret: secret, scope: "customer:read" });
    expect(token.tokens?.accessToken).toMatch(/^eyJ/);
    const jwks = (await (await fetch(`${again.identityUrl}/.well-known/jwks.json`)).json()) as { keys: unknown[] };
    expect(jwks.keys).toHaveLength(2);
    again.child.kill("SIGTERM");
    expect(await again.exit()).toBe(0);
  }, 300_000);
});
