import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq } from "drizzle-orm";
import { identities } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { eraseIdentity } from "../erase.js";
import { loginThrottleKey } from "../throttle.js";
import { invalidLogin, normalizeEmail } from "./credentials.js";

/**
 * DeleteAccount: the caller's token names the customer; the current password
 * proves it is them (a guess counted with sign-ins, as ChangePassword's).
 * Then the account is erased (erase.ts), as the customer's own decision.
 */
export function deleteAccount(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "deleteAccount"> {
  return {
    async deleteAccount(req, ctx) {
      const principal = await deps.auth.authenticate(ctx);
      if (principal.kind !== "customer") {
        throw new ConnectError("only a customer token can delete an account", Code.PermissionDenied);
      }
      const [identity] = await deps.db.select().from(identities).where(eq(identities.customerId, principal.subject));
      if (identity?.status !== "active") throw invalidLogin();
      // One counter with sign-in: a stolen token does not buy extra guesses at the password.
      const throttleKey = loginThrottleKey(normalizeEmail(identity.email));
      await deps.throttle.reserve(throttleKey);
      if (!(await deps.passwords.verify(identity.passwordHash, req.currentPassword, deps.clientAddress(ctx)))) {
        throw new ConnectError("current password is wrong", Code.Unauthenticated);
      }
      // The erasure forgets the throttle row of the email with everything else.
      const context = { db: deps.db, events: deps.events, tokens: deps.tokens, now: deps.now() };
      const actor = { kind: "customer", id: identity.customerId } as const;
      await eraseIdentity(context, identity.customerId, { by: "customer", actor });
      return {};
    },
  };
}
