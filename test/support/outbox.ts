/**
 * The outbox as tests see it: how many events wait for the relay, and
 * waiting until none do. It reads the table itself, so it works with any
 * relay (or none) and says nothing about which instance published.
 */
import { connectSql } from "./postgres.js";
import { until } from "./timing.js";

/** A database to read: a PostgreSQL URL, or anything with the runtime `Database`'s `query`. */
export type OutboxSource = string | { query<T>(sql: string): Promise<T[]> };

const UNSENT = "select count(*)::int as n from outbox where published_at is null";

/** The number of outbox rows not yet published. */
export async function unsentEvents(db: OutboxSource): Promise<number> {
  if (typeof db !== "string") {
    const [row] = await db.query<{ n: number }>(UNSENT);
    return row?.n ?? 0;
  }
  const sql = connectSql(db, 1);
  try {
    const [row] = await sql.unsafe<{ n: number }[]>(UNSENT);
    return row?.n ?? 0;
  } finally {
    await sql.end();
  }
}

/** Waits until every event in the outbox is published (in a test or a hook); fails after timeoutMs (default 10 s). */
export async function waitForOutboxEmpty(db: OutboxSource, timeoutMs = 10_000): Promise<void> {
  const sql = typeof db === "string" ? connectSql(db, 1) : undefined;
  const source: OutboxSource = sql ? { query: <T>(q: string) => sql.unsafe(q) as Promise<T[]> } : db;
  try {
    await until("no unsent events in the outbox", async () => (await unsentEvents(source)) === 0, timeoutMs, 20);
  } finally {
    await sql?.end();
  }
}
