/**
 * openDatabase beyond the queries: the embedded database's directory is
 * private (created 0700, files not readable by others, checked at every
 * open) and held by one opener at a time; PostgreSQL sessions carry their
 * timeouts; and a database that cannot be used at start is one line naming
 * the variable, with an exit code.
 */
import { type ChildProcess, spawn } from "node:child_process";
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { startPgRefuser } from "../../test/support/pg-refuser.js";
import { freePort } from "../../test/support/ports.js";
import { adminUrl, createTestDatabase } from "../../test/support/postgres.js";
import { sleep } from "../../test/support/timing.js";
import { type Database, openDatabase } from "../src/db.js";
import { LOCK_FILE, type LockHolder } from "../src/embedded-dir.js";

const HOLDER = join(dirname(fileURLToPath(import.meta.url)), "fixtures/hold-embedded.ts");

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "db-test-"));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function open(
  url: string,
  opts: { name?: string; statementTimeoutMs?: number } = {},
): Promise<Database<Record<string, never>>> {
  const database = await openDatabase({ url, schema: {}, variable: "TEST_DATABASE_URL", ...opts });
  cleanups.push(() => database.close().catch(() => {}));
  return database;
}

/** How opening `url` fails: the error's name, message and exit code. */
async function openFailure(url: string, opts: { name?: string } = {}) {
  const err = await openDatabase({ url, schema: {}, variable: "TEST_DATABASE_URL", ...opts }).then(
    async (database) => {
      await database.close();
      throw new Error(`${url} opened`);
    },
    (e: unknown) => e as Error & { exitCode?: number },
  );
  return { name: err.name, message: err.message, exitCode: err.exitCode };
}

/** Every entry under dir (relative path → permission bits). */
function modes(dir: string): Map<string, number> {
  const entries = new Map([[".", lstatSync(dir).mode & 0o777]]);
  for (const rel of readdirSync(dir, { recursive: true, encoding: "utf8" })) {
    entries.set(rel, lstatSync(join(dir, rel)).mode & 0o777);
  }
  return entries;
}

/** The entries open to group or others, with their modes in octal. */
function openToOthers(dir: string): string[] {
  return [...modes(dir)].filter(([, mode]) => (mode & 0o077) !== 0).map(([p, mode]) => `${p} ${mode.toString(8)}`);
}

function withUmask(mask: number): void {
  const previous = process.umask(mask);
  cleanups.push(() => process.umask(previous));
}

