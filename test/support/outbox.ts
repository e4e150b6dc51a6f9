/**
 * The outbox as tests see it: how many events wait for the relay, and
 * waiting until none do. It reads the table itself, so it works with any
 * relay (or none) and says nothing about which instance published.
 */
import postgres from "postgres";
import { expect } from "vitest";

/** A database to read: a PostgreSQL URL, or anything with the runtime `Database`'s `query`. */
export type OutboxSource = string | { query<T>(sql: string): Promise<T[]> };

const UNSENT = "select count(*)::int as n from outbox where published_at is null";

/** The number of outbox rows not yet published. */
export async function unsentEvents(db: OutboxSource): Promise<number> {
  if (typeof db !== "string") {
    const [row] = await db.query<{ n: number }>(UNSENT);
    return row?.n ?? 0;
  }
  const sql = postgres(db, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql.unsafe<{ n: number }[]>(UNSENT);
    return row?.n ?? 0;
  } finally {
    await sql.end();
  }
}

/** Waits until every event in the outbox is published; fails after timeoutMs (default 10 s). */
export async function waitForOutboxEmpty(db: OutboxSource, timeoutMs = 10_000): Promise<void> {
  const sql = typeof db === "string" ? postgres(db, { max: 1, onnotice: () => {} }) : undefined;
  const source: OutboxSource = sql ? { query: <T>(q: string) => sql.unsafe(q) as Promise<T[]> } : db;
  try {
    await expect
      .poll(() => unsentEvents(source), { timeout: timeoutMs, interval: 20, message: "unsent events in the outbox" })
      .toBe(0);
  } finally {
    await sql?.end();
  }
}
