/**
 * Codes from an identity service's dev mailbox (IDENTITY_MAILBOX_DIR: the
 * harness gives every identity service it starts one, see limits.ts): what a
 * customer would read in the mail, for tests that sign up or change an email
 * as a customer does.
 */
import { readMailbox } from "@customer-platform/runtime/mail";
import { expect } from "vitest";

/** The 8-digit code of the `n`-th mail (from 1, oldest first) to `address` in the mailbox at `dir`, waiting for it. */
export async function mailedCode(dir: string, address: string, n = 1): Promise<string> {
  const to = address.toLowerCase();
  let code: string | undefined;
  await expect
    .poll(
      async () => {
        const mails = (await readMailbox(dir)).filter((m) => m.to.toLowerCase() === to && /\b\d{8}\b/.test(m.text));
        code = /\b(\d{8})\b/.exec(mails[n - 1]?.text ?? "")?.[1];
        return code !== undefined;
      },
      { timeout: 15_000, interval: 20 },
    )
    .toBe(true);
  return code as string;
}
