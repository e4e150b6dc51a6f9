import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq } from "drizzle-orm";
import { identities } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { emitPasswordChanged, PasswordChangeKind, TokenRevocationReason } from "../events.js";
import { checkNewPassword } from "../passwords.js";
import { grantAudiences, issueCustomerTokens, revokeSessions, sessionClient, verifiedEmail } from "../sessions.js";
import { reauthenticate } from "./credentials.js";

/**
 * ChangePassword: the caller's token names the customer; the current password
 * proves it is them. Ends every session the customer had (their refresh
 * tokens, and with a TokensRevoked event their access tokens), emits
 * PasswordChanged and starts a new one.
 */
export function changePassword(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "changePassword"> {
  return {
    async changePassword(req, ctx) {
      let audiences: string[] = [];
      const identity = await reauthenticate(deps, ctx, {
        action: "change a password",
        currentPassword: req.currentPassword,
        // The request's own rules, checked before an attempt is spent on the current password.
        beforeAttempt: (found) => {
          audiences = grantAudiences(req.audience, deps.firstPartyAudiences);
          checkNewPassword(req.newPassword, found.email, "new_password");
        },
      });
      const client = deps.clientAddress(ctx);
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
