/**
 * One-time codes sent by mail (recovery, sign-up, email change): 8 random
 * digits, stored only as a salted SHA-256 (one_time_codes), compared in
 * constant time. A code is short-lived, works once and allows a bounded
 * number of wrong guesses. Each purpose has a start-* route that stores and
 * mails one and a complete-* route that redeems it (redeemCode, useCode).
 */
import { createHash, randomBytes, randomInt, timingSafeEqual } from "node:crypto";
import type { ConnectError } from "@connectrpc/connect";
import type { Db } from "@customer-platform/runtime/db";
import { and, eq, isNull, sql } from "drizzle-orm";
import type * as schema from "./db/schema.js";
import { oneTimeCodes } from "./db/schema.js";
import { fieldError } from "./passwords.js";

/** Digits in a code: 10^8 values, at most CODE_MAX_ATTEMPTS guesses each. */
export const CODE_DIGITS = 8;
/** Wrong guesses a code allows; the next one finds it used up. */
export const CODE_MAX_ATTEMPTS = 5;

/** What codes are for; one live code per identity (per email for a sign-up) and purpose. */
export type CodePurpose = "recovery" | "sign-up" | "email-change";

/** The answer to every code that does not work, whatever the reason (an unknown email included). */
export const invalidCode = (): ConnectError => fieldError("code", "code.invalid", "invalid or expired code");

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

/** A stored code as a complete-* route found it: the newest live one for its identity or email and purpose. */
export interface StoredCode {
  readonly id: string;
  readonly salt: Buffer;
  readonly codeHash: Buffer;
  readonly attempts: number;
  readonly expiresAt: Date;
}

/**
 * Checks `code` against the stored one and throws invalidCode() unless it is
 * live and matches. A wrong guess is counted, and the last one allowed uses
 * the code up; nothing is used up by a match (the caller's transaction does
 * that, with useCode).
 */
export async function redeemCode<T extends StoredCode>(
  db: Db<typeof schema>,
  stored: T | undefined,
  code: string,
  now: Date,
): Promise<T> {
  if (!stored || stored.expiresAt <= now || stored.attempts >= CODE_MAX_ATTEMPTS) throw invalidCode();
  if (!codeMatches(code, stored.salt, stored.codeHash)) {
    await db
      .update(oneTimeCodes)
      .set({
        attempts: sql`${oneTimeCodes.attempts} + 1`,
        consumedAt: sql`case when ${oneTimeCodes.attempts} + 1 >= ${CODE_MAX_ATTEMPTS} then ${now.toISOString()}::timestamptz end`,
      })
      .where(and(eq(oneTimeCodes.id, stored.id), isNull(oneTimeCodes.consumedAt)));
    throw invalidCode();
  }
  return stored;
}

/**
 * Uses a redeemed code up, in the transaction of the change it allows; of two
 * parallel redemptions only one gets here first, the other gets invalidCode().
 */
export async function useCode(tx: Pick<Db<typeof schema>, "update">, codeId: string, now: Date): Promise<void> {
  const used = await tx
    .update(oneTimeCodes)
    .set({ consumedAt: now })
    .where(and(eq(oneTimeCodes.id, codeId), isNull(oneTimeCodes.consumedAt)))
    .returning({ id: oneTimeCodes.id });
  if (used.length === 0) throw invalidCode();
}

/** The columns redeemCode needs, for a select of one_time_codes. */
export const storedCodeColumns = {
  id: oneTimeCodes.id,
  salt: oneTimeCodes.salt,
  codeHash: oneTimeCodes.codeHash,
  attempts: oneTimeCodes.attempts,
  expiresAt: oneTimeCodes.expiresAt,
};
