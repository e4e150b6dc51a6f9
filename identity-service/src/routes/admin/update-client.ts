import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { ClientRegistrationError, type ClientSettings, updateClient as update } from "../../clients.js";
import { type AdminServiceDeps, authorizeAdmin, changeContext, clientNotFound } from "./authorize.js";
import { clientMessage, registrationViolation } from "./client-message.js";

type Change = Partial<Omit<ClientSettings, "isPublic">>;

/** UpdateClient: the fields update_mask names, checked as a whole with the rest, audited. */
export function updateClient(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "updateClient"> {
  return {
    async updateClient(req, ctx) {
      const actor = await authorizeAdmin(deps, ctx);
      // Both required by the contract; the validator has refused a request without them.
      const c = req.client;
      const paths = req.updateMask?.paths ?? [];
      if (!c || paths.length === 0) throw new ConnectError("client and update_mask are required", Code.InvalidArgument);
      const change: Change = {};
      // The contract limits the paths to these (field_mask.in).
      for (const path of paths) {
        if (path === "description") change.description = c.description;
        else if (path === "scopes") change.scopes = c.scopes;
        else if (path === "audiences") change.audiences = c.audiences;
        else if (path === "default_audiences") change.defaultAudiences = c.defaultAudiences;
        else if (path === "grant_types") change.grantTypes = c.grantTypes;
        else if (path === "redirect_uris") change.redirectUris = c.redirectUris;
        else if (path === "post_logout_redirect_uris") change.postLogoutRedirectUris = c.postLogoutRedirectUris;
        else if (path === "first_party") change.firstParty = c.firstParty;
      }
      const updated = await update(changeContext(deps), c.clientId, change, actor).catch((err: unknown) => {
        if (err instanceof ClientRegistrationError) throw registrationViolation(err);
        throw err;
      });
      if (updated === "not_found") throw clientNotFound();
      return { client: clientMessage(updated) };
    },
  };
}
