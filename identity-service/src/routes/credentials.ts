import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import { identities } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { authenticateCustomerCall } from "../sessions.js";
import { loginThrottleKey } from "../throttle.js";

/** The login form of an email: trimmed, lower case. */
export function normalizeEmail(email: string): string {
  return email.trim().toLowerCase();
}

/** The answer to every failed password sign-in, whatever failed. */
export const invalidLogin = () => new ConnectError("invalid email or password", Code.Unauthenticated);

/** The answer to the right password of an identity an operator disabled (AdminService.DisableIdentity). */
export const accountDisabled = () => new ConnectError("account disabled", Code.FailedPrecondition);

/** An identity row as the routes read it. */
export type IdentityRow = typeof identities.$inferSelect;

/**
 * The caller's active identity, proven twice, for what a stolen access token
 * alone must not do (ChangePassword, StartEmailChange, DeleteAccount): a
 * customer access token for the identity service names it (PERMISSION_DENIED
 * "only a customer token can <action>" for a service's), and the current
 * password is right (UNAUTHENTICATED "current password is wrong"). Attempts
 * count with sign-ins of its email, so a token buys no extra guesses.
 * `beforeAttempt` runs the checks that must not spend an attempt.
 */
export async function reauthenticate(
  deps: Pick<AuthServiceDeps, "auth" | "db" | "throttle" | "passwords" | "clientAddress">,
  ctx: HandlerContext,
  opts: { action: string; currentPassword: string; beforeAttempt?: (identity: IdentityRow) => unknown },
): Promise<IdentityRow> {
  const principal = await authenticateCustomerCall(deps, ctx, opts.action);
  const [identity] = await deps.db.select().from(identities).where(eq(identities.customerId, principal.subject));
  if (identity?.status !== "active") throw invalidLogin();
  await opts.beforeAttempt?.(identity);
  const throttleKey = loginThrottleKey(normalizeEmail(identity.email));
  await deps.throttle.reserve(throttleKey);
  if (!(await deps.passwords.verify(identity.passwordHash, opts.currentPassword, deps.clientAddress(ctx)))) {
    throw new ConnectError("current password is wrong", Code.Unauthenticated);
  }
  await deps.throttle.succeed(throttleKey);
  return identity;
}
