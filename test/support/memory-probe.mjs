/**
 * Preloaded into a service child by processes.ts when asked (the load test)
 * (`node --expose-gc --import …/memory-probe.mjs`), so nothing in
 * src/ knows about it: on SIGUSR2 it runs a full garbage collection and
 * writes one line to stdout, `{"memoryProbe":{"heapUsed":…,"rss":…}}`.
 */
const gc = globalThis.gc;
if (typeof gc === "function") {
  process.on("SIGUSR2", () => {
    gc();
    const { heapUsed, rss } = process.memoryUsage();
    process.stdout.write(`${JSON.stringify({ memoryProbe: { heapUsed, rss } })}\n`);
  });
}
