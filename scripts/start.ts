/**
 * `npm start`: the whole platform on one machine. Runs the identity and the
 * customer service as two child processes with the same configuration they
 * read on their own (where a *_DATABASE_URL is not set, it passes
 * `pglite:./.data/<service>`, the embedded database, and says so), makes the customer service trust this identity service, passes their JSON
 * logs through, prints where everything is once both answer /readyz, and
 * stops both on SIGINT/SIGTERM. Exits 0 only when both stopped cleanly; if
 * one dies, the other is stopped and the exit code is non-zero.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createServer } from "node:net";
import { constants } from "node:os";
import { dirname, isAbsolute, join, relative } from "node:path";
import { createInterface } from "node:readline";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { ConfigError, type Env, PGLITE_SCHEME, redactUrl } from "@customer-platform/runtime/config";
import { connect } from "@nats-io/transport-node";
import { envToConfig as customerEnvToConfig } from "../customer-service/src/config.js";
import { envToConfig as identityEnvToConfig } from "../identity-service/src/config.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
// Services get this long to stop (their own grace period plus the outbox flush) before SIGKILL.
const STOP_TIMEOUT_MS = 30_000;
// npm forwards SIGINT/SIGTERM to its script while the terminal sends Ctrl-C to the
// whole foreground group, so one Ctrl-C often arrives twice.
const DUPLICATE_SIGNAL_MS = 1_000;

interface Service {
  readonly name: "identity" | "customer";
  readonly entry: string;
  /** Base URL the supervisor probes (a wildcard host is probed on loopback). */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  readonly portVar: string;
  readonly database: string;
  child?: ChildProcess;
  exit?: { code: number | null; signal: NodeJS.Signals | null };
}

// Colors only when both streams are a terminal: piped logs and summaries stay plain text.
const color = process.stdout.isTTY && process.stderr.isTTY && !process.env.NO_COLOR;
const paint = (code: number, s: string) => (color ? `\u001b[${code}m${s}\u001b[0m` : s);
const TAG_COLOR = { identity: 35, customer: 36 } as const;

/** A human line from the supervisor itself (stderr, so stdout stays JSON when piped). */
function say(text: string): void {
  process.stderr.write(`${paint(1, "start")}: ${text}\n`);
}

