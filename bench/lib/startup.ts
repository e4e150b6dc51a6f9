/**
 * Start-up to ready and idle memory of each service, compiled (`npm run
 * serve:*`: plain `node <service>/dist/main.js`) against tsx (`npm run
 * start:*`: `node --conditions=source --import tsx <service>/src/main.ts`),
 * on the same machine in the same run: the two alternate, start after start,
 * on one already-migrated database per service, so each start is a restart
 * as an operator sees it.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { join } from "node:path";
import { buildProblem } from "../../scripts/build.js";
import { deleteStreams, freePort, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { createTestDatabase } from "../../test/support/postgres.js";
import { ROOT } from "./child.js";
import { rssMiB } from "./proc.js";

/** How a service is run: its node arguments (relative to the repository root). */
export const VARIANTS = {
  compiled: (service: string) => [`${service}/dist/main.js`],
  tsx: (service: string) => ["--conditions=source", "--import", "tsx", `${service}/src/main.ts`],
} as const;

export type Variant = keyof typeof VARIANTS;
export type StartupService = "customer-service" | "identity-service";

/** The samples of one service, per variant, in start order. */
export interface StartupSamples {
  /** Spawn → first `/readyz` answered 200 (ms). */
  readyMs: Record<Variant, number[]>;
  /** VmRSS idleMs after ready, before any request (MiB). */
  idleRssMiB: Record<Variant, number[]>;
}

export interface StartupOptions {
  /** Starts per variant and service. */
  reps: number;
  /** How long a service idles after ready before its RSS is read (the load rows use 1 s). */
  idleMs: number;
  logDir: string;
  log: (s: string) => void;
}

/** How often /readyz is asked while a service starts: the resolution of the start-up time. */
const POLL_MS = 10;

/** Measures both services; throws if the build is missing or stale (it names `npm run build`). */
export async function measureStartup(opts: StartupOptions): Promise<Record<StartupService, StartupSamples>> {
  const problem = buildProblem();
  if (problem) throw new Error(`start-up rows: ${problem}`);
  const [identityDb, customerDb] = await Promise.all([
    createTestDatabase("bench_startup_identity"),
    createTestDatabase("bench_startup_customer"),
  ]);
  const identityStreams = uniqueStreamNames("identity");
  const customerStreams = uniqueStreamNames("customer");
  const common = { LOG_LEVEL: process.env.LOG_LEVEL ?? "info", SHUTDOWN_GRACE_MS: "2000", NATS_URL: sharedNatsUrl };
  const envs: Record<StartupService, (port: number) => Record<string, string>> = {
    "identity-service": (port) => ({
      ...common,
      IDENTITY_PORT: String(port),
      IDENTITY_DATABASE_URL: identityDb.url,
      IDENTITY_ISSUER: `http://127.0.0.1:${port}`,
      IDENTITY_STREAM: identityStreams.stream,
      IDENTITY_SUBJECT_PREFIX: identityStreams.subjectPrefix,
    }),
    "customer-service": (port) => ({
      ...common,
      CUSTOMER_PORT: String(port),
      CUSTOMER_DATABASE_URL: customerDb.url,
      CUSTOMER_STREAM: customerStreams.stream,
      CUSTOMER_SUBJECT_PREFIX: customerStreams.subjectPrefix,
      CUSTOMER_REVOCATION_STREAM: identityStreams.stream,
      CUSTOMER_REVOCATION_SUBJECT_PREFIX: identityStreams.subjectPrefix,
    }),
  };
  let current: ChildProcess | undefined;
  const onSignal = () => {
    current?.kill("SIGKILL");
    process.exit(130);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const result = {} as Record<StartupService, StartupSamples>;
    for (const service of ["identity-service", "customer-service"] as const) {
      const logFile = join(opts.logDir, `${service}-startup.log`);
      const once = async (variant: Variant) => {
        const port = await freePort();
        const started = startService(service, variant, envs[service](port), port, logFile);
        current = started.child;
        try {
          const readyMs = await started.ready;
          await new Promise((r) => setTimeout(r, opts.idleMs));
          return { readyMs, rss: rssMiB(started.child.pid as number) };
        } finally {
          await started.stop();
        }
      };
      // Not counted: applies the migrations, creates the signing key and the streams.
      await once("compiled");
      const samples: StartupSamples = { readyMs: { compiled: [], tsx: [] }, idleRssMiB: { compiled: [], tsx: [] } };
      for (let i = 0; i < opts.reps; i++) {
        // Alternating, and each variant first in every other round, so drift hits both alike.
        const order: Variant[] = i % 2 === 0 ? ["tsx", "compiled"] : ["compiled", "tsx"];
        for (const variant of order) {
          const { readyMs, rss } = await once(variant);
          samples.readyMs[variant].push(readyMs);
          samples.idleRssMiB[variant].push(rss);
        }
      }
      opts.log(
        `  ${service.padEnd(28)} ready ${fmtList(samples.readyMs.compiled)} ms compiled, ${fmtList(samples.readyMs.tsx)} ms tsx;` +
          ` idle RSS ${fmtList(samples.idleRssMiB.compiled)} / ${fmtList(samples.idleRssMiB.tsx)} MiB`,
      );
      result[service] = samples;
    }
    return result;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await Promise.all([identityDb.drop(), customerDb.drop()]);
    await deleteStreams(sharedNatsUrl, identityStreams.stream, customerStreams.stream);
  }
}

const fmtList = (values: number[]) => values.map((v) => Math.round(v)).join("/");

/** Spawns one service; `ready` resolves with spawn → first 200 from /readyz in ms. */
function startService(
  service: StartupService,
  variant: Variant,
  env: Record<string, string>,
  port: number,
  logFile: string,
): { child: ChildProcess; ready: Promise<number>; stop(): Promise<void> } {
  const out = openSync(logFile, "a");
  const t0 = performance.now();
  const child = spawn(process.execPath, VARIANTS[variant](service), {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ["ignore", out, out],
  });
  closeSync(out);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const ready = (async () => {
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`${service} (${variant}) exited while starting; see ${logFile}`);
      }
      try {
        const res = await fetch(`http://127.0.0.1:${port}/readyz`, { signal: AbortSignal.timeout(1000) });
        if (res.ok) return performance.now() - t0;
      } catch {
        // not listening yet
      }
      if (performance.now() - t0 > 60_000) throw new Error(`${service} (${variant}) not ready after 60 s`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  })();
  return {
    child,
    ready,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}
