import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq } from "drizzle-orm";
import { identities } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { emitPasswordChanged, PasswordChangeKind, TokenRevocationReason } from "../events.js";
import { checkNewPassword } from "../passwords.js";
import { grantAudiences, issueCustomerTokens, revokeSessions, sessionClient, verifiedEmail } from "../sessions.js";
import { loginThrottleKey } from "../throttle.js";
import { invalidLogin, normalizeEmail } from "./credentials.js";

/**
 * ChangePassword: the caller's token names the customer; the current password
 * proves it is them. Ends every session the customer had (their refresh
 * tokens, and with a TokensRevoked event their access tokens), emits
 * PasswordChanged and starts a new one.
 */
export function changePassword(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "changePassword"> {
  return {
    async changePassword(req, ctx) {
      const principal = await deps.auth.authenticate(ctx);
      if (principal.kind !== "customer") {
        throw new ConnectError("only a customer token can change a password", Code.PermissionDenied);
      }
      const audiences = grantAudiences(req.audience, deps.firstPartyAudiences);
      const [identity] = await deps.db.select().from(identities).where(eq(identities.customerId, principal.subject));
      if (identity?.status !== "active") throw invalidLogin();
      // Sign-up's rules, checked before an attempt is spent on the current password.
      checkNewPassword(req.newPassword, identity.email, "new_password");
      // One counter with sign-in: a stolen token does not buy extra guesses at the password.
      const throttleKey = loginThrottleKey(normalizeEmail(identity.email));
      await deps.throttle.reserve(throttleKey);
      const client = deps.clientAddress(ctx);
      if (!(await deps.passwords.verify(identity.passwordHash, req.currentPassword, client))) {
        throw new ConnectError("current password is wrong", Code.Unauthenticated);
      }
      await deps.throttle.succeed(throttleKey);
      const passwordHash = await deps.passwords.hash(req.newPassword, client);
      const now = deps.now();
      const tokens = await deps.db.transaction(async (tx) => {
        await tx
          .update(identities)
          .set({ passwordHash, passwordChangedAt: now, updatedAt: now })
          .where(eq(identities.customerId, identity.customerId));
        await revokeSessions(
          tx,
          deps,
          { customerId: identity.customerId },
          TokenRevocationReason.PASSWORD_CHANGED,
          now,
        );
        await emitPasswordChanged(
          tx,
          deps.events,
          { customerId: identity.customerId, kind: PasswordChangeKind.CHANGED },
          now,
        );
        return issueCustomerTokens(deps, tx, identity.customerId, {
          audiences,
          email: verifiedEmail(identity),
          client: sessionClient(deps, ctx),
        });
      });
      return { tokens };
    },
  };
}
