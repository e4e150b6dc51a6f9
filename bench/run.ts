/**
 * `npm run bench [-- --quick] [--out file] [--profile] [--markdown] [--only group,…]`
 *
 * Starts the services against the local PostgreSQL and NATS, drives them
 * from a separate load agent at a fixed concurrency, measures each row side
 * by side with its baseline, prints one table and writes it as JSON
 * (bench/results/latest.json). See bench/README.md for what each row means.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, totalmem } from "node:os";
import { dirname, join, relative } from "node:path";
import { parseArgs } from "node:util";
import postgres from "postgres";
import { sharedNatsUrl } from "../test/support/nats.js";
import { adminUrl } from "../test/support/postgres.js";
import type { IpcChild } from "./lib/child.js";
import { ROOT } from "./lib/child.js";
import { lastSeq, type StoredEvent, storedEvents } from "./lib/jetstream.js";
import { type Platform, startPlatform, unsentCount, waitOutboxEmpty } from "./lib/platform.js";
import { type CpuWindow, rssMiB, sampleRss, startCpuWindow } from "./lib/proc.js";
import { topFunctions } from "./lib/profile.js";
import { type Report, ROW_IDS, type Row, renderTable } from "./lib/report.js";
import { measureStartup } from "./lib/startup.js";
import { type LoadResult, mergeLoads, summarize } from "./lib/stats.js";
import type { ScenarioSpec } from "./scenarios.js";

const GROUPS = ["startup", "get", "jwt", "update", "register", "auth", "tokens", "drain"] as const;
type Group = (typeof GROUPS)[number];

export interface BenchOptions {
  quick: boolean;
  out: string;
  profile: boolean;
  /** Print the table as Markdown (for the README). */
  markdown: boolean;
  only: ReadonlySet<Group>;
}

/** The fixed concurrency of every load row (virtual users = in-flight calls). */
const CONCURRENCY = 32;
/** HTTP/2 connections the gRPC load is spread over (8 streams each). */
const CONNECTIONS = 4;
/** Pool size of the services' postgres.js client (runtime/db.ts); the raw baselines get the same. */
const POOL = 10;

interface Eld {
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
}

/** A load run: what the agent runs, against which service (whose CPU, RSS and event loop are read). */
interface Job {
  name: string;
  spec: ScenarioSpec;
  target?: IpcChild;
  concurrency?: number;
  /** Slow operations (argon2id): longer windows, fewer rounds. */
  slow?: boolean;
  /** Read the target's event-loop delay over the window. */
  eld?: boolean;
  /** Run this many operations instead of a timed window. */
  maxOps?: number;
  /** Awaited before each run (e.g. let a relay catch up first). */
  before?: () => Promise<unknown>;
}

interface Measured {
  load: LoadResult;
  /** The target's CPU over the measured windows. */
  cpu?: CpuWindow;
  /** CPU the load agent itself used over the windows (cores). */
  agentCores: number;
  eld?: Eld;
  /** Wall-clock edges of each measured window (epoch ms). */
  windows: Array<{ startMs: number; endMs: number }>;
}

interface Timing {
  rounds: number;
  warmupMs: number;
  durationMs: number;
  slowRounds: number;
  slowWarmupMs: number;
  slowDurationMs: number;
  drainEvents: number;
  /** Starts per service and variant (compiled, tsx) in the start-up rows. */
  startupReps: number;
  /** How long a started service idles before its RSS is read (the load platform's services: 1 s). */
  startupIdleMs: number;
}

const QUICK: Timing = {
  rounds: 1,
  warmupMs: 400,
  durationMs: 1200,
  slowRounds: 1,
  slowWarmupMs: 800,
  slowDurationMs: 1600,
  drainEvents: 300,
  startupReps: 1,
  startupIdleMs: 250,
};
const FULL: Timing = {
  rounds: 3,
  warmupMs: 1000,
  durationMs: 4000,
  slowRounds: 2,
  slowWarmupMs: 2000,
  slowDurationMs: 5000,
  drainEvents: 3000,
  startupReps: 5,
  startupIdleMs: 1000,
};

const log = (s: string) => process.stderr.write(`${s}\n`);
const round = (v: number, d = 2) => Math.round(v * 10 ** d) / 10 ** d;

