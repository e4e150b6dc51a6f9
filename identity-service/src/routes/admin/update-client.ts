import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { type ClientSettings, updateClient as update } from "../../clients.js";
import { type AdminServiceDeps, authorizeAdmin, clientContext, clientNotFound } from "./authorize.js";
import { clientMessage, rethrowAsViolation, settingsOf } from "./client-message.js";

type Change = Partial<Omit<ClientSettings, "isPublic">>;

/** update_mask's paths (the contract allows exactly these; `public` is not one) and the settings they change. */
const FIELDS: Record<string, keyof Change> = {
  description: "description",
  scopes: "scopes",
  audiences: "audiences",
  default_audiences: "defaultAudiences",
  grant_types: "grantTypes",
  redirect_uris: "redirectUris",
  post_logout_redirect_uris: "postLogoutRedirectUris",
  first_party: "firstParty",
};

/** UpdateClient: the fields update_mask names, checked as a whole with the rest, audited. */
export function updateClient(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "updateClient"> {
  return {
    async updateClient(req, ctx) {
      const actor = await authorizeAdmin(deps, ctx);
      // Both required by the contract; the validator has refused a request without them.
      const c = req.client;
      const paths = req.updateMask?.paths ?? [];
      if (!c || paths.length === 0) throw new ConnectError("client and update_mask are required", Code.InvalidArgument);
      const asked = settingsOf(c);
      const change: Change = Object.fromEntries(
        paths.flatMap((p) => {
          const key = FIELDS[p];
          return key ? [[key, asked[key]]] : [];
        }),
      );
      const updated = await update(clientContext(deps), c.clientId, change, actor).catch(rethrowAsViolation);
      if (updated === "not_found") throw clientNotFound();
      return { client: clientMessage(updated) };
    },
  };
}
