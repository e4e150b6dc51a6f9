import type { ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { disableIdentity as disable } from "../../accounts.js";
import { type AdminServiceDeps, accountContext, authorizeAdmin, customerNotFound } from "./authorize.js";

/** DisableIdentity: suspends the account and ends its sessions; a disabled one stays as it is. */
export function disableIdentity(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "disableIdentity"> {
  return {
    async disableIdentity(req, ctx) {
      const actor = await authorizeAdmin(deps, ctx);
      if ((await disable(accountContext(deps), req.customerId, actor)) === "not_found") throw customerNotFound();
      return {};
    },
  };
}
