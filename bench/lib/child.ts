/**
 * Child processes the bench starts: the services (compiled, with
 * bench/probe.mjs preloaded) and the load agent (through tsx), each a plain
 * `node` process so /proc shows its own CPU and memory, not a wrapper's.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { openSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const TSX = import.meta.resolve("tsx");
const PROBE = new URL("../probe.mjs", import.meta.url).href;

/** A node child with an IPC channel that answers `{ id, … }` requests. */
export interface IpcChild {
  readonly name: string;
  readonly pid: number;
  readonly process: ChildProcess;
  /** Sends a request and resolves with the child's `result` (rejects with its `error`). */
  request<T = unknown>(msg: Record<string, unknown>, onEvent?: (event: string) => void): Promise<T>;
  /** SIGTERM, then SIGKILL after graceMs; resolves once it exited. */
  stop(graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  name: string;
  /** Script path relative to the repository root. */
  entry: string;
  env?: Record<string, string>;
  args?: string[];
  /** Preload bench/probe.mjs (services). */
  probe?: boolean;
  /** Extra node flags, e.g. --cpu-prof. */
  nodeFlags?: string[];
  /** Where stdout and stderr go (a file); default: discarded. */
  logFile?: string;
}

/**
 * Starts `node [--import probe] entry`: a TypeScript entry through tsx with
 * the workspace packages' sources (`--conditions=source`), a compiled one
 * (`dist/…js`) with plain node and the packages' builds, as production runs
 * it (tsx's loader would add some 55 MiB to its memory).
 */
export function spawnChild(opts: SpawnOptions): IpcChild {
  const out = opts.logFile ? openSync(opts.logFile, "a") : "ignore";
  const flags = [
    ...(opts.nodeFlags ?? []),
    ...(opts.entry.endsWith(".ts") ? ["--conditions=source", "--import", TSX] : []),
    ...(opts.probe ? ["--import", PROBE] : []),
  ];
  const child = spawn(process.execPath, [...flags, opts.entry, ...(opts.args ?? [])], {
    cwd: ROOT,
    env: { ...process.env, ...opts.env },
    stdio: ["ignore", out, out, "ipc"],
  });
  if (child.pid === undefined) throw new Error(`${opts.name}: could not start`);
  const pid = child.pid;
  let nextId = 1;
  const pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; onEvent?: ((e: string) => void) | undefined }
  >();
  let exited = false;
  const exit = new Promise<void>((resolve) => {
    child.once("exit", (code, signal) => {
      exited = true;
      for (const p of pending.values()) p.reject(new Error(`${opts.name} exited (${signal ?? code})`));
      pending.clear();
      resolve();
    });
  });
  child.on("message", (raw) => {
    const msg = raw as { id: number; result?: unknown; error?: string; event?: string };
    const p = pending.get(msg.id);
    if (!p) return;
    if (msg.event !== undefined) {
      p.onEvent?.(msg.event);
      return;
    }
    pending.delete(msg.id);
    if (msg.error !== undefined) p.reject(new Error(`${opts.name}: ${msg.error}`));
    else p.resolve(msg.result);
  });
  return {
    name: opts.name,
    pid,
    process: child,
    request<T>(msg: Record<string, unknown>, onEvent?: (event: string) => void) {
      if (exited) return Promise.reject(new Error(`${opts.name} is not running`));
      const id = nextId++;
      return new Promise<T>((resolve, reject) => {
        pending.set(id, { resolve: resolve as (v: unknown) => void, reject, onEvent });
        child.send({ ...msg, id });
      });
    },
    async stop(graceMs = 10_000) {
      if (exited) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exit;
      clearTimeout(timer);
    },
  };
}

/** Polls `<url>/readyz` until it answers 200, or throws after timeoutMs. */
export async function waitReady(url: string, child: IpcChild, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exited = false;
  child.process.once("exit", () => {
    exited = true;
  });
  for (;;) {
    if (exited || child.process.exitCode !== null) throw new Error(`${child.name} exited while starting`);
    try {
      const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1000) });
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${child.name} not ready at ${url} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
