import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * Limits of the identity service loose enough for tests that are not about
 * them (and the deprecated CreateCredentials on, the quick way to an
 * identity, unverified): every test calls from 127.0.0.1, so the per-address limits
 * (sign-in, sign-up, the argon2 queue) would otherwise count every test in a
 * file as one client. Tests about the limits set their own values.
 */
export const IDENTITY_TEST_LIMITS: Readonly<Record<string, string>> = {
  IDENTITY_SIGN_IN_LIMIT: "1000000",
  IDENTITY_SIGN_UP_LIMIT: "1000000",
  IDENTITY_RECOVERY_LIMIT: "1000000",
  IDENTITY_SIGN_UP_EMAIL_LIMIT: "1000000",
  IDENTITY_EMAIL_CHANGE_LIMIT: "1000000",
  // Deprecated, off by default; tests that only need an identity use it (sign-up.test.ts tests it off).
  IDENTITY_LEGACY_CREATE_CREDENTIALS: "true",
  IDENTITY_ARGON2_QUEUE_PER_ADDRESS: "10000",
  IDENTITY_ARGON2_QUEUE_MAX: "100000",
};

let mailbox: string | undefined;

/**
 * Where an identity service started by the harness delivers mail unless the
 * test gives it an SMTP server (IDENTITY_SMTP_URL): a dev mailbox in a
 * temporary directory of this test process, never the repository's .data/.
 */
export function identityTestMail(env: Readonly<Record<string, string>>): Record<string, string> {
  if (env.IDENTITY_SMTP_URL !== undefined || env.IDENTITY_MAILBOX_DIR !== undefined) return {};
  mailbox ??= mkdtempSync(join(tmpdir(), "identity-mailbox-"));
  return { IDENTITY_MAILBOX_DIR: mailbox };
}