/** A reachable address for a listening host: wildcards are reached on loopback. */
function probeHost(host: string): string {
  if (host === "0.0.0.0" || host === "") return "127.0.0.1";
  if (host === "::" || host === "[::]") return "[::1]";
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

function describeDatabase(url: string): string {
  if (!url.startsWith(PGLITE_SCHEME)) return redactUrl(url);
  const dataDir = url.slice(PGLITE_SCHEME.length);
  const rel = relative(process.cwd(), dataDir);
  return `embedded PGlite at ${rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel : dataDir}`;
}

// The services need a database URL; on one machine the embedded database is the
// point. Only where nothing at all was said: a DATABASE_URL or a former *_DATA_DIR
// is left for the services' configuration to refuse, naming the right variable.
const EMBEDDED_DEFAULTS = [
  ["IDENTITY_DATABASE_URL", "IDENTITY_DATA_DIR", `${PGLITE_SCHEME}./.data/identity`],
  ["CUSTOMER_DATABASE_URL", "CUSTOMER_DATA_DIR", `${PGLITE_SCHEME}./.data/customer`],
] as const;

/** Sets the embedded database for each service whose URL is not set; returns what it set. */
function embeddedDefaults(env: Env): string[] {
  if (env.DATABASE_URL?.trim()) return [];
  const set: string[] = [];
  for (const [variable, dataDirVariable, url] of EMBEDDED_DEFAULTS) {
    if (env[variable]?.trim() || env[dataDirVariable]?.trim()) continue;
    env[variable] = url;
    set.push(`${variable}=${url}`);
  }
  return set;
}

/** The configuration both children will read, checked before either starts. */
function plan(env: Env): {
  services: [Service, Service];
  natsUrl: string;
  issuer: string;
  jwksUrl: string;
  embedded: string[];
} {
  const embedded = embeddedDefaults(env);
  // Without IDENTITY_ISSUER the issuer follows IDENTITY_HOST/IDENTITY_PORT, so the
  // customer service trusts the identity service wherever it listens.
  const first = identityEnvToConfig(env, ROOT);
  if (!env.IDENTITY_ISSUER?.trim()) env.IDENTITY_ISSUER = `http://${probeHost(first.host)}:${first.port}`;
  const identity = identityEnvToConfig(env, ROOT);
  const customer = customerEnvToConfig(env, ROOT);
  for (const [name, port] of [
    ["IDENTITY_PORT", identity.port],
    ["CUSTOMER_PORT", customer.port],
  ] as const) {
    if (port === 0) throw new ConfigError(`${name} must be a fixed port for npm start, got 0`);
  }
  if (identity.port === customer.port && identity.host === customer.host) {
    throw new ConfigError(`CUSTOMER_PORT and IDENTITY_PORT must differ, both are ${customer.port}`);
  }
  return {
    services: [
      {
        name: "identity",
        entry: "identity-service/src/main.ts",
        url: `http://${probeHost(identity.host)}:${identity.port}`,
        host: identity.host,
        port: identity.port,
        portVar: "IDENTITY_PORT",
        database: describeDatabase(identity.database.url),
      },
      {
        name: "customer",
        entry: "customer-service/src/main.ts",
        url: `http://${probeHost(customer.host)}:${customer.port}`,
        host: customer.host,
        port: customer.port,
        portVar: "CUSTOMER_PORT",
        database: describeDatabase(customer.database.url),
      },
    ],
    natsUrl: customer.natsUrl,
    issuer: identity.issuer,
    jwksUrl: customer.jwksUrl,
    embedded,
  };
}

/** True when host:port can be bound: a platform already running is reported before anything starts. */
function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once("error", () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

const LEVELS: Record<number, string> = {
  10: paint(90, "TRACE"),
  20: paint(90, "DEBUG"),
  30: paint(32, "INFO "),
  40: paint(33, "WARN "),
  50: paint(31, "ERROR"),
  60: paint(31, "FATAL"),
};

/** A pino JSON line made readable for a terminal; anything else is only tagged. */
function prettyLine(tag: string, line: string): string {
  let rec: unknown;
  try {
    rec = JSON.parse(line);
  } catch {
    return `${tag} ${line}`;
  }
  if (typeof rec !== "object" || rec === null || Array.isArray(rec)) return `${tag} ${line}`;
  const {
    level,
    time,
    msg,
    service: _s,
    name: _n,
    pid: _p,
    hostname: _h,
    err,
    ...rest
  } = rec as Record<string, unknown>;
  const extras = Object.entries(rest)
    .map(([k, v]) => `${paint(90, `${k}=`)}${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join(" ");
  const when = typeof time === "string" ? paint(90, time.slice(11, 23)) : "";
  const lvl = typeof level === "number" ? (LEVELS[level] ?? String(level)) : "";
  const errText =
    typeof err === "object" && err !== null
      ? `\n${String((err as { stack?: unknown }).stack ?? (err as { message?: unknown }).message ?? "")}`
      : err === undefined
        ? ""
        : ` err=${String(err)}`;
  return `${when} ${tag} ${lvl} ${String(msg ?? "")}${extras ? `  ${extras}` : ""}${errText}`;
}

function forwardLines(input: Readable, onLine: (line: string) => void): void {
  createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY }).on("line", onLine);
}

async function waitReady(svc: Service, isStopping: () => boolean): Promise<boolean> {
  while (!svc.exit && !isStopping()) {
    try {
      const res = await fetch(`${svc.url}/readyz`, { signal: AbortSignal.timeout(1_000) });
      await res.body?.cancel();
      if (res.ok) return true;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}

/** Whether NATS answers, for the summary only: the services keep retrying on their own. */
async function natsReachable(url: string): Promise<boolean> {
  try {
    const nc = await connect({ servers: url, reconnect: false, timeout: 2_000, name: "npm start probe" });
    await nc.close();
    return true;
  } catch {
    return false;
  }
}

async function main(): Promise<number> {
  const env: Env = { ...process.env };
  let setup: ReturnType<typeof plan>;
  try {
    setup = plan(env);
  } catch (err) {
    if (err instanceof ConfigError) {
      say(`configuration error: ${err.message}`);
      return 78; // EX_CONFIG, as the services use
    }
    throw err;
  }
  const { services, natsUrl, issuer, jwksUrl, embedded } = setup;
  for (const svc of services) {
    if (!(await portFree(svc.host, svc.port))) {
      say(`${svc.portVar}: port ${svc.port} on ${svc.host} is already in use (is the platform already running?)`);
      return 1;
    }
  }
  if (embedded.length > 0) say(`no database URL set: using the embedded database (${embedded.join(", ")})`);
  const natsProbe = natsReachable(natsUrl);

  let stopping = false;
  let firstSignalAt = 0;
  let failure: { name: string; code: number } | undefined;
  let allExited: () => void = () => {};
  const exited = new Promise<void>((resolve) => {
    allExited = resolve;
  });
  const running = () => services.filter((s) => s.child && !s.exit);
  let killTimer: NodeJS.Timeout | undefined;
  const stopAll = (signal: NodeJS.Signals) => {
    stopping = true;
    for (const s of running()) s.child?.kill(signal);
    killTimer ??= setTimeout(() => {
      for (const s of running()) {
        say(`${s.name} service did not stop within ${STOP_TIMEOUT_MS / 1000} s; killing it`);
        s.child?.kill("SIGKILL");
      }
    }, STOP_TIMEOUT_MS).unref();
  };

  for (const svc of services) {
    // Own process group: a Ctrl-C in the terminal reaches the children only
    // through this process, exactly once (a second one makes them exit at once).
    const child = spawn(process.execPath, ["--conditions=source", "--import", "tsx", svc.entry], {
      cwd: ROOT,
      env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    svc.child = child;
    const tag = paint(TAG_COLOR[svc.name], svc.name.padEnd(8));
    const out = process.stdout.isTTY;
    if (child.stdout) forwardLines(child.stdout, (l) => process.stdout.write(`${out ? prettyLine(tag, l) : l}\n`));
    if (child.stderr) forwardLines(child.stderr, (l) => process.stderr.write(`${tag} ${l}\n`));
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      if (svc.exit) return;
      svc.exit = { code, signal };
      if (!stopping) {
        failure ??= { name: svc.name, code: code || 1 };
        say(`${svc.name} service exited unexpectedly (${signal ?? `code ${code}`}); stopping the other one`);
        stopAll("SIGTERM");
      } else if (code !== 0) {
        say(`${svc.name} service stopped with ${signal ?? `code ${code}`}`);
      }
      if (running().length === 0) allExited();
    };
    child.once("exit", onExit);
    child.once("error", (err) => {
      say(`${svc.name} service could not be started: ${err.message}`);
      onExit(1, null);
    });
  }
  process.on("exit", () => {
    for (const s of running()) s.child?.kill("SIGKILL");
  });

  const onSignal = (signal: NodeJS.Signals) => {
    if (!stopping) {
      firstSignalAt = Date.now();
      say(`${signal}: stopping both services`);
      stopAll(signal);
    } else if (Date.now() - firstSignalAt > DUPLICATE_SIGNAL_MS) {
      say(`${signal} again: services exit now`);
      for (const s of running()) s.child?.kill(signal);
    }
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const ready = await Promise.all(services.map((s) => waitReady(s, () => stopping)));
  if (ready.every(Boolean) && !stopping) {
    const nats = (await natsProbe) ? "reachable" : "not reachable: events wait in the outbox until it is";
    const lines = [
      paint(1, "platform ready") + paint(90, " (Ctrl-C stops both)"),
      ...services.map((s) => `  ${s.name.padEnd(9)} ${s.url}  ${s.database}  ${paint(90, `pid ${s.child?.pid}`)}`),
      `  ${"tokens".padEnd(9)} issuer ${issuer}, customer service verifies with ${jwksUrl}`,
      `  ${"NATS".padEnd(9)} ${redactUrl(natsUrl)} (${nats})`,
      `  ${"try".padEnd(9)} npx buf curl --protocol grpc --http2-prior-knowledge --list-methods ${services[1].url}`,
      `  ${"".padEnd(9)} npm run events -- tail`,
    ];
    process.stderr.write(`${lines.join("\n")}\n`);
  }

  await exited;
  clearTimeout(killTimer);
  if (failure) return failure.code;
  const bad = services.find((s) => s.exit?.code !== 0);
  if (!bad) return 0;
  return bad.exit?.signal ? 128 + constants.signals[bad.exit.signal] : (bad.exit?.code ?? 1);
}

// `npm start | head` must not crash the supervisor and orphan the services.
process.stdout.on("error", () => {});

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    say(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exitCode = 1;
  },
);
