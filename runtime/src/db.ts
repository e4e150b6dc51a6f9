/**
 * The database a service runs on: PostgreSQL through postgres.js, or the
 * embedded PGlite when its URL asks for it (`pglite:<dir>`). Both give the
 * same drizzle API, the same migrations, LISTEN/NOTIFY and advisory locks.
 *
 * Opening fails with a StartupError (one line naming the URL's variable,
 * what to do, and an exit code) for what an operator fixes: PostgreSQL
 * unreachable (69), the database missing or the login refused (78), an
 * embedded directory that other users can read (78) or that another process
 * holds (75).
 */
import net from "node:net";
import { type Column, getTableColumns, type SQL, sql, type Table } from "drizzle-orm";
import type { PgDatabase, PgQueryResultHKT } from "drizzle-orm/pg-core";
import postgres from "postgres";
import { PGLITE_SCHEME } from "./config.js";
import { openEmbeddedDirectory } from "./embedded-dir.js";
import { sqlState } from "./errors.js";
import { EXIT_CONFIG, EXIT_UNAVAILABLE } from "./exit-codes.js";
import { StartupError } from "./main.js";
import { redactUrl } from "./redact.js";

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
  /** True on the embedded PGlite: one session in this process, which a second pool cannot share. */
  readonly embedded: boolean;
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
  /** `postgres://…`, `postgresql://…`, or `pglite:<dir>` for the embedded database. */
  url: string;
  /** The variable the URL came from (e.g. "CUSTOMER_DATABASE_URL"), named in every start-up error. */
  variable?: string;
  schema: S;
  /** Pool size for PostgreSQL. */
  max?: number;
  /**
   * Who opens it, e.g. "customer-service": PostgreSQL's application_name,
   * and the holder another process is told about while this one holds an
   * embedded directory.
   */
  name?: string;
  /** PostgreSQL statement_timeout of the pool's sessions, in ms; 0 for none. Default 30 000. */
  statementTimeoutMs?: number;
  /** PostgreSQL idle_in_transaction_session_timeout, in ms; 0 for none. Default 60 000. */
  idleInTransactionTimeoutMs?: number;
}

/** statement_timeout unless configured otherwise. */
export const DEFAULT_STATEMENT_TIMEOUT_MS = 30_000;
/** idle_in_transaction_session_timeout unless configured otherwise. */
export const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000;

// Both services migrate under this lock so two instances starting at once
// never run the same migration twice.
const MIGRATION_LOCK = 7_310_001n;
// postgres.js's connect timeout, in seconds.
const CONNECT_TIMEOUT_S = 5;

/**
 * The socket postgres.js talks over, reporting every close as clean.
 * postgres.js sees a connection fail at its socket's 'error' event but takes
 * it out of the pool only at 'close', which Node emits a turn of the event
 * loop later; a query handed to it in between is never sent, and after a
 * close "with error" postgres.js never rejects it either: the call hangs
 * forever, and so can later ones on that connection (an outbox relay stuck
 * for good, calls that never answer). After a clean close postgres.js rejects whatever is still pending on the
 * connection (CONNECTION_CLOSED, answered UNAVAILABLE). The only other effect
 * of the flag: the reconnect delay does not grow, and a reconnect is only
 * ever made for a waiting query. postgres.js still times the connect out.
 */
function pgSocket(options: { host: string[]; port: number[]; path?: string | false }): net.Socket {
  const socket = options.path
    ? net.connect(options.path)
    : net.connect(options.port[0] ?? 5432, options.host[0] ?? "localhost");
  const on = socket.on.bind(socket);
  socket.on = ((event: string, listener: (...args: unknown[]) => void) =>
    on(event, event === "close" ? () => listener(false) : listener)) as typeof socket.on;
  return socket;
}

// `socket` is a postgres.js option its type definitions leave out.
const PG_SOCKET: object = { socket: pgSocket };

/** Opens the database `opts.url` names. */
export async function openDatabase<S extends Record<string, unknown>>(opts: DatabaseOptions<S>): Promise<Database<S>> {
  return opts.url.toLowerCase().startsWith(PGLITE_SCHEME)
    ? openPglite(opts.url.slice(PGLITE_SCHEME.length), opts)
    : openPostgres(opts.url, opts);
}

