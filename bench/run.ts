/**
 * `npm run bench [-- --quick] [--out file] [--profile] [--markdown] [--only group,…] [--seed n]`
 *
 * Starts the services against the local PostgreSQL and NATS, drives them
 * from a separate load agent at a fixed concurrency, measures each row side
 * by side with its baseline (in an order drawn from the seed), prints one
 * table named after the run and writes it as JSON
 * (bench/results/latest.json). See bench/README.md for what each row means.
 */
import { execFileSync } from "node:child_process";
import { randomInt } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { availableParallelism, cpus, totalmem } from "node:os";
import { dirname, join, relative } from "node:path";
import { parseArgs } from "node:util";
import { create, toBinary } from "@bufbuild/protobuf";
import { GetCustomerRequestSchema } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import postgres from "postgres";
import { freePort, sharedNatsUrl } from "../test/support/nats.js";
import { adminUrl } from "../test/support/postgres.js";
import { measureEventSigning } from "./event-signing.js";
import type { IpcChild } from "./lib/child.js";
import { ROOT, spawnChild } from "./lib/child.js";
import { grpcFrame, type H2loadResult, type H2Request, probeRequest, requireH2load, runH2load } from "./lib/h2load.js";
import { lastSeq, type StoredEvent, storedEvents } from "./lib/jetstream.js";
import { type Platform, type Service, startPlatform, unsentCount, waitOutboxEmpty } from "./lib/platform.js";
import { type CpuWindow, rssMiB, sampleRss, startCpuWindow, startTreeCpuWindow } from "./lib/proc.js";
import { topFunctions } from "./lib/profile.js";
import { createRandom, type Random, shuffle } from "./lib/random.js";
import { invalidate, type Report, ROW_IDS, type Row, type RowId, renderTable, runName } from "./lib/report.js";
import { measureStartup } from "./lib/startup.js";
import { type LoadResult, mergeLoads, summarize } from "./lib/stats.js";
import { measurePasswordBlocklist } from "./password-blocklist.js";
import { CONNECT_JSON, mintCustomerToken, type RawDrainResult, type ScenarioSpec } from "./scenarios.js";

const GROUPS = ["startup", "trust", "get", "jwt", "update", "register", "auth", "tokens", "drain"] as const;
type Group = (typeof GROUPS)[number];

export interface BenchOptions {
  quick: boolean;
  out: string;
  profile: boolean;
  /** Print the table as Markdown (for the README). */
  markdown: boolean;
  only: ReadonlySet<Group>;
  /** Seeds the order of the jobs within each round and the NATS outages of the drain row. */
  seed: number;
  /** The transport rows' rounds, in place of the mode's (`--rounds`). */
  rounds?: number;
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
  /** Awaited after each run (e.g. let the relay catch up, so the next run starts with it idle). */
  after?: () => Promise<unknown>;
}

interface Measured {
  load: LoadResult;
  /** The target's CPU over the measured windows. */
  cpu?: CpuWindow;
  /** The whole PostgreSQL cluster's CPU over the same windows (a target's runs only). */
  postgresCpu?: { cpuSec: number; wallSec: number; cores: number };
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
  /** Outages per side in the drain row (ours and the raw publisher alternate in a seeded order). */
  drainRounds: number;
  /** Starts per service and variant (compiled, tsx) in the start-up rows. */
  startupReps: number;
  /** How long a started service idles before its RSS is read (the load platform's services: 1 s). */
  startupIdleMs: number;
  /** The transport rows: h2load's `-D`, `--warm-up-time` (seconds) and runs per side. */
  h2loadDurationSec: number;
  h2loadWarmupSec: number;
  h2loadRounds: number;
}

const QUICK: Timing = {
  rounds: 1,
  warmupMs: 400,
  durationMs: 1200,
  slowRounds: 1,
  slowWarmupMs: 800,
  slowDurationMs: 1600,
  drainEvents: 300,
  drainRounds: 1,
  startupReps: 1,
  startupIdleMs: 250,
  h2loadDurationSec: 2,
  h2loadWarmupSec: 1,
  h2loadRounds: 1,
};
const FULL: Timing = {
  rounds: 3,
  warmupMs: 1000,
  durationMs: 4000,
  slowRounds: 2,
  slowWarmupMs: 2000,
  slowDurationMs: 5000,
  drainEvents: 3000,
  drainRounds: 3,
  startupReps: 5,
  startupIdleMs: 1000,
  h2loadDurationSec: 10,
  h2loadWarmupSec: 2,
  h2loadRounds: 3,
};

const log = (s: string) => process.stderr.write(`${s}\n`);
const round = (v: number, d = 2) => Math.round(v * 10 ** d) / 10 ** d;

