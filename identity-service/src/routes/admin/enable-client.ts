import type { ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { enableClient as enable } from "../../clients.js";
import { type AdminServiceDeps, authorizeAdmin, clientContext, clientNotFound } from "./authorize.js";

/** EnableClient: lifts a client's suspension; its revoked tokens stay revoked. */
export function enableClient(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "enableClient"> {
  return {
    async enableClient(req, ctx) {
      const actor = await authorizeAdmin(deps, ctx);
      if ((await enable(clientContext(deps), req.clientId, actor)) === "not_found") throw clientNotFound();
      return {};
    },
  };
}
