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
// TEMPORARY leak experiment
import { EventEmitter } from "node:events";
import { randomBytes } from "node:crypto";
if (process.env.LEAK_BYTES) {
  const kept = [];
  const n = Number(process.env.LEAK_BYTES);
  const emit = EventEmitter.prototype.emit;
  EventEmitter.prototype.emit = function (name, ...args) {
    if (name === "request") kept.push(randomBytes(n / 2).toString("hex"));
    return emit.call(this, name, ...args);
  };
}
