/**
 * The database a service runs on: PostgreSQL through postgres.js, or an
 * embedded PGlite when no URL is configured. Both give the same drizzle API,
 * the same migrations, LISTEN/NOTIFY and advisory locks.
 */
import { mkdirSync } from "node:fs";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import postgres from "postgres";

/** A drizzle database over either driver. */
export type Db<S extends Record<string, unknown>> = PgDatabase<PgQueryResultHKT, S>;

/** One dedicated connection, for work that must stay on one session (advisory locks). */
export interface SqlSession {
  query<T = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]>;
  /** Returns the connection to the pool (closing it if it broke). */
  release(): Promise<void>;
}

export interface Database<S extends Record<string, unknown>> {
  readonly db: Db<S>;
  /** "postgres://…" (password hidden) or "pglite:<dir>", for logs. */
  readonly description: string;
  /** Runs one statement on any pooled connection. */
  query<T = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]>;
  /** Calls onNotify for every NOTIFY on channel until the returned function is called. */
  listen(channel: string, onNotify: (payload: string) => void): Promise<() => Promise<void>>;
  /** A dedicated session, for advisory locks. */
  session(): Promise<SqlSession>;
  /** Applies the drizzle-kit migrations in folder, one instance at a time. */
  migrate(folder: string): Promise<void>;
  close(): Promise<void>;
}

export interface DatabaseOptions<S extends Record<string, unknown>> {
  /** A postgres:// URL, or undefined for embedded PGlite in dataDir. */
  url: string | undefined;
  dataDir: string;
  schema: S;
  /** Pool size for PostgreSQL. */
  max?: number;
}

// Both services migrate under this lock so two instances starting at once
// never run the same migration twice.
const MIGRATION_LOCK = 7_310_001n;

/** Opens the configured database. */
export async function openDatabase<S extends Record<string, unknown>>(opts: DatabaseOptions<S>): Promise<Database<S>> {
  return opts.url ? openPostgres(opts.url, opts) : openPglite(opts.dataDir, opts);
}

async function openPostgres<S extends Record<string, unknown>>(
  url: string,
  opts: DatabaseOptions<S>,
): Promise<Database<S>> {
  const { drizzle } = await import("drizzle-orm/postgres-js");
  const { migrate } = await import("drizzle-orm/postgres-js/migrator");
  const client = postgres(url, {
    // migrate() holds one connection for its lock and runs on another.
    max: Math.max(2, opts.max ?? 10),
    onnotice: () => {},
    connect_timeout: 5,
    idle_timeout: 60,
    // Statements must not wait forever on a lost server.
    connection: { application_name: "customer-platform" },
  });
  const db = drizzle({ client, schema: opts.schema }) as unknown as Db<S>;
  const safeUrl = new URL(url);
  if (safeUrl.password) safeUrl.password = "***";
  // A dedicated one-connection client rather than client.reserve(): postgres.js
  // throws an uncaught TypeError when a reserved connection whose socket closed
  // is used, and would silently reconnect a plain client to a session that no
  // longer holds the lock. Once closed, this session only throws.
  const session = async (): Promise<SqlSession> => {
    let lost = false;
    const one = postgres(url, {
      max: 1,
      idle_timeout: 0,
      max_lifetime: null,
      connect_timeout: 5,
      onnotice: () => {},
      onclose: () => {
        lost = true;
      },
    });
    return {
      async query<T>(text: string, params: unknown[] = []) {
        if (lost) throw Object.assign(new Error("session connection lost"), { code: "CONNECTION_CLOSED" });
        return (await one.unsafe(text, params as never[])) as unknown as T[];
      },
      release: () => one.end({ timeout: 5 }),
    };
  };
  return {
    db,
    description: safeUrl.toString(),
    query: async <T>(text: string, params: unknown[] = []) =>
      (await client.unsafe(text, params as never[])) as unknown as T[],
    async listen(channel, onNotify) {
      const sub = await client.listen(channel, onNotify);
      return () => sub.unlisten();
    },
    session,
    async migrate(folder) {
      const s = await session();
      try {
        await s.query("select pg_advisory_lock($1)", [MIGRATION_LOCK.toString()]);
        await migrate(drizzle({ client: client }), { migrationsFolder: folder });
      } finally {
        await s.query("select pg_advisory_unlock($1)", [MIGRATION_LOCK.toString()]).catch(() => {});
        await s.release();
      }
    },
    close: () => client.end({ timeout: 5 }),
  };
}

async function openPglite<S extends Record<string, unknown>>(
  dataDir: string,
  opts: DatabaseOptions<S>,
): Promise<Database<S>> {
  const { PGlite } = await import("@electric-sql/pglite");
  const { drizzle } = await import("drizzle-orm/pglite");
  const { migrate } = await import("drizzle-orm/pglite/migrator");
  mkdirSync(dataDir, { recursive: true });
  const pg = await PGlite.create(dataDir);
  const db = drizzle({ client: pg, schema: opts.schema }) as unknown as Db<S>;
  const query = async <T>(text: string, params: unknown[] = []) => (await pg.query<T>(text, params)).rows;
  return {
    db,
    description: `pglite:${dataDir}`,
    query,
    async listen(channel, onNotify) {
      const unsub = await pg.listen(channel, onNotify);
      return () => unsub();
    },
    // PGlite is one session in one process: the session is the database itself.
    session: async () => ({ query, release: async () => {} }),
    migrate: async (folder) => migrate(drizzle({ client: pg }), { migrationsFolder: folder }),
    close: () => pg.close(),
  };
}

/** The SQLSTATE of a PostgreSQL error, looking through drizzle's wrappers. */
export function pgErrorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

/** The constraint name of a PostgreSQL error, looking through drizzle's wrappers. */
export function pgConstraint(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const c =
      (e as { constraint_name?: unknown; constraint?: unknown }).constraint_name ??
      (e as { constraint?: unknown }).constraint;
    if (typeof c === "string") return c;
  }
  return undefined;
}

/** True for errors that mean the database could not be reached (not a bad statement). */
export function isConnectionError(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (
      typeof code === "string" &&
      [
        "ECONNREFUSED",
        "ECONNRESET",
        "EPIPE",
        "ETIMEDOUT",
        "CONNECTION_CLOSED",
        "CONNECTION_ENDED",
        "CONNECTION_DESTROYED",
        "CONNECT_TIMEOUT",
        "57P01",
        "57P02",
        "57P03",
        "08000",
        "08003",
        "08006",
        "08001",
        "08004",
      ].includes(code)
    )
      return true;
  }
  return false;
}
