import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { disableClient as disable } from "../../clients.js";
import { type AdminServiceDeps, authorizeAdmin, clientContext, clientNotFound } from "./authorize.js";

/** DisableClient: suspends a client and revokes its tokens; never the caller's own client. */
export function disableClient(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "disableClient"> {
  return {
    async disableClient(req, ctx) {
      const actor = await authorizeAdmin(deps, ctx);
      // It would lock the caller out with its own call; another admin client (or the CLI) may.
      if (req.clientId === actor.id) {
        throw new ConnectError("a client cannot disable itself", Code.PermissionDenied);
      }
      if ((await disable(clientContext(deps), req.clientId, actor)) === "not_found") throw clientNotFound();
      return {};
    },
  };
}