/** Runs the bench; returns the report it printed and wrote. */
export async function runBench(opts: BenchOptions): Promise<Report> {
  const started = Date.now();
  const timing = opts.quick ? QUICK : FULL;
  const want = (g: Group) => opts.only.size === 0 || opts.only.has(g);
  // First, while nothing else of the bench runs: a start-up competes with nothing but PostgreSQL and NATS.
  const startup = want("startup") ? await startupRows(timing) : [];
  const p = await startPlatform({ customers: 2000, accounts: CONCURRENCY, log });
  const stopOnSignal = () => {
    log("interrupted: stopping services");
    void p.close().finally(() => process.exit(130));
  };
  process.once("SIGINT", stopOnSignal);
  process.once("SIGTERM", stopOnSignal);
  const peakRss = new Map<number, number>();
  const profileDir = join(p.logDir, "profiles");
  if (opts.profile) mkdirSync(profileDir, { recursive: true });

  /** One load run from the agent; CPU, RSS and event-loop delay of the target over the measured window. */
  const runOnce = async (job: Job, round: number): Promise<Measured> => {
    await job.before?.();
    const target = job.target;
    const window = { startMs: 0, endMs: 0 };
    let endCpu: (() => CpuWindow) | undefined;
    let endAgentCpu: (() => CpuWindow) | undefined;
    let cpu: CpuWindow | undefined;
    let agentCores = Number.NaN;
    let rss: { stop(): number } | undefined;
    let eld: Promise<Eld> | undefined;
    const pending: Promise<unknown>[] = [];
    const profile = opts.profile && target !== undefined && round === 0;
    const profilePath = join(profileDir, `${job.name}.cpuprofile`);
    const onEvent = (event: string) => {
      if (event === "start") {
        window.startMs = Date.now();
        endAgentCpu = startCpuWindow(p.agent.pid);
        if (!target) return;
        endCpu = startCpuWindow(target.pid);
        rss = sampleRss(target.pid);
        if (job.eld) pending.push(target.request({ cmd: "eld-reset" }));
        if (profile) pending.push(target.request({ cmd: "profile-start" }));
      } else {
        window.endMs = Date.now();
        agentCores = endAgentCpu?.().cores ?? Number.NaN;
        if (!target) return;
        cpu = endCpu?.();
        const peak = rss?.stop() ?? Number.NaN;
        peakRss.set(target.pid, Math.max(peakRss.get(target.pid) ?? 0, peak));
        if (job.eld) eld = target.request<Eld>({ cmd: "eld" });
        if (profile) pending.push(target.request({ cmd: "profile-stop", path: profilePath }));
      }
    };
    const runTiming =
      job.maxOps !== undefined
        ? { maxOps: job.maxOps }
        : job.slow
          ? { warmupMs: timing.slowWarmupMs, durationMs: timing.slowDurationMs }
          : { warmupMs: timing.warmupMs, durationMs: timing.durationMs };
    const load = await p.agent.request<LoadResult>(
      { cmd: "run", spec: job.spec, concurrency: job.concurrency ?? CONCURRENCY, ...runTiming },
      onEvent,
    );
    await Promise.all(pending);
    if (profile) {
      log(`    profile: ${relative(ROOT, profilePath)}`);
      for (const line of topFunctions(profilePath, ROOT, 12)) log(`      ${line}`);
    }
    return { load, windows: [window], agentCores, ...(cpu && { cpu }), ...(eld && { eld: await eld }) };
  };

  /**
   * Runs jobs side by side: round after round, each job once per round, so
   * a noisy neighbour slows every side alike. Returns each job's rounds merged.
   */
  const compare = async (...jobs: Job[]): Promise<Measured[]> => {
    const rounds = jobs.some((j) => j.maxOps !== undefined)
      ? 1
      : jobs.some((j) => j.slow)
        ? timing.slowRounds
        : timing.rounds;
    const runs: Measured[][] = jobs.map(() => []);
    for (let r = 0; r < rounds; r++) {
      for (const [i, job] of jobs.entries()) runs[i]?.push(await runOnce(job, r));
    }
    return jobs.map((job, i) => {
      const m = merge(runs[i] as Measured[]);
      log(
        `  ${job.name.padEnd(28)} ${round(m.load.rps, 1)}/s  p50 ${round(m.load.p50Ms)} ms  p99 ${round(m.load.p99Ms)} ms` +
          `${m.load.errors ? `  errors ${m.load.errors} (${m.load.firstError})` : ""}` +
          `${m.cpu ? `  service ${round(m.cpu.cores)} cores, ${round(usPerReq(m), 0)} µs/req (main thread ${round((m.cpu.mainThreadCpuSec * 1e6) / m.load.ops, 0)})` : ""}` +
          `  agent ${round(m.agentCores)} cores${m.eld ? `  eld p99 ${round(m.eld.p99Ms)} ms` : ""}`,
      );
      return m;
    });
  };
  const measure = async (job: Job): Promise<Measured> => (await compare(job))[0] as Measured;

  const rows: Row[] = [...startup];
  try {
    if (want("get")) rows.push(...(await getRows(p, compare)));
    if (want("jwt")) rows.push(await jwtRow(p, compare));
    // Its connections are not needed any more (PostgreSQL allows 100 in all).
    await p.variant.child.stop();
    let updateRps = 1000;
    let publishLatency: LoadResult | undefined;
    const eventRows: Row[] = [];
    if (want("update")) {
      const [update, events, rps] = await updateRows(p, compare);
      updateRps = rps;
      rows.push(update);
      eventRows.push(events);
    }
    if (want("register")) rows.push(await registerRow(p, compare, updateRps, timing));
    if (want("auth")) rows.push(...(await authRows(p, compare)));
    if (want("tokens")) rows.push(...(await tokenRows(p, measure)));
    if (want("drain")) {
      const [drain, raw] = await drainRow(p, measure, timing.drainEvents);
      publishLatency = raw;
      rows.push(drain);
    }
    // Commit→ack, with raw publish→ack latency (measured in the drain row) as its floor.
    for (const r of eventRows) {
      if (publishLatency) {
        r.baseline = {
          label: "raw JetStream publish→ack",
          value: round(publishLatency.p99Ms),
          p50Ms: round(publishLatency.p50Ms),
          p99Ms: round(publishLatency.p99Ms),
        };
      }
      rows.push(r);
    }
    rows.push(...memoryRows(p, peakRss));
  } finally {
    process.off("SIGINT", stopOnSignal);
    process.off("SIGTERM", stopOnSignal);
    await p.close();
  }
  rows.sort((a, b) => ROW_IDS.indexOf(a.id) - ROW_IDS.indexOf(b.id));

  const report: Report = { meta: await machine(opts, Date.now() - started), rows };
  mkdirSync(dirname(opts.out), { recursive: true });
  writeFileSync(opts.out, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`\n${describeMachine(report.meta)}\n\n${renderTable(rows, { markdown: opts.markdown })}\n\n`);
  log(`wrote ${relative(process.cwd(), opts.out)} in ${round((Date.now() - started) / 1000, 1)} s`);
  return report;
}