describe("the embedded database directory", () => {
  it("is created 0700 whatever the umask, and nothing in it is open to others: after opening, after writes, after closing", async () => {
    // PGlite writes a new database's files 0666 and its directories through the umask.
    withUmask(0o022);
    const dir = join(tempDir(), "nested", "db");
    const database = await open(`pglite:${dir}`);
    expect(database.description).toBe(`pglite:${dir}`);
    expect(database.embedded).toBe(true);
    expect(lstatSync(dir).mode & 0o777).toBe(0o700);
    expect(openToOthers(dir)).toEqual([]);
    const before = new Set(modes(dir).keys());

    // Enough to need new relation files and a new 16 MB WAL segment.
    await database.query("create table big (id int primary key, filler text)");
    await database.query("insert into big select i, repeat(md5(i::text), 32) from generate_series(1, 20000) i");
    await database.query("checkpoint");
    const created = [...modes(dir).keys()].filter((p) => !before.has(p));
    expect(created.some((p) => p.startsWith("pg_wal/0"))).toBe(true);
    expect(created.some((p) => p.startsWith("base/"))).toBe(true);
    expect(openToOthers(dir)).toEqual([]);

    await database.close();
    expect(openToOthers(dir)).toEqual([]);
    expect(readdirSync(dir)).not.toContain(LOCK_FILE);
  }, 120_000);

  it("refuses to open a directory that other users can read, naming the path and the fix", async () => {
    const dir = join(tempDir(), "db");
    await (await open(`pglite:${dir}`)).close();
    // As a data directory written before this check looked: files 0666.
    chmodSync(join(dir, "PG_VERSION"), 0o666);
    expect(await openFailure(`pglite:${dir}`)).toEqual({
      name: "StartupError",
      message: `TEST_DATABASE_URL: the embedded database ${dir} is open to other users (${dir}/PG_VERSION has mode 0666); run chmod -R go-rwx ${dir} and start again`,
      exitCode: 78,
    });
    chmodSync(join(dir, "PG_VERSION"), 0o600);
    chmodSync(dir, 0o755);
    expect((await openFailure(`pglite:${dir}`)).message).toBe(
      `TEST_DATABASE_URL: the embedded database ${dir} is open to other users (${dir} has mode 0755); run chmod -R go-rwx ${dir} and start again`,
    );
    // The refusals released the directory: after the fix it opens.
    chmodSync(dir, 0o700);
    const database = await open(`pglite:${dir}`);
    expect(await database.query("select 1 as one")).toEqual([{ one: 1 }]);
  }, 120_000);

  it("makes an existing empty directory private, and refuses a path that is not a directory", async () => {
    const dir = join(tempDir(), "volume");
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(dir, 0o755);
    const database = await open(`pglite:${dir}`);
    expect(lstatSync(dir).mode & 0o777).toBe(0o700);
    expect(openToOthers(dir)).toEqual([]);
    await database.close();

    const file = join(tempDir(), "file");
    writeFileSync(file, "");
    expect(await openFailure(`pglite:${file}`)).toEqual({
      name: "StartupError",
      message: `TEST_DATABASE_URL: ${file} is not a directory`,
      exitCode: 78,
    });
  }, 120_000);

  it("is held by one opener at a time, in this process or another; one that died leaves it free and its data intact", async () => {
    const dir = join(tempDir(), "db");
    const first = await open(`pglite:${dir}`, { name: "first-opener" });
    const lock = JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8")) as LockHolder;
    expect(lock).toMatchObject({ pid: process.pid, name: "first-opener" });
    expect(lstatSync(join(dir, LOCK_FILE)).mode & 0o777).toBe(0o600);
    expect(await openFailure(`pglite:${dir}`, { name: "second-opener" })).toEqual({
      name: "StartupError",
      message: `TEST_DATABASE_URL: the embedded database ${dir} is in use by first-opener (pid ${process.pid}, since ${lock.since}); stop it first, or use PostgreSQL (TEST_DATABASE_URL=postgres://…)`,
      exitCode: 75,
    });
    // The refusal left the holder's lock alone.
    expect((JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8")) as LockHolder).token).toBe(lock.token);
    await first.close();

    const holder = await holdInAnotherProcess(dir, "written by the holder");
    expect(await openFailure(`pglite:${dir}`, { name: "second-opener" })).toEqual({
      name: "StartupError",
      message: `TEST_DATABASE_URL: the embedded database ${dir} is in use by holder-process (pid ${holder.pid}, since ${holder.since}); stop it first, or use PostgreSQL (TEST_DATABASE_URL=postgres://…)`,
      exitCode: 75,
    });
    // Killed without a chance to remove its lock: the lock names a dead process.
    const gone = new Promise((resolve) => holder.child.once("exit", resolve));
    holder.child.kill("SIGKILL");
    await gone;
    expect(readdirSync(dir)).toContain(LOCK_FILE);
    const after = await open(`pglite:${dir}`, { name: "after-the-holder" });
    expect(await after.query("select value from held")).toEqual([{ value: "written by the holder" }]);
    await after.close();

    // A lock whose pid lives but started at another time: the pid was reused after a crash.
    writeFileSync(
      join(dir, LOCK_FILE),
      JSON.stringify({ ...lock, procStart: "1", token: "stale" } satisfies LockHolder),
      { mode: 0o600 },
    );
    await (await open(`pglite:${dir}`)).close();
  }, 180_000);
});

/** Runs fixtures/hold-embedded.ts on dir until it is killed; resolves once it holds the directory. */
async function holdInAnotherProcess(
  dir: string,
  value: string,
): Promise<{ child: ChildProcess; pid: number; since: string }> {
  const child = spawn(process.execPath, ["--conditions=source", "--import", "tsx", HOLDER, dir, value], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  cleanups.push(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  });
  await new Promise<void>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`holder exited with ${code}`)));
    createInterface({ input: child.stdout as NodeJS.ReadableStream }).on("line", (line) => {
      if (line === "ready") resolve();
    });
  });
  const lock = JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8")) as LockHolder;
  expect(lock.pid).toBe(child.pid);
  return { child, pid: lock.pid, since: lock.since };
}

