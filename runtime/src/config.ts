/**
 * Reading configuration from the environment: every value is checked at
 * start, and a bad one names its variable.
 */
import { resolve } from "node:path";

export type Env = Record<string, string | undefined>;

/** A configuration value that cannot be used; its message names the variable. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** A non-empty string, or the fallback when unset or empty. */
export function envString(env: Env, name: string, fallback: string): string {
  const v = env[name]?.trim();
  return v ? v : fallback;
}

/** An optional non-empty string. */
export function envOptional(env: Env, name: string): string | undefined {
  const v = env[name]?.trim();
  return v ? v : undefined;
}

/** A NATS subject prefix: dot-separated subject tokens, no wildcards. */
export function envSubjectPrefix(env: Env, name: string, fallback: string): string {
  const prefix = envString(env, name, fallback);
  if (!/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(prefix)) {
    throw new ConfigError(`${name} must be dot-separated NATS subject tokens, got "${prefix}"`);
  }
  return prefix;
}

/** A TCP port (0–65535; 0 picks a free one). */
export function envPort(env: Env, name: string, fallback: number): number {
  return envInt(env, name, fallback, 0, 65535);
}

/** An integer within [min, max]. */
export function envInt(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  if (!/^-?\d+$/.test(raw)) throw new ConfigError(`${name} must be an integer, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** A URL whose scheme is one of protocols (e.g. ["postgres:", "postgresql:"]). */
export function envUrl(env: Env, name: string, protocols: string[], fallback: string): string;
export function envUrl(env: Env, name: string, protocols: string[], fallback?: undefined): string | undefined;
export function envUrl(env: Env, name: string, protocols: string[], fallback?: string): string | undefined {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError(`${name} must be a URL (${protocols.join(" or ")}), got "${redactUrl(raw)}"`);
  }
  if (!protocols.includes(url.protocol)) {
    throw new ConfigError(`${name} must use ${protocols.join(" or ")}, got "${url.protocol}"`);
  }
  return raw;
}

/** Where a service's database is, and the variable that said so (named in every database error). */
export interface DatabaseConfig {
  /** `postgres://…`, `postgresql://…`, or `pglite:<absolute directory>` for the embedded database. */
  readonly url: string;
  /** e.g. "CUSTOMER_DATABASE_URL". */
  readonly variable: string;
  /** PostgreSQL `statement_timeout` for the service's pool, in ms (0: none). */
  readonly statementTimeoutMs: number;
  /** PostgreSQL `idle_in_transaction_session_timeout`, in ms (0: none). */
  readonly idleInTransactionTimeoutMs: number;
}

/** The URL scheme that asks for the embedded PGlite database in a directory. */
export const PGLITE_SCHEME = "pglite:";

/**
 * A service's database from `name` (e.g. CUSTOMER_DATABASE_URL), which is
 * required: a service that forgot it must not run on a throwaway embedded
 * database. `pglite:<dir>` asks for the embedded one, a relative dir resolved
 * against cwd. `embedded` is the example the error message suggests. The
 * former `<PREFIX>_DATA_DIR` (given as dataDirVariable) and a plain
 * DATABASE_URL are refused rather than silently ignored.
 */
export function envDatabase(
  env: Env,
  name: string,
  opts: { cwd: string; embedded: string; dataDirVariable: string },
): DatabaseConfig {
  if (env[opts.dataDirVariable]?.trim()) {
    throw new ConfigError(
      `${opts.dataDirVariable} is no longer read: set ${name}=pglite:<dir> for the embedded database instead`,
    );
  }
  // Shared by both services, as SHUTDOWN_GRACE_MS is; 0 turns one off.
  const timeouts = {
    statementTimeoutMs: envInt(env, "DATABASE_STATEMENT_TIMEOUT_MS", 30_000, 0, 3_600_000),
    idleInTransactionTimeoutMs: envInt(env, "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", 60_000, 0, 3_600_000),
  };
  const raw = env[name]?.trim();
  if (!raw) {
    if (env.DATABASE_URL?.trim()) {
      throw new ConfigError(`${name} is required; DATABASE_URL is ignored (each service has its own): set ${name}`);
    }
    throw new ConfigError(
      `${name} is required (postgres://… or ${PGLITE_SCHEME}${opts.embedded} for the embedded database)`,
    );
  }
  if (raw.toLowerCase().startsWith(PGLITE_SCHEME)) {
    const dir = raw.slice(PGLITE_SCHEME.length);
    if (!dir)
      throw new ConfigError(`${name} must name a directory after ${PGLITE_SCHEME}, e.g. ${raw}${opts.embedded}`);
    return { url: `${PGLITE_SCHEME}${resolve(opts.cwd, dir)}`, variable: name, ...timeouts };
  }
  return { url: envUrl(env, name, ["postgres:", "postgresql:", PGLITE_SCHEME], raw), variable: name, ...timeouts };
}

/** One of a fixed set of values. */
export function envEnum<T extends string>(env: Env, name: string, values: readonly T[], fallback: T): T {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  if (!(values as readonly string[]).includes(raw)) {
    throw new ConfigError(`${name} must be one of ${values.join(", ")}, got "${raw}"`);
  }
  return raw as T;
}

/** A URL with any password replaced, for logs and error messages. */
export function redactUrl(raw: string): string {
  try {
    const url = new URL(raw);
    if (url.password) url.password = "***";
    return url.toString();
  } catch {
    return raw.replace(/\/\/([^:/@]+):[^@/]*@/, "//$1:***@");
  }
}

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** What every service's configuration has; each service's own type extends it. */
export interface HostConfig {
  /** Interface and port to listen on (0 picks a free port). */
  host: string;
  port: number;
  /** The variable `port` came from, for messages (e.g. `CUSTOMER_PORT`). */
  portVariable?: string;
  /** PostgreSQL, or `pglite:<dir>` for the embedded database. */
  database: DatabaseConfig;
  natsUrl: string;
  /** Largest request message accepted, in bytes. */
  maxRequestBytes: number;
  /** Time allowed for the calls in flight at shutdown. */
  shutdownGraceMs: number;
  logLevel: LogLevel;
}

/**
 * The settings every service reads, from variables named after its prefix
 * (`<PREFIX>_HOST`, `_PORT`, `_MAX_REQUEST_BYTES`, `_DATABASE_URL`) and the
 * shared ones (`NATS_URL`, `LOG_LEVEL`, `SHUTDOWN_GRACE_MS`, the database
 * timeouts). Spread it last into a service's configuration: the database URL
 * is read last, so that a missing one does not hide a mistake in another
 * variable.
 */
export function envHostConfig(env: Env, prefix: string, opts: { port: number; cwd: string }): HostConfig {
  const portVariable = `${prefix}_PORT`;
  return {
    host: envString(env, `${prefix}_HOST`, "127.0.0.1"),
    port: envPort(env, portVariable, opts.port),
    portVariable,
    natsUrl: envUrl(env, "NATS_URL", ["nats:", "tls:", "ws:", "wss:"], "nats://127.0.0.1:4222"),
    logLevel: envEnum(env, "LOG_LEVEL", LOG_LEVELS, "info"),
    maxRequestBytes: envInt(env, `${prefix}_MAX_REQUEST_BYTES`, 64 * 1024, 1024, 16 * 1024 * 1024),
    shutdownGraceMs: envInt(env, "SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    database: envDatabase(env, `${prefix}_DATABASE_URL`, {
      cwd: opts.cwd,
      embedded: `./.data/${prefix.toLowerCase()}`,
      dataDirVariable: `${prefix}_DATA_DIR`,
    }),
  };
}
