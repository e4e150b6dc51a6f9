/** The rows the bench reports, their JSON shape, and the printed table. */

/** Every row the bench produces, in table order (the harness test checks each is present). */
export const ROW_IDS = [
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
  "rss_identity_service",
  "startup_customer_service",
  "rss_customer_service_compiled",
  "startup_identity_service",
  "rss_identity_service_compiled",
] as const;

export type RowId = (typeof ROW_IDS)[number];

/** One side of a row: a headline value and, for load rows, its latency. */
export interface Side {
  label: string;
  value: number;
  p50Ms?: number;
  p99Ms?: number;
}

export interface Row {
  id: RowId;
  title: string;
  /** Unit of ours.value and baseline.value. */
  unit: string;
  ours: Side;
  baseline?: Side;
  /** ours.value / baseline.value. */
  ratio?: number;
  target?: { text: string; pass: boolean };
  /** Everything else measured for the row (CPU, errors, counts, …). */
  details: Record<string, unknown>;
}

export interface Report {
  meta: Record<string, unknown>;
  rows: Row[];
}

const fmt = (v: number | undefined, unit = ""): string => {
  if (v === undefined || Number.isNaN(v)) return "—";
  const digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2;
  return `${v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 })}${unit}`;
};

const latency = (s: Side | undefined) => (s?.p50Ms === undefined ? "" : `${fmt(s.p50Ms)} / ${fmt(s.p99Ms)} ms`);

const side = (s: Side | undefined, unit: string) => (s ? `${fmt(s.value)} ${unit}` : "—");

/** The table as aligned text (also valid as the body of a Markdown table with `markdown`). */
export function renderTable(rows: Row[], opts: { markdown?: boolean } = {}): string {
  const header = ["row", "ours", "p50 / p99", "baseline", "p50 / p99", "ratio", "target", "result"];
  const body = rows.map((r) => [
    r.title,
    side(r.ours, r.unit),
    latency(r.ours),
    r.baseline ? `${side(r.baseline, r.unit)} (${r.baseline.label})` : "—",
    latency(r.baseline),
    r.ratio === undefined ? "—" : `${fmt(r.ratio * 100)}%`,
    r.target?.text ?? "—",
    r.target ? (r.target.pass ? "pass" : "MISS") : "info",
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
