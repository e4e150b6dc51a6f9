/**
 * Reading configuration from the environment: every value is checked at
 * start, and a bad one names its variable.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { nkeys } from "@nats-io/transport-node";
import { DEFAULT_HTTP_LIMITS, type HttpLimits } from "./http-server.js";
import { redactUrl } from "./redact.js";

export { redactUrl };

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

/** `true` or `false` (any case), or the fallback when unset or empty. */
export function envBoolean(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name]?.trim().toLowerCase();
  if (!raw) return fallback;
  if (raw !== "true" && raw !== "false") throw new ConfigError(`${name} must be true or false, got "${env[name]}"`);
  return raw === "true";
}

/** The variable that allows plain `http:` URLs for hosts other than this machine. */
export const ALLOW_INSECURE_HTTP_URLS = "ALLOW_INSECURE_HTTP_URLS";

/** localhost, 127.0.0.0/8 or ::1: a URL `hostname`, as `new URL()` normalises it. */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.toLowerCase().replace(/\.$/, "");
  return host === "localhost" || host === "[::1]" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}

/**
 * An `https:` URL, or an `http:` one for a loopback host (isLoopbackHost), or
 * for any host when ALLOW_INSECURE_HTTP_URLS=true (a private network, tests):
 * tokens and keys fetched or named over plain HTTP can be read and replaced on
 * the way.
 */
export function envHttpsUrl(env: Env, name: string, fallback: string): string {
  const raw = envUrl(env, name, ["https:", "http:"], fallback);
  const url = new URL(raw);
  if (url.protocol === "http:" && !isLoopbackHost(url.hostname) && !envBoolean(env, ALLOW_INSECURE_HTTP_URLS, false)) {
    throw new ConfigError(
      `${name} must use https: for a host other than this machine, got "${redactUrl(raw)}" ` +
        `(set ${ALLOW_INSECURE_HTTP_URLS}=true to allow http: on a private network)`,
    );
  }
  return raw;
}

/** The schemes NATS_URL may use. */
export const NATS_SCHEMES = ["nats:", "tls:", "ws:", "wss:"];

/**
 * How a service proves who it is to NATS. The secret sits behind a function
 * (so that printing a configuration never shows it) that reads a file again
 * at every (re)connect, so a rotated file is picked up without a restart.
 */
export interface NatsAuth {
  /**
   * `creds`: a NATS credentials file (user JWT and nkey seed); `nkey`: an nkey
   * seed; `user`: a user name and password; `token`: a token (from NATS_URL).
   */
  readonly method: "creds" | "nkey" | "user" | "token";
  /** The variable that configured it, named in every message about it, e.g. CUSTOMER_NATS_CREDS_FILE. */
  readonly variable: string;
  /** Not secret, for logs: the user name (`user`), or the nkey's public key (`nkey`). */
  readonly identity?: string;
  /**
   * The secret: the file's contents (creds, nkey) or the password or token.
   * A file that can no longer be read or parsed yields what it last held.
   */
  readonly secret: () => string;
}

/** Where a service's NATS is and how it signs in. */
export interface NatsConfig {
  /** NATS_URL without the credentials it may carry: safe to log and to pass on. */
  readonly url: string;
  /** Undefined: connect anonymously. */
  readonly auth: NatsAuth | undefined;
}

/** The credential variables, each read as `<PREFIX>_NATS_<X>` or, shared, `NATS_<X>`. */
const NATS_AUTH_VARIABLES = ["CREDS_FILE", "NKEY_SEED_FILE", "USER", "PASSWORD", "PASSWORD_FILE"] as const;

// `nsc generate creds` / `nsc describe`: each block between -----BEGIN …----- and ------END …------ lines.
const CREDS_BLOCKS = /-{3,}[^\n]*-{3,}\r?\n\s*(\S+)\s*\r?\n\s*-{3,}[^\n]*-{3,}/g;

/** The user JWT and seed of a NATS credentials file, or undefined if `text` is none. */
function parseCreds(text: string): { jwt: string; seed: string } | undefined {
  const [jwt, seed] = [...text.matchAll(CREDS_BLOCKS)].map((m) => m[1] ?? "");
  if (!jwt || !seed || jwt.split(".").length !== 3 || !userSeedKey(seed)) return undefined;
  return { jwt, seed };
}

/** The public key of a user nkey seed (`SU…`), or undefined if `seed` is none. */
function userSeedKey(seed: string): string | undefined {
  if (!seed.startsWith("SU")) return undefined;
  try {
    return nkeys.fromSeed(new TextEncoder().encode(seed)).getPublicKey();
  } catch {
    return undefined;
  }
}

/** A file's text, or a ConfigError naming `variable` and the file, never its contents. */
function readSecretFile(variable: string, file: string): string {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why =
      code === "ENOENT"
        ? "no such file"
        : code === "EACCES"
          ? "permission denied"
          : code === "EISDIR"
            ? "it is a directory"
            : (code ?? "unreadable");
    throw new ConfigError(`${variable}: cannot read ${file}: ${why}`);
  }
  if (!text.trim()) throw new ConfigError(`${variable}: ${file} is empty`);
  return text;
}