/** The rounds of one job as one measurement. */
function merge(runs: Measured[]): Measured {
  const cpus = runs.flatMap((r) => (r.cpu ? [r.cpu] : []));
  const cpuSec = cpus.reduce((n, c) => n + c.cpuSec, 0);
  const mainThreadCpuSec = cpus.reduce((n, c) => n + c.mainThreadCpuSec, 0);
  const wallSec = cpus.reduce((n, c) => n + c.wallSec, 0);
  // The worst round's event-loop delay: "never blocked" must hold in every one.
  const eld = runs
    .flatMap((r) => (r.eld ? [r.eld] : []))
    .reduce<Eld | undefined>((worst, e) => (worst === undefined || e.p99Ms > worst.p99Ms ? e : worst), undefined);
  return {
    load: mergeLoads(runs.map((r) => r.load)),
    ...(cpus.length > 0 && { cpu: { cpuSec, mainThreadCpuSec, wallSec, cores: cpuSec / wallSec } }),
    agentCores: runs.reduce((n, r) => n + r.agentCores, 0) / runs.length,
    ...(eld && { eld }),
    windows: runs.flatMap((r) => r.windows),
  };
}

type CompareFn = (...jobs: Job[]) => Promise<Measured[]>;
type MeasureFn = (job: Job) => Promise<Measured>;

const side = (label: string, m: Measured) => ({
  label,
  value: round(m.load.rps, 1),
  p50Ms: round(m.load.p50Ms),
  p99Ms: round(m.load.p99Ms),
});

const usPerReq = (m: Measured) => (m.cpu ? (m.cpu.cpuSec * 1e6) / m.load.ops : Number.NaN);

const loadDetails = (m: Measured) => ({
  ops: m.load.ops,
  errors: m.load.errors,
  ...(m.load.firstError && { firstError: m.load.firstError }),
  seconds: round(m.load.seconds),
  p90Ms: round(m.load.p90Ms),
  maxMs: round(m.load.maxMs),
  ...(m.cpu && {
    serviceCores: round(m.cpu.cores),
    serviceCpuUsPerReq: round(usPerReq(m), 0),
    // The rest ran on other threads: libuv's pool (argon2, WebCrypto), V8's GC and compiler threads.
    mainThreadCpuUsPerReq: round((m.cpu.mainThreadCpuSec * 1e6) / m.load.ops, 0),
  }),
  agentCores: round(m.agentCores),
});

