import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { pgConstraint, pgErrorCode } from "@customer-platform/runtime/db";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { addressLimitKey } from "@customer-platform/runtime/interceptors";
import { identities } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { checkNewPassword } from "../passwords.js";
import { grantAudiences, issueCustomerTokens, sessionClient } from "../sessions.js";
import { normalizeEmail } from "./credentials.js";

/**
 * CreateCredentials (deprecated): the sign-up from before StartSignUp, off
 * unless IDENTITY_LEGACY_CREATE_CREDENTIALS=true. It mints the customer id
 * and stores an email nobody proved (verified later with StartEmailChange),
 * and its ALREADY_EXISTS tells the caller the address has an account.
 */
export function createCredentials(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "createCredentials"> {
  return {
    async createCredentials(req, ctx) {
      if (!deps.legacyCreateCredentials) {
        throw new ConnectError(
          "CreateCredentials is retired: sign up with StartSignUp and CompleteSignUp",
          Code.FailedPrecondition,
        );
      }
      // Before any work: an audience the first-party client may not have is refused outright.
      const audiences = grantAudiences(req.audience, deps.firstPartyAudiences);
      checkNewPassword(req.password, req.email, "password");
      const client = deps.clientAddress(ctx);
      await deps.rateLimits.signUp.consume(addressLimitKey(client));
      const passwordHash = await deps.passwords.hash(req.password, client);
      const customerId = uuidv7();
      const now = deps.now();
      try {
        const tokens = await deps.db.transaction(async (tx) => {
          await tx.insert(identities).values({
            customerId,
            email: normalizeEmail(req.email),
            passwordHash,
            createdAt: now,
            updatedAt: now,
            passwordChangedAt: now,
          });
          return issueCustomerTokens(deps, tx, customerId, { audiences, client: sessionClient(deps, ctx) });
        });
        return { customerId, tokens };
      } catch (err) {
        if (pgErrorCode(err) === "23505" && pgConstraint(err) === "identities_email_key") {
          throw new ConnectError("email already has credentials", Code.AlreadyExists);
        }
        throw err;
      }
    },
  };
}
