import { create } from "@bufbuild/protobuf";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";

/**
 * INVALID_ARGUMENT for a rule checked in code, shaped like the validator's
 * own errors: a `buf.validate.Violations` detail naming the field and rule.
 */
export function fieldViolation(fieldName: string, ruleId: string, message: string): ConnectError {
  const violations = create(ViolationsSchema, {
    violations: [{ field: { elements: [{ fieldName }] }, ruleId, message }],
  });
  return new ConnectError(`${fieldName}: ${message}`, Code.InvalidArgument, undefined, [
    { desc: ViolationsSchema, value: violations },
  ]);
}

/**
 * An error as a log line or stderr may show it: no statement parameters, no
 * PostgreSQL DETAIL, HINT or WHERE (they carry row values: `Key (email)=(…)`,
 * `Failing row contains (…)`), and no driver message (PostgreSQL's own can
 * quote a value, e.g. `invalid input syntax for type uuid: "…"`). What is
 * left tells an operator what failed: SQLSTATE, constraint, table, column,
 * the statement with placeholders, and a fixed message (the condition's name,
 * e.g. `unique violation`; PostgreSQL's own text only for the classes whose
 * messages never carry data, e.g. `canceling statement due to statement
 * timeout`).
 */
export interface LoggableError {
  type: string;
  message: string;
  /** SQLSTATE, or a system or driver code (ECONNRESET, CONNECTION_CLOSED). */
  code?: string;
  constraint?: string;
  table?: string;
  column?: string;
  schema?: string;
  /** The failed statement: placeholders ($1) only, quoted literals elided, cut at 500 characters. */
  query?: string;
  /** Stack frames under the safe first line. */
  stack?: string;
  cause?: LoggableError;
  /** An AggregateError's errors. */
  errors?: LoggableError[];
}

/** A SQLSTATE: two characters of class (digits, or F0, HV, P0, XX), three of condition. */
const SQLSTATE = /^(?:[0-9][0-9A-Z]|F0|HV|P0|XX)[0-9A-Z]{3}$/;
// A system or postgres.js code whose message is fixed text and an address (ECONNRESET, CONNECTION_CLOSED),
// unlike Node's ERR_* argument errors, which quote the value they refused.
const SYSTEM_CODE = /^(?!ERR_)[A-Z][A-Z0-9_]+$/;
const MAX_DEPTH = 8;
// SQLSTATE classes whose messages PostgreSQL writes without data (connection, rollback, resources,
// operator intervention: "canceling statement due to statement timeout"); kept, they tell more than the name.
const FIXED_TEXT = /^(?:08|40|53|57)/;

/** The SQLSTATE of err itself (not its causes), if it is a PostgreSQL error. */
export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === "string" && SQLSTATE.test(code) ? code : undefined;
}

/** err as a secret-free object for a log line (see {@link LoggableError}). */
export function loggableError(err: unknown): LoggableError {
  return loggable(err, scrubber(err), false, 0);
}

/**
 * One line for a log field or stderr: the safe messages of err and its
 * causes, joined by ": " (e.g. `failed query: unique violation (23505)`).
 */
export function errMessage(err: unknown): string | undefined {
  if (err === undefined) return undefined;
  const parts: string[] = [];
  for (let e: LoggableError | undefined = loggableError(err); e; e = e.cause) {
    const text = e.code && sqlState({ code: e.code }) ? `${e.message} (${e.code})` : e.message;
    if (parts.at(-1) !== text) parts.push(text);
  }
  return parts.join(": ");
}

/** err for stderr: its one line, then each safe stack (causes after "caused by:"). */
export function describeError(err: unknown): string {
  const lines = [errMessage(err) ?? "undefined"];
  for (let e: LoggableError | undefined = loggableError(err), first = true; e; e = e.cause, first = false) {
    const frames = e.stack?.split("\n").slice(1) ?? [];
    if (frames.length > 0) lines.push(first ? frames.join("\n") : `caused by: ${e.stack}`);
  }
  return lines.join("\n");
}

function loggable(err: unknown, scrub: (text: string) => string, inDriver: boolean, depth: number): LoggableError {
  if (!isErrorLike(err)) {
    return {
      type: typeof err,
      message: typeof err === "string" ? scrub(err) : `non-error value thrown (${typeof err})`,
    };
  }
  const e = err as Error & Record<string, unknown>;
  const type = typeof e.constructor === "function" && e.constructor.name ? e.constructor.name : String(e.name);
  const state = sqlState(e);
  const query = isQueryError(e) ? statementText(e.query as string) : undefined;
  const code = state ?? (typeof e.code === "string" && SYSTEM_CODE.test(e.code) ? e.code : undefined);
  let message: string;
  if (state) message = FIXED_TEXT.test(state) ? scrub(e.message) : conditionName(state);
  else if (query !== undefined) message = "failed query";
  else if (inDriver && !code) message = `${type} in the database driver (message not logged)`;
  else message = scrub(e.message);
  const out: LoggableError = { type, message };
  if (code) out.code = code;
  if (state) {
    const field = (...keys: string[]) => keys.map((k) => e[k]).find((v): v is string => typeof v === "string");
    const constraint = field("constraint_name", "constraint");
    const table = field("table_name", "table");
    const column = field("column_name", "column");
    const schema = field("schema_name", "schema");
    if (constraint) out.constraint = constraint;
    if (table) out.table = table;
    if (column) out.column = column;
    if (schema) out.schema = schema;
  }
  if (query !== undefined) out.query = query;
  const frames = typeof e.stack === "string" ? e.stack.split("\n").filter((l) => /^\s+at /.test(l)) : [];
  if (frames.length > 0) out.stack = [`${type}: ${message}`, ...frames].join("\n");
  if (depth < MAX_DEPTH) {
    const driver = inDriver || query !== undefined || state !== undefined;
    if (e.cause !== undefined) out.cause = loggable(e.cause, scrub, driver, depth + 1);
    if (Array.isArray(e.errors)) out.errors = e.errors.map((x) => loggable(x, scrub, driver, depth + 1));
  }
  return out;
}

