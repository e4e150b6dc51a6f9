import type { ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { getClient as get } from "../../clients.js";
import { type AdminServiceDeps, authorizeAdmin, clientNotFound } from "./authorize.js";
import { clientMessage } from "./client-message.js";

/** GetClient: a client's registration, never its secret. */
export function getClient(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "getClient"> {
  return {
    async getClient(req, ctx) {
      await authorizeAdmin(deps, ctx);
      const client = await get(deps.db, req.clientId);
      if (!client) throw clientNotFound();
      return { client: clientMessage(client) };
    },
  };
}
