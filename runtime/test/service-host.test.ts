/**
 * The service host owns what it opens: a stop releases everything in the
 * reverse order of acquisition, and so does a start that fails halfway (the
 * port taken after the database, NATS and the relay were up; a migration
 * failing after the pool opened): no PostgreSQL connection, no listening
 * socket, nothing that keeps the process alive is left behind. A graceful
 * stop does not wait the grace period for an idle HTTP/2 client.
 */
import { spawn } from "node:child_process";
import { randomInt } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  CustomerService,
  GetCustomerRequestSchema,
  GetCustomerResponseSchema,
} from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import * as grpc from "@grpc/grpc-js";
import { generateDrizzleJson, generateMigration } from "drizzle-kit/api";
import { pino } from "pino";
import postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { refused } from "../../test/support/ports.js";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import { eventKeys } from "../src/event-keys-schema.js";
import { defineOutbox } from "../src/outbox.js";
import { outbox as outboxTable } from "../src/outbox-schema.js";
import {
  type Background,
  createService,
  type HostConfig,
  HostStoppedError,
  type ServiceHost,
  type ServiceOptions,
} from "../src/service-host.js";

// The host signs events with a key from `event_keys`, as every service's schema has it.
const schema = { outbox: outboxTable, eventKeys };
type Schema = typeof schema;

const streams = uniqueStreamNames("customer");
const outbox = defineOutbox({
  source: "host-test",
  stream: streams.stream,
  subjectPrefix: streams.subjectPrefix,
  channel: "host_test_outbox",
  lockKey: BigInt(randomInt(1, 2 ** 31)),
});

const impl: ServiceImpl<typeof CustomerService> = {
  async getCustomer(req) {
    return { customer: { customerId: req.customerId, email: "ada@example.com" } };
  },
  async registerCustomer() {
    throw new ConnectError("not here", Code.Unimplemented);
  },
  async updateCustomer() {
    throw new ConnectError("not here", Code.Unimplemented);
  },
};

const tempDirs: string[] = [];

/** A drizzle-kit migrations folder: the outbox table, then `extra` SQL as a second migration. */
async function migrationsFolder(extra?: string): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "host-migrations-"));
  tempDirs.push(dir);
  const ddl = await generateMigration(generateDrizzleJson({}), generateDrizzleJson(schema));
  const files: Array<[tag: string, sql: string]> = [["0000_outbox", ddl.join("\n--> statement-breakpoint\n")]];
  if (extra !== undefined) files.push(["0001_extra", extra]);
  for (const [tag, sql] of files) writeFileSync(join(dir, `${tag}.sql`), sql);
  mkdirSync(join(dir, "meta"));
  const entries = files.map(([tag], idx) => ({ idx, version: "7", when: idx + 1, tag, breakpoints: true }));
  writeFileSync(join(dir, "meta/_journal.json"), JSON.stringify({ version: "7", dialect: "postgresql", entries }));
  return dir;
}

let database: TestDatabase;
let sql: postgres.Sql;
let migrations: string;
const hosts: ServiceHost[] = [];

beforeAll(async () => {
  database = await createTestDatabase("host");
  sql = postgres(database.url, { max: 1, onnotice: () => {} });
  migrations = await migrationsFolder();
});

afterEach(async () => {
  await Promise.all(hosts.splice(0).map((h) => h.stop()));
});

afterAll(async () => {
  await sql?.end();
  await database?.drop();
  await deleteStreams(sharedNatsUrl, streams.stream);
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

function config(overrides: Partial<HostConfig> = {}): HostConfig {
  return {
    host: "127.0.0.1",
    port: 0,
    database: {
      url: database.url,
      variable: "TEST_DATABASE_URL",
      statementTimeoutMs: 30_000,
      idleInTransactionTimeoutMs: 60_000,
    },
    natsUrl: sharedNatsUrl,
    maxRequestBytes: 64 * 1024,
    shutdownGraceMs: 10_000,
    logLevel: "debug",
    ...overrides,
  };
}

/** Log lines kept in memory. */
function captureLogs() {
  const lines: Array<{ msg: string; level: number }> = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      for (const line of String(chunk).split("\n").filter(Boolean)) lines.push(JSON.parse(line));
      done();
    },
  });
  return { lines, logger: pino({ level: "debug" }, destination) };
}