/**
 * Server-side limits on every pooled session. They do not detect a lost
 * server (TCP keepalive and the socket's close do that); they bound what a
 * live server lets one session do: a statement that runs or waits on a lock
 * too long is cancelled (57014, answered as an internal error), and a
 * transaction left open by a stalled caller is ended, releasing its locks.
 */
function sessionParameters(opts: DatabaseOptions<Record<string, unknown>>, statementTimeoutMs: number) {
  return {
    application_name: opts.name ?? "customer-platform",
    statement_timeout: statementTimeoutMs,
    idle_in_transaction_session_timeout: opts.idleInTransactionTimeoutMs ?? DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
  };
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
    connect_timeout: CONNECT_TIMEOUT_S,
    idle_timeout: 60,
    ...PG_SOCKET,
    connection: sessionParameters(opts, opts.statementTimeoutMs ?? DEFAULT_STATEMENT_TIMEOUT_MS),
  });
  // postgres.js fetches the array types on each new connection, from a promise
  // nobody handles: a connection cut during that query is an unhandled
  // rejection, which ends the process. The types are the same for every
  // connection, so only the first one fetches them.
  await probe(client, opts.variable);
  client.options.fetch_types = false;
  const db = drizzle({ client: guardTransactions(client), schema: opts.schema }) as unknown as Db<S>;
  // A dedicated one-connection client rather than client.reserve(): postgres.js
  // throws an uncaught TypeError when a reserved connection whose socket closed
  // is used, and would silently reconnect a plain client to a session that no
  // longer holds the lock. Once closed, this session only throws.
  const session = async (statementTimeoutMs = opts.statementTimeoutMs ?? DEFAULT_STATEMENT_TIMEOUT_MS) => {
    let lost = false;
    const one = postgres(url, {
      max: 1,
      idle_timeout: 0,
      max_lifetime: null,
      connect_timeout: CONNECT_TIMEOUT_S,
      // Scalar parameters only; and see fetch_types above.
      fetch_types: false,
      ...PG_SOCKET,
      onnotice: () => {},
      onclose: () => {
        lost = true;
      },
      connection: sessionParameters(opts, statementTimeoutMs),
    });
    return {
      one,
      async query<T>(text: string, params: unknown[] = []) {
        if (lost) throw Object.assign(new Error("session connection lost"), { code: "CONNECTION_CLOSED" });
        return (await one.unsafe(text, params as never[])) as unknown as T[];
      },
      release: () => one.end({ timeout: 5 }),
    };
  };
  return {
    db,
    description: redactUrl(url),
    embedded: false,
    query: async <T>(text: string, params: unknown[] = []) =>
      (await client.unsafe(text, params as never[])) as unknown as T[],
    async listen(channel, onNotify) {
      const sub = await client.listen(channel, onNotify);
      return () => sub.unlisten();
    },
    session: () => session(),
    async migrate(folder) {
      // Without a statement timeout: waiting for another instance's migration is
      // one statement (pg_advisory_lock), and so is building an index on a big table.
      const lock = await session(0);
      const run = await session(0);
      try {
        await lock.query("select pg_advisory_lock($1)", [MIGRATION_LOCK.toString()]);
        await migrate(drizzle({ client: guardTransactions(run.one) }), { migrationsFolder: folder });
      } finally {
        await lock.query("select pg_advisory_unlock($1)", [MIGRATION_LOCK.toString()]).catch(() => {});
        await Promise.all([lock.release(), run.release()]);
      }
    },
    close: () => client.end({ timeout: 5 }),
  };
}

/**
 * The first query, bounded in time: postgres.js reconnects without end to a
 * server that accepts the connection and closes it before answering (a
 * proxy without a backend), so its connect timeout alone does not end the
 * wait. A failure an operator can fix becomes a one-line StartupError.
 */
