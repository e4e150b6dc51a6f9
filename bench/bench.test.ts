/**
 * The bench harness in quick mode: every row is there with numbers, the
 * rows measure what they say (the JSON row sends JSON, the drain compares
 * like with like, per-vCPU counts PostgreSQL), published figures stay out of
 * the measured columns, and the table names its run. No timing is asserted:
 * speed goals live in the bench's own table. Runs alone, after the rest of
 * `npm test` (vitest.config.ts: the bench project's groupOrder).
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { INSTALL_COMMAND, requireH2load } from "./lib/h2load.js";
import { type Report, ROW_IDS, type Row, type RowId, runName } from "./lib/report.js";
import { CONNECT_JSON, GRPC_PROTO } from "./scenarios.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const SEED = 12345;
const dir = mkdtempSync(join(tmpdir(), "bench-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let report: Report;
let stdout: string;
let stderr: string;

beforeAll(async () => {
  // Never skipped: without h2load the transport rows cannot run, and this says how to install it.
  requireH2load();
  const out = join(dir, "quick.json");
  ({ stdout, stderr } = await promisify(execFile)(
    process.execPath,
    ["--conditions=source", "--import", "tsx", "bench/run.ts", "--quick", "--seed", String(SEED), "--out", out],
    { cwd: ROOT, maxBuffer: 16 * 1024 * 1024, timeout: 300_000 },
  ));
  report = JSON.parse(readFileSync(out, "utf8")) as Report;
}, 310_000);

const row = (id: RowId): Row => {
  const found = report.rows.find((r) => r.id === id);
  if (!found) throw new Error(`no row ${id}`);
  return found;
};

interface LoadDetails {
  errors?: number;
  rps?: number;
  identityCores?: number;
  postgresCores?: number;
  perIdentityVcpuOnly?: number;
  contentTypes?: { request: string[]; response: string[] };
  baseline?: H2Details & { errors?: number };
}

interface H2Details {
  serverCpuUsPerReq?: number;
  contentTypes?: { request: string[]; response: string[] };
  h2load?: Array<{
    counts: { total: number; succeeded: number; failed: number; errored: number; timeout: number };
    statusCodes: Record<string, number>;
    args: string;
  }>;
}

/** The rows h2load drives, each against a baseline server in the same run. */
const TRANSPORT_ROWS: RowId[] = [
  "connect_health_bare",
  "health_check_grpc",
  "get_customer_grpc",
  "get_customer_connect_json_http1",
];

const REFERENCE_ROWS: RowId[] = [
  "password_sign_in_per_vcpu",
  "refresh_token_per_vcpu",
  "client_credentials_per_vcpu",
  "rss_customer_service",
  "rss_identity_service",
];

