/**
 * Preloaded into every service the bench starts (`node --import
 * ./bench/probe.mjs …`), so nothing in src/ knows about the bench. Plain
 * JavaScript: a compiled service runs without tsx, whose loader alone would
 * add about 55 MiB to the memory the bench reports.
 * Over the IPC channel it answers:
 *   { cmd: "eld-reset" }                 restart the event-loop delay histogram
 *   { cmd: "eld" }                       → { p50Ms, p99Ms, maxMs, meanMs }
 *   { cmd: "profile-start" }             start the V8 CPU profiler
 *   { cmd: "profile-stop", path }        write the .cpuprofile to path
 * and exits (SIGTERM, the service's own graceful stop) when the bench goes away.
 */
import { writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import { monitorEventLoopDelay } from "node:perf_hooks";

/** @typedef {{ id: number; cmd: "eld-reset" | "eld" | "profile-start" | "profile-stop"; path?: string }} ProbeRequest */

if (process.send) {
  const eld = monitorEventLoopDelay({ resolution: 5 });
  eld.enable();
  /** @type {Session | undefined} */
  let session;
  const ms = (/** @type {number} */ ns) => ns / 1e6;

  const handle = async (/** @type {ProbeRequest} */ req) => {
    switch (req.cmd) {
      case "eld-reset":
        eld.reset();
        return {};
      case "eld":
        return {
          p50Ms: ms(eld.percentile(50)),
          p99Ms: ms(eld.percentile(99)),
          maxMs: ms(eld.max),
          meanMs: ms(eld.mean),
          samples: eld.count,
        };
      case "profile-start":
        session = new Session();
        session.connect();
        await session.post("Profiler.enable");
        await session.post("Profiler.setSamplingInterval", { interval: 200 });
        await session.post("Profiler.start");
        return {};
      case "profile-stop": {
        if (!session || !req.path) throw new Error("no profile running");
        const { profile } = await session.post("Profiler.stop");
        writeFileSync(req.path, JSON.stringify(profile));
        session.disconnect();
        session = undefined;
        return { path: req.path };
      }
    }
  };

  process.on("message", (/** @type {ProbeRequest} */ msg) => {
    handle(msg).then(
      (result) => process.send?.({ id: msg.id, result }),
      (err) => process.send?.({ id: msg.id, error: String(err) }),
    );
  });
  process.on("disconnect", () => process.kill(process.pid, "SIGTERM"));
  process.channel?.unref();
}