async function probe(client: postgres.Sql, variable = "the database URL"): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(Object.assign(new Error("no answer"), { code: "START_TIMEOUT" })),
      (CONNECT_TIMEOUT_S + 1) * 1000,
    );
  });
  try {
    await Promise.race([client`select 1`, deadline]);
  } catch (err) {
    await client.end({ timeout: 0 }).catch(() => {});
    throw startupError(err, client.options, variable) ?? err;
  } finally {
    clearTimeout(timer);
  }
}

const UNREACHABLE: Record<string, string> = {
  ECONNREFUSED: "connection refused",
  ENOTFOUND: "host not found",
  EAI_AGAIN: "host not found",
  EHOSTUNREACH: "host unreachable",
  ENETUNREACH: "network unreachable",
  ETIMEDOUT: "connection timed out",
  ECONNRESET: "connection reset",
  CONNECT_TIMEOUT: `no connection within ${CONNECT_TIMEOUT_S} s`,
  START_TIMEOUT: `no answer within ${CONNECT_TIMEOUT_S + 1} s`,
  CONNECTION_CLOSED: "connection closed",
  "57P03": "the server is starting up or shutting down",
};

/**
 * The StartupError for a failed first connection, or undefined for anything
 * else (a bug, not the operator's to fix: it keeps its stack).
 */
function startupError(
  err: unknown,
  options: { host: string[]; port: number[]; user: string; database: string; path?: string | false | undefined },
  variable: string,
): StartupError | undefined {
  const code = (err as { code?: unknown })?.code;
  if (typeof code !== "string") return undefined;
  const server = options.path
    ? options.path
    : options.host.map((h, i) => `${h.includes(":") ? `[${h}]` : h}:${options.port[i] ?? options.port[0]}`).join(",");
  const said = err instanceof Error ? err.message : String(err);
  const reason = UNREACHABLE[code];
  if (reason) {
    return new StartupError(
      `${variable}: cannot reach PostgreSQL at ${server} (${reason}); start it, or point ${variable} at a running server`,
      EXIT_UNAVAILABLE,
      { cause: err },
    );
  }
  if (code === "3D000") {
    const host = options.path ? "" : `-h ${options.host[0]} -p ${options.port[0]} `;
    return new StartupError(
      `${variable}: database "${options.database}" does not exist on ${server}; create it (createdb ${host}-U ${options.user} ${options.database}) or fix ${variable}`,
      EXIT_CONFIG,
      { cause: err },
    );
  }
  if (code === "28P01" || code === "28000") {
    return new StartupError(
      `${variable}: PostgreSQL at ${server} refused user "${options.user}" (${said}); check the user and password in ${variable}`,
      EXIT_CONFIG,
      { cause: err },
    );
  }
  return undefined;
}

/**
 * postgres.js's client with a `begin()` that never touches a transaction's
 * connection once it is lost. When that connection closes, postgres.js
 * rejects `begin()` at once but lets the transaction's scope run on: the
 * callback's next statement, or the COMMIT or ROLLBACK the scope sends when
 * the callback ends, is written to the dead connection, and postgres.js
 * throws an uncaught TypeError from a setImmediate ("Cannot read properties
 * of null (reading 'write')") that kills the process; had the pool already
 * reconnected that connection, the statement would land in another call's
 * session. Nothing needs ending: the server aborts a transaction whose
 * session ended. So once `begin()` has failed, statements of its scope throw
 * CONNECTION_CLOSED without being sent, and the callback never settles, so
 * the scope sends nothing more (it is garbage, collected as such).
 */
