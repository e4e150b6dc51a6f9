import { Code, ConnectError } from "@connectrpc/connect";

/** The login form of an email: trimmed, lower case. */
export function normalizeEmail(email: string): string {
  return email.trim().toLowerCase();
}

/** The answer to every failed password sign-in, whatever failed. */
export const invalidLogin = () => new ConnectError("invalid email or password", Code.Unauthenticated);

/** The answer to the right password of an identity an operator disabled (AdminService.DisableIdentity). */
export const accountDisabled = () => new ConnectError("account disabled", Code.FailedPrecondition);
