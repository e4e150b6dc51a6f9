/**
 * The load agent: a separate process, so the load it generates never shares
 * an event loop (or a /proc CPU count) with what it measures. The bench sends
 *   { id, cmd: "run", spec, concurrency, warmupMs, durationMs }   timed run
 *   { id, cmd: "run", spec, concurrency, maxOps }                 fixed amount of work
 * and gets `{ id, event: "start" | "end" }` at the edges of the measured
 * window, then `{ id, result: LoadResult }`. An RPC scenario's calls must all
 * carry the content type it declares (`sends`), or the run fails.
 *   { id, cmd: "drain", spec: RawDrainSpec }                     raw drain
 * gets `{ id, event: "ready" }` when the bench may restart NATS, then
 * `{ id, result: RawDrainResult }`.
 */

import { monitorEventLoopDelay } from "node:perf_hooks";
import { type LoadResult, summarize } from "./lib/stats.js";
import { createScenario, type RawDrainSpec, rawDrain, type ScenarioSpec } from "./scenarios.js";

interface DrainRequest {
  id: number;
  cmd: "drain";
  spec: RawDrainSpec;
}

interface RunRequest {
  id: number;
  cmd: "run";
  spec: ScenarioSpec;
  concurrency: number;
  warmupMs?: number;
  durationMs?: number;
  maxOps?: number;
}

async function run(req: RunRequest, event: (e: "start" | "end") => void): Promise<LoadResult> {
  const scenario = await createScenario(req.spec, req.concurrency);
  try {
    const latencies: number[] = [];
    let ops = 0;
    let errors = 0;
    let firstError: string | undefined;
    let started = 0;
    const t0 = performance.now();
    const bounded = req.maxOps !== undefined;
    const windowStart = bounded ? t0 : t0 + (req.warmupMs ?? 0);
    const windowEnd = bounded ? Number.POSITIVE_INFINITY : windowStart + (req.durationMs ?? 1000);
    let startSent = false;
    let endSent = false;
    // The agent's own event-loop delay: a floor for the services' (same machine, same load).
    const eld = monitorEventLoopDelay({ resolution: 5 });
    eld.enable();
    let eldAtEnd: LoadResult["eld"];
    const readEld = () => {
      eldAtEnd ??= { p50Ms: eld.percentile(50) / 1e6, p99Ms: eld.percentile(99) / 1e6, maxMs: eld.max / 1e6 };
    };
    const timers: NodeJS.Timeout[] = [];
    if (bounded) {
      startSent = true;
      event("start");
    } else {
      timers.push(
        setTimeout(() => {
          startSent = true;
          eld.reset();
          event("start");
        }, windowStart - t0),
        setTimeout(() => {
          endSent = true;
          readEld();
          event("end");
        }, windowEnd - t0),
      );
    }
    const user = async (vu: number) => {
      for (let i = 0; ; i++) {
        const begin = performance.now();
        if (begin >= windowEnd || (bounded && started >= (req.maxOps as number))) return;
        started++;
        let failed = false;
        try {
          await scenario.op(vu, i);
        } catch (err) {
          failed = true;
          firstError ??= err instanceof Error ? err.message : String(err);
        }
        const done = performance.now();
        if (done >= windowStart && done <= windowEnd) {
          if (failed) errors++;
          else {
            ops++;
            latencies.push(done - begin);
          }
        }
      }
    };
    await Promise.all(Array.from({ length: req.concurrency }, (_, vu) => user(vu)));
    const finished = performance.now();
    for (const t of timers) clearTimeout(t);
    if (!startSent) event("start");
    if (!endSent) event("end");
    readEld();
    eld.disable();
    const seconds = ((bounded ? finished : windowEnd) - windowStart) / 1000;
    const wire = scenario.wire && { request: [...scenario.wire.request], response: [...scenario.wire.response] };
    const wrong = scenario.sends === undefined ? [] : (wire?.request.filter((t) => t !== scenario.sends) ?? []);
    if (wrong.length > 0) {
      throw new Error(`${req.spec.kind}: calls carried content-type ${wrong.join(", ")}, not ${scenario.sends}`);
    }
    return {
      ops,
      errors,
      ...(firstError !== undefined && { firstError }),
      seconds,
      rps: ops / seconds,
      ...summarize(latencies),
      concurrency: req.concurrency,
      samples: latencies.map((v) => Math.round(v * 1000) / 1000),
      ...(eldAtEnd && { eld: eldAtEnd }),
      ...(wire && { wire }),
    };
  } finally {
    await scenario.close();
  }
}

process.on("message", (msg: RunRequest | DrainRequest) => {
  const send = (m: object) => process.send?.({ id: msg.id, ...m });
  const work: Promise<unknown> =
    msg.cmd === "drain" ? rawDrain(msg.spec, () => send({ event: "ready" })) : run(msg, (event) => send({ event }));
  work.then(
    (result) => send({ result }),
    (err: unknown) => send({ error: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
  );
});
process.on("disconnect", () => process.exit(0));