function guardTransactions(client: postgres.Sql): postgres.Sql {
  const begin = (...args: unknown[]): Promise<unknown> => {
    const fn = args.pop() as (sql: postgres.TransactionSql) => unknown;
    // While the callback runs, begin() fails only when the connection closes.
    let lost = false;
    let markLost = () => {};
    const gone = new Promise<true>((resolve) => {
      markLost = () => resolve(true);
    });
    const never = () => new Promise<never>(() => {});
    const guard = <T extends object>(target: T): T =>
      new Proxy(target, {
        apply(f, self, params) {
          if (lost) throw Object.assign(new Error("transaction connection lost"), { code: "CONNECTION_CLOSED" });
          return Reflect.apply(f as (...a: unknown[]) => unknown, self, params);
        },
        get(t, prop) {
          const value: unknown = Reflect.get(t, prop);
          return prop === "unsafe" && typeof value === "function" ? guard(value) : value;
        },
      });
    const run = async (sql: postgres.TransactionSql) => {
      let value: unknown;
      try {
        value = await fn(guard(sql));
      } catch (err) {
        if (lost) return never();
        // The statement's error comes first, the connection's close right after; a connection
        // error from elsewhere (this connection still up) rolls back as usual.
        if (isConnectionError(err) && (await Promise.race([gone, sleep(1000).then(() => false)]))) return never();
        throw err;
      }
      return lost ? never() : value;
    };
    const result = (client.begin as unknown as (...a: unknown[]) => Promise<unknown>)(...args, run);
    result.catch(() => {
      lost = true;
      markLost();
    });
    return result;
  };
  return new Proxy(client, { get: (target, prop) => (prop === "begin" ? begin : Reflect.get(target, prop)) });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());

async function openPglite<S extends Record<string, unknown>>(
  dataDir: string,
  opts: DatabaseOptions<S>,
): Promise<Database<S>> {
  const { PGlite } = await import("@electric-sql/pglite");
  const { drizzle } = await import("drizzle-orm/pglite");
  const { migrate } = await import("drizzle-orm/pglite/migrator");
  const dir = openEmbeddedDirectory(dataDir, {
    variable: opts.variable ?? "the database URL",
    name: opts.name ?? "a process",
  });
  let pg: InstanceType<typeof PGlite>;
  try {
    pg = await PGlite.create(dir.path);
    dir.makePrivate();
  } catch (err) {
    dir.release();
    throw err;
  }
  const db = drizzle({ client: pg, schema: opts.schema }) as unknown as Db<S>;
  const query = async <T>(text: string, params: unknown[] = []) => (await pg.query<T>(text, params)).rows;
  return {
    db,
    description: `${PGLITE_SCHEME}${dir.path}`,
    embedded: true,
    query,
    async listen(channel, onNotify) {
      const unsub = await pg.listen(channel, onNotify);
      return () => unsub();
    },
    // PGlite is one session in one process: the session is the database itself.
    session: async () => ({ query, release: async () => {} }),
    migrate: async (folder) => migrate(drizzle({ client: pg }), { migrationsFolder: folder }),
    async close() {
      try {
        await pg.close();
        // A directory PostgreSQL made while running passed emscripten's umask (022).
        dir.makePrivate();
      } finally {
        dir.release();
      }
    },
  };
}

/**
 * A prepared statement's placeholder for a value of `column`, encoded as drizzle
 * encodes that column's values (a Date as ISO text, jsonb as JSON), except that
 * null stays SQL NULL: drizzle also encodes a placeholder's null, and jsonb would
 * store the JSON value `null`.
 */
export function placeholder(name: string, column: Column): SQL {
  const encoder = { mapToDriverValue: (v: unknown) => (v === null ? null : column.mapToDriverValue(v)) };
  return sql`${sql.param(sql.placeholder(name), encoder)}`;
}

/** A placeholder for each of `keys`, a column of `table`, named after its key. */
export function placeholders<T extends Table, K extends keyof T["_"]["columns"] & string>(
  table: T,
  keys: readonly K[],
): Record<K, SQL> {
  const columns: Record<string, Column> = getTableColumns(table);
  return Object.fromEntries(keys.map((k) => [k, placeholder(k, columns[k] as Column)])) as Record<K, SQL>;
}

/** The SQLSTATE of a PostgreSQL error, looking through drizzle's wrappers. */
export function pgErrorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    // sqlState, not any five characters: EPIPE is not a SQLSTATE.
    const code = sqlState(e);
    if (code) return code;
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

/**
 * True when PostgreSQL refused a string the caller sent: text and jsonb cannot
 * hold U+0000, which a protobuf string may carry (22021 for text, 22P05 for
 * jsonb's \u0000).
 */
export function isUnstorableTextError(err: unknown): boolean {
  const code = pgErrorCode(err);
  return code === "22021" || code === "22P05";
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
