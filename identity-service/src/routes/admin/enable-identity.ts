import type { ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { enableIdentity as enable } from "../../accounts.js";
import { type AdminServiceDeps, accountContext, authorizeAdmin, customerNotFound } from "./authorize.js";

/** EnableIdentity: lifts a suspension; an active account stays as it is. */
export function enableIdentity(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "enableIdentity"> {
  return {
    async enableIdentity(req, ctx) {
      const actor = await authorizeAdmin(deps, ctx);
      if ((await enable(accountContext(deps), req.customerId, actor)) === "not_found") throw customerNotFound();
      return {};
    },
  };
}
