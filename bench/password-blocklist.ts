/**
 * What the new-password rules cost one sign-up (or ChangePassword): NFKC,
 * the code-point count, the email comparison and the common-password lookup
 * (identity-service/src/passwords.ts), measured in this process without a
 * server. The list is built once (at service start); its build time and size
 * are reported beside the per-check cost.
 *
 *   node --conditions=source --import tsx bench/password-blocklist.ts
 */
import { fileURLToPath } from "node:url";
import { brokenPasswordRule, commonPasswordList, isCommonPassword } from "../identity-service/src/passwords.js";

export interface PasswordBlocklistCost {
  /** Entries of the list (8 code points or more). */
  listSize: number;
  /** Building the Set, once per process, in ms. */
  buildMs: number;
  /** All rules of a new password (what a sign-up runs), µs per check. */
  rulesUsPerCheck: number;
  /** The list lookup alone (NFKC, lower case, two Set probes), µs per check. */
  lookupUsPerCheck: number;
  checks: number;
}

// A mix of what sign-ups send: passphrases, listed passwords, other scripts, long ones.
const SAMPLES = [
  "correct horse battery staple",
  "password",
  "Qwertyuiop",
  "12345678",
  "Tr0ub4dor&3-and-then-some",
  "ｐａｓｓｗｏｒｄ１",
  "mot de passe très sûr",
  "密码密码密码密码安全",
  "e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301e\u0301",
  "x".repeat(200),
];

/** Measures the rules and the lookup over `checks` calls each (after a warm-up); µs per check. */
export function measurePasswordBlocklist(checks = 200_000): PasswordBlocklistCost {
  const buildStart = performance.now();
  const list = commonPasswordList();
  const buildMs = performance.now() - buildStart;
  const email = "someone@example.com";
  let sink = 0;
  const run = (f: (p: string) => unknown, n: number) => {
    const start = performance.now();
    for (let i = 0; i < n; i++) if (f(SAMPLES[i % SAMPLES.length] ?? "")) sink++;
    return ((performance.now() - start) * 1000) / n;
  };
  const rules = (p: string) => brokenPasswordRule(p, email, list);
  const lookup = (p: string) => isCommonPassword(p, list);
  run(rules, Math.min(checks, 20_000));
  run(lookup, Math.min(checks, 20_000));
  const rulesUsPerCheck = run(rules, checks);
  const lookupUsPerCheck = run(lookup, checks);
  if (sink < 0) throw new Error("unreachable");
  return { listSize: list.size, buildMs, rulesUsPerCheck, lookupUsPerCheck, checks };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const r = measurePasswordBlocklist();
  console.log(
    `password rules: ${r.rulesUsPerCheck.toFixed(3)} µs per sign-up, of which list lookup ${r.lookupUsPerCheck.toFixed(3)} µs ` +
      `(${r.listSize} entries, built once in ${r.buildMs.toFixed(1)} ms; ${r.checks} checks each)`,
  );
}