/** A host of CustomerService (a stand-in: any service will do), recording what it acquires and releases. */
function testHost(
  opts: Partial<ServiceOptions<HostConfig, Schema, typeof CustomerService>> & { config?: HostConfig } = {},
) {
  const logs = captureLogs();
  const host = createService<HostConfig, Schema, typeof CustomerService>({
    name: "host-test",
    config: config(),
    database: { schema, migrations },
    outbox,
    service: CustomerService,
    logger: logs.logger,
    setup: async () => ({ impl }),
    ...opts,
  });
  hosts.push(host);
  const acquired: string[] = [];
  const released: string[] = [];
  host.events.on("acquired", (name) => acquired.push(name));
  host.events.on("released", (name, error) => {
    released.push(error === undefined ? name : `${name} (failed: ${String(error)})`);
  });
  return { host, acquired, released, logs };
}

/** Backends connected to the test database, other than the test's own. */
async function connections(): Promise<string[]> {
  const rows = await sql<{ application_name: string }[]>`
    select application_name from pg_stat_activity
    where datname = ${database.name} and pid <> pg_backend_pid()`;
  return rows.map((r) => r.application_name);
}

/** A port something else listens on, until the returned function is called. */
async function takenPort(): Promise<{ port: number; release: () => Promise<void> }> {
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, "127.0.0.1", resolve));
  const { port } = blocker.address() as net.AddressInfo;
  return { port, release: () => new Promise((resolve) => blocker.close(() => resolve())) };
}

/** GetCustomer from @grpc/grpc-js; resolves with the status code. */
function grpcJsGet(client: grpc.Client): Promise<grpc.status> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      `/${CustomerService.typeName}/GetCustomer`,
      (req: { customerId: string }) =>
        Buffer.from(toBinary(GetCustomerRequestSchema, create(GetCustomerRequestSchema, req))),
      (bytes: Buffer) => fromBinary(GetCustomerResponseSchema, bytes),
      { customerId: "0190b8a4-0000-7000-8000-000000000001" },
      (err) => resolve(err ? err.code : grpc.status.OK),
    );
  });
}

