/** Summaries of latency samples and of load runs. */

/** The result of one closed-loop load run (see bench/agent.ts). */
export interface LoadResult {
  /** Operations that started inside the measured window and finished. */
  ops: number;
  errors: number;
  firstError?: string;
  /** Measured window in seconds (warm-up excluded). */
  seconds: number;
  /** Successful operations per second. */
  rps: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  concurrency: number;
  /** Every latency sample of the window (ms), so runs can be merged. */
  samples: number[];
  /** The agent's own event-loop delay over the window. */
  eld?: { p50Ms: number; p99Ms: number; maxMs: number };
  /** RPC scenarios: the distinct content types the calls sent and got back. */
  wire?: { request: string[]; response: string[] };
}

/** Merges runs of one scenario (e.g. the rounds of an interleaved pair) into one result. */
export function mergeLoads(runs: LoadResult[]): LoadResult {
  const first = runs[0];
  if (!first) throw new Error("nothing to merge");
  const samples = runs.flatMap((r) => r.samples);
  const ops = runs.reduce((n, r) => n + r.ops, 0);
  const seconds = runs.reduce((n, r) => n + r.seconds, 0);
  const firstError = runs.find((r) => r.firstError !== undefined)?.firstError;
  const eld = runs
    .flatMap((r) => (r.eld ? [r.eld] : []))
    .reduce<LoadResult["eld"]>((worst, e) => (worst === undefined || e.p99Ms > worst.p99Ms ? e : worst), undefined);
  const wires = runs.flatMap((r) => (r.wire ? [r.wire] : []));
  const union = (lists: string[][]) => [...new Set(lists.flat())].sort();
  return {
    ops,
    errors: runs.reduce((n, r) => n + r.errors, 0),
    ...(firstError !== undefined && { firstError }),
    seconds,
    rps: ops / seconds,
    ...summarize(samples),
    concurrency: first.concurrency,
    samples,
    ...(eld && { eld }),
    ...(wires.length > 0 && {
      wire: { request: union(wires.map((w) => w.request)), response: union(wires.map((w) => w.response)) },
    }),
  };
}

/** The q-th percentile (0–100) of sorted samples, nearest-rank. */
export function percentile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((q / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))] as number;
}

/** Summarises latency samples (ms). */
export function summarize(samples: number[]): { p50Ms: number; p90Ms: number; p99Ms: number; maxMs: number } {
  const sorted = Float64Array.from(samples).sort();
  return {
    p50Ms: percentile(sorted, 50),
    p90Ms: percentile(sorted, 90),
    p99Ms: percentile(sorted, 99),
    maxMs: sorted.length ? (sorted[sorted.length - 1] as number) : Number.NaN,
  };
}