async function getRows(p: Platform, compare: CompareFn): Promise<Row[]> {
  log("GetCustomer");
  const token = p.serviceToken;
  const ids = p.customerIds;
  const [grpc, raw, json] = await compare(
    {
      name: "get-customer-grpc",
      spec: { kind: "get-grpc", url: p.customer.url, token, ids, connections: CONNECTIONS },
      target: p.customer.child,
    },
    { name: "pg-select", spec: { kind: "pg-select", dbUrl: p.baselineDb.url, ids, poolMax: POOL } },
    {
      name: "get-customer-connect-json",
      spec: { kind: "get-connect-json-http1", url: p.customer.url, token, ids },
      target: p.customer.child,
    },
  );
  if (!grpc || !raw || !json) throw new Error("missing run");
  const ratio = grpc.load.rps / raw.load.rps;
  const rawSide = side("postgres.js SELECT by PK", raw);
  return [
    {
      id: "get_customer_grpc",
      title: "GetCustomer, gRPC over h2c",
      unit: "req/s",
      ours: side("GetCustomer gRPC", grpc),
      baseline: rawSide,
      ratio: round(ratio, 3),
      target: { text: "≥50% raw, p99 <10 ms", pass: ratio >= 0.5 && grpc.load.p99Ms < 10 && grpc.load.errors === 0 },
      details: { ...loadDetails(grpc), baseline: loadDetails(raw), connections: CONNECTIONS, pool: POOL },
    },
    {
      id: "get_customer_connect_json_http1",
      title: "GetCustomer, Connect JSON over HTTP/1.1",
      unit: "req/s",
      ours: side("GetCustomer Connect JSON", json),
      baseline: rawSide,
      ratio: round(json.load.rps / raw.load.rps, 3),
      details: { ...loadDetails(json), baseline: loadDetails(raw) },
    },
  ];
}

async function jwtRow(p: Platform, compare: CompareFn): Promise<Row> {
  log("GetCustomer with / without token verification, and without the database (one process, same wiring)");
  const job = (name: string, url: string): Job => ({
    name,
    spec: { kind: "get-grpc", url, token: p.serviceToken, ids: p.customerIds, connections: CONNECTIONS },
    target: p.variant.child,
  });
  const [withJwt, without, stub] = await compare(
    job("get-customer-jwt", p.variant.jwksUrl),
    job("get-customer-no-jwt", p.variant.fixedUrl),
    job("get-customer-stub", p.variant.stubUrl),
  );
  if (!withJwt || !without || !stub) throw new Error("missing run");
  return {
    id: "get_customer_jwt_cost",
    title: "GetCustomer with JWT verification",
    unit: "req/s",
    ours: side("with EdDSA JWT verification", withJwt),
    baseline: side("fixed principal", without),
    ratio: round(withJwt.load.rps / without.load.rps, 3),
    details: {
      ...loadDetails(withJwt),
      baseline: loadDetails(without),
      // Service CPU per GetCustomer, split: transport (HTTP/2, gRPC, protobuf, interceptors,
      // validation, log line) / + database (drizzle, postgres.js) / + token verification (jose).
      cpuUsPerReq: {
        transportOnly: round(usPerReq(stub), 0),
        database: round(usPerReq(without) - usPerReq(stub), 0),
        jwtVerification: round(usPerReq(withJwt) - usPerReq(without), 0),
        total: round(usPerReq(withJwt), 0),
      },
      transportOnly: loadDetails(stub),
    },
  };
}

