/**
 * What a process costs, read from /proc: CPU time (user + system, every
 * thread, libuv's pool included) and resident memory.
 */
import { readdirSync, readFileSync } from "node:fs";

// USER_HZ: the unit of utime/stime in /proc/<pid>/stat. 100 on every Linux
// architecture Node runs on (the kernel exports it as a constant to userland).
const CLOCK_TICKS_PER_SEC = 100;

/** The fields of /proc/<pid>/stat after the command name (field 3 overall is index 0). */
function statFields(path: string): string[] {
  const stat = readFileSync(path, "utf8");
  // The command name (field 2) may contain spaces; fields after it are fixed.
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
}

// Indexes after the command name: ppid is field 4 overall, utime/stime 14/15, cutime/cstime 16/17.
const PPID = 1;
const UTIME = 11;
const STIME = 12;
const CUTIME = 13;
const CSTIME = 14;

/** CPU seconds (user + system) the process (or one of its threads: tid) has used so far. */
export function cpuSeconds(pid: number, tid?: number): number {
  const fields = statFields(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`);
  return (Number(fields[UTIME]) + Number(fields[STIME])) / CLOCK_TICKS_PER_SEC;
}

/** The parent of pid, or undefined when /proc does not show pid (another host, another PID namespace). */
export function parentPid(pid: number): number | undefined {
  try {
    return Number(statFields(`/proc/${pid}/stat`)[PPID]);
  } catch {
    return undefined;
  }
}

/** The command name of pid (`comm`), or undefined when it is gone. */
export function commandName(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return undefined;
  }
}

/**
 * CPU seconds a process and all its children have used so far: its own,
 * that of its live children, and that of the children it has already reaped
 * (cutime + cstime). For a PostgreSQL postmaster this is the whole cluster:
 * every backend (also one that came and went within the window, such as an
 * autovacuum worker), the WAL writer, the checkpointer.
 */
export function treeCpuSeconds(rootPid: number): number {
  const root = statFields(`/proc/${rootPid}/stat`);
  let ticks = Number(root[UTIME]) + Number(root[STIME]) + Number(root[CUTIME]) + Number(root[CSTIME]);
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry) || entry === String(rootPid)) continue;
    try {
      const f = statFields(`/proc/${entry}/stat`);
      if (Number(f[PPID]) !== rootPid) continue;
      ticks += Number(f[UTIME]) + Number(f[STIME]) + Number(f[CUTIME]) + Number(f[CSTIME]);
    } catch {
      // Exited between the listing and the read: its CPU is now in the root's cutime/cstime.
    }
  }
  return ticks / CLOCK_TICKS_PER_SEC;
}

/** Starts measuring the CPU of rootPid and its children (see treeCpuSeconds); call the result to end the window. */
export function startTreeCpuWindow(rootPid: number): () => { cpuSec: number; wallSec: number; cores: number } {
  const cpu0 = treeCpuSeconds(rootPid);
  const t0 = performance.now();
  return () => {
    const cpuSec = treeCpuSeconds(rootPid) - cpu0;
    const wallSec = (performance.now() - t0) / 1000;
    return { cpuSec, wallSec, cores: wallSec > 0 ? cpuSec / wallSec : 0 };
  };
}

/** Resident set size in MiB (VmRSS), or NaN once the process is gone. */
export function rssMiB(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
    return m ? Number(m[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** A CPU meter over one interval: cores used = CPU seconds / wall seconds. */
export interface CpuWindow {
  readonly cpuSec: number;
  /** CPU seconds of the main thread alone (the event loop; Node's main thread has tid = pid). */
  readonly mainThreadCpuSec: number;
  readonly wallSec: number;
  readonly cores: number;
}

/** Starts measuring pid's CPU; call the result to end the window. */
export function startCpuWindow(pid: number): () => CpuWindow {
  const cpu0 = cpuSeconds(pid);
  const main0 = cpuSeconds(pid, pid);
  const t0 = performance.now();
  return () => {
    const cpuSec = cpuSeconds(pid) - cpu0;
    const mainThreadCpuSec = cpuSeconds(pid, pid) - main0;
    const wallSec = (performance.now() - t0) / 1000;
    return { cpuSec, mainThreadCpuSec, wallSec, cores: wallSec > 0 ? cpuSec / wallSec : 0 };
  };
}

/** Samples pid's RSS every intervalMs; stop() returns the peak seen. */
export function sampleRss(pid: number, intervalMs = 100): { stop(): number } {
  let peak = 0;
  const take = () => {
    const v = rssMiB(pid);
    if (v > peak) peak = v;
  };
  take();
  const timer = setInterval(take, intervalMs);
  return {
    stop() {
      clearInterval(timer);
      take();
      return peak;
    },
  };
}
