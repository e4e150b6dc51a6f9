/**
 * A service child whose test process dies without stopping it ends itself
 * (test/support/orphan-guard.mjs): a hook that timed out once left three
 * services running, loading the machine for everything after them.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { expect, it } from "vitest";
import { until } from "./support/timing.js";

const alive = (pid: number) => {
  try {
    // A zombie (exited, not yet reaped) counts as gone.
    return !/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, "utf8"));
  } catch {
    return false;
  }
};

it("ends a spawned child once its parent is gone", async () => {
  // A parent that starts a child the way processes.ts does, prints its pid and dies with SIGKILL.
  const guard = new URL("./support/orphan-guard.mjs", import.meta.url).href;
  const script = `
    const { spawn } = require("node:child_process");
    const child = spawn(process.execPath, ["--import", ${JSON.stringify(guard)}, "-e", "setInterval(() => {}, 1000)"],
      { stdio: "ignore", detached: true });
    console.log(child.pid);
    setTimeout(() => process.kill(process.pid, "SIGKILL"), 200);`;
  const parent = spawn(process.execPath, ["-e", script], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  parent.stdout.on("data", (d: Buffer) => {
    out += d.toString();
  });
  await new Promise((resolve) => parent.once("exit", resolve));
  const pid = Number(out.trim());
  expect(pid).toBeGreaterThan(0);
  try {
    await until("the orphan ends itself", async () => !alive(pid));
  } finally {
    if (alive(pid)) process.kill(pid, "SIGKILL");
  }
});