async function updateRows(p: Platform, compare: CompareFn): Promise<[Row, Row, number]> {
  log("UpdateCustomer (+ event commit→ack under that load)");
  const stream = p.customer.streams.stream;
  const seq0 = await lastSeq(sharedNatsUrl, stream).catch(() => 0);
  // The relay catches up before the baseline runs, so it never competes with it.
  const catchUpMs: number[] = [];
  const settle = async () => catchUpMs.push(await waitOutboxEmpty(p.customer.db.url, 120_000));
  const [ours, raw] = await compare(
    {
      name: "update-customer-grpc",
      spec: {
        kind: "update-grpc",
        url: p.customer.url,
        token: p.serviceToken,
        ids: p.customerIds,
        connections: CONNECTIONS,
      },
      target: p.customer.child,
    },
    {
      name: "pg-update",
      spec: {
        kind: "pg-update",
        dbUrl: p.baselineDb.url,
        ids: p.customerIds,
        poolMax: POOL,
        subjectPrefix: p.customer.streams.subjectPrefix,
      },
      before: settle,
    },
  );
  if (!ours || !raw) throw new Error("missing run");
  const events = await storedEvents(sharedNatsUrl, stream, seq0 + 1);
  const inWindow = events.filter((e) => ours.windows.some((w) => e.occurMs >= w.startMs && e.occurMs <= w.endMs));
  const lat = summarize(inWindow.map((e) => e.storedMs - e.occurMs));
  // Time between consecutive acks while the relay had work: its per-event cost under this load.
  const gaps = summarize(inWindow.slice(1).map((e, i) => e.storedMs - (inWindow[i] as StoredEvent).storedMs));
  const ratio = ours.load.rps / raw.load.rps;
  const update: Row = {
    id: "update_customer",
    title: "UpdateCustomer (tx + outbox), gRPC",
    unit: "req/s",
    ours: side("UpdateCustomer gRPC", ours),
    baseline: side("postgres.js same tx", raw),
    ratio: round(ratio, 3),
    target: { text: "≥50% raw", pass: ratio >= 0.5 && ours.load.errors === 0 },
    details: { ...loadDetails(ours), baseline: loadDetails(raw) },
  };
  const eventRow: Row = {
    id: "event_commit_to_ack",
    title: "Event commit→JetStream ack, at full update load",
    unit: "ms p99",
    ours: {
      label: "occur_time → JetStream store time",
      value: round(lat.p99Ms),
      p50Ms: round(lat.p50Ms),
      p99Ms: round(lat.p99Ms),
    },
    target: { text: "p99 <50 ms", pass: inWindow.length > 0 && lat.p99Ms < 50 },
    details: {
      events: inWindow.length,
      updatesInWindows: ours.load.ops,
      p90Ms: round(lat.p90Ms),
      maxMs: round(lat.maxMs),
      // How long the relay still needed after each round's load stopped (its backlog, in time).
      relayCatchUpAfterRoundMs: catchUpMs,
      relayAckIntervalMs: { p50: round(gaps.p50Ms, 3), p90: round(gaps.p90Ms, 3), p99: round(gaps.p99Ms, 3) },
    },
  };
  return [update, eventRow, ours.load.rps];
}

async function registerRow(p: Platform, compare: CompareFn, expectedRps: number, timing: Timing): Promise<Row> {
  log("RegisterCustomer");
  // Enough pre-minted tokens for one round at about the update rate, with headroom.
  const tokens = Math.min(60_000, Math.ceil((expectedRps * 1.6 * (timing.warmupMs + timing.durationMs)) / 1000) + 500);
  const [ours, raw] = await compare(
    {
      name: "register-customer-grpc",
      spec: { kind: "register-grpc", url: p.customer.url, signer: p.signer, connections: CONNECTIONS, tokens },
      target: p.customer.child,
    },
    {
      name: "pg-register",
      spec: {
        kind: "pg-register",
        dbUrl: p.baselineDb.url,
        poolMax: POOL,
        subjectPrefix: p.customer.streams.subjectPrefix,
      },
      before: () => waitOutboxEmpty(p.customer.db.url, 120_000),
    },
  );
  if (!ours || !raw) throw new Error("missing run");
  const ratio = ours.load.rps / raw.load.rps;
  return {
    id: "register_customer",
    title: "RegisterCustomer (tx + outbox), gRPC",
    unit: "req/s",
    ours: side("RegisterCustomer gRPC", ours),
    baseline: side("postgres.js same tx", raw),
    ratio: round(ratio, 3),
    target: { text: "≥50% raw", pass: ratio >= 0.5 && ours.load.errors === 0 },
    details: { ...loadDetails(ours), baseline: loadDetails(raw), preMintedTokensPerRound: tokens },
  };
}