/** Runs the bench; returns the report it printed and wrote. */
export async function runBench(opts: BenchOptions): Promise<Report> {
  const started = Date.now();
  const base = opts.quick ? QUICK : FULL;
  const timing = opts.rounds === undefined ? base : { ...base, h2loadRounds: opts.rounds };
  const random = createRandom(opts.seed);
  log(`seed ${opts.seed} (--seed ${opts.seed} repeats this run's job order)`);
  const want = (g: Group) => opts.only.size === 0 || opts.only.has(g);
  // Before anything starts: the transport rows cannot run without h2load, and are never skipped.
  const h2load = want("get") ? requireH2load() : undefined;
  // First, while nothing else of the bench runs: a start-up competes with nothing but PostgreSQL and NATS.
  const startup = want("startup") ? await startupRows(timing) : [];
  // In process, also while nothing else runs: the CPU price of signed events and of the password rules.
  const trust = want("trust") ? await trustRows(opts.quick) : [];
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
    const target = job.target;
    const window = { startMs: 0, endMs: 0 };
    let endCpu: (() => CpuWindow) | undefined;
    let endAgentCpu: (() => CpuWindow) | undefined;
    let endPostgresCpu: (() => Measured["postgresCpu"]) | undefined;
    let cpu: CpuWindow | undefined;
    let postgresCpu: Measured["postgresCpu"];
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
        if (p.postmasterPid !== undefined) endPostgresCpu = startTreeCpuWindow(p.postmasterPid);
        rss = sampleRss(target.pid);
        if (job.eld) pending.push(target.request({ cmd: "eld-reset" }));
        if (profile) pending.push(target.request({ cmd: "profile-start" }));
      } else {
        window.endMs = Date.now();
        agentCores = endAgentCpu?.().cores ?? Number.NaN;
        if (!target) return;
        cpu = endCpu?.();
        postgresCpu = endPostgresCpu?.();
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
    await job.after?.();
    if (profile) {
      log(`    profile: ${relative(ROOT, profilePath)}`);
      for (const line of topFunctions(profilePath, ROOT, 12)) log(`      ${line}`);
    }
    return {
      load,
      windows: [window],
      agentCores,
      ...(cpu && { cpu }),
      ...(postgresCpu && { postgresCpu }),
      ...(eld && { eld: await eld }),
    };
  };

  /**
   * Runs jobs side by side: round after round, each job once per round in an
   * order drawn from the seed, so a noisy neighbour or a drift within a round
   * slows every side alike. Returns each job's rounds merged.
   */
  const compare = async (...jobs: Job[]): Promise<Measured[]> => {
    const rounds = jobs.some((j) => j.maxOps !== undefined)
      ? 1
      : jobs.some((j) => j.slow)
        ? timing.slowRounds
        : timing.rounds;
    const runs: Measured[][] = jobs.map(() => []);
    for (let r = 0; r < rounds; r++) {
      const order = shuffle(random, [...jobs.keys()]);
      if (jobs.length > 1) log(`  round ${r + 1}: ${order.map((i) => jobs[i]?.name).join(", ")}`);
      for (const i of order) runs[i]?.push(await runOnce(jobs[i] as Job, r));
    }
    return jobs.map((job, i) => {
      const m = merge(runs[i] as Measured[]);
      log(
        `  ${job.name.padEnd(28)} ${round(m.load.rps, 1)}/s  p50 ${round(m.load.p50Ms)} ms  p99 ${round(m.load.p99Ms)} ms` +
          `${m.load.errors ? `  errors ${m.load.errors} (${m.load.firstError})` : ""}` +
          `${m.cpu ? `  service ${round(m.cpu.cores)} cores, ${round(usPerReq(m), 0)} µs/req (main thread ${round((m.cpu.mainThreadCpuSec * 1e6) / m.load.ops, 0)})` : ""}` +
          `${m.postgresCpu ? `  postgres ${round(m.postgresCpu.cores)} cores` : ""}` +
          `  agent ${round(m.agentCores)} cores${m.eld ? `  eld p99 ${round(m.eld.p99Ms)} ms` : ""}`,
      );
      return m;
    });
  };
  const measure = async (job: Job): Promise<Measured> => (await compare(job))[0] as Measured;

  const rows: Row[] = [...startup, ...trust];
  try {
    if (want("get")) rows.push(...(await transportRows(p, timing, random, peakRss, opts.profile)));
    if (want("jwt")) rows.push(await jwtRow(p, compare));
    // Its connections are not needed any more (PostgreSQL allows 100 in all).
    await p.variant.child.stop();
    let updateRps = 1000;
    let publishLatency: Measured | undefined;
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
      const [drain, floor] = await drainRow(p, measure, timing, random);
      publishLatency = floor;
      rows.push(drain);
    }
    // Commit→ack, with sequential raw publish→ack latency (measured in the drain group) as its floor.
    for (const r of eventRows) {
      if (publishLatency) {
        r.baseline = {
          label: "raw JetStream publish→ack, one at a time",
          value: round(publishLatency.load.p99Ms),
          p50Ms: round(publishLatency.load.p50Ms),
          p99Ms: round(publishLatency.load.p99Ms),
        };
        r.details.baseline = loadDetails(publishLatency);
        invalidate(r, failures({ "raw publish": publishLatency }));
      }
      rows.push(r);
    }
    rows.push(...memoryRows(p, peakRss));
    shareOfCall(rows, "event_signing", "update_customer", "UpdateCustomer's service CPU per call (this run)");
    shareOfCall(
      rows,
      "password_rules",
      "authenticate_customer",
      "AuthenticateCustomer's service CPU per call (argon2id, this run)",
    );
  } finally {
    process.off("SIGINT", stopOnSignal);
    process.off("SIGTERM", stopOnSignal);
    await p.close();
  }
  rows.sort((a, b) => ROW_IDS.indexOf(a.id) - ROW_IDS.indexOf(b.id));

  const report: Report = { meta: { ...(await machine(opts, Date.now() - started)), h2load }, rows };
  mkdirSync(dirname(opts.out), { recursive: true });
  writeFileSync(opts.out, `${JSON.stringify(report, null, 2)}\n`);
  const table = renderTable(rows, { run: runName(report.meta), markdown: opts.markdown });
  process.stdout.write(`\n${describeMachine(report.meta)}\n\n${table}\n\n`);
  log(`wrote ${relative(process.cwd(), opts.out)} in ${round((Date.now() - started) / 1000, 1)} s`);
  return report;
}

