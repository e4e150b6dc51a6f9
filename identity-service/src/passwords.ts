/**
 * Passwords: the rules a new password must meet, and hashing with argon2id.
 *
 * Rules (NIST SP 800-63B 5.1.1.2, OWASP ASVS V2.1): the password is
 * normalised (NFKC) first, then checked: not only whitespace, 8 to 256 code
 * points, not the email address (both normalised, ignoring case), not on the
 * list of common and breached passwords. The contract's own constraints
 * (protovalidate, before the handler) are a first pass on the raw string.
 *
 * Hashing runs on libuv's thread pool, so the event loop never waits for it;
 * a fair queue (argon2-queue.ts) bounds how much of the pool runs at once and
 * shares it between client addresses.
 */
import { create } from "@bufbuild/protobuf";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import { dictionary } from "@zxcvbn-ts/language-common";
import argon2 from "argon2";
import type { FairQueue } from "./argon2-queue.js";

/** argon2id cost parameters. */
export interface Argon2Params {
  /** Memory in KiB. */
  memoryCost: number;
  timeCost: number;
  parallelism: number;
}

/** OWASP's recommendation (Password Storage Cheat Sheet): m=19456 KiB, t=2, p=1. */
export const OWASP_ARGON2: Argon2Params = { memoryCost: 19_456, timeCost: 2, parallelism: 1 };

/** Fewest code points a password has after normalisation (NIST SP 800-63B: at least 8). */
export const PASSWORD_MIN_CODE_POINTS = 8;
/** Most code points a password has after normalisation (the contract's max_len). */
export const PASSWORD_MAX_CODE_POINTS = 256;

// NIST SP 800-63B: normalise Unicode so one password typed on two keyboards is one password.
/** The form of a password that is checked and hashed: NFKC. */
export const normalizePassword = (password: string) => password.normalize("NFKC");

/**
 * The common-password list: @zxcvbn-ts/language-common's "passwords-common"
 * (about 49,000 of the most frequent passwords of breach corpora, lower
 * case), in a Set built once, on first use, of the entries a password could
 * equal (8 code points or more, NFKC, lower case).
 */
let commonPasswords: ReadonlySet<string> | undefined;
export function commonPasswordList(): ReadonlySet<string> {
  commonPasswords ??= new Set(
    dictionary["passwords-common"]
      .map((p) => normalizePassword(p).toLowerCase())
      .filter((p) => codePoints(p) >= PASSWORD_MIN_CODE_POINTS),
  );
  return commonPasswords;
}

/** Whether password (as typed) is on the common-password list, ignoring case and surrounding whitespace. */
export function isCommonPassword(password: string, list: ReadonlySet<string> = commonPasswordList()): boolean {
  const p = normalizePassword(password).toLowerCase();
  return list.has(p) || list.has(p.trim());
}

/** Which rule a new password breaks. */
export type PasswordRule =
  | "password.not_blank"
  | "password.min_len"
  | "password.max_len"
  | "password.not_email"
  | "password.not_common";

const RULE_MESSAGES: Record<PasswordRule, string> = {
  "password.not_blank": "must not be only whitespace",
  "password.min_len": `must be at least ${PASSWORD_MIN_CODE_POINTS} characters after Unicode normalization (NFKC)`,
  "password.max_len": `must be at most ${PASSWORD_MAX_CODE_POINTS} characters after Unicode normalization (NFKC)`,
  "password.not_email": "must not be the email address",
  "password.not_common": "must not be a commonly used or breached password",
};

/** The first rule password breaks as a new password for email, or undefined. Never looks at anything else. */
export function brokenPasswordRule(
  password: string,
  email: string,
  list: ReadonlySet<string> = commonPasswordList(),
): PasswordRule | undefined {
  const p = normalizePassword(password);
  if (p.trim() === "") return "password.not_blank";
  const n = codePoints(p);
  if (n < PASSWORD_MIN_CODE_POINTS) return "password.min_len";
  if (n > PASSWORD_MAX_CODE_POINTS) return "password.max_len";
  if (p.trim().toLowerCase() === normalizePassword(email).trim().toLowerCase()) return "password.not_email";
  if (isCommonPassword(p, list)) return "password.not_common";
  return undefined;
}

/**
 * INVALID_ARGUMENT unless password may be set for email. The error names the
 * field and the rule (as `buf.validate.Violations`, like the validator's
 * own errors, and as `google.rpc.BadRequest`), never the password.
 */
export function checkNewPassword(password: string, email: string, field: "password" | "new_password"): void {
  const rule = brokenPasswordRule(password, email);
  if (!rule) return;
  throw fieldError(field, rule, RULE_MESSAGES[rule]);
}

/**
 * INVALID_ARGUMENT for one field of the request, with its violation as the
 * validator gives its own (`buf.validate.Violations`) and as
 * `google.rpc.BadRequest`.
 */
export function fieldError(field: string, ruleId: string, message: string): ConnectError {
  return new ConnectError(`${field}: ${message} [${ruleId}]`, Code.InvalidArgument, undefined, [
    {
      desc: ViolationsSchema,
      value: create(ViolationsSchema, {
        violations: [{ field: { elements: [{ fieldName: field }] }, ruleId, message }],
      }),
    },
    {
      desc: BadRequestSchema,
      value: create(BadRequestSchema, { fieldViolations: [{ field, description: message, reason: ruleId }] }),
    },
  ]);
}

const codePoints = (s: string) => {
  let n = 0;
  for (const _ of s) n++;
  return n;
};

export interface PasswordHasher {
  /** The argon2id hash of the normalised password; `client` is the caller's address, for the fair queue. */
  hash(password: string, client?: string): Promise<string>;
  /** Whether password matches hash; false for a malformed hash. */
  verify(hash: string, password: string, client?: string): Promise<boolean>;
  /**
   * Spends the time of a verification without a stored hash, so an unknown
   * login answers as slowly as a known one.
   */
  verifyDummy(password: string, client?: string): Promise<void>;
  /** Whether hash was made with other parameters than the current ones. */
  needsRehash(hash: string): boolean;
}

/**
 * A hasher with the given parameters; resolves once its dummy hash is ready.
 * With a queue, every hash and verification waits its fair turn in it
 * (RESOURCE_EXHAUSTED when the caller's share of the queue is full).
 */
export async function createPasswordHasher(
  params: Argon2Params = OWASP_ARGON2,
  queue?: FairQueue,
): Promise<PasswordHasher> {
  const options = { type: argon2.argon2id, ...params } as const;
  const dummy = await argon2.hash("dummy password for unknown logins", options);
  const run = <T>(client: string | undefined, work: () => Promise<T>) =>
    queue ? queue.run(client ?? "", work) : work();
  const verify = (hash: string, password: string, client?: string) =>
    run(client, async () => {
      try {
        return await argon2.verify(hash, normalizePassword(password));
      } catch {
        return false;
      }
    });
  return {
    hash: (password, client) => run(client, () => argon2.hash(normalizePassword(password), options)),
    verify,
    async verifyDummy(password, client) {
      await verify(dummy, password, client);
    },
    needsRehash: (hash) => argon2.needsRehash(hash, params),
  };
}
