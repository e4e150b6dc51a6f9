import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq } from "drizzle-orm";
import { identities } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { TokenRevocationReason } from "../events.js";
import { issueCustomerTokens, revokeSessions } from "../sessions.js";
import { invalidLogin, rejectPasswordEqualToEmail } from "./credentials.js";

/**
 * ChangePassword: the caller's token names the customer; the current password
 * proves it is them. Ends every session the customer had (their refresh
 * tokens, and with a TokensRevoked event their access tokens) and starts a
 * new one.
 */
export function changePassword(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "changePassword"> {
  return {
    async changePassword(req, ctx) {
      const principal = await deps.auth.authenticate(ctx);
      if (principal.kind !== "customer") {
        throw new ConnectError("only a customer token can change a password", Code.PermissionDenied);
      }
      const throttleKey = `change-password:${principal.subject}`;
      await deps.throttle.reserve(throttleKey);
      const [identity] = await deps.db.select().from(identities).where(eq(identities.customerId, principal.subject));
      if (identity?.status !== "active") throw invalidLogin();
      if (!(await deps.passwords.verify(identity.passwordHash, req.currentPassword))) {
        throw new ConnectError("current password is wrong", Code.Unauthenticated);
      }
      await deps.throttle.succeed(throttleKey);
      rejectPasswordEqualToEmail(identity.email, req.newPassword, "new_password");
      const passwordHash = await deps.passwords.hash(req.newPassword);
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
        return issueCustomerTokens(deps, tx, identity.customerId);
      });
      return { tokens };
    },
  };
}