/** The rounds of one job as one measurement. */
function merge(runs: Measured[]): Measured {
  const cpus = runs.flatMap((r) => (r.cpu ? [r.cpu] : []));
  const cpuSec = cpus.reduce((n, c) => n + c.cpuSec, 0);
  const mainThreadCpuSec = cpus.reduce((n, c) => n + c.mainThreadCpuSec, 0);
  const wallSec = cpus.reduce((n, c) => n + c.wallSec, 0);
  const pgs = runs.flatMap((r) => (r.postgresCpu ? [r.postgresCpu] : []));
  const pgCpuSec = pgs.reduce((n, c) => n + c.cpuSec, 0);
  const pgWallSec = pgs.reduce((n, c) => n + c.wallSec, 0);
  // The worst round's event-loop delay: "never blocked" must hold in every one.
  const eld = runs
    .flatMap((r) => (r.eld ? [r.eld] : []))
    .reduce<Eld | undefined>((worst, e) => (worst === undefined || e.p99Ms > worst.p99Ms ? e : worst), undefined);
  return {
    load: mergeLoads(runs.map((r) => r.load)),
    ...(cpus.length > 0 && { cpu: { cpuSec, mainThreadCpuSec, wallSec, cores: cpuSec / wallSec } }),
    ...(pgs.length > 0 && { postgresCpu: { cpuSec: pgCpuSec, wallSec: pgWallSec, cores: pgCpuSec / pgWallSec } }),
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

/**
 * Why a row's sides cannot be compared: each named side that had failed
 * calls. A failing side would flatter or spoil the ratio, so such a row is
 * shown as invalid (see `invalidate`).
 */
const failures = (sides: Record<string, Measured>): string[] =>
  Object.entries(sides).flatMap(([name, m]) => failedCalls(name, m.load.errors));

/** "<name>: N failed call(s)", or nothing. */
const failedCalls = (name: string, errors: number): string[] =>
  errors > 0 ? [`${name}: ${errors} failed call${errors === 1 ? "" : "s"}`] : [];

/** What every row's details start with: the load's counts and tail latencies. */
const loadCounts = (load: LoadResult) => ({
  ops: load.ops,
  errors: load.errors,
  ...(load.firstError && { firstError: load.firstError }),
  seconds: round(load.seconds),
  p90Ms: round(load.p90Ms),
  maxMs: round(load.maxMs),
});

const loadDetails = (m: Measured) => ({
  ...loadCounts(m.load),
  ...(m.cpu && {
    serviceCores: round(m.cpu.cores),
    serviceCpuUsPerReq: round(usPerReq(m), 0),
    // The rest ran on other threads: libuv's pool (argon2, WebCrypto), V8's GC and compiler threads.
    mainThreadCpuUsPerReq: round((m.cpu.mainThreadCpuSec * 1e6) / m.load.ops, 0),
  }),
  ...(m.postgresCpu && {
    // The whole cluster over the same windows: the service's backends, and whatever else ran (little: the
    // other services idle, the relays poll).
    postgresCores: round(m.postgresCpu.cores),
    postgresCpuUsPerReq: round((m.postgresCpu.cpuSec * 1e6) / m.load.ops, 0),
  }),
  ...(m.load.wire && { contentTypes: m.load.wire }),
  agentCores: round(m.agentCores),
});

/** One transport row's side: the request h2load sends, to which server process. */
interface H2Job {
  name: string;
  req: H2Request;
  /** The server's process (its CPU is read over h2load's main duration). */
  child: IpcChild;
  /** What a correct answer looks like (checked with probeRequest before and after the runs). */
  expect: { contentType: RegExp; grpc: boolean; bodyIncludes?: string };
}

interface H2Measured {
  load: LoadResult;
  cpu: CpuWindow;
  runs: H2loadResult[];
  /** Why the side's numbers do not count: failed calls, a wrong answer to the probe. */
  problems: string[];
  /** The content type the probe's answer carried. */
  responseContentType: string;
}

/**
 * The transport rows: h2load against the raw node:http2 / node:http echoes, a
 * bare connectNodeAdapter, and the customer service (Health/Check, and
 * GetCustomer in gRPC and in Connect JSON), each side run in the same rounds
 * in an order drawn from the seed, with the same h2load flags per protocol.
 */
async function transportRows(
  p: Platform,
  timing: Timing,
  random: Random,
  peakRss: Map<number, number>,
  profileTransport: boolean,
): Promise<Row[]> {
  log("Transport: h2load against raw echoes, bare connect-node and the customer service");
  const servers = await startBaselineServers(p.logDir);
  try {
    const customerId = p.customerIds[0] as string;
    const customerToken = await mintCustomerToken(p.signer, customerId);
    const grpcHeaders = { "content-type": "application/grpc", te: "trailers" };
    const emptyHealth = grpcFrame(new Uint8Array(0));
    const grpc = { contentType: /^application\/grpc(\+proto)?$/, grpc: true };
    const healthPath = "/grpc.health.v1.Health/Check";
    const getPath = "/customer.v1.CustomerService/GetCustomer";
    const jobs = {
      echo: {
        name: "raw-h2-echo",
        req: { url: `${servers["h2-echo"].url}${healthPath}`, h1: false, headers: grpcHeaders, body: emptyHealth },
        child: servers["h2-echo"].child,
        expect: grpc,
      },
      bare: {
        name: "bare-connect-health",
        req: {
          url: `${servers["connect-health"].url}${healthPath}`,
          h1: false,
          headers: grpcHeaders,
          body: emptyHealth,
        },
        child: servers["connect-health"].child,
        expect: grpc,
      },
      health: {
        name: "health-check-grpc",
        req: { url: `${p.customer.url}${healthPath}`, h1: false, headers: grpcHeaders, body: emptyHealth },
        child: p.customer.child,
        expect: grpc,
      },
      get: {
        name: "get-customer-grpc",
        req: {
          url: `${p.customer.url}${getPath}`,
          h1: false,
          headers: { ...grpcHeaders, authorization: `Bearer ${p.readToken}` },
          body: grpcFrame(toBinary(GetCustomerRequestSchema, create(GetCustomerRequestSchema, { customerId }))),
        },
        child: p.customer.child,
        expect: { ...grpc, bodyIncludes: customerId },
      },
      h1echo: {
        name: "raw-h1-echo",
        req: {
          url: `${servers["h1-echo"].url}${getPath}`,
          h1: true,
          headers: { "content-type": CONNECT_JSON },
          body: Buffer.from(JSON.stringify({ customerId })),
        },
        child: servers["h1-echo"].child,
        expect: { contentType: /^application\/json$/, grpc: false },
      },
      json: {
        name: "get-customer-connect-json",
        req: {
          url: `${p.customer.url}${getPath}`,
          h1: true,
          headers: {
            "content-type": CONNECT_JSON,
            "connect-protocol-version": "1",
            authorization: `Bearer ${customerToken}`,
          },
          body: Buffer.from(JSON.stringify({ customerId })),
        },
        child: p.customer.child,
        expect: { contentType: /^application\/json$/, grpc: false, bodyIncludes: customerId },
      },
    } satisfies Record<string, H2Job>;
    // BENCH_CUSTOMER_ENTRY_B: the same three calls against the second build, in the same rounds.
    const customerB = p.customerB;
    const asB = (job: H2Job, b: Service): H2Job => ({
      ...job,
      name: `${job.name}-b`,
      req: { ...job.req, url: job.req.url.replace(p.customer.url, b.url) },
      child: b.child,
    });
    const jobsB = customerB && {
      health: asB(jobs.health, customerB),
      get: asB(jobs.get, customerB),
      json: asB(jobs.json, customerB),
    };
    const all = [...Object.values(jobs), ...Object.values(jobsB ?? {})] as H2Job[];

    const check = async (job: H2Job, when: string): Promise<{ problem?: string; contentType: string }> => {
      const a = await probeRequest(job.req).catch((err: unknown) => err as Error);
      if (a instanceof Error) return { problem: `${when}: ${a.message}`, contentType: "" };
      const wrong =
        a.status !== 200
          ? `HTTP ${a.status}`
          : !job.expect.contentType.test(a.contentType)
            ? `content-type ${a.contentType}`
            : job.expect.grpc && a.grpcStatus !== "0"
              ? `grpc-status ${a.grpcStatus ?? "missing"} ${a.grpcMessage ?? ""}`.trim()
              : job.expect.bodyIncludes !== undefined && !a.body.includes(job.expect.bodyIncludes)
                ? "the answer lacks the customer"
                : undefined;
      return { ...(wrong && { problem: `${when}: ${wrong}` }), contentType: a.contentType };
    };
    const before = await Promise.all(all.map((j) => check(j, "request before the runs")));
    const runs: H2loadResult[][] = all.map(() => []);
    for (let r = 0; r < timing.h2loadRounds; r++) {
      const order = shuffle(random, [...all.keys()]);
      log(`  round ${r + 1}: ${order.map((i) => all[i]?.name).join(", ")}`);
      for (const i of order) {
        const job = all[i] as H2Job;
        const pid = job.child.pid;
        const profilePath = join(p.logDir, "profiles", `${job.name}.cpuprofile`);
        const profile = profileTransport && r === 0;
        if (profile) await job.child.request({ cmd: "profile-start" });
        const rss = sampleRss(pid);
        const res = await runH2load(job.req, {
          durationSec: timing.h2loadDurationSec,
          warmupSec: timing.h2loadWarmupSec,
          connections: job.req.h1 ? CONCURRENCY : CONNECTIONS,
          streams: CONCURRENCY / CONNECTIONS,
          pid,
        });
        peakRss.set(pid, Math.max(peakRss.get(pid) ?? 0, rss.stop()));
        if (profile) {
          // The profile spans h2load's warm-up and main duration.
          await job.child.request({ cmd: "profile-stop", path: profilePath });
          log(`    profile: ${relative(ROOT, profilePath)}`);
          for (const line of topFunctions(profilePath, ROOT, 12)) log(`      ${line}`);
        }
        runs[i]?.push(res);
      }
    }
    const after = await Promise.all(all.map((j) => check(j, "request after the runs")));
    const measured = new Map<H2Job, H2Measured>(
      all.map((job, i) => {
        const rs = runs[i] as H2loadResult[];
        const cpuSec = rs.reduce((n, x) => n + x.cpu.cpuSec, 0);
        const mainThreadCpuSec = rs.reduce((n, x) => n + x.cpu.mainThreadCpuSec, 0);
        const wallSec = rs.reduce((n, x) => n + x.cpu.wallSec, 0);
        const load = mergeLoads(rs.map((x) => x.load));
        // h2load's rate: 2xx answers ÷ its main duration (the CPU window is the same duration, read around it).
        load.rps = load.ops / (timing.h2loadDurationSec * rs.length);
        const m: H2Measured = {
          load,
          cpu: { cpuSec, mainThreadCpuSec, wallSec, cores: cpuSec / wallSec },
          runs: rs,
          problems: [before[i]?.problem, after[i]?.problem].filter((x): x is string => x !== undefined),
          responseContentType: before[i]?.contentType ?? "",
        };
        log(
          `  ${job.name.padEnd(28)} ${round(m.load.rps, 1)}/s  p50 ${round(m.load.p50Ms)} ms  p99 ${round(m.load.p99Ms)} ms` +
            `  server ${round(m.cpu.cores)} cores, ${round(h2UsPerReq(m), 0)} µs/req` +
            `${m.load.errors ? `  errors ${m.load.errors} (${m.load.firstError})` : ""}` +
            `${m.problems.length ? `  ${m.problems.join("; ")}` : ""}`,
        );
        return [job, m];
      }),
    );
    const get = (j: H2Job) => measured.get(j) as H2Measured;
    const bSide = (a: H2Job, b: H2Job | undefined) => {
      if (b === undefined) return undefined;
      const [ma, mb] = [get(a), get(b)];
      const problems = [...h2Problems("a", ma), ...h2Problems("b", mb)];
      const side = {
        entry: process.env.BENCH_CUSTOMER_ENTRY_B,
        rateBOverA: round(mb.load.rps / ma.load.rps, 3),
        cpuUsPerReq: { a: round(h2UsPerReq(ma), 1), b: round(h2UsPerReq(mb), 1) },
        p99Ms: { a: round(ma.load.p99Ms), b: round(mb.load.p99Ms) },
        perRound: ma.runs.map((r, i) => {
          const rb = mb.runs[i] as H2loadResult;
          return {
            rateBOverA: round(rb.load.rps / r.load.rps, 3),
            cpuUsPerReq: { a: round(h2UsPerReq(r), 1), b: round(h2UsPerReq(rb), 1) },
          };
        }),
        ...(problems.length > 0 && { problems }),
      };
      log(
        `  B/A ${a.name}: rate ${side.rateBOverA}, CPU/call ${side.cpuUsPerReq.a} → ${side.cpuUsPerReq.b} µs, p99 ${side.p99Ms.a} → ${side.p99Ms.b} ms; per round ${side.perRound.map((x) => x.rateBOverA).join(" ")}${problems.length ? `; ${problems.join("; ")}` : ""}`,
      );
      return side;
    };
    const ab = {
      health: bSide(jobs.health, jobsB?.health),
      get: bSide(jobs.get, jobsB?.get),
      json: bSide(jobs.json, jobsB?.json),
    };
    const row = (
      id: RowId,
      title: string,
      oursJob: H2Job,
      oursLabel: string,
      baseJob: H2Job,
      baseLabel: string,
      target?: { text: string; pass: (ratio: number, ours: H2Measured) => boolean },
      b?: ReturnType<typeof bSide>,
    ): Row => {
      const ours = get(oursJob);
      const base = get(baseJob);
      const ratio = ours.load.rps / base.load.rps;
      return invalidate(
        {
          id,
          title: `${title} · CPU/call ${fmtUs(h2UsPerReq(ours))} vs ${fmtUs(h2UsPerReq(base))}`,
          unit: "req/s",
          ours: h2Side(oursLabel, ours),
          baseline: h2Side(baseLabel, base),
          ratio: round(ratio, 3),
          ...(target && { target: { text: target.text, pass: target.pass(ratio, ours) } }),
          details: { ...h2Details(oursJob, ours), baseline: h2Details(baseJob, base), ...(b && { b }) },
        },
        [...h2Problems("ours", ours), ...h2Problems("baseline", base)],
      );
    };
    return [
      row(
        "connect_health_bare",
        "Health/Check, bare connectNodeAdapter, gRPC over h2c",
        jobs.bare,
        "connect-node alone",
        jobs.echo,
        "raw node:http2 echo",
      ),
      row(
        "health_check_grpc",
        "Health/Check, customer service, gRPC over h2c",
        jobs.health,
        "full stack",
        jobs.echo,
        "raw node:http2 echo",
        { text: "≥60% raw h2 echo", pass: (r) => r >= 0.6 },
        ab.health,
      ),
      row(
        "get_customer_grpc",
        "GetCustomer, gRPC over h2c",
        jobs.get,
        "service token, PostgreSQL",
        jobs.echo,
        "raw node:http2 echo",
        { text: "≥30% raw h2 echo, p99 <10 ms", pass: (r, m) => r >= 0.3 && m.load.p99Ms < 10 },
        ab.get,
      ),
      row(
        "get_customer_connect_json_http1",
        "GetCustomer, Connect JSON over HTTP/1.1",
        jobs.json,
        "customer token, PostgreSQL",
        jobs.h1echo,
        "raw node:http echo",
        { text: "≥15% raw h1 echo", pass: (r) => r >= 0.15 },
        ab.json,
      ),
    ];
  } finally {
    await Promise.all(Object.values(servers).map((s) => s.child.stop()));
  }
}

/** CPU µs per answered call, of merged rounds (H2Measured) or of one (H2loadResult). */
const h2UsPerReq = (m: { cpu: { cpuSec: number }; load: { ops: number } }) => (m.cpu.cpuSec * 1e6) / m.load.ops;
const fmtUs = (us: number) => (Number.isFinite(us) ? `${Math.round(us).toLocaleString("en-US")} µs` : "—");

const h2Side = (label: string, m: H2Measured) => ({
  label,
  value: round(m.load.rps, 1),
  p50Ms: round(m.load.p50Ms),
  p99Ms: round(m.load.p99Ms),
});

/** Failed calls (h2load's counts and its per-request log) and a wrong answer to the probe. */
const h2Problems = (name: string, m: H2Measured): string[] => [
  ...failedCalls(name, m.load.errors),
  ...(m.load.ops === 0 ? [`${name}: no call answered`] : []),
  ...m.problems.map((x) => `${name}: ${x}`),
];

const h2Details = (job: H2Job, m: H2Measured) => ({
  ...loadCounts(m.load),
  serverCores: round(m.cpu.cores),
  serverCpuUsPerReq: round(h2UsPerReq(m), 0),
  mainThreadCpuUsPerReq: round((m.cpu.mainThreadCpuSec * 1e6) / m.load.ops, 0),
  contentTypes: { request: [job.req.headers["content-type"]], response: [m.responseContentType] },
  h2load: m.runs.map((r) => ({ counts: r.counts, statusCodes: r.statusCodes, args: r.args.join(" ") })),
});

/** The baseline servers (bench/baseline-servers.ts), one process each, listening. */
async function startBaselineServers(logDir: string) {
  const kinds = ["h2-echo", "h1-echo", "connect-health"] as const;
  const started = await Promise.all(
    kinds.map(async (kind) => {
      const port = await freePort();
      const child = spawnChild({
        name: kind,
        entry: "bench/baseline-servers.ts",
        args: [kind],
        env: { BENCH_PORT: String(port) },
        probe: true,
        logFile: join(logDir, `${kind}.log`),
      });
      return [kind, { child, url: `http://127.0.0.1:${port}` }] as const;
    }),
  );
  const servers = Object.fromEntries(started) as Record<(typeof kinds)[number], { child: IpcChild; url: string }>;
  try {
    await Promise.all(Object.values(servers).map((s) => waitListening(s.url, s.child)));
  } catch (err) {
    await Promise.all(Object.values(servers).map((s) => s.child.stop()));
    throw err;
  }
  return servers;
}

/** Waits until the server at url accepts a TCP connection, or throws after timeoutMs. */
async function waitListening(url: string, child: IpcChild, timeoutMs = 60_000): Promise<void> {
  const { hostname, port } = new URL(url);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.process.exitCode !== null) throw new Error(`${child.name} exited while starting`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(Number(port), hostname, () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`${child.name} not listening at ${url} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
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
  return invalidate(
    {
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
    },
    failures({ ours: withJwt, baseline: without, "transport only": stub }),
  );
}

async function updateRows(p: Platform, compare: CompareFn): Promise<[Row, Row, number]> {
  log("UpdateCustomer (+ event commit→ack under that load)");
  const stream = p.customer.streams.stream;
  const seq0 = await lastSeq(sharedNatsUrl, stream).catch(() => 0);
  // After each run of ours the relay catches up (its backlog, in time, is recorded), so the next run,
  // whichever side, starts with it idle and the baseline never competes with it.
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
      after: settle,
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
    },
  );
  if (!ours || !raw) throw new Error("missing run");
  const events = await storedEvents(sharedNatsUrl, stream, seq0 + 1);
  const inWindow = events.filter((e) => ours.windows.some((w) => e.occurMs >= w.startMs && e.occurMs <= w.endMs));
  const lat = summarize(inWindow.map((e) => e.storedMs - e.occurMs));
  // Time between consecutive acks while the relay had work: its per-event cost under this load.
  const gaps = summarize(inWindow.slice(1).map((e, i) => e.storedMs - (inWindow[i] as StoredEvent).storedMs));
  const ratio = ours.load.rps / raw.load.rps;
  const update = invalidate(
    {
      id: "update_customer",
      title: "UpdateCustomer (tx + outbox), gRPC",
      unit: "req/s",
      ours: side("UpdateCustomer gRPC", ours),
      baseline: side("postgres.js same tx", raw),
      ratio: round(ratio, 3),
      target: { text: "≥50% raw", pass: ratio >= 0.5 },
      details: { ...loadDetails(ours), baseline: loadDetails(raw) },
    },
    failures({ ours, baseline: raw }),
  );
  const eventRow = invalidate(
    {
      id: "event_commit_to_ack",
      title: "Event commit→JetStream ack, at full update load",
      unit: "ms p99",
      ours: {
        label: "occur_time → JetStream store time",
        value: round(lat.p99Ms),
        p50Ms: round(lat.p50Ms),
        p99Ms: round(lat.p99Ms),
      },
      target: { text: "p99 <50 ms", pass: lat.p99Ms < 50 },
      details: {
        events: inWindow.length,
        updatesInWindows: ours.load.ops,
        p90Ms: round(lat.p90Ms),
        maxMs: round(lat.maxMs),
        // How long the relay still needed after each round's load stopped (its backlog, in time).
        relayCatchUpAfterRoundMs: catchUpMs,
        relayAckIntervalMs: { p50: round(gaps.p50Ms, 3), p90: round(gaps.p90Ms, 3), p99: round(gaps.p99Ms, 3) },
      },
    },
    [...failures({ updates: ours }), ...(inWindow.length === 0 ? ["no event of the measured windows was stored"] : [])],
  );
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
      after: () => waitOutboxEmpty(p.customer.db.url, 120_000),
    },
    {
      name: "pg-register",
      spec: {
        kind: "pg-register",
        dbUrl: p.baselineDb.url,
        poolMax: POOL,
        subjectPrefix: p.customer.streams.subjectPrefix,
      },
    },
  );
  if (!ours || !raw) throw new Error("missing run");
  const ratio = ours.load.rps / raw.load.rps;
  return invalidate(
    {
      id: "register_customer",
      title: "RegisterCustomer (tx + outbox), gRPC",
      unit: "req/s",
      ours: side("RegisterCustomer gRPC", ours),
      baseline: side("postgres.js same tx", raw),
      ratio: round(ratio, 3),
      target: { text: "≥50% raw", pass: ratio >= 0.5 },
      details: { ...loadDetails(ours), baseline: loadDetails(raw), preMintedTokensPerRound: tokens },
    },
    failures({ ours, baseline: raw }),
  );
}

/** Keycloak's published sizing (its own CPU, the database sized apart), for orientation only. */
const KEYCLOAK_SIZING = "https://www.keycloak.org/high-availability/single-cluster/concepts-memory-and-cpu-sizing";

/**
 * Requests per second per core of the service AND PostgreSQL (every process
 * of the cluster) over the measured windows: what a deployment pays for it.
 */
function perVcpuRow(
  p: Platform,
  m: Measured,
  row: Pick<Row, "id" | "title"> & { what: string; target: number; reference: number; latency: boolean },
): Row {
  const serviceCores = m.cpu?.cores ?? Number.NaN;
  const postgresCores = m.postgresCpu?.cores ?? Number.NaN;
  const perVcpu = m.load.rps / (serviceCores + postgresCores);
  return invalidate(
    {
      id: row.id,
      title: row.title,
      unit: "/s/vCPU",
      ours: {
        label: `${row.what}/s ÷ (identity + PostgreSQL cores)`,
        value: round(perVcpu, 1),
        ...(row.latency && { p50Ms: round(m.load.p50Ms), p99Ms: round(m.load.p99Ms) }),
      },
      target: { text: `≥${row.target.toLocaleString("en-US")}/s/vCPU`, pass: perVcpu >= row.target },
      reference: {
        label: "Keycloak sizing guide, Keycloak's CPU alone",
        value: row.reference,
        source: KEYCLOAK_SIZING,
      },
      details: {
        ...loadDetails(m),
        rps: round(m.load.rps, 1),
        identityCores: round(serviceCores),
        postgresCores: round(postgresCores),
        // The service's cores alone, as the row was computed before PostgreSQL was counted.
        perIdentityVcpuOnly: round(m.load.rps / serviceCores, 1),
      },
    },
    [
      ...failures({ ours: m }),
      ...(p.postmasterPid === undefined ? ["PostgreSQL's processes are not visible: its CPU is not counted"] : []),
    ],
  );
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
  return [
    invalidate(
      {
        id: "authenticate_customer",
        title: "AuthenticateCustomer (argon2id m=19456 t=2 p=1)",
        unit: "req/s",
        ours: side("AuthenticateCustomer gRPC", ours),
        baseline: side(`argon2.verify, threadpool ${threadpool}`, raw),
        ratio: round(ratio, 3),
        target: { text: "≥90% raw argon2id", pass: ratio >= 0.9 },
        details: { ...loadDetails(ours), baseline: loadDetails(raw), threadpool },
      },
      failures({ ours, baseline: raw }),
    ),
    invalidate(
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
      failures({ "sign-ins": ours, "raw argon2": raw }),
    ),
    perVcpuRow(p, ours, {
      id: "password_sign_in_per_vcpu",
      title: "Password sign-ins per vCPU (identity + PostgreSQL)",
      what: "sign-ins",
      target: 25,
      reference: 15,
      latency: false,
    }),
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
  return [
    perVcpuRow(p, refresh, {
      id: "refresh_token_per_vcpu",
      title: "RefreshToken per vCPU (identity + PostgreSQL)",
      what: "rotations",
      target: 600,
      reference: 120,
      latency: true,
    }),
    perVcpuRow(p, cc, {
      id: "client_credentials_per_vcpu",
      title: "AuthenticateClient per vCPU (identity + PostgreSQL)",
      what: "grants",
      target: 1000,
      reference: 120,
      latency: true,
    }),
  ];
}

/** One outage of the drain row, from either side. */
interface DrainRound {
  /** How long NATS was away (ms). */
  downMs: number;
  /** Events waiting when NATS came back. */
  held: number;
  /** Of them, stored by JetStream after the restart. */
  stored: number;
  /** NATS ready again → first / last of them stored (JetStream's store time), ms. */
  restartToFirstStoredMs: number;
  restartToLastStoredMs: number;
  /** Failed commands (ours: UpdateCustomer while NATS was away) or failed publishes (raw). */
  errors: number;
  firstError?: string;
}

/**
 * Outbox drain after an outage, like with like: the relay (reconnect, read,
 * publish in waves, mark) against a raw publisher that holds the same number
 * of events and publishes them in the relay's widest waves; both connected
 * with the services' NATS options, both timed from NATS ready again to the
 * last event stored. The sides alternate in a seeded order, each outage of a
 * seeded length (1–2 s, so the reconnect attempts, 1 s apart, fall at random
 * points for both). Also returns sequential publish→ack latency, the floor of
 * the commit→ack row.
 */
async function drainRow(p: Platform, measure: MeasureFn, timing: Timing, random: Random): Promise<[Row, Measured]> {
  log("Outbox drain after a NATS outage (private nats-server): relay against raw publishing, restart → drained");
  const { nats, streams } = p.drain;
  const events = timing.drainEvents;
  // The relay's waves hold consecutive events of distinct customers: with these customers, at most this many.
  const window = p.drainIds.length;
  const rawStream = `RAW_${streams.stream}`;
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
  const floor = await measure({
    name: "jetstream-publish-ack",
    spec: {
      kind: "js-publish",
      natsUrl: nats.url,
      stream: `FLOOR_${streams.stream}`,
      subjectPrefix: `floor.${streams.subjectPrefix}`,
      payloadBytes: 240,
    },
    concurrency: 1,
  });

  const stored = async (stream: string, after: number) => {
    const all = await storedEvents(nats.url, stream, after + 1);
    return { count: all.length, first: all[0]?.storedMs ?? Number.NaN, last: all.at(-1)?.storedMs ?? Number.NaN };
  };
  const relayRound = async (downMs: number): Promise<DrainRound> => {
    const before = await lastSeq(nats.url, streams.stream);
    await nats.kill();
    const downAt = performance.now();
    const produced = await update("updates-nats-down", events);
    const held = await unsentCount(p.drain.db.url);
    await sleep(downMs - (performance.now() - downAt));
    await nats.start();
    const upAt = Date.now();
    await waitOutboxEmpty(p.drain.db.url, 300_000);
    const s = await stored(streams.stream, before);
    return {
      downMs: Math.round(performance.now() - downAt),
      held,
      stored: s.count,
      restartToFirstStoredMs: Math.round(s.first - upAt),
      restartToLastStoredMs: Math.round(s.last - upAt),
      errors: produced.load.errors,
      ...(produced.load.firstError !== undefined && { firstError: produced.load.firstError }),
    };
  };
  const rawRound = async (downMs: number): Promise<DrainRound> => {
    let outage: Promise<{ before: number; upAt: number }> | undefined;
    const result = await p.agent.request<RawDrainResult>(
      {
        cmd: "drain",
        spec: {
          natsUrl: nats.url,
          stream: rawStream,
          subjectPrefix: `raw.${streams.subjectPrefix}`,
          payloadBytes: 240,
          events,
          window,
        },
      },
      (event) => {
        if (event !== "ready") return;
        outage = (async () => {
          const before = await lastSeq(nats.url, rawStream);
          await nats.kill();
          await sleep(downMs);
          await nats.start();
          return { before, upAt: Date.now() };
        })();
        outage.catch(() => {});
      },
    );
    if (!outage) throw new Error("the raw publisher never got ready");
    const { before, upAt } = await outage;
    const s = await stored(rawStream, before);
    return {
      downMs,
      held: events,
      stored: s.count,
      restartToFirstStoredMs: Math.round(s.first - upAt),
      restartToLastStoredMs: Math.round(s.last - upAt),
      // Every event not acked (a failed publish).
      errors: events - result.published,
      ...(result.firstError !== undefined && { firstError: result.firstError }),
    };
  };

  const ours: DrainRound[] = [];
  const raw: DrainRound[] = [];
  for (let r = 0; r < timing.drainRounds; r++) {
    const order = shuffle(random, ["relay", "raw"] as const);
    log(`  round ${r + 1}: ${order.join(", ")}`);
    for (const which of order) {
      const downMs = 1000 + Math.floor(random() * 1000);
      if (which === "relay") ours.push(await relayRound(downMs));
      else raw.push(await rawRound(downMs));
    }
  }
  const rate = (rounds: DrainRound[]) =>
    (1000 * rounds.reduce((n, d) => n + d.stored, 0)) / rounds.reduce((n, d) => n + d.restartToLastStoredMs, 0);
  const publishRate = (rounds: DrainRound[]) =>
    (1000 * rounds.reduce((n, d) => n + d.stored - 1, 0)) /
    rounds.reduce((n, d) => n + d.restartToLastStoredMs - d.restartToFirstStoredMs, 0);
  const ourRate = rate(ours);
  const rawRate = rate(raw);
  const ratio = ourRate / rawRate;
  log(`  restart → drained: relay ${round(ourRate, 1)} events/s, raw ${round(rawRate, 1)} events/s`);
  const problems = (name: string, rounds: DrainRound[]) =>
    rounds.flatMap((d, i) => [
      ...(d.errors > 0 ? [`${name} round ${i + 1}: ${d.errors} failed`] : []),
      ...(d.held !== events ? [`${name} round ${i + 1}: ${d.held} of ${events} events held`] : []),
      ...(d.stored !== d.held ? [`${name} round ${i + 1}: ${d.stored} of ${d.held} events stored`] : []),
    ]);
  const row = invalidate(
    {
      id: "outbox_drain",
      title: "Outbox drain after NATS was away, restart → drained",
      unit: "events/s",
      ours: { label: "relay: reconnect, read, publish in waves, mark", value: round(ourRate, 1) },
      baseline: { label: `raw JetStream publish, waves of ${window}, same reconnect`, value: round(rawRate, 1) },
      ratio: round(ratio, 3),
      target: { text: "≥50% raw publish", pass: ratio >= 0.5 },
      details: {
        eventsPerOutage: events,
        rounds: timing.drainRounds,
        window,
        statistic: "events stored ÷ time from NATS ready to the last of them stored, over all rounds",
        // Without the reconnect: first → last event stored (what the row reported before it was timed from restart).
        firstToLastEventsPerSec: { ours: round(publishRate(ours), 1), baseline: round(publishRate(raw), 1) },
        ours,
        baseline: raw,
      },
    },
    [...problems("relay (UpdateCustomer while NATS was away)", ours), ...problems("raw publish", raw)],
  );
  return [row, floor];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

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

/**
 * Event signing (what the relay adds per event), verification (what a
 * consumer spends per event) and the new-password rules with the common
 * password list (what a sign-up adds), measured in this process.
 */
async function trustRows(quick: boolean): Promise<Row[]> {
  log("Event signing and verification, new-password rules (in process)");
  const events = await measureEventSigning({ iterations: quick ? 1_000 : 5_000 });
  const rules = measurePasswordBlocklist(quick ? 50_000 : 200_000);
  return [
    {
      id: "event_signing",
      title: "Event signing in the relay (Ed25519 JWS), per event",
      unit: "µs",
      ours: { label: "CloudEvents headers + ce-signature", value: round(events.signUs, 1) },
      details: {
        headersAloneUs: round(events.headersUs, 1),
        signatureBytes: events.signatureBytes,
        payloadBytes: events.payloadBytes,
        iterations: events.iterations,
      },
    },
    {
      id: "event_verification",
      title: "Event verification in a consumer (SDK), per event",
      unit: "µs",
      ours: { label: "verifyEvent, keys cached", value: round(events.verifyUs, 1) },
      details: { payloadBytes: events.payloadBytes, iterations: events.iterations },
    },
    {
      id: "password_rules",
      title: "New-password rules per sign-up (NFKC + common-password list)",
      unit: "µs",
      ours: { label: "all rules of CreateCredentials", value: round(rules.rulesUsPerCheck, 1) },
      details: {
        lookupUs: round(rules.lookupUsPerCheck, 2),
        listSize: rules.listSize,
        listBuildMs: round(rules.buildMs, 1),
        checks: rules.checks,
      },
    },
  ];
}

/** Sets a per-item cost row's baseline to a call's service CPU measured in this run, so the ratio is its share. */
function shareOfCall(rows: Row[], id: RowId, callId: RowId, label: string): void {
  const row = rows.find((r) => r.id === id);
  const perCall = rows.find((r) => r.id === callId)?.details.serviceCpuUsPerReq;
  if (!row || typeof perCall !== "number" || !Number.isFinite(perCall) || perCall <= 0) return;
  row.baseline = { label, value: perCall };
  row.ratio = round(row.ours.value / perCall, 4);
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
  const rows = (
    ids:
      | ["rss_customer_service", "rss_customer_service_after_load"]
      | ["rss_identity_service", "rss_identity_service_after_load"],
    name: string,
    child: IpcChild,
    idle: number,
  ): Row[] => {
    const peak = peakRss.get(child.pid);
    const after = rssMiB(child.pid);
    return [
      {
        id: ids[0],
        title: `${name} RSS idle`,
        unit: "MiB",
        ours: { label: "VmRSS 1 s after start, before any request", value: round(idle, 1) },
        target: { text: "<150 MB idle", pass: idle * 1.048576 < 150 },
        reference: { label: "Keycloak base per pod", value: 1250, source: KEYCLOAK_SIZING },
        details: {},
      },
      {
        id: ids[1],
        title: `${name} RSS after load (peak ${peak === undefined ? "—" : Math.round(peak)} MiB)`,
        unit: "MiB",
        ours: { label: "VmRSS after every load row", value: round(after, 1) },
        details: { peakUnderLoadMiB: peak === undefined ? null : round(peak, 1), idleMiB: round(idle, 1) },
      },
    ];
  };
  return [
    ...rows(
      ["rss_customer_service", "rss_customer_service_after_load"],
      "customer-service",
      p.customer.child,
      p.idleRss.customer,
    ),
    ...rows(
      ["rss_identity_service", "rss_identity_service_after_load"],
      "identity-service",
      p.identity.child,
      p.idleRss.identity,
    ),
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
    seed: opts.seed,
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
    `${runName(m)} · ${m.nproc} × ${m.cpu} · ${m.memoryGiB} GiB · Node ${m.node} · ` +
    `PostgreSQL ${m.postgres} · ${m.nats} · concurrency ${m.concurrency} · ${m.elapsedSec} s`
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
      seed: { type: "string" },
      rounds: { type: "string" },
    },
  });
  const rounds = values.rounds === undefined ? undefined : Number(values.rounds);
  if (rounds !== undefined && !(Number.isInteger(rounds) && rounds >= 1 && rounds <= 50)) {
    throw new Error(`--rounds: "${values.rounds}" is not an integer from 1 to 50`);
  }
  const seed = values.seed === undefined ? randomInt(2 ** 31) : Number(values.seed);
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new Error(`--seed: "${values.seed}" is not an integer from 0 to 4294967295`);
  }
  const only = new Set((values.only ?? "").split(",").filter(Boolean) as Group[]);
  for (const g of only) if (!GROUPS.includes(g)) throw new Error(`--only: unknown group "${g}" (${GROUPS.join(", ")})`);
  return {
    quick: values.quick ?? false,
    out: values.out ?? join(ROOT, "bench/results/latest.json"),
    profile: values.profile ?? false,
    markdown: values.markdown ?? false,
    only,
    seed,
    ...(rounds !== undefined && { rounds }),
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
