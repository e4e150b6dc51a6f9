/**
 * What a process costs, read from /proc: CPU time (user + system, every
 * thread, libuv's pool included) and resident memory.
 */
import { readFileSync } from "node:fs";

// USER_HZ: the unit of utime/stime in /proc/<pid>/stat. 100 on every Linux
// architecture Node runs on (the kernel exports it as a constant to userland).
const CLOCK_TICKS_PER_SEC = 100;

/** CPU seconds (user + system) the process (or one of its threads: tid) has used so far. */
export function cpuSeconds(pid: number, tid?: number): number {
  const stat = readFileSync(tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`, "utf8");
  // The command name (field 2) may contain spaces; fields after it are fixed.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime and stime are fields 14 and 15 overall, 12 and 13 after the name.
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return (utime + stime) / CLOCK_TICKS_PER_SEC;
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
