/**
 * What the property-based fuzz tests of both services share: arbitraries for
 * hostile strings (SQL-shaped, control characters, unicode edge cases, long
 * strings), emails, the protocols each property runs over, and calls turned
 * into outcomes that must be OK or a code the contract documents.
 */
import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import fc from "fast-check";
import { bearer, type Protocol } from "./clients.js";

/** Runs of each property. */
export const RUNS = 150;
/** Deadline of each call: a hang fails as DEADLINE_EXCEEDED, which no property allows. */
const TIMEOUT_MS = 5_000;

/** Connect binary and JSON on HTTP/1.1, and gRPC (and, for GetCustomer, Connect GET). */
export const FUZZ_PROTOCOLS = ["connect-http1", "connect-json", "grpc"] as const satisfies readonly Protocol[];
export type FuzzProtocol = (typeof FUZZ_PROTOCOLS)[number];

/** Strings shaped like SQL injection. */
export const SQL_SHAPED = [
  "'; drop table customers; --",
  "Robert'); DROP TABLE customers;--",
  "' OR '1'='1",
  '" OR ""="',
  "1; SELECT pg_sleep(10); --",
  "'); delete from outbox; --",
  "$$ || (select password_hash from identities limit 1) || $$",
  "\\'; truncate customers cascade; --",
  "' UNION SELECT private_jwk FROM signing_keys --",
  "%' and 1=0 --",
  "'||pg_sleep(5)||'",
  "admin'--",
  "$1",
  "E'\\x27'",
  "';COPY customers TO PROGRAM 'id';--",
];
/** Email local parts a validator accepts that still look like SQL. */
export const SQL_EMAIL_LOCALS = ["'or'1'='1'--", "o'brien", "x'||'y", "admin'--", "'%27--"];
/** Characters that break naive handling: controls, invisible and bidi marks, surrogates, emoji, quoting. */
export const SPECIAL = [
  "\u0000",
  "\u0001",
  "\u0007",
  "\u001b",
  "\u007f",
  "\u0085",
  "\u00a0",
  "\u200b",
  "\u202e",
  "\u2028",
  "\ufeff",
  "\ufffd",
  "\ud800",
  "\udfff",
  "😀",
  "👩‍👩‍👧",
  "é",
  "e\u0301",
  "'",
  '"',
  ";",
  "--",
  "\\",
  "%",
  "_",
  "$",
  "\n",
  "\r",
  "\t",
  " ",
  "\u3000",
  "a",
];

/** Any hostile string: SQL-shaped, NUL, binary, graphemes, special characters, long repeats. */
export const evil = fc.oneof(
  { arbitrary: fc.constantFrom(...SQL_SHAPED), weight: 3 },
  // NUL: a classic for truncating strings in C and refused by PostgreSQL text.
  { arbitrary: fc.constantFrom("\u0000", "x\u0000'; drop table customers; --"), weight: 1 },
  { arbitrary: fc.string({ unit: "binary", maxLength: 30 }), weight: 3 },
  { arbitrary: fc.string({ unit: "grapheme", maxLength: 30 }), weight: 2 },
  { arbitrary: fc.string({ unit: fc.constantFrom(...SPECIAL), maxLength: 20 }), weight: 3 },
  {
    // Long strings: past every max_len, still far below the request size limit.
    arbitrary: fc
      .tuple(fc.constantFrom(...SQL_SHAPED, "x", "é", "😀"), fc.integer({ min: 2, max: 300 }))
      .map(([s, n]) => s.repeat(n).slice(0, 2500)),
    weight: 1,
  },
);
/** Strings that look blank to someone: every kind of space, and U+FEFF, which only JavaScript trims. */
export const blankish = fc.string({
  unit: fc.constantFrom(" ", "\t", "\ufeff", "\u00a0", "\u3000", "\u2028"),
  minLength: 1,
  maxLength: 4,
});
/** Eight characters that make an address unique. */
export const unique = () => randomUUID().slice(0, 8);
/** A valid, unique address. */
export const validEmail = fc.constant(null).map(() => `f.${unique()}@example.com`);
/** A valid, unique address whose local part looks like SQL. */
export const sqlEmail = fc.constantFrom(...SQL_EMAIL_LOCALS).map((l) => `${l}${unique()}@example.com`);
/** Mostly a valid value, so that requests get past validation; otherwise anything. */
export const mostly = <T>(valid: fc.Arbitrary<T>, other: fc.Arbitrary<T>) =>
  fc.oneof({ arbitrary: valid, weight: 4 }, { arbitrary: other, weight: 1 });

/** The outcome of a call: "OK" and its response, or the code's name and the error. */
export async function run<T>(call: Promise<T>): Promise<{ code: string; res?: T; err?: ConnectError }> {
  try {
    return { code: "OK", res: await call };
  } catch (e) {
    const err = ConnectError.from(e);
    return { code: Code[err.code] ?? String(err.code), err };
  }
}

/** Fails with the message of an unexpected code, so a counterexample shows it. */
export function expectCode(got: { code: string; err?: ConnectError }, allowed: string[]): void {
  if (!allowed.includes(got.code)) {
    throw new Error(`unexpected ${got.code}: ${got.err?.rawMessage ?? ""} (allowed: ${allowed.join(", ")})`);
  }
}

/** What the client puts on the wire for a string: lone surrogates become U+FFFD. */
export const wf = (s: string) =>
  s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, "\ufffd");
/** The stored form of a string the service trims. */
export const stored = (s: string) => wf(s).trim();
/** Call options: the token, if any, and a timeout, so a hang fails as DEADLINE_EXCEEDED. */
export const opts = (token?: string) => ({ ...(token ? bearer(token) : {}), timeoutMs: TIMEOUT_MS });
