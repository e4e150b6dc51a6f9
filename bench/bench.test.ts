/**
 * The bench harness runs in quick mode and reports every row with numbers.
 * No timing is asserted: speed goals live in the bench's own table.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";
import { type Report, ROW_IDS } from "./lib/report.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "bench-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("npm run bench -- --quick", () => {
  it("writes every row, each with numeric values, and prints the table", { timeout: 180_000 }, async () => {
    const out = join(dir, "quick.json");
    const { stdout } = await promisify(execFile)(
      process.execPath,
      ["--conditions=source", "--import", "tsx", "bench/run.ts", "--quick", "--out", out],
      { cwd: ROOT, maxBuffer: 16 * 1024 * 1024, timeout: 170_000 },
    );
    const report = JSON.parse(readFileSync(out, "utf8")) as Report;

    expect(report.rows.map((r) => r.id)).toEqual([...ROW_IDS]);
    for (const row of report.rows) {
      const numbers: Array<[string, unknown]> = [["ours.value", row.ours.value]];
      if (row.baseline) numbers.push(["baseline.value", row.baseline.value]);
      if (row.ratio !== undefined) numbers.push(["ratio", row.ratio]);
      if (row.ours.p50Ms !== undefined) numbers.push(["ours.p50Ms", row.ours.p50Ms], ["ours.p99Ms", row.ours.p99Ms]);
      for (const [field, value] of numbers) {
        expect({ row: row.id, field, finite: Number.isFinite(value) }).toEqual({ row: row.id, field, finite: true });
      }
      if (row.target) expect(typeof row.target.pass).toBe("boolean");
    }
    // Load rows ran without failed calls (a broken scenario would otherwise pass as a slow one).
    for (const row of report.rows) {
      const errors = (row.details as { errors?: number }).errors;
      if (errors !== undefined) expect({ row: row.id, errors }).toEqual({ row: row.id, errors: 0 });
    }
    expect(report.meta).toMatchObject({ mode: "quick", concurrency: 32 });
    for (const row of report.rows) expect(stdout).toContain(row.title);
  });
});