/**
 * A secret held in a file, checked now (a ConfigError if it cannot be read or
 * `check` refuses it) and read again whenever it is asked for; a later read
 * that fails or is refused yields the last good text.
 */
function secretFile(variable: string, file: string, check: (text: string) => string | undefined) {
  const path = resolve(file);
  let last = readSecretFile(variable, path);
  const problem = check(last);
  if (problem) throw new ConfigError(`${variable}: ${path} ${problem}`);
  return () => {
    try {
      const text = readFileSync(path, "utf8");
      if (text.trim() && !check(text)) last = text;
    } catch {
      // Keep the last good text: a rotation under way, or a file gone for a moment.
    }
    return last;
  };
}

/** A password file's text: without the line breaks an editor or `echo` leaves at its end. */
const withoutTrailingNewlines = (text: string) => text.replace(/[\r\n]+$/, "");

/** `text` percent-decoded, or a ConfigError for NATS_URL (never showing `text`). */
function urlDecoded(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new ConfigError("NATS_URL: the user or password is not valid percent-encoding");
  }
}

/**
 * The NATS server and credentials from NATS_URL and `<prefix>_NATS_*` (or, if
 * no `<prefix>_NATS_*` credential is set, the shared `NATS_*`): a creds file,
 * an nkey seed file, a user with a password (or password file), or the
 * credentials in NATS_URL (`nats://user:password@host`, `nats://token@host`);
 * at most one of them. Files are read and checked now.
 */
export function envNats(env: Env, prefix: string): NatsConfig {
  const raw = envUrl(env, "NATS_URL", NATS_SCHEMES, "nats://127.0.0.1:4222");
  const url = new URL(raw);
  const inUrl = url.username !== "" || url.password !== "";
  const urlUser = urlDecoded(url.username);
  const urlPassword = urlDecoded(url.password);
  url.username = "";
  url.password = "";
  const server = inUrl ? url.toString() : raw;

  type Variable = (typeof NATS_AUTH_VARIABLES)[number];
  const own = NATS_AUTH_VARIABLES.some((x) => envOptional(env, `${prefix}_NATS_${x}`) !== undefined);
  const name = (x: Variable) => (own ? `${prefix}_NATS_${x}` : `NATS_${x}`);
  // A password is taken as it is, spaces included; file and user names are trimmed.
  const value = (x: Variable) => (x === "PASSWORD" && env[name(x)]?.trim() ? env[name(x)] : envOptional(env, name(x)));
  const given = NATS_AUTH_VARIABLES.filter((x) => value(x) !== undefined);
  const userGiven = given.some((x) => x === "USER" || x === "PASSWORD" || x === "PASSWORD_FILE");
  const ways = [given.includes("CREDS_FILE"), given.includes("NKEY_SEED_FILE"), userGiven, inUrl].filter(Boolean);
  if (ways.length > 1) {
    const got = [...given.map(name), ...(inUrl ? ["credentials in NATS_URL"] : [])];
    throw new ConfigError(
      `set one way to sign in to NATS (${name("CREDS_FILE")}, ${name("NKEY_SEED_FILE")}, ` +
        `${name("USER")} with a password, or credentials in NATS_URL), got ${got.join(" and ")}`,
    );
  }

  const credsFile = value("CREDS_FILE");
  if (credsFile) {
    const variable = name("CREDS_FILE");
    const secret = secretFile(variable, credsFile, (text) =>
      parseCreds(text)
        ? undefined
        : "is not a NATS credentials file (a user JWT and a user nkey seed, as `nsc generate creds` writes)",
    );
    return { url: server, auth: { method: "creds", variable, secret } };
  }
  const seedFile = value("NKEY_SEED_FILE");
  if (seedFile) {
    const variable = name("NKEY_SEED_FILE");
    const file = secretFile(variable, seedFile, (text) =>
      userSeedKey(text.trim())
        ? undefined
        : "holds no user nkey seed (one line starting with SU, as `nk -gen user` writes)",
    );
    const secret = () => file().trim();
    return { url: server, auth: { method: "nkey", variable, identity: userSeedKey(secret()) ?? "", secret } };
  }
  if (userGiven) return { url: server, auth: userPassword(name, value) };
  if (inUrl) {
    if (!urlUser) throw new ConfigError("NATS_URL has a password but no user name");
    const auth: NatsAuth = urlPassword
      ? { method: "user", variable: "NATS_URL", identity: urlUser, secret: () => urlPassword }
      : { method: "token", variable: "NATS_URL", secret: () => urlUser };
    return { url: server, auth };
  }
  return { url: server, auth: undefined };
}

