/**
 * Errors in logs: a statement that fails on either driver (postgres.js,
 * PGlite) is logged with its SQLSTATE, constraint, table and statement, never
 * with its parameters, PostgreSQL's DETAIL or the driver's message; whatever
 * key the error is logged under, as the cause of another error, as the only
 * argument, without a message, from housekeeping, and in errMessage's and
 * describeError's text.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { pgTable, text } from "drizzle-orm/pg-core";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import { type Database, openDatabase } from "../src/db.js";
import { describeError, errMessage, loggableError } from "../src/errors.js";
import { runHousekeeping } from "../src/housekeeping.js";
import { createLogger, isoTime, rpcLineWriter } from "../src/logger.js";

const SECRET = "$argon2id$v=19$m=1024,t=1,p=1$c2VjcmV0c2FsdA$c2VjcmV0aGFzaHZhbHVl";
const EMAIL = "log.secret.person@example.com";
// The refused address and the duplicate one ("a.secret…") share it.
const EMAIL_PART = "secret.person@example.com";

const accounts = pgTable("accounts", { email: text("email").notNull(), hash: text("hash").notNull() });
const schema = { accounts };

/** A logger whose lines are kept. */
function capture() {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split("\n").filter(Boolean));
      done();
    },
  });
  return { lines, logger: createLogger({ name: "test", level: "debug", destination }) };
}

/** What must not appear anywhere: the values, PostgreSQL's DETAIL, drizzle's parameter list. */
function expectNoValues(text: string) {
  expect(text).not.toContain(EMAIL_PART);
  expect(text).not.toContain("argon2");
  expect(text).not.toContain("params:");
  expect(text).not.toContain("Key (");
  expect(text).not.toContain("Failing row");
}

const drivers: Array<[string, () => Promise<{ database: Database<typeof schema>; close(): Promise<void> }>]> = [
  [
    "postgres.js",
    async () => {
      const db: TestDatabase = await createTestDatabase("logger");
      const database = await openDatabase({ url: db.url, schema });
      return {
        database,
        close: async () => {
          await database.close();
          await db.drop();
        },
      };
    },
  ],
  [
    "PGlite",
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "logger-test-"));
      const database = await openDatabase({ url: `pglite:${join(dir, "db")}`, schema });
      return {
        database,
        close: async () => {
          await database.close();
          rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  ],
];

describe.each(drivers)("a failed statement on %s", (_name, open) => {
  let opened: Awaited<ReturnType<typeof open>>;
  let duplicate: unknown;
  let refused: unknown;
  let raw: unknown;

  beforeAll(async () => {
    opened = await open();
    const { database } = opened;
    await database.query(
      `create table accounts (email text not null constraint accounts_email_key unique, hash text not null,
       constraint accounts_no_refused check (email not like 'log.%'))`,
    );
    await database.query("insert into accounts values ($1, $2)", ["a@example.org", SECRET]);
    await database.query("insert into accounts values ($1, $2)", [EMAIL.replace("log", "a"), "x"]);
    const fail = (p: Promise<unknown>) =>
      p.then(
        () => expect.unreachable(),
        (err: unknown) => err,
      );
    // 23505: DETAIL is "Key (email)=(…) already exists".
    duplicate = await fail(
      database.db
        .insert(accounts)
        .values({ email: EMAIL.replace("log", "a"), hash: SECRET })
        .execute(),
    );
    // 23514: DETAIL is "Failing row contains (<email>, <hash>)".
    refused = await fail(database.db.insert(accounts).values({ email: EMAIL, hash: SECRET }).execute());
    // Not through drizzle: the driver's own error (PGlite's carries the parameters).
    raw = await fail(database.query("insert into accounts values ($1, $2)", [EMAIL, SECRET]));
  }, 120_000);

  afterAll(async () => {
    await opened?.close();
  });

  it("is logged with SQLSTATE, constraint, table and statement, never the values", () => {
    const { lines, logger } = capture();
    logger.error({ err: duplicate }, "sign-up failed");
    logger.error({ err: refused }, "sign-up failed");
    logger.error({ err: raw }, "sign-up failed");
    expectNoValues(lines.join("\n"));
    const [dup, ref, plain] = lines.map((l) => JSON.parse(l) as { err: Record<string, unknown> });
    expect(dup?.err).toMatchObject({
      type: "DrizzleQueryError",
      message: "failed query",
      query: expect.stringMatching(/^insert into "accounts" \("email", "hash"\) values \(\$1, \$2\)/),
      cause: { message: "unique violation", code: "23505", constraint: "accounts_email_key", table: "accounts" },
    });
    expect(ref?.err).toMatchObject({
      cause: { message: "check violation", code: "23514", constraint: "accounts_no_refused", table: "accounts" },
    });
    expect(plain?.err).toMatchObject({ message: "check violation", code: "23514", constraint: "accounts_no_refused" });
    expect(dup?.err.stack).toMatch(/^DrizzleQueryError: failed query\n\s+at /);
  });

  it("stays clean as the cause of another error, under another key, alone, and without a message", () => {
    const { lines, logger } = capture();
    const wrapped = new Error(`could not store: ${(refused as Error).message}`, { cause: refused });
    logger.error({ err: wrapped });
    logger.warn({ failure: refused, task: "x" }, "failed");
    logger.error(refused);
    logger.error(duplicate as Error, "with a message");
    logger.child({ err: duplicate }).info("bound");
    const text = lines.join("\n");
    expectNoValues(text);
    const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(parsed[0]).toMatchObject({
      msg: 'could not store: Failed query: insert into "accounts" ("email", "hash") values ($1, $2)',
      err: { cause: { cause: { code: "23514" } } },
    });
    expect(parsed[1]).toMatchObject({ failure: { cause: { code: "23514" } }, task: "x" });
    expect(parsed[2]).toMatchObject({ msg: "failed query", err: { cause: { code: "23514" } } });
    expect(parsed[3]).toMatchObject({ msg: "with a message", err: { cause: { code: "23505" } } });
    expect(parsed[4]).toMatchObject({ err: { cause: { code: "23505" } } });
  });

  it("housekeeping's failure (a raw statement, DETAIL with the values) is logged without them", async () => {
    const { lines, logger } = capture();
    await runHousekeeping(
      opened.database,
      [
        {
          name: "copy",
          sql: `insert into accounts select email, '${SECRET}' from accounts where email like '%${EMAIL_PART}'`,
        },
      ],
      logger,
    );
    expectNoValues(lines.join("\n"));
    expect(JSON.parse(lines[0] ?? "{}")).toMatchObject({
      msg: "housekeeping failed",
      task: "copy",
      err: { code: "23505", message: "unique violation", constraint: "accounts_email_key", table: "accounts" },
    });
  });

  it("errMessage and describeError (stderr, the CLI) give one safe line and safe stacks", () => {
    expect(errMessage(duplicate)).toBe("failed query: unique violation (23505)");
    expect(errMessage(new Error("keys rotate failed", { cause: refused }))).toBe(
      "keys rotate failed: failed query: check violation (23514)",
    );
    const described = describeError(new Error("start failed", { cause: duplicate }));
    expectNoValues(described);
    expect(described).toMatch(/^start failed: failed query: unique violation \(23505\)\n\s+at /);
    expect(described).toContain("caused by: DrizzleQueryError: failed query\n");
  });
});