async function authRows(p: Platform, compare: CompareFn): Promise<Row[]> {
  log("AuthenticateCustomer");
  const threadpool = Number(process.env.UV_THREADPOOL_SIZE ?? 4);
  const [ours, raw] = await compare(
    {
      name: "authenticate-customer-grpc",
      spec: {
        kind: "authenticate-grpc",
        url: p.identity.url,
        accounts: p.accounts.map((a) => ({ email: a.email, password: a.password })),
        connections: CONNECTIONS,
      },
      target: p.identity.child,
      slow: true,
      eld: true,
    },
    {
      name: "argon2id-verify",
      spec: { kind: "argon2-verify", accounts: p.accounts.map((a) => ({ hash: a.hash, password: a.password })) },
      slow: true,
    },
  );
  if (!ours || !raw) throw new Error("missing run");
  const ratio = ours.load.rps / raw.load.rps;
  const eld = ours.eld ?? { p50Ms: Number.NaN, p99Ms: Number.NaN, maxMs: Number.NaN, meanMs: Number.NaN };
  const cores = ours.cpu?.cores ?? Number.NaN;
  const perVcpu = ours.load.rps / cores;
  return [
    {
      id: "authenticate_customer",
      title: "AuthenticateCustomer (argon2id m=19456 t=2 p=1)",
      unit: "req/s",
      ours: side("AuthenticateCustomer gRPC", ours),
      baseline: side(`argon2.verify, threadpool ${threadpool}`, raw),
      ratio: round(ratio, 3),
      target: { text: "≥90% raw argon2id", pass: ratio >= 0.9 && ours.load.errors === 0 },
      details: { ...loadDetails(ours), baseline: loadDetails(raw), threadpool },
    },
    {
      id: "identity_event_loop_delay",
      title: "identity event-loop delay under sign-in load",
      unit: "ms p99",
      ours: {
        label: "monitorEventLoopDelay",
        value: round(eld.p99Ms),
        p50Ms: round(eld.p50Ms),
        p99Ms: round(eld.p99Ms),
      },
      ...(raw.load.eld && {
        baseline: {
          label: "load agent's loop during raw argon2.verify",
          value: round(raw.load.eld.p99Ms),
          p50Ms: round(raw.load.eld.p50Ms),
          p99Ms: round(raw.load.eld.p99Ms),
        },
      }),
      target: { text: "p99 <10 ms (never blocked)", pass: eld.p99Ms < 10 },
      details: {
        maxMs: round(eld.maxMs),
        meanMs: round(eld.meanMs),
        resolutionMs: 5,
        ...(raw.load.eld && { baselineMaxMs: round(raw.load.eld.maxMs) }),
      },
    },
    {
      id: "password_sign_in_per_vcpu",
      title: "Password sign-ins per vCPU",
      unit: "/s/vCPU",
      ours: { label: "AuthenticateCustomer / identity cores", value: round(perVcpu, 1) },
      baseline: { label: "Keycloak", value: 15 },
      ratio: round(perVcpu / 15, 3),
      target: { text: "≥25/s/vCPU", pass: perVcpu >= 25 },
      details: { rps: round(ours.load.rps, 1), identityCores: round(cores) },
    },
  ];
}

async function tokenRows(p: Platform, measure: MeasureFn): Promise<Row[]> {
  log("RefreshToken, AuthenticateClient");
  const target = p.identity.child;
  const refresh = await measure({
    name: "refresh-token-grpc",
    spec: {
      kind: "refresh-grpc",
      url: p.identity.url,
      refreshTokens: p.accounts.map((a) => a.refreshToken),
      connections: CONNECTIONS,
    },
    target,
  });
  const cc = await measure({
    name: "authenticate-client-grpc",
    spec: {
      kind: "client-credentials-grpc",
      url: p.identity.url,
      clientId: p.client.id,
      clientSecret: p.client.secret,
      scope: p.client.scope,
      connections: CONNECTIONS,
    },
    target,
  });
  const row = (
    id: "refresh_token_per_vcpu" | "client_credentials_per_vcpu",
    title: string,
    m: Measured,
    target: number,
  ): Row => {
    const cores = m.cpu?.cores ?? Number.NaN;
    const perVcpu = m.load.rps / cores;
    return {
      id,
      title,
      unit: "/s/vCPU",
      ours: {
        label: "req/s / identity cores",
        value: round(perVcpu, 1),
        p50Ms: round(m.load.p50Ms),
        p99Ms: round(m.load.p99Ms),
      },
      baseline: { label: "Keycloak", value: 120 },
      ratio: round(perVcpu / 120, 3),
      target: { text: `≥${target.toLocaleString("en-US")}/s/vCPU`, pass: perVcpu >= target && m.load.errors === 0 },
      details: { ...loadDetails(m), rps: round(m.load.rps, 1), identityCores: round(cores) },
    };
  };
  return [
    row("refresh_token_per_vcpu", "RefreshToken per vCPU", refresh, 600),
    row("client_credentials_per_vcpu", "AuthenticateClient per vCPU", cc, 1000),
  ];
}