/** A user with a password (`_NATS_PASSWORD`) or a password file (`_NATS_PASSWORD_FILE`), one of the two. */
function userPassword(
  name: (x: (typeof NATS_AUTH_VARIABLES)[number]) => string,
  value: (x: (typeof NATS_AUTH_VARIABLES)[number]) => string | undefined,
): NatsAuth {
  const variable = name("USER");
  const user = value("USER");
  const password = value("PASSWORD");
  const passwordFile = value("PASSWORD_FILE");
  if (!user) throw new ConfigError(`${password ? name("PASSWORD") : name("PASSWORD_FILE")} needs ${variable}`);
  if (password && passwordFile) throw new ConfigError(`set ${name("PASSWORD")} or ${name("PASSWORD_FILE")}, not both`);
  if (password) return { method: "user", variable, identity: user, secret: () => password };
  if (!passwordFile) throw new ConfigError(`${variable} needs ${name("PASSWORD")} or ${name("PASSWORD_FILE")}`);
  const file = secretFile(name("PASSWORD_FILE"), passwordFile, (text) =>
    withoutTrailingNewlines(text) ? undefined : "holds no password",
  );
  return { method: "user", variable, identity: user, secret: () => withoutTrailingNewlines(file()) };
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
  /** NATS_URL without credentials: safe to log and to pass on. */
  natsUrl: string;
  /** How the service signs in to NATS (envNats); none: anonymously. */
  natsAuth?: NatsAuth;
  /** Largest request message accepted, in bytes. */
  maxRequestBytes: number;
  /** Time allowed for the calls in flight at shutdown. */
  shutdownGraceMs: number;
  logLevel: LogLevel;
  /** What one client may hold open (connections, streams, idle and request time); default DEFAULT_HTTP_LIMITS. */
  httpLimits?: HttpLimits;
  /** Whether gRPC server reflection is served (default true). */
  reflection?: boolean;
  /** HTTP_FAST_PATH (default true): unary gRPC (h2c) and Connect POST calls served without connect-node's pipeline (fast-unary.ts). */
  fastPath?: boolean;
}

/**
 * The settings every service reads, from variables named after its prefix
 * (`<PREFIX>_HOST`, `_PORT`, `_MAX_REQUEST_BYTES`, `_DATABASE_URL`, the NATS
 * credentials: envNats, `_REFLECTION`) and the shared ones (`NATS_URL`, `LOG_LEVEL`,
 * `SHUTDOWN_GRACE_MS`, the database timeouts, the HTTP limits: envHttpLimits). Spread it last into a service's configuration: the database URL
 * is read last, so that a missing one does not hide a mistake in another
 * variable.
 */
export function envHostConfig(env: Env, prefix: string, opts: { port: number; cwd: string }): HostConfig {
  const portVariable = `${prefix}_PORT`;
  return {
    host: envString(env, `${prefix}_HOST`, "127.0.0.1"),
    port: envPort(env, portVariable, opts.port),
    portVariable,
    ...natsSettings(envNats(env, prefix)),
    logLevel: envEnum(env, "LOG_LEVEL", LOG_LEVELS, "info"),
    maxRequestBytes: envInt(env, `${prefix}_MAX_REQUEST_BYTES`, 64 * 1024, 1024, 16 * 1024 * 1024),
    shutdownGraceMs: envInt(env, "SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    httpLimits: envHttpLimits(env),
    reflection: envBoolean(env, `${prefix}_REFLECTION`, true),
    fastPath: envBoolean(env, "HTTP_FAST_PATH", true),
    database: envDatabase(env, `${prefix}_DATABASE_URL`, {
      cwd: opts.cwd,
      embedded: `./.data/${prefix.toLowerCase()}`,
      dataDirVariable: `${prefix}_DATA_DIR`,
    }),
  };
}

/**
 * The HTTP limits both services share (`HTTP_MAX_CONNECTIONS`,
 * `HTTP_MAX_CONCURRENT_STREAMS`, `HTTP_IDLE_TIMEOUT_MS`,
 * `HTTP_REQUEST_TIMEOUT_MS`; 0 turns a timeout off), by default
 * DEFAULT_HTTP_LIMITS.
 */
export function envHttpLimits(env: Env): HttpLimits {
  return {
    maxConnections: envInt(env, "HTTP_MAX_CONNECTIONS", DEFAULT_HTTP_LIMITS.maxConnections, 1, 1_000_000),
    maxConcurrentStreams: envInt(
      env,
      "HTTP_MAX_CONCURRENT_STREAMS",
      DEFAULT_HTTP_LIMITS.maxConcurrentStreams,
      1,
      10_000,
    ),
    idleTimeoutMs: envInt(env, "HTTP_IDLE_TIMEOUT_MS", DEFAULT_HTTP_LIMITS.idleTimeoutMs, 0, 86_400_000),
    requestTimeoutMs: envInt(env, "HTTP_REQUEST_TIMEOUT_MS", DEFAULT_HTTP_LIMITS.requestTimeoutMs, 0, 3_600_000),
  };
}

/** HostConfig's NATS fields from a NatsConfig. */
function natsSettings(nats: NatsConfig): Pick<HostConfig, "natsUrl" | "natsAuth"> {
  return { natsUrl: nats.url, ...(nats.auth && { natsAuth: nats.auth }) };
}
