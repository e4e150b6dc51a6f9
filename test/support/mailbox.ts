/**
 * Codes from an identity service's dev mailbox (IDENTITY_MAILBOX_DIR: the
 * harness gives every identity service it starts one, see limits.ts): what a
 * customer would read in the mail, for tests that sign up or change an email
 * as a customer does.
 */
import type { CompleteSignUpResponse } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { readMailbox } from "@customer-platform/runtime/mail";
import { until } from "./timing.js";

/** The 8-digit code of the `n`-th mail (from 1, oldest first) to `address` in the mailbox at `dir`, waiting for it. */
export async function mailedCode(dir: string, address: string, n = 1): Promise<string> {
  const to = address.toLowerCase();
  let code: string | undefined;
  // until(), not expect.poll: it works in hooks too (beforeAll signs customers up).
  await until(
    `mail ${n} with a code to ${address}`,
    async () => {
      const mails = (await readMailbox(dir)).filter((m) => m.to.toLowerCase() === to && /\b\d{8}\b/.test(m.text));
      code = /\b(\d{8})\b/.exec(mails[n - 1]?.text ?? "")?.[1];
      return code !== undefined;
    },
    15_000,
    20,
  );
  return code as string;
}

/** What signUpByMail needs of an AuthService client. */
interface SignUpClient {
  startSignUp(req: { email: string }): Promise<unknown>;
  completeSignUp(req: {
    email: string;
    code: string;
    password: string;
    audience?: string[];
  }): Promise<CompleteSignUpResponse>;
}

/**
 * Signs up as a customer does (StartSignUp, the code from the dev mailbox at
 * `dir`, CompleteSignUp): a verified identity, whose access token carries its
 * email, so the customer service lets it register a profile. Each address
 * must be new (the code is the first mail to it).
 */
export async function signUpByMail(
  auth: SignUpClient,
  dir: string,
  req: { email: string; password: string; audience?: string[] },
): Promise<CompleteSignUpResponse> {
  await auth.startSignUp({ email: req.email });
  const code = await mailedCode(dir, req.email);
  return auth.completeSignUp({ ...req, code });
}