const isErrorLike = (e: unknown): boolean =>
  e instanceof Error || (typeof e === "object" && e !== null && typeof (e as Error).message === "string");

// drizzle's DrizzleQueryError, and a PGlite error, carry the statement and its parameters.
const isQueryError = (e: Record<string, unknown>): boolean => typeof e.query === "string" && "params" in e;

/**
 * Removes from a message what a driver error in err's chain said: its
 * message, DETAIL, HINT and WHERE, and the statement parameters (drizzle
 * writes "\nparams: …" into its message; a wrapper may copy that message).
 */
function scrubber(err: unknown): (text: string) => string {
  const secrets = new Set<string>();
  const seen = new Set<unknown>();
  const visit = (e: unknown, depth: number) => {
    if (!isErrorLike(e) || seen.has(e) || depth > MAX_DEPTH) return;
    seen.add(e);
    const x = e as Record<string, unknown>;
    const params = x.params ?? x.parameters;
    if (Array.isArray(params)) {
      secrets.add(`\nparams: ${params}`);
      for (const p of params.flat()) {
        const text = typeof p === "string" ? p : p instanceof Uint8Array ? Buffer.from(p).toString("utf8") : "";
        if (text.length >= 8) secrets.add(text);
      }
    }
    const state = sqlState(x);
    if (state) {
      for (const key of ["message", "detail", "hint", "where", "internalQuery", "internal_query"]) {
        if (key === "message" && FIXED_TEXT.test(state)) continue;
        const v = x[key];
        if (typeof v === "string" && v.length > 0) secrets.add(v);
      }
    }
    visit(x.cause, depth + 1);
    if (Array.isArray(x.errors)) for (const inner of x.errors) visit(inner, depth + 1);
  };
  visit(err, 0);
  // Longest first, so a parameter inside the params line does not break its removal.
  const list = [...secrets].sort((a, b) => b.length - a.length);
  return (text) => list.reduce((t, s) => t.replaceAll(s, s.startsWith("\nparams: ") ? "" : "[redacted]"), text);
}

/** A statement for a log line: whitespace collapsed, quoted literals elided, at most 500 characters. */
function statementText(query: string): string {
  const text = query
    .replace(/'(?:[^']|'')*'/g, "'…'")
    .replace(/\s+/g, " ")
    .trim();
  return text.length > 500 ? `${text.slice(0, 500)}…` : text;
}

/** SQLSTATEs seen in this platform, by name (PostgreSQL's errcodes table, lowercased). */
const CONDITIONS: Record<string, string> = {
  "08000": "connection exception",
  "08003": "connection does not exist",
  "08006": "connection failure",
  "0A000": "feature not supported",
  "22001": "string data right truncation",
  "22003": "numeric value out of range",
  "22021": "character not in repertoire",
  "22P02": "invalid text representation",
  "22P05": "untranslatable character",
  "23502": "not null violation",
  "23503": "foreign key violation",
  "23505": "unique violation",
  "23514": "check violation",
  "23P01": "exclusion violation",
  "25006": "read only sql transaction",
  "25P02": "in failed sql transaction",
  "25P03": "idle in transaction session timeout",
  "28000": "invalid authorization specification",
  "28P01": "invalid password",
  "3D000": "invalid catalog name",
  "40001": "serialization failure",
  "40P01": "deadlock detected",
  "42501": "insufficient privilege",
  "42601": "syntax error",
  "42703": "undefined column",
  "42883": "undefined function",
  "42P01": "undefined table",
  "53100": "disk full",
  "53200": "out of memory",
  "53300": "too many connections",
  "55P03": "lock not available",
  "57014": "query canceled",
  "57P01": "admin shutdown",
  "57P02": "crash shutdown",
  "57P03": "cannot connect now",
  "57P05": "idle session timeout",
};
const CLASSES: Record<string, string> = {
  "08": "connection exception",
  "0A": "feature not supported",
  "21": "cardinality violation",
  "22": "data exception",
  "23": "integrity constraint violation",
  "25": "invalid transaction state",
  "28": "invalid authorization specification",
  "3D": "invalid catalog name",
  "3F": "invalid schema name",
  "40": "transaction rollback",
  "42": "syntax error or access rule violation",
  "53": "insufficient resources",
  "54": "program limit exceeded",
  "55": "object not in prerequisite state",
  "57": "operator intervention",
  "58": "system error",
  P0: "pl/pgsql error",
  XX: "internal error",
};

/** The fixed message for a SQLSTATE: its condition name, else its class's name. */
function conditionName(state: string): string {
  return CONDITIONS[state] ?? CLASSES[state.slice(0, 2)] ?? "database error";
}
