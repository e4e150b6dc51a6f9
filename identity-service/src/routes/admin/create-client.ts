import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { createClient as create, newClientSettings } from "../../clients.js";
import { type AdminServiceDeps, authorizeAdmin, clientContext } from "./authorize.js";
import { clientMessage, rethrowAsViolation, settingsOf } from "./client-message.js";

/** CreateClient: registers a client (defaults filled in, checked), audited; its secret in the answer only. */
export function createClient(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "createClient"> {
  return {
    async createClient(req, ctx) {
      const actor = await authorizeAdmin(deps, ctx);
      // Required by the contract; the validator has refused a request without it.
      const c = req.client;
      if (!c) throw new ConnectError("client is required", Code.InvalidArgument);
      let settings: ReturnType<typeof newClientSettings>;
      try {
        settings = newClientSettings(settingsOf(c), { audiences: deps.firstPartyAudiences.default });
      } catch (err) {
        rethrowAsViolation(err);
      }
      // The first party's id names the identity service's own sign-in: never a registered client.
      const created =
        c.clientId === deps.firstPartyClientId
          ? "exists"
          : await create(clientContext(deps), c.clientId, settings, actor);
      if (created === "exists") throw new ConnectError("client exists", Code.AlreadyExists);
      return { client: clientMessage(created.client), clientSecret: created.client.isPublic ? "" : created.secret };
    },
  };
}
