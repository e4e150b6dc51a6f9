import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type { AuthServiceDeps } from "../deps.js";
import { eraseIdentity } from "../erase.js";
import { reauthenticate } from "./credentials.js";

/**
 * DeleteAccount: the caller's token names the customer; the current password
 * proves it is them (a guess counted with sign-ins, as ChangePassword's).
 * Then the account is erased (erase.ts), as the customer's own decision.
 */
export function deleteAccount(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "deleteAccount"> {
  return {
    async deleteAccount(req, ctx) {
      const identity = await reauthenticate(deps, ctx, {
        action: "delete an account",
        currentPassword: req.currentPassword,
      });
      const context = { db: deps.db, events: deps.events, tokens: deps.tokens, now: deps.now() };
      const actor = { kind: "customer", id: identity.customerId } as const;
      await eraseIdentity(context, identity.customerId, { by: "customer", actor });
      return {};
    },
  };
}
