/**
 * A service's log lines on stdout (createLogger without a destination) are
 * buffered and written in chunks, yet none is lost or held back: a line
 * reaches the reader within the flush interval while the process runs, and
 * every line is written when it exits, by process.exit or by an uncaught
 * error; lines of two loggers keep their order. A full pipe is waited for
 * (nothing lost); a pipe nobody reads any more loses the lines, not the
 * process.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const LOGGER = fileURLToPath(new URL("../src/logger.ts", import.meta.url));

/** Runs `body` in a child process with `log` and `other` loggers in scope; its stdout lines as they come. */
function child(body: string, opts: { paused?: boolean } = {}) {
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
  if (opts.paused) proc.stdout.pause();
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

  it("waits out a full pipe: every line of 2 MiB arrives, in order", async () => {
    // process.stdout makes fd 1 a non-blocking pipe: writes past the pipe's 64 KiB fail with EAGAIN.
    const c = child(
      `
      process.stdout;
      const pad = "x".repeat(200);
      for (let i = 0; i < 8000; i++) log.info({ pad }, "line " + i);
      process.exit(0);
    `,
      { paused: true },
    );
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    c.proc.stdout.resume();
    expect(await c.exited).toBe(0);
    expect(c.stderr()).toBe("");
    expect(c.lines.length).toBe(8000);
    expect(c.lines.every((l, i) => l.msg === `line ${i}`)).toBe(true);
  });

  it("keeps running when nobody reads stdout any more, and says once on stderr that lines were lost", async () => {
    const c = child(`
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (let i = 0; i < 2000; i++) log.info("line " + i);
      log.flush();
      process.exit(7);
    `);
    c.proc.stdout.destroy();
    expect(await c.exited).toBe(7);
    expect(c.stderr().match(/log lines lost: cannot write to fd 1: /g)).toHaveLength(1);
  });
});
