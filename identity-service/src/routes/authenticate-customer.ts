import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { addressLimitKey } from "@customer-platform/runtime/interceptors";
import { eq, sql } from "drizzle-orm";
import { identities } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { AuthenticationMethod, emitCustomerAuthenticated } from "../events.js";
import { grantAudiences, issueCustomerTokens } from "../sessions.js";
import { loginThrottleKey } from "../throttle.js";
import { invalidLogin, normalizeEmail } from "./credentials.js";

/**
 * AuthenticateCustomer: password sign-in. Unknown email and wrong password
 * take the same path to the same answer: one lookup, one argon2id
 * verification (against a dummy hash when there is no identity), then
 * UNAUTHENTICATED.
 */
export function authenticateCustomer(
  deps: AuthServiceDeps,
): Pick<ServiceImpl<typeof AuthService>, "authenticateCustomer"> {
  return {
    async authenticateCustomer(req, ctx) {
      // Before the password is looked at: the answer depends on the request alone.
      const audiences = grantAudiences(req.audience, deps.firstPartyAudiences);
      const email = normalizeEmail(req.email);
      // Spraying (one guess at many logins) meets the limit per address; guessing at one login, its throttle.
      const client = deps.clientAddress(ctx);
      await deps.rateLimits.signIn.consume(addressLimitKey(client));
      const throttleKey = loginThrottleKey(email);
      await deps.throttle.reserve(throttleKey);
      const [identity] = await deps.db.select().from(identities).where(sql`lower(${identities.email}) = ${email}`);
      if (identity?.status !== "active") {
        await deps.passwords.verifyDummy(req.password, client);
        throw invalidLogin();
      }
      if (!(await deps.passwords.verify(identity.passwordHash, req.password, client))) throw invalidLogin();
      await deps.throttle.succeed(throttleKey);
      // Parameters got stronger since this hash was made: upgrade it now that we know the password.
      const rehash = deps.passwords.needsRehash(identity.passwordHash)
        ? await deps.passwords.hash(req.password, client)
        : undefined;
      const now = deps.now();
      const tokens = await deps.db.transaction(async (tx) => {
        await tx
          .update(identities)
          .set({ lastSignInAt: now, ...(rehash && { passwordHash: rehash, updatedAt: now }) })
          .where(eq(identities.customerId, identity.customerId));
        await emitCustomerAuthenticated(tx, deps.events, identity.customerId, AuthenticationMethod.PASSWORD, now);
        return issueCustomerTokens(deps, tx, identity.customerId, { audiences });
      });
      return { customerId: identity.customerId, tokens };
    },
  };
}