describe("a service host", () => {
  it("serves once started, and stops releasing everything, last acquired first", async () => {
    const order: string[] = [];
    const component = (name: string): Background => ({
      start: () => order.push(`start ${name}`),
      stop: async () => order.push(`stop ${name}`),
    });
    const { host, acquired, released } = testHost({
      housekeeping: [{ name: "nothing", sql: "select 1" }],
      async setup(parts) {
        parts.run("first component", component("first"));
        parts.every("a periodic task", 60_000, async () => {});
        parts.run("second component", component("second"));
        expect(parts.nats.url).toBe(sharedNatsUrl);
        return { impl };
      },
    });
    await host.start();
    expect(acquired).toEqual([
      "database",
      "relay database",
      "first component",
      "a periodic task",
      "second component",
      "nats",
      "outbox relay",
      "stream purger",
      "housekeeping",
      "http server",
    ]);
    // Ready once the first readiness probe (a query) has answered, which may come just after start().
    await expect.poll(async () => (await fetch(`${host.url}/readyz`)).status).toBe(200);
    expect(new Set(await connections())).toEqual(new Set(["host-test", "host-test-relay"]));
    const port = host.port;

    await host.stop();
    expect(released).toEqual([...acquired].reverse());
    expect(order).toEqual(["start first", "start second", "stop second", "stop first"]);
    expect(await refused(port)).toBe(true);
    await expect.poll(connections).toEqual([]);
    await host.stop(); // idempotent
    expect(released).toHaveLength(acquired.length);
  });

  it("releases what it had acquired when the port is taken, NATS and the relay already up", async () => {
    const blocker = await takenPort();
    try {
      const { host, acquired, released, logs } = testHost({ config: config({ port: blocker.port }) });
      const inUse = {
        name: "StartupError",
        exitCode: 75,
        message: `port: cannot listen on 127.0.0.1:${blocker.port}: the address is in use; stop what holds it or choose another port`,
        cause: expect.objectContaining({ code: "EADDRINUSE" }),
      };
      await expect(host.start()).rejects.toMatchObject(inUse);
      expect(acquired).toEqual(["database", "relay database", "nats", "outbox relay", "stream purger"]);
      expect(released).toEqual(["stream purger", "outbox relay", "nats", "relay database", "database"]);
      await expect.poll(connections).toEqual([]);
      expect(logs.lines.filter((l) => l.level >= 50)).toEqual([]);
      // start() keeps its outcome; stop() after it has nothing left to release.
      await expect(host.start()).rejects.toMatchObject(inUse);
      await host.stop();
      expect(released).toHaveLength(5);
    } finally {
      await blocker.release();
    }
  });

  it("closes the pool when a migration fails after the pool opened", async () => {
    const broken = await migrationsFolder("select * from no_such_table;");
    const { host, acquired, released } = testHost({ database: { schema, migrations: broken } });
    await expect(host.start()).rejects.toThrow(/no_such_table/);
    expect(acquired).toEqual([]);
    expect(released).toEqual([]);
    await expect.poll(connections).toEqual([]);
  });

  it("releases what setup acquired when setup fails", async () => {
    const { host, acquired, released } = testHost({
      async setup(parts) {
        parts.defer("key store", () => {});
        throw new Error("no signing key");
      },
    });
    await expect(host.start()).rejects.toThrow("no signing key");
    expect(acquired).toEqual(["database", "relay database", "key store"]);
    expect(released).toEqual(["key store", "relay database", "database"]);
    await expect.poll(connections).toEqual([]);
  });

  it("ends a start under way when stopped, releasing what it had acquired", async () => {
    const { host, acquired, released } = testHost();
    const starting = host.start();
    const stopping = host.stop();
    await expect(starting).rejects.toBeInstanceOf(HostStoppedError);
    await stopping;
    expect(acquired).toEqual(["database"]);
    expect(released).toEqual(["database"]);
    await expect.poll(connections).toEqual([]);
  });

  it("runs without a relay when told another process relays", async () => {
    const { host, acquired } = testHost({ overrides: { relay: false } });
    await host.start();
    expect(acquired).toEqual(["database", "http server"]);
    expect(() => host.relay).toThrow("this host does not relay");
  });

  it("stops in well under the grace period with an idle grpc-js client connected", async () => {
    const { host } = testHost({ config: config({ shutdownGraceMs: 10_000 }) });
    await host.start();
    const client = new grpc.Client(`127.0.0.1:${host.port}`, grpc.credentials.createInsecure());
    try {
      expect(await grpcJsGet(client)).toBe(grpc.status.OK);
      const started = Date.now();
      await host.stop();
      expect(Date.now() - started).toBeLessThan(3_000);
    } finally {
      client.close();
    }
  });
});

describe("a process whose start failed halfway", () => {
  it("exits by itself: no pool, connection, socket or timer keeps it alive", async () => {
    const blocker = await takenPort();
    try {
      const fixture = join(dirname(fileURLToPath(import.meta.url)), "fixtures/failing-start.ts");
      const child = spawn(process.execPath, ["--conditions=source", "--import", "tsx", fixture], {
        env: {
          ...process.env,
          HOST_TEST_DATABASE_URL: database.url,
          HOST_TEST_MIGRATIONS: migrations,
          HOST_TEST_PORT: String(blocker.port),
          HOST_TEST_STREAM: streams.stream,
          HOST_TEST_SUBJECT_PREFIX: streams.subjectPrefix,
          NATS_URL: sharedNatsUrl,
        },
        stdio: ["ignore", "pipe", "pipe"],
      });
      let output = "";
      child.stdout.on("data", (d: Buffer) => {
        output += d.toString();
      });
      child.stderr.on("data", (d: Buffer) => {
        output += d.toString();
      });
      const exit = await new Promise<number | null>((resolve) => {
        const timer = setTimeout(() => {
          child.kill("SIGKILL");
          resolve(null);
        }, 20_000);
        child.once("exit", (code) => {
          clearTimeout(timer);
          resolve(code);
        });
      });
      expect({ exit, output }).toEqual({
        exit: 0,
        output:
          "start failed: EADDRINUSE\nreleased: housekeeping, stream purger, outbox relay, nats, a periodic task, relay database, database\n",
      });
    } finally {
      await blocker.release();
    }
  });
});
