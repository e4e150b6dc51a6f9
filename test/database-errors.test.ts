/**
 * A service process (the real entry point, as `npm run start:*` runs it)
 * whose database cannot be used: no URL, a URL it does not read, PostgreSQL
 * unreachable, the database missing, the login refused, an embedded
 * directory open to others or held by another service. Each stops before
 * serving with exactly one line on stderr that names the variable and what
 * to do, and the documented exit code (69 unreachable, 75 held, 78 the
 * configuration or the server's setup must change).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { deleteStreams, freePort, sharedNatsUrl, streamEnv } from "./support/nats.js";
import { startPgRefuser } from "./support/pg-refuser.js";
import { adminUrl, createTestDatabase } from "./support/postgres.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const ENTRY = { customer: "customer-service/src/main.ts", identity: "identity-service/src/main.ts" } as const;

interface Exited {
  code: number | null;
  stdout: string[];
  stderr: string;
}

const children: ChildProcess[] = [];
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const child of children.splice(0))
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/**
 * Starts a service's main.ts with env on top of a minimal environment, on streams of its own
 * (deleted after the test): a service that gets as far as NATS never touches the shared defaults.
 */
function start(service: keyof typeof ENTRY, env: Record<string, string>) {
  const streams = streamEnv();
  cleanups.push(() => deleteStreams(sharedNatsUrl, streams.customer.stream, streams.identity.stream));
  const child = spawn(process.execPath, ["--conditions=source", "--import", "tsx", ENTRY[service]], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      HOME: process.env.HOME ?? "",
      NATS_URL: sharedNatsUrl,
      ...streams.env,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  const stdout: string[] = [];
  let stderr = "";
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (l) => stdout.push(l));
  child.stderr?.on("data", (d: Buffer) => {
    stderr += d;
  });
  const exited = new Promise<Exited>((resolve) => child.once("close", (code) => resolve({ code, stdout, stderr })));
  return { child, stdout, exited };
}