async function drainRow(p: Platform, measure: MeasureFn, events: number): Promise<[Row, LoadResult]> {
  log("Outbox drain after a NATS outage (private nats-server)");
  const { nats, streams } = p.drain;
  const update = (name: string, maxOps: number) =>
    measure({
      name,
      spec: { kind: "update-grpc", url: p.drain.url, token: p.serviceToken, ids: p.drainIds, connections: CONNECTIONS },
      target: p.drain.child,
      maxOps,
    });
  // The relay is connected, warm, and its stream exists before NATS goes away.
  await update("updates-nats-up", Math.max(CONCURRENCY * 2, Math.round(events / 3)));
  await waitOutboxEmpty(p.drain.db.url, 30_000);
  const raw = await measure({
    name: "jetstream-publish-ack",
    spec: {
      kind: "js-publish",
      natsUrl: nats.url,
      stream: `RAW_${streams.stream}`,
      subjectPrefix: `raw.${streams.subjectPrefix}`,
      payloadBytes: 240,
    },
    concurrency: 1,
  });
  const before = await lastSeq(nats.url, streams.stream);
  await nats.kill();
  const produced = await update("updates-nats-down", events);
  const held = await unsentCount(p.drain.db.url);
  await nats.start();
  const upAt = Date.now();
  await waitOutboxEmpty(p.drain.db.url, 300_000);
  const drainedAt = Date.now();
  const stored = await storedEvents(nats.url, streams.stream, before + 1);
  const first = stored[0];
  const last = stored[stored.length - 1];
  const rate =
    first && last && stored.length > 1 ? (stored.length - 1) / ((last.storedMs - first.storedMs) / 1000) : Number.NaN;
  const ratio = rate / raw.load.rps;
  log(`  drained ${stored.length} of ${held} held events at ${round(rate, 1)}/s`);
  return [
    {
      id: "outbox_drain",
      title: "Outbox drain after NATS was away",
      unit: "events/s",
      ours: { label: "relay, first→last ack", value: round(rate, 1) },
      baseline: { label: "raw JetStream publish+ack, sequential", value: round(raw.load.rps, 1) },
      ratio: round(ratio, 3),
      target: { text: "≥50% raw publish", pass: ratio >= 0.5 && stored.length >= held },
      details: {
        eventsHeld: held,
        eventsPublished: stored.length,
        commandErrorsWhileNatsDown: produced.load.errors,
        restartToFirstAckMs: first ? Math.round(first.storedMs - upAt) : null,
        restartToDrainedMs: drainedAt - upAt,
        rawPublishAck: { p50Ms: round(raw.load.p50Ms), p99Ms: round(raw.load.p99Ms) },
      },
    },
    raw.load,
  ];
}

/** Start-up to ready and idle RSS of each service, compiled against tsx (see bench/lib/startup.ts). */
async function startupRows(timing: Timing): Promise<Row[]> {
  log(`Start-up to ready and idle RSS, compiled vs tsx (${timing.startupReps} starts each)`);
  const logDir = join(ROOT, ".tmp/bench");
  mkdirSync(logDir, { recursive: true });
  const idleMs = timing.startupIdleMs;
  const measured = await measureStartup({ reps: timing.startupReps, idleMs, logDir, log });
  const services = [
    {
      service: "customer-service",
      npm: "customer",
      startup: "startup_customer_service",
      rss: "rss_customer_service_compiled",
    },
    {
      service: "identity-service",
      npm: "identity",
      startup: "startup_identity_service",
      rss: "rss_identity_service_compiled",
    },
  ] as const;
  return services.flatMap(({ service, npm, startup, rss }): Row[] => {
    const { readyMs, idleRssMiB } = measured[service];
    const compiled = { label: `compiled, npm run serve:${npm}` };
    const tsx = { label: `tsx, npm run start:${npm}` };
    const ready = { compiled: median(readyMs.compiled), tsx: median(readyMs.tsx) };
    const idle = { compiled: median(idleRssMiB.compiled), tsx: median(idleRssMiB.tsx) };
    return [
      {
        id: startup,
        title: `${service} start-up to ready, compiled vs tsx`,
        unit: "ms",
        ours: { ...compiled, value: round(ready.compiled, 0) },
        baseline: { ...tsx, value: round(ready.tsx, 0) },
        ratio: round(ready.compiled / ready.tsx, 3),
        details: {
          statistic: "median",
          startsEach: timing.startupReps,
          compiledMs: readyMs.compiled.map((v) => round(v, 0)),
          tsxMs: readyMs.tsx.map((v) => round(v, 0)),
        },
      },
      {
        id: rss,
        title: `${service} RSS idle, compiled vs tsx`,
        unit: "MiB",
        ours: { ...compiled, value: round(idle.compiled, 1) },
        baseline: { ...tsx, value: round(idle.tsx, 1) },
        ratio: round(idle.compiled / idle.tsx, 3),
        details: {
          statistic: "median",
          startsEach: timing.startupReps,
          readAfterReadyMs: idleMs,
          compiledMiB: idleRssMiB.compiled.map((v) => round(v, 1)),
          tsxMiB: idleRssMiB.tsx.map((v) => round(v, 1)),
        },
      },
    ];
  });
}