describe("PostgreSQL sessions", () => {
  it("carry a statement timeout, an idle-in-transaction timeout and the opener's application_name", async () => {
    const testDb = await createTestDatabase("db_timeouts");
    cleanups.push(() => testDb.drop());
    const settings = `select current_setting('statement_timeout') as statement,
      current_setting('idle_in_transaction_session_timeout') as idle, current_setting('application_name') as app`;

    const defaults = await open(testDb.url);
    expect(defaults.embedded).toBe(false);
    expect(await defaults.query(settings)).toEqual([{ statement: "30s", idle: "1min", app: "customer-platform" }]);

    const database = await openDatabase({
      url: testDb.url,
      schema: {},
      name: "db-test",
      statementTimeoutMs: 400,
      idleInTransactionTimeoutMs: 700,
    });
    cleanups.push(() => database.close());
    expect(await database.query(settings)).toEqual([{ statement: "400ms", idle: "700ms", app: "db-test" }]);
    const session = await database.session();
    cleanups.push(() => session.release());
    expect(await session.query(settings)).toEqual([{ statement: "400ms", idle: "700ms", app: "db-test" }]);
    await expect(database.query("select pg_sleep(2)")).rejects.toMatchObject({ code: "57014" });
    // A transaction left open is ended by the server, and its session with it.
    await expect(
      database.db.transaction(async (tx) => {
        await tx.execute("select 1");
        await sleep(1_500);
        await tx.execute("select 1");
      }),
    ).rejects.toThrow();
    expect(await database.query("select 1 as one")).toEqual([{ one: 1 }]);
  });

  it("migrate without the statement timeout, one instance at a time", async () => {
    const testDb = await createTestDatabase("db_migrate");
    cleanups.push(() => testDb.drop());
    const folder = tempDir();
    mkdirSync(join(folder, "meta"));
    writeFileSync(
      join(folder, "meta/_journal.json"),
      JSON.stringify({
        version: "7",
        dialect: "postgresql",
        entries: [{ idx: 0, version: "7", when: 1_700_000_000_000, tag: "0000_slow", breakpoints: true }],
      }),
    );
    // Longer than the statement timeout, and not repeatable: a second run fails on the key.
    writeFileSync(
      join(folder, "0000_slow.sql"),
      "create table slow (id int primary key);\n--> statement-breakpoint\nselect pg_sleep(0.6);\n--> statement-breakpoint\ninsert into slow values (1);",
    );
    const instances = await Promise.all([0, 1].map(() => open(testDb.url, { statementTimeoutMs: 200 })));
    await Promise.all(instances.map((db) => db.migrate(folder)));
    expect(await instances[0]?.query("select id from slow")).toEqual([{ id: 1 }]);
    expect(await instances[1]?.query("select count(*)::int as n from drizzle.__drizzle_migrations")).toEqual([
      { n: 1 },
    ]);
  });
});

describe("a database that cannot be used at start", () => {
  const server = new URL(adminUrl);
  const at = `${server.hostname}:${server.port || 5432}`;
  const withUser = (user: string, database: string, password = "") => {
    const url = new URL(adminUrl);
    url.username = user;
    url.password = password;
    url.pathname = `/${database}`;
    return url.toString();
  };

  it("unreachable: names the server and the variable, exit code 69", async () => {
    const port = await freePort();
    expect(await openFailure(`postgres://postgres@127.0.0.1:${port}/app`)).toEqual({
      name: "StartupError",
      message: `TEST_DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:${port} (connection refused); start it, or point TEST_DATABASE_URL at a running server`,
      exitCode: 69,
    });
  });

  it("a server that hangs up before answering: the same, once the start-up wait is over", async () => {
    const hangUp: Server = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => hangUp.listen(0, "127.0.0.1", resolve));
    cleanups.push(() => new Promise((resolve) => hangUp.close(resolve)));
    const { port } = hangUp.address() as { port: number };
    expect(await openFailure(`postgres://postgres@127.0.0.1:${port}/app`)).toEqual({
      name: "StartupError",
      message: `TEST_DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:${port} (no answer within 6 s); start it, or point TEST_DATABASE_URL at a running server`,
      exitCode: 69,
    });
  });

  it("a database that does not exist: says how to create it, exit code 78", async () => {
    const user = server.username || "postgres";
    expect(await openFailure(withUser(user, "no_such_database_here"))).toEqual({
      name: "StartupError",
      message: `TEST_DATABASE_URL: database "no_such_database_here" does not exist on ${at}; create it (createdb -h ${server.hostname} -p ${server.port || 5432} -U ${user} no_such_database_here) or fix TEST_DATABASE_URL`,
      exitCode: 78,
    });
  });

  it("a login the server refuses: names the user and the server's reason, exit code 78", async () => {
    expect(await openFailure(withUser("no_such_role_here", "postgres"))).toEqual({
      name: "StartupError",
      message: `TEST_DATABASE_URL: PostgreSQL at ${at} refused user "no_such_role_here" (role "no_such_role_here" does not exist); check the user and password in TEST_DATABASE_URL`,
      exitCode: 78,
    });
    // A wrong password (28P01), from a server that asks for one (see pg-refuser.ts).
    const refuser = await startPgRefuser();
    cleanups.push(() => refuser.close());
    expect(await openFailure(`postgres://alice:wrong@127.0.0.1:${refuser.port}/app`)).toEqual({
      name: "StartupError",
      message: `TEST_DATABASE_URL: PostgreSQL at 127.0.0.1:${refuser.port} refused user "alice" (password authentication failed for user "alice"); check the user and password in TEST_DATABASE_URL`,
      exitCode: 78,
    });
  });
});
