import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { pgConstraint, pgErrorCode } from "@customer-platform/runtime/db";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { identities } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { issueCustomerTokens } from "../sessions.js";
import { normalizeEmail, rejectPasswordEqualToEmail } from "./credentials.js";

/** CreateCredentials: sign-up; mints the customer id. */
export function createCredentials(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "createCredentials"> {
  return {
    async createCredentials(req) {
      rejectPasswordEqualToEmail(req.email, req.password, "password");
      const passwordHash = await deps.passwords.hash(req.password);
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
          return issueCustomerTokens(deps, tx, customerId);
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