describe("loggableError", () => {
  it("keeps a plain error's message and stack, and a connection error's code and address", () => {
    const bug = new TypeError("Cannot read properties of undefined (reading 'kid')");
    expect(loggableError(bug)).toMatchObject({ type: "TypeError", message: bug.message });
    const cut = Object.assign(new Error("write CONNECTION_CLOSED 127.0.0.1:5432"), { code: "CONNECTION_CLOSED" });
    expect(loggableError(cut)).toMatchObject({ code: "CONNECTION_CLOSED", message: cut.message });
    // EPIPE is five capitals, not a SQLSTATE.
    expect(loggableError(Object.assign(new Error("write EPIPE"), { code: "EPIPE" }))).toMatchObject({
      code: "EPIPE",
      message: "write EPIPE",
    });
  });

  it("withholds what a driver said that is neither a SQLSTATE nor a connection error (Node quotes values)", () => {
    const inner = Object.assign(new TypeError(`The "string" argument must be of type string. Received '${EMAIL}'`), {
      code: "ERR_INVALID_ARG_TYPE",
    });
    const failed = Object.assign(new Error("Failed query: select 1\nparams: x"), {
      query: "select $1",
      params: [EMAIL],
      cause: inner,
    });
    const out = JSON.stringify(loggableError(failed));
    expectNoValues(out);
    expect(loggableError(failed).cause?.message).toBe("TypeError in the database driver (message not logged)");
  });

  it("elides quoted literals in a statement and keeps a thrown non-error's type only", () => {
    expect(loggableError(Object.assign(new Error("x"), { query: `select '${EMAIL}', $1`, params: [] })).query).toBe(
      "select '…', $1",
    );
    expect(loggableError(42)).toEqual({ type: "number", message: "non-error value thrown (number)" });
  });
});

describe("the time of a line", () => {
  it("is pino's isoTime, made once per millisecond", () => {
    vi.useFakeTimers({ now: new Date("2026-11-30T16:00:00.123Z") });
    try {
      expect(isoTime()).toBe(',"time":"2026-11-30T16:00:00.123Z"');
      expect(isoTime()).toBe(pino.stdTimeFunctions.isoTime());
      vi.advanceTimersByTime(1);
      expect(isoTime()).toBe(',"time":"2026-11-30T16:00:00.124Z"');
      vi.setSystemTime(new Date("2027-01-01T00:00:00.000Z"));
      expect(isoTime()).toBe(',"time":"2027-01-01T00:00:00.000Z"');
    } finally {
      vi.useRealTimers();
    }
    // A line carries it.
    const lines: string[] = [];
    const logger = createLogger({
      name: "t",
      level: "info",
      destination: new Writable({
        write(chunk, _enc, done) {
          lines.push(String(chunk));
          done();
        },
      }),
    });
    logger.info("x");
    expect(JSON.parse(lines[0] ?? "{}").time).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  });
});

describe("the rpc line of a call that answered OK", () => {
  it("is byte for byte what pino writes for the same fields", () => {
    const lines: string[] = [];
    const destination = new Writable({
      write(chunk, _enc, done) {
        lines.push(String(chunk));
        done();
      },
    });
    const logger = createLogger({ name: "customer-service", level: "info", destination });
    const write = rpcLineWriter(logger);
    expect(write).toBeDefined();
    vi.useFakeTimers({ now: new Date("2026-11-30T16:00:00.123Z") });
    try {
      for (const [procedure, contentType, ms] of [
        ["grpc.health.v1.Health/Check", "application/grpc", 0.12],
        ['customer.v1.CustomerService/"Odd"\\Name', null, 12],
        ["x/y", "application/json; charset=\u00e9", 0],
      ] as const) {
        write?.(procedure, contentType, ms);
        logger.child({}, { redact: [] }).info({ procedure, contentType, code: "ok", ms }, "rpc");
        const [ours, pinos] = lines.splice(0);
        expect(ours).toBe(pinos);
      }
    } finally {
      vi.useRealTimers();
    }
  });

  it("is not written this way for a logger createLogger did not make", () => {
    expect(rpcLineWriter(pino())).toBeUndefined();
  });
});