/** The service's exit code, stderr, and whether it logged anything (it must not have started). */
async function failure(service: keyof typeof ENTRY, env: Record<string, string>) {
  const { code, stdout, stderr } = await start(service, { [`${service.toUpperCase()}_PORT`]: "0", ...env }).exited;
  return { code, stderr, listened: stdout.some((l) => l.includes("listening")) };
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "database-errors-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

const server = new URL(adminUrl);
const host = server.hostname;
const port = server.port || "5432";
/** A URL on the test server with another user or database. */
function serverUrl(user: string, database: string): string {
  const url = new URL(adminUrl);
  url.username = user;
  url.pathname = `/${database}`;
  return url.toString();
}

describe("a service without a usable database URL", () => {
  it("refuses to start without one, rather than run on a throwaway embedded database", async () => {
    expect(await failure("customer", {})).toEqual({
      code: 78,
      stderr:
        "customer-service: configuration error: CUSTOMER_DATABASE_URL is required (postgres://… or pglite:./.data/customer for the embedded database)\n",
      listened: false,
    });
  });

  it("refuses a plain DATABASE_URL and the former data directory variable, naming the one it reads", async () => {
    expect(await failure("identity", { DATABASE_URL: serverUrl("postgres", "postgres") })).toEqual({
      code: 78,
      stderr:
        "identity-service: configuration error: IDENTITY_DATABASE_URL is required; DATABASE_URL is ignored (each service has its own): set IDENTITY_DATABASE_URL\n",
      listened: false,
    });
    expect(await failure("customer", { CUSTOMER_DATA_DIR: tempDir() })).toEqual({
      code: 78,
      stderr:
        "customer-service: configuration error: CUSTOMER_DATA_DIR is no longer read: set CUSTOMER_DATABASE_URL=pglite:<dir> for the embedded database instead\n",
      listened: false,
    });
  });
});

describe("a database that cannot be used", () => {
  it("unreachable: one line, exit code 69", async () => {
    const closed = await freePort();
    expect(
      await failure("customer", { CUSTOMER_DATABASE_URL: `postgres://postgres@127.0.0.1:${closed}/customer` }),
    ).toEqual({
      code: 69,
      stderr: `customer-service: CUSTOMER_DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:${closed} (connection refused); start it, or point CUSTOMER_DATABASE_URL at a running server\n`,
      listened: false,
    });
  });

  it("missing: says how to create it, exit code 78", async () => {
    const user = server.username || "postgres";
    expect(await failure("identity", { IDENTITY_DATABASE_URL: serverUrl(user, "identity_not_created") })).toEqual({
      code: 78,
      stderr: `identity-service: IDENTITY_DATABASE_URL: database "identity_not_created" does not exist on ${host}:${port}; create it (createdb -h ${host} -p ${port} -U ${user} identity_not_created) or fix IDENTITY_DATABASE_URL\n`,
      listened: false,
    });
  });

  it("login refused (no such role; a wrong password): one line, exit code 78", async () => {
    expect(await failure("customer", { CUSTOMER_DATABASE_URL: serverUrl("customer_no_role", "postgres") })).toEqual({
      code: 78,
      stderr: `customer-service: CUSTOMER_DATABASE_URL: PostgreSQL at ${host}:${port} refused user "customer_no_role" (role "customer_no_role" does not exist); check the user and password in CUSTOMER_DATABASE_URL\n`,
      listened: false,
    });
    // The test server trusts local logins; pg-refuser.ts answers as one with `password` auth does.
    const refuser = await startPgRefuser();
    cleanups.push(() => refuser.close());
    const url = `postgres://identity:wrong@127.0.0.1:${refuser.port}/identity`;
    expect(await failure("identity", { IDENTITY_DATABASE_URL: url })).toEqual({
      code: 78,
      stderr: `identity-service: IDENTITY_DATABASE_URL: PostgreSQL at 127.0.0.1:${refuser.port} refused user "identity" (password authentication failed for user "identity"); check the user and password in IDENTITY_DATABASE_URL\n`,
      listened: false,
    });
  });
});

describe("the embedded database of a service", () => {
  it("is not opened by a second service while the first runs, nor when other users can read it", async () => {
    const dir = join(tempDir(), "customer");
    const url = `pglite:${dir}`;
    const first = start("customer", { CUSTOMER_PORT: "0", CUSTOMER_DATABASE_URL: url });
    await expect
      .poll(() => first.stdout.some((l) => l.includes("customer service listening")), { timeout: 120_000 })
      .toBe(true);

    const second = await failure("customer", { CUSTOMER_DATABASE_URL: url });
    expect(second).toMatchObject({ code: 75, listened: false });
    expect(second.stderr).toMatch(
      new RegExp(
        `^customer-service: CUSTOMER_DATABASE_URL: the embedded database ${escapeRegExp(dir)} is in use by customer-service \\(pid ${first.child.pid}, since [0-9T:.Z-]+\\); stop it first, or use PostgreSQL \\(CUSTOMER_DATABASE_URL=postgres://…\\)\\n$`,
      ),
    );
    // The first one was not disturbed, and stops cleanly.
    expect(first.child.exitCode).toBeNull();
    first.child.kill("SIGTERM");
    expect((await first.exited).code).toBe(0);

    chmodSync(join(dir, "postgresql.conf"), 0o644);
    expect(await failure("customer", { CUSTOMER_DATABASE_URL: url })).toEqual({
      code: 78,
      stderr: `customer-service: CUSTOMER_DATABASE_URL: the embedded database ${dir} is open to other users (${dir}/postgresql.conf has mode 0644); run chmod -R go-rwx ${dir} and start again\n`,
      listened: false,
    });
  }, 180_000);
});

describe("a port that cannot be bound", () => {
  it("in use: one line naming the variable, exit code 75, after the database was opened and migrated", async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise((resolve) => holder.close(resolve)));
    const taken = (holder.address() as { port: number }).port;
    const db = await createTestDatabase("port_in_use");
    cleanups.push(() => db.drop());
    expect(await failure("customer", { CUSTOMER_PORT: String(taken), CUSTOMER_DATABASE_URL: db.url })).toEqual({
      code: 75,
      stderr: `customer-service: CUSTOMER_PORT: cannot listen on 127.0.0.1:${taken}: the address is in use; stop what holds it or choose another port\n`,
      listened: false,
    });
  }, 60_000);
});
