/**
 * A service as a child process, the way `npm run start:*` runs it (`node
 * --conditions=source --import tsx <service>/src/main.ts`), on a free port:
 * its output kept, its memory readable, killed with SIGKILL or stopped with
 * SIGTERM; it ends itself if this process goes away first (orphan-guard.mjs).
 * (Both services in this process: platform.ts.)
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { vi } from "vitest";
import { type Clients, createClients } from "./clients.js";
import { IDENTITY_TEST_LIMITS, identityTestMail } from "./limits.js";
import { freePort } from "./ports.js";

const REPO = fileURLToPath(new URL("../..", import.meta.url));
const MEMORY_PROBE = new URL("./memory-probe.mjs", import.meta.url).href;
const ORPHAN_GUARD = new URL("./orphan-guard.mjs", import.meta.url).href;

/** The services, by directory, and the prefix of their variables. */
const SERVICES = { "customer-service": "CUSTOMER", "identity-service": "IDENTITY" } as const;
export type ServiceName = keyof typeof SERVICES;

export interface ChildService {
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  /** Clients of it over every protocol, opened on first use and closed when it is killed or stopped. */
  readonly clients: Clients;
  /** The last 200 lines it wrote to stdout and stderr. */
  readonly output: string[];
  /** Settles when it has exited, with its exit code or the signal that ended it. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resident set size in KiB (/proc/<pid>/status VmRSS). */
  rssKib(): number;
  /** With `memoryProbe`: heapUsed and rss in bytes right after a full garbage collection. */
  memoryAfterGc(): Promise<{ heapUsed: number; rss: number }>;
  /** SIGKILL; resolves once it is gone. */
  kill(): Promise<void>;
  /** SIGTERM (a graceful stop); fails, after a SIGKILL, if it has not exited within timeoutMs. */
  stop(timeoutMs?: number): Promise<void>;
}

/**
 * Starts service as a child process on a free port of 127.0.0.1 (env on top
 * of this process's) and waits until /readyz answers 200. With
 * `memoryProbe`, memory-probe.mjs is preloaded and gc exposed, for
 * memoryAfterGc().
 */
export async function spawnService(
  service: ServiceName,
  env: Record<string, string>,
  opts: { memoryProbe?: boolean } = {},
): Promise<ChildService> {
  const port = await freePort();
  const prefix = SERVICES[service];
  const probe = opts.memoryProbe ? ["--expose-gc", "--import", MEMORY_PROBE] : [];
  const child: ChildProcess = spawn(
    process.execPath,
    ["--conditions=source", "--import", "tsx", "--import", ORPHAN_GUARD, ...probe, `${service}/src/main.ts`],
    {
      cwd: REPO,
      env: {
        ...process.env,
        [`${prefix}_HOST`]: "127.0.0.1",
        [`${prefix}_PORT`]: String(port),
        LOG_LEVEL: "warn",
        ...(service === "identity-service" ? { ...IDENTITY_TEST_LIMITS, ...identityTestMail(env) } : {}),
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not spawn ${service}`);
  const output: string[] = [];
  const lineListeners = new Set<(line: string) => void>();
  const lines = () => {
    let partial = "";
    return (chunk: Buffer) => {
      const parts = (partial + chunk.toString("utf8")).split("\n");
      partial = parts.pop() ?? "";
      for (const line of parts.filter(Boolean)) {
        output.push(line);
        for (const listener of lineListeners) listener(line);
      }
      output.splice(0, Math.max(0, output.length - 200));
    };
  };
  child.stdout?.on("data", lines());
  child.stderr?.on("data", lines());
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const running = () => child.exitCode === null && child.signalCode === null;
  const url = `http://127.0.0.1:${port}`;

  let clients: Clients | undefined;
  const kill = async () => {
    clients?.close();
    if (running()) child.kill("SIGKILL");
    await exited;
  };
  try {
    await waitWhileRunning(exited, () => expectReady(url), {
      timeout: 60_000,
      exitedError: () => new Error(`${service} exited before it was ready:\n${output.join("\n")}`),
    });
  } catch (err) {
    await kill();
    throw err;
  }
  return {
    url,
    port,
    pid,
    get clients() {
      clients ??= createClients(url);
      return clients;
    },
    output,
    exited,
    rssKib() {
      const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      if (!m?.[1]) throw new Error(`no VmRSS for ${pid}`);
      return Number(m[1]);
    },
    memoryAfterGc() {
      // SIGUSR2 without a handler would end the process: make sure the probe has one.
      const caught = /^SigCgt:\s+([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
      if (!caught || !((BigInt(`0x${caught}`) >> 11n) & 1n)) {
        return Promise.reject(new Error("the memory probe is not loaded (spawn with memoryProbe)"));
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          lineListeners.delete(listener);
          reject(new Error("no answer from the memory probe"));
        }, 10_000);
        const listener = (line: string) => {
          if (!line.startsWith('{"memoryProbe"')) return;
          clearTimeout(timer);
          lineListeners.delete(listener);
          resolve((JSON.parse(line) as { memoryProbe: { heapUsed: number; rss: number } }).memoryProbe);
        };
        lineListeners.add(listener);
        child.kill("SIGUSR2");
      });
    },
    kill,
    async stop(timeoutMs = 15_000) {
      clients?.close();
      if (!running()) return;
      child.kill("SIGTERM");
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<"late">((resolve) => {
        timer = setTimeout(() => resolve("late"), timeoutMs);
      });
      const stopped = await Promise.race([exited, late]);
      clearTimeout(timer);
      if (stopped === "late") {
        await kill();
        throw new Error(`${service} did not stop within ${timeoutMs} ms of SIGTERM:\n${output.join("\n")}`);
      }
    },
  };
}

/** Resolves if url/readyz answers 200, else rejects (for waitWhileRunning). */
export async function expectReady(url: string): Promise<void> {
  const res = await fetch(`${url}/readyz`);
  await res.body?.cancel();
  if (res.status !== 200) throw new Error(`${url}/readyz answers ${res.status}`);
}

/**
 * vi.waitFor for a child process: retries check (until it neither throws
 * nor rejects) for up to timeout ms, but fails at once with exitedError()
 * if exited settles first.
 */
export async function waitWhileRunning<T>(
  exited: Promise<unknown>,
  check: () => T | Promise<T>,
  opts: { timeout: number; interval?: number; exitedError: () => Error },
): Promise<T> {
  let gone = false;
  const died = exited.then(() => {
    gone = true;
    throw opts.exitedError();
  });
  // The waitFor below settles too: keep its failure (or late success) from going unhandled.
  const ready = vi.waitFor(
    () => {
      if (gone) return undefined as T;
      return check();
    },
    { timeout: opts.timeout, interval: opts.interval ?? 50 },
  );
  ready.catch(() => {});
  died.catch(() => {});
  return Promise.race([ready, died]);
}

/** What a command that ran to its end printed, and its exit code. */
export interface Finished {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs command in the repository until it exits, keeping everything it prints. */
export function runToEnd(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<Finished> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: REPO, env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout?.on("data", (d: Buffer) => {
      stdout += d;
    });
    child.stderr?.on("data", (d: Buffer) => {
      stderr += d;
    });
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}
