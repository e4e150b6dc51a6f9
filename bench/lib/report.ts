/** The rows the bench reports, their JSON shape, and the printed table. */

/** Every row the bench produces, in table order (the harness test checks each is present). */
export const ROW_IDS = [
  "connect_health_bare",
  "health_check_grpc",
  "get_customer_grpc",
  "get_customer_connect_json_http1",
  "get_customer_jwt_cost",
  "update_customer",
  "event_commit_to_ack",
  "register_customer",
  "outbox_drain",
  "authenticate_customer",
  "identity_event_loop_delay",
  "password_sign_in_per_vcpu",
  "refresh_token_per_vcpu",
  "client_credentials_per_vcpu",
  "rss_customer_service",
  "rss_customer_service_after_load",
  "rss_identity_service",
  "rss_identity_service_after_load",
  "startup_customer_service",
  "rss_customer_service_compiled",
  "startup_identity_service",
  "rss_identity_service_compiled",
  "event_signing",
  "event_verification",
  "password_rules",
] as const;

export type RowId = (typeof ROW_IDS)[number];

/** One side of a row: a headline value and, for load rows, its latency. */
export interface Side {
  label: string;
  value: number;
  p50Ms?: number;
  p99Ms?: number;
}

/** A published figure shown for orientation: not measured here, so no ratio or pass is computed from it. */
export interface Reference {
  label: string;
  value: number;
  /** Where the figure is published. */
  source: string;
}

export interface Row {
  id: RowId;
  title: string;
  /** Unit of ours.value, baseline.value and reference.value. */
  unit: string;
  ours: Side;
  /** Measured in the same run, side by side with ours. */
  baseline?: Side;
  /** ours.value / baseline.value; absent when the row is invalid. */
  ratio?: number;
  target?: { text: string; pass: boolean };
  reference?: Reference;
  /**
   * Why the row's numbers cannot be compared (a side had failed calls, a
   * precondition did not hold). An invalid row has no ratio and never passes.
   */
  invalid?: string;
  /** Everything else measured for the row (CPU, errors, counts, …). */
  details: Record<string, unknown>;
}

export interface Report {
  meta: Record<string, unknown>;
  rows: Row[];
}

/** The name every printed table carries: mode, date, commit and the seed of the job order. */
export function runName(meta: Record<string, unknown>): string {
  const date = typeof meta.date === "string" ? `${meta.date.slice(0, 16).replace("T", " ")} UTC` : "?";
  return `${meta.mode} run ${date}, commit ${meta.commit}, seed ${meta.seed}`;
}

/** Marks row invalid (no ratio, no pass) when any reason is given; returns it. */
export function invalidate(row: Row, reasons: string[]): Row {
  if (reasons.length === 0) return row;
  row.invalid = reasons.join("; ");
  delete row.ratio;
  if (row.target) row.target.pass = false;
  return row;
}

const fmt = (v: number | undefined, unit = ""): string => {
  if (v === undefined || Number.isNaN(v)) return "—";
  const digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
  return `${v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 })}${unit}`;
};

const latency = (s: Side | undefined) => (s?.p50Ms === undefined ? "" : `${fmt(s.p50Ms)} / ${fmt(s.p99Ms)} ms`);

const side = (s: Side | undefined, unit: string) => (s ? `${fmt(s.value)} ${unit}` : "—");

/** The result column: invalid rows say why; rows without a target are information only. */
const result = (r: Row) =>
  r.invalid !== undefined ? `invalid: ${r.invalid}` : r.target ? (r.target.pass ? "pass" : "MISS") : "info";

/**
 * The table as aligned text, or Markdown with `markdown`. Its first header
 * cell names the run, so a pasted table always says where its numbers come from.
 */
export function renderTable(rows: Row[], opts: { run: string; markdown?: boolean }): string {
  const header = [
    opts.run,
    "ours",
    "p50 / p99",
    "baseline (measured in this run)",
    "p50 / p99",
    "ratio",
    "target",
    "result",
    "reference (published, not measured here)",
  ];
  const body = rows.map((r) => [
    r.title,
    side(r.ours, r.unit),
    latency(r.ours),
    r.baseline ? `${side(r.baseline, r.unit)} (${r.baseline.label})` : "—",
    latency(r.baseline),
    r.ratio === undefined ? "—" : `${fmt(r.ratio * 100)}%`,
    r.target?.text ?? "—",
    result(r),
    r.reference ? `${side(r.reference, r.unit)} (${r.reference.label})` : "—",
  ]);
  if (opts.markdown) {
    const line = (cells: string[]) => `| ${cells.map((c) => c.replaceAll("|", "\\|")).join(" | ")} |`;
    return [line(header), line(header.map(() => "---")), ...body.map(line)].join("\n");
  }
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] as string).length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i] as number))
      .join("  ")
      .trimEnd();
  return [line(header), widths.map((w) => "-".repeat(w)).join("  "), ...body.map(line)].join("\n");
}