describe("npm run bench -- --quick", () => {
  it("writes every row with finite numbers; no row is invalid and no side had a failed call", () => {
    expect(report.rows.map((r) => r.id)).toEqual([...ROW_IDS]);
    for (const r of report.rows) {
      const numbers: Array<[string, unknown]> = [["ours.value", r.ours.value]];
      if (r.baseline) numbers.push(["baseline.value", r.baseline.value]);
      if (r.ratio !== undefined) numbers.push(["ratio", r.ratio]);
      if (r.ours.p50Ms !== undefined) numbers.push(["ours.p50Ms", r.ours.p50Ms], ["ours.p99Ms", r.ours.p99Ms]);
      for (const [field, value] of numbers) {
        expect({ row: r.id, field, finite: Number.isFinite(value) }).toEqual({ row: r.id, field, finite: true });
      }
      if (r.target) expect(typeof r.target.pass).toBe("boolean");
      // An invalid row (a side with failed calls) would otherwise pass as a slow one.
      expect({ row: r.id, invalid: r.invalid }).toEqual({ row: r.id, invalid: undefined });
      const d = r.details as LoadDetails;
      if (d.errors !== undefined) expect({ row: r.id, errors: d.errors }).toEqual({ row: r.id, errors: 0 });
      if (d.baseline?.errors !== undefined) {
        expect({ row: r.id, baselineErrors: d.baseline.errors }).toEqual({ row: r.id, baselineErrors: 0 });
      }
    }
    expect(report.meta).toMatchObject({ mode: "quick", concurrency: 32, seed: SEED });
  });

  it("names the run (mode, date, commit, seed) in the table's header and prints the seed", () => {
    const name = runName(report.meta);
    expect(name).toMatch(/^quick run \d{4}-\d\d-\d\d \d\d:\d\d UTC, commit [0-9a-f]{7,}(\+dirty)?, seed 12345$/);
    // The table's header row: the run's name is its first cell.
    const header = stdout.split("\n").find((l) => l.startsWith(name) && /^\S.* {2,}ours {2,}/.test(l));
    expect(header).toMatch(/ {2}reference \(published, not measured here\)$/);
    for (const r of report.rows) expect(stdout).toContain(r.title);
    expect(stderr).toContain(`seed ${SEED}`);
  });

  it("sends JSON in the Connect JSON row and binary protobuf over gRPC, and the service answers in kind", () => {
    expect((row("get_customer_connect_json_http1").details as LoadDetails).contentTypes).toEqual({
      request: [CONNECT_JSON],
      response: [CONNECT_JSON],
    });
    // h2load sends what a gRPC client may send; the service answers gRPC (with the codec named, or not).
    expect((row("get_customer_grpc").details as LoadDetails).contentTypes).toEqual({
      request: ["application/grpc"],
      response: [expect.stringMatching(/^application\/grpc(\+proto)?$/)],
    });
    // The JWT row's load comes from the Node agent's generated clients.
    expect((row("get_customer_jwt_cost").details as LoadDetails).contentTypes).toEqual({
      request: [GRPC_PROTO],
      response: [GRPC_PROTO],
    });
  });

  it("drives the transport rows with h2load: no failed, errored or non-2xx call on either side, CPU per call read", () => {
    expect(report.meta.h2load).toMatch(/^h2load nghttp2\/\d/);
    for (const id of TRANSPORT_ROWS) {
      const d = row(id).details as unknown as H2Details & { baseline: H2Details };
      for (const [sideName, side] of [
        ["ours", d],
        ["baseline", d.baseline],
      ] as const) {
        expect(side.h2load?.length).toBeGreaterThan(0);
        for (const run of side.h2load ?? []) {
          expect({ id, sideName, args: run.args }).toEqual({
            id,
            sideName,
            args: expect.stringMatching(/^h2load -D /),
          });
          expect({ id, sideName, ...run.counts, ...run.statusCodes }).toMatchObject({
            id,
            sideName,
            failed: 0,
            errored: 0,
            timeout: 0,
            "3xx": 0,
            "4xx": 0,
            "5xx": 0,
          });
          expect(run.counts.succeeded).toBeGreaterThan(0);
        }
        expect({ id, sideName, cpu: Number.isFinite(side.serverCpuUsPerReq) }).toEqual({ id, sideName, cpu: true });
      }
    }
  });

  it("keeps published figures in their own column: no baseline, no ratio, a source", () => {
    for (const id of REFERENCE_ROWS) {
      const r = row(id);
      expect({ id, baseline: r.baseline, ratio: r.ratio }).toEqual({ id, baseline: undefined, ratio: undefined });
      expect(r.reference).toMatchObject({ source: expect.stringMatching(/^https:\/\/www\.keycloak\.org\//) });
    }
    // Every baseline left is one this run measured.
    for (const r of report.rows) expect(r.baseline?.label ?? "").not.toMatch(/keycloak/i);
  });

  it("counts PostgreSQL's CPU with the identity service's in the per-vCPU rows", () => {
    for (const id of ["password_sign_in_per_vcpu", "refresh_token_per_vcpu", "client_credentials_per_vcpu"] as const) {
      const r = row(id);
      const d = r.details as Required<LoadDetails>;
      expect({ id, postgresCores: Number.isFinite(d.postgresCores) }).toEqual({ id, postgresCores: true });
      const expected = d.rps / (d.identityCores + d.postgresCores);
      // Within the rounding of the cores (two decimals) in details.
      expect(Math.abs(r.ours.value - expected) / expected).toBeLessThan(0.05);
    }
    // A client-credentials grant reads its client from PostgreSQL: over a second of them, its CPU shows.
    const cc = row("client_credentials_per_vcpu").details as Required<LoadDetails>;
    expect(cc.postgresCores).toBeGreaterThan(0);
    expect(row("client_credentials_per_vcpu").ours.value).toBeLessThan(cc.perIdentityVcpuOnly);
  });

  it("drains like with like: both sides held and stored every event, no command failed, both timed from restart", () => {
    const drain = row("outbox_drain");
    const d = drain.details as {
      eventsPerOutage: number;
      window: number;
      ours: Array<Record<string, number>>;
      baseline: Array<Record<string, number>>;
    };
    expect(d.window).toBe(64);
    for (const [sideName, rounds] of [
      ["ours", d.ours],
      ["baseline", d.baseline],
    ] as const) {
      expect(rounds.length).toBeGreaterThan(0);
      for (const round of rounds) {
        expect({ sideName, held: round.held, stored: round.stored, errors: round.errors }).toEqual({
          sideName,
          held: d.eventsPerOutage,
          stored: d.eventsPerOutage,
          errors: 0,
        });
        // Timed from NATS ready again: the reconnect is inside the time, the first event after it.
        expect(round.restartToFirstStoredMs).toBeGreaterThanOrEqual(0);
        expect(round.restartToLastStoredMs).toBeGreaterThanOrEqual(round.restartToFirstStoredMs as number);
      }
    }
  });

  it(`stops before starting anything, naming ${INSTALL_COMMAND}, when h2load is missing`, async () => {
    const run = promisify(execFile)(
      process.execPath,
      ["--conditions=source", "--import", "tsx", "bench/run.ts", "--quick", "--only", "get"],
      { cwd: ROOT, env: { ...process.env, PATH: join(dir, "empty") }, timeout: 60_000 },
    );
    await expect(run).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining(`h2load (Debian package nghttp2-client) is not installed`),
    });
    await expect(run).rejects.toMatchObject({ stderr: expect.stringContaining(INSTALL_COMMAND) });
  });

  it("measures a second build beside the first in every round (BENCH_CUSTOMER_ENTRY_B), and refuses a bad --rounds", async () => {
    const bench = (args: string[], env: Record<string, string> = {}) =>
      promisify(execFile)(process.execPath, ["--conditions=source", "--import", "tsx", "bench/run.ts", ...args], {
        cwd: ROOT,
        env: { ...process.env, ...env },
        maxBuffer: 16 * 1024 * 1024,
        timeout: 300_000,
      });
    await expect(bench(["--quick", "--rounds", "0"])).rejects.toMatchObject({
      stderr: expect.stringContaining('--rounds: "0" is not an integer from 1 to 50'),
    });
    const out = join(dir, "ab.json");
    const { stderr: log } = await bench(["--quick", "--only", "get", "--rounds", "2", "--seed", "7", "--out", out], {
      BENCH_CUSTOMER_ENTRY_B: "customer-service/dist/main.js",
    });
    const ab = JSON.parse(readFileSync(out, "utf8")) as Report;
    for (const id of ["health_check_grpc", "get_customer_grpc", "get_customer_connect_json_http1"] as const) {
      const r = ab.rows.find((x) => x.id === id);
      const d = r?.details as {
        h2load: unknown[];
        b?: { rateBOverA: number; cpuUsPerReq: { a: number; b: number }; perRound: unknown[]; problems?: string[] };
      };
      expect({ id, invalid: r?.invalid, runs: d.h2load.length }).toEqual({ id, invalid: undefined, runs: 2 });
      expect({ id, problems: d.b?.problems, rounds: d.b?.perRound.length }).toEqual({
        id,
        problems: undefined,
        rounds: 2,
      });
      expect(d.b?.rateBOverA).toBeGreaterThan(0);
      expect(d.b?.cpuUsPerReq.b).toBeGreaterThan(0);
    }
    // Only the rows B serves carry a B side.
    expect(ab.rows.find((x) => x.id === "connect_health_bare")?.details).not.toHaveProperty("b");
    expect(log).toMatch(/B\/A health-check-grpc: rate [\d.]+, CPU\/call/);
  }, 310_000);

  it("reports each service's RSS after load next to its idle RSS", () => {
    for (const service of ["customer_service", "identity_service"] as const) {
      const idle = row(`rss_${service}`);
      const after = row(`rss_${service}_after_load`);
      expect(report.rows.indexOf(after)).toBe(report.rows.indexOf(idle) + 1);
      expect(after.ours.value).toBeGreaterThan(0);
      expect(after.details).toMatchObject({ idleMiB: idle.ours.value });
    }
  });
});