/** The middle value (the mean of the two middle ones for an even count). */
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  if (sorted.length === 0) return Number.NaN;
  return sorted.length % 2 === 1
    ? (sorted[mid] as number)
    : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

function memoryRows(p: Platform, peakRss: Map<number, number>): Row[] {
  const row = (
    id: "rss_customer_service" | "rss_identity_service",
    name: string,
    child: IpcChild,
    idle: number,
  ): Row => {
    const peak = peakRss.get(child.pid);
    const now = rssMiB(child.pid);
    return {
      id,
      title: `${name} RSS idle (peak under load ${peak === undefined ? "—" : Math.round(peak)} MiB)`,
      unit: "MiB",
      ours: { label: "VmRSS after start, before any request", value: round(idle, 1) },
      baseline: { label: "Keycloak base per pod", value: 1250 },
      ratio: round(idle / 1250, 3),
      target: { text: "<150 MB idle", pass: idle * 1.048576 < 150 },
      details: { peakUnderLoadMiB: peak === undefined ? null : round(peak, 1), afterLoadMiB: round(now, 1) },
    };
  };
  return [
    row("rss_customer_service", "customer-service", p.customer.child, p.idleRss.customer),
    row("rss_identity_service", "identity-service", p.identity.child, p.idleRss.identity),
  ];
}

async function machine(opts: BenchOptions, elapsedMs: number): Promise<Record<string, unknown>> {
  const git = (...args: string[]) => {
    try {
      return execFileSync("git", args, { cwd: ROOT, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    } catch {
      return "";
    }
  };
  const sql = postgres(adminUrl, { max: 1, onnotice: () => {} });
  const [pg] = await sql<{ v: string }[]>`select current_setting('server_version') as v`.finally(() => sql.end());
  return {
    date: new Date().toISOString(),
    mode: opts.quick ? "quick" : "full",
    commit: `${git("rev-parse", "--short", "HEAD")}${git("status", "--porcelain") ? "+dirty" : ""}`,
    nproc: availableParallelism(),
    cpu: cpus()[0]?.model ?? "unknown",
    memoryGiB: round(totalmem() / 2 ** 30, 1),
    node: process.version,
    postgres: pg?.v,
    nats: execVersion("nats-server", ["--version"]),
    concurrency: CONCURRENCY,
    grpcConnections: CONNECTIONS,
    servicePool: POOL,
    uvThreadpoolSize: Number(process.env.UV_THREADPOOL_SIZE ?? 4),
    logLevel: process.env.LOG_LEVEL ?? "info",
    elapsedSec: round(elapsedMs / 1000, 1),
  };
}

function execVersion(cmd: string, args: string[]): string | undefined {
  try {
    return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return undefined;
  }
}

function describeMachine(m: Record<string, unknown>): string {
  return (
    `${m.mode} run ${m.date} · commit ${m.commit} · ${m.nproc} × ${m.cpu} · Node ${m.node} · ` +
    `PostgreSQL ${m.postgres} · ${m.nats} · concurrency ${m.concurrency}`
  );
}

function parseOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      quick: { type: "boolean", default: false },
      out: { type: "string" },
      profile: { type: "boolean", default: false },
      markdown: { type: "boolean", default: false },
      only: { type: "string" },
    },
  });
  const only = new Set((values.only ?? "").split(",").filter(Boolean) as Group[]);
  for (const g of only) if (!GROUPS.includes(g)) throw new Error(`--only: unknown group "${g}" (${GROUPS.join(", ")})`);
  return {
    quick: values.quick ?? false,
    out: values.out ?? join(ROOT, "bench/results/latest.json"),
    profile: values.profile ?? false,
    markdown: values.markdown ?? false,
    only,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  runBench(parseOptions(process.argv.slice(2))).then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
