/**
 * A fresh PostgreSQL database per test file: created on demand, dropped after.
 */
import { randomBytes } from "node:crypto";
import postgres from "postgres";

/** The server tests run against; `TEST_DATABASE_URL` overrides it. */
export const adminUrl = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

export interface TestDatabase extends AsyncDisposable {
  /** Connection URL of the new, empty database. */
  readonly url: string;
  readonly name: string;
  drop(): Promise<void>;
}

/** Creates an empty database named `test_<label>_<random>`. */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const name = `test_${label.replace(/[^a-z0-9_]/gi, "_").toLowerCase()}_${randomBytes(4).toString("hex")}`;
  const admin = postgres(adminUrl, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    const sql = postgres(adminUrl, { max: 1, onnotice: () => {} });
    try {
      await sql.unsafe(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    } finally {
      await sql.end();
    }
  };
  return { url: url.toString(), name, drop, [Symbol.asyncDispose]: drop };
}
