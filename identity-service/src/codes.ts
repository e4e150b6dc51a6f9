/**
 * One-time codes sent by mail (recovery now; verification and email change
 * next): 8 random digits, stored only as a salted SHA-256 (one_time_codes),
 * compared in constant time. A code is short-lived, works once and allows a
 * bounded number of wrong guesses; see routes/start-recovery.ts and
 * routes/complete-recovery.ts for how each is used.
 */
import { createHash, randomBytes, randomInt, timingSafeEqual } from "node:crypto";

/** Digits in a code: 10^8 values, at most CODE_MAX_ATTEMPTS guesses each. */
export const CODE_DIGITS = 8;
/** Wrong guesses a code allows; the next one finds it used up. */
export const CODE_MAX_ATTEMPTS = 5;

/** What codes are for; one live code per identity and purpose. */
export type CodePurpose = "recovery";

/** A fresh code: the digits to mail, the salt and hash to store. */
export function newCode(): { code: string; salt: Buffer; hash: Buffer } {
  const code = randomInt(0, 10 ** CODE_DIGITS)
    .toString()
    .padStart(CODE_DIGITS, "0");
  const salt = randomBytes(16);
  return { code, salt, hash: hashCode(code, salt) };
}

/** The stored form of `code`. */
export function hashCode(code: string, salt: Buffer): Buffer {
  return createHash("sha256").update(salt).update(code, "utf8").digest();
}

/** Whether `code` is the one `hash` was made from, in time that does not depend on where they differ. */
export function codeMatches(code: string, salt: Buffer, hash: Buffer): boolean {
  const candidate = hashCode(code, salt);
  return candidate.length === hash.length && timingSafeEqual(candidate, hash);
}
