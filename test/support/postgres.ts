/**
 * PostgreSQL for tests: a fresh database per test file (created on demand,
 * dropped after), and the one way tests open a client of their own.
 */
import { randomBytes } from "node:crypto";
import postgres from "postgres";

/** The server tests run against; `TEST_DATABASE_URL` overrides it. */
export const adminUrl = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

/** A postgres.js client for a test's own queries: a small pool, notices dropped. The caller ends it. */
export function connectSql(url: string, max = 2): postgres.Sql {
  return postgres(url, { max, onnotice: () => {} });
}

export interface TestDatabase extends AsyncDisposable {
  /** Connection URL of the new, empty database. */
  readonly url: string;
  readonly name: string;
  /** A client of this database for the test's own queries, opened on first use and ended by drop(). */
  readonly sql: postgres.Sql;
  drop(): Promise<void>;
}

/** Creates an empty database named `test_<label>_<random>`. */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const name = `test_${label.replace(/[^a-z0-9_]/gi, "_").toLowerCase()}_${randomBytes(4).toString("hex")}`;
  const admin = connectSql(adminUrl, 1);
  try {
    await admin.unsafe(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  let sql: postgres.Sql | undefined;
  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    await sql?.end();
    const admin = connectSql(adminUrl, 1);
    try {
      await admin.unsafe(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    } finally {
      await admin.end();
    }
  };
  return {
    url: url.toString(),
    name,
    get sql() {
      if (dropped) throw new Error(`database ${name} was dropped`);
      sql ??= connectSql(url.toString());
      return sql;
    },
    drop,
    [Symbol.asyncDispose]: drop,
  };
}

/** A lock a test holds in a transaction of its own. */
export interface HeldLock {
  /** True until the transaction has ended. */
  readonly held: boolean;
  /** Ends the transaction, and with it the lock; resolves once it has ended. */
  release(): Promise<void>;
}

/**
 * Runs lock (e.g. `select … for update`) in a transaction that stays open
 * until release(), or until timeoutMs has passed so that a failing test
 * cannot hang; resolves once the lock is taken.
 */
export async function holdLock(
  sql: postgres.Sql,
  lock: (tx: postgres.TransactionSql) => Promise<unknown>,
  timeoutMs = 30_000,
): Promise<HeldLock> {
  let release = () => {};
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  const timer = setTimeout(release, timeoutMs);
  let locked = () => {};
  const isLocked = new Promise<void>((resolve) => {
    locked = resolve;
  });
  let held = true;
  const transaction = sql
    .begin(async (tx) => {
      await lock(tx);
      locked();
      await released;
    })
    .finally(() => {
      held = false;
      clearTimeout(timer);
    });
  await Promise.race([isLocked, transaction]);
  return {
    get held() {
      return held;
    },
    async release() {
      release();
      await transaction;
    },
  };
}
