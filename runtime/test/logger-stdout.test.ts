/**
 * A service's log lines on stdout (createLogger without a destination) are
 * buffered and written in chunks, yet none is lost or held back: a line
 * reaches the reader within the flush interval while the process runs, and
 * every line is written when it exits, by process.exit or by an uncaught
 * error; lines of two loggers keep their order.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const LOGGER = fileURLToPath(new URL("../src/logger.ts", import.meta.url));

/** Runs `body` in a child process with `log` and `other` loggers in scope; its stdout lines as they come. */
function child(body: string) {
  const script = `
    const { createLogger } = await import(${JSON.stringify(LOGGER)});
    const log = createLogger({ name: "a", level: "info" });
    const other = createLogger({ name: "b", level: "info" });
    ${body}
  `;
  const proc = spawn(
    process.execPath,
    ["--conditions=source", "--import", "tsx", "--input-type=module", "-e", script],
    {
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  const lines: Array<{ msg: string; service: string; at: number }> = [];
  let rest = "";
  proc.stdout.on("data", (d: Buffer) => {
    const parts = (rest + d.toString()).split("\n");
    rest = parts.pop() ?? "";
    for (const p of parts) lines.push({ ...(JSON.parse(p) as { msg: string; service: string }), at: Date.now() });
  });
  let stderr = "";
  proc.stderr.on("data", (d: Buffer) => {
    stderr += d;
  });
  const exited = new Promise<number | null>((resolve) => proc.once("close", resolve));
  return { proc, lines, exited, stderr: () => stderr };
}

describe("stdout logging", () => {
  it("writes a line within the flush interval while the process keeps running", async () => {
    const c = child(`log.info("first"); setInterval(() => {}, 1000);`);
    try {
      await expect.poll(() => c.lines.map((l) => l.msg), { timeout: 10_000 }).toEqual(["first"]);
    } finally {
      c.proc.kill();
      await c.exited;
    }
  });

  it("writes every line on process.exit, in order across loggers", async () => {
    const c = child(`
      for (let i = 0; i < 500; i++) (i % 2 ? other : log).info("line " + i);
      process.exit(3);
    `);
    expect(await c.exited).toBe(3);
    expect(c.lines.map((l) => l.msg)).toEqual(Array.from({ length: 500 }, (_, i) => `line ${i}`));
    expect(c.lines.slice(0, 2).map((l) => l.service)).toEqual(["a", "b"]);
  });

  it("writes every line when an uncaught error ends the process", async () => {
    const c = child(`
      log.info("before the crash");
      setTimeout(() => { throw new Error("crash"); }, 10);
    `);
    expect(await c.exited).not.toBe(0);
    expect(c.lines.map((l) => l.msg)).toEqual(["before the crash"]);
    expect(c.stderr()).toContain("crash");
  });
});
