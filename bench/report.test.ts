/**
 * The bench's table without running the bench: an invalid row shows why and
 * carries no ratio or pass, published figures sit in their own column, the
 * header names the run, and a seed repeats the job order.
 */
import { describe, expect, it } from "vitest";
import { createRandom, shuffle } from "./lib/random.js";
import { invalidate, type Row, renderTable, runName } from "./lib/report.js";

const measured = (): Row => ({
  id: "update_customer",
  title: "UpdateCustomer (tx + outbox), gRPC",
  unit: "req/s",
  ours: { label: "UpdateCustomer gRPC", value: 700, p50Ms: 40, p99Ms: 80 },
  baseline: { label: "postgres.js same tx", value: 1000, p50Ms: 8, p99Ms: 20 },
  ratio: 0.7,
  target: { text: "≥50% raw", pass: true },
  details: {},
});

const referenced = (): Row => ({
  id: "client_credentials_per_vcpu",
  title: "AuthenticateClient per vCPU (identity + PostgreSQL)",
  unit: "/s/vCPU",
  ours: { label: "grants/s ÷ (identity + PostgreSQL cores)", value: 900 },
  target: { text: "≥1,000/s/vCPU", pass: false },
  reference: { label: "Keycloak", value: 120, source: "https://www.keycloak.org/" },
  details: {},
});

const RUN = runName({ mode: "full", date: "2026-12-01T10:20:30.000Z", commit: "abc1234", seed: 42 });

/** The cells of the table's line that starts with `title` (Markdown). */
const cells = (table: string, title: string) =>
  (table.split("\n").find((l) => l.startsWith(`| ${title} |`)) ?? "")
    .split(" | ")
    .map((c) => c.replace(/^\| /, "").replace(/ \|$/, ""));

describe("the bench table", () => {
  it("names the run in its first header cell", () => {
    expect(RUN).toBe("full run 2026-12-01 10:20 UTC, commit abc1234, seed 42");
    const table = renderTable([measured()], { run: RUN, markdown: true });
    expect(table.split("\n")[0]).toBe(
      `| ${RUN} | ours | p50 / p99 | baseline (measured in this run) | p50 / p99 | ratio | target | result | reference (published, not measured here) |`,
    );
  });

  it("shows a row whose baseline had failed calls as invalid, without ratio or pass", () => {
    const row = invalidate(measured(), ["baseline: 3 failed calls"]);
    expect(row).toMatchObject({ invalid: "baseline: 3 failed calls", target: { pass: false } });
    expect(row.ratio).toBeUndefined();
    const line = cells(renderTable([row], { run: RUN, markdown: true }), row.title);
    expect(line[5]).toBe("—");
    expect(line[7]).toBe("invalid: baseline: 3 failed calls");
  });

  it("leaves a row without failures as measured", () => {
    const row = invalidate(measured(), []);
    expect(row.invalid).toBeUndefined();
    const line = cells(renderTable([row], { run: RUN, markdown: true }), row.title);
    expect(line.slice(5, 8)).toEqual(["70%", "≥50% raw", "pass"]);
  });

  it("puts a published figure in the reference column only: no baseline, no ratio", () => {
    const row = referenced();
    const line = cells(renderTable([row], { run: RUN, markdown: true }), row.title);
    expect(line.slice(3, 9)).toEqual(["—", "", "—", "≥1,000/s/vCPU", "MISS", "120 /s/vCPU (Keycloak)"]);
  });
});

describe("the seeded job order", () => {
  it("repeats for the same seed and differs for another", () => {
    const order = (seed: number) => {
      const random = createRandom(seed);
      return Array.from({ length: 5 }, () => shuffle(random, [0, 1, 2]).join(""));
    };
    expect(order(7)).toEqual(order(7));
    expect(order(7)).not.toEqual(order(8));
    // Every order of three jobs occurs: no position is fixed.
    const seen = new Set(Array.from({ length: 40 }, (_, s) => order(s)).flat());
    expect(seen.size).toBe(6);
  });
});
