import { Code, ConnectError } from "@connectrpc/connect";
import { fieldViolation } from "@customer-platform/runtime/errors";

/** The login form of an email: trimmed, lower case. */
export function normalizeEmail(email: string): string {
  return email.trim().toLowerCase();
}

/** The answer to every failed password sign-in, whatever failed. */
export const invalidLogin = () => new ConnectError("invalid email or password", Code.Unauthenticated);

/**
 * INVALID_ARGUMENT when the password is the email (ignoring case): the
 * contract states the rule in CEL; this keeps it whatever the validator's
 * CEL library supports.
 */
export function rejectPasswordEqualToEmail(email: string, password: string, field: string): void {
  if (normalizeEmail(email) === password.trim().toLowerCase()) {
    throw fieldViolation(field, "password.not_email", "password must not be the email address");
  }
}
