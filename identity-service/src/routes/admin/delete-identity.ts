import type { ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { eraseIdentity } from "../../erase.js";
import { type AdminServiceDeps, accountContext, authorizeAdmin, customerNotFound } from "./authorize.js";

/** DeleteIdentity: erases the account (erase.ts); one already erased stays so, one that never existed is NOT_FOUND. */
export function deleteIdentity(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "deleteIdentity"> {
  return {
    async deleteIdentity(req, ctx) {
      const actor = await authorizeAdmin(deps, ctx);
      const erased = await eraseIdentity(accountContext(deps), req.customerId, { by: "admin", actor });
      if (erased === "not_found") throw customerNotFound();
      return {};
    },
  };
}
