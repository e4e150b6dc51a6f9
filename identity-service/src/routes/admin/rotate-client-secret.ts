import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { rotateClientSecret as rotate } from "../../clients.js";
import { type AdminServiceDeps, authorizeAdmin, clientContext, clientNotFound } from "./authorize.js";

/** RotateClientSecret: a new secret for a confidential client, its earlier tokens revoked; never the caller's own. */
export function rotateClientSecret(
  deps: AdminServiceDeps,
): Pick<ServiceImpl<typeof AdminService>, "rotateClientSecret"> {
  return {
    async rotateClientSecret(req, ctx) {
      const actor = await authorizeAdmin(deps, ctx);
      // It would revoke the very token it calls with; another admin client (or the CLI) may.
      if (req.clientId === actor.id) {
        throw new ConnectError("a client cannot rotate its own secret here", Code.PermissionDenied);
      }
      const rotated = await rotate(clientContext(deps), req.clientId, actor);
      if (rotated === "not_found") throw clientNotFound();
      if (rotated === "public") throw new ConnectError("a public client has no secret", Code.FailedPrecondition);
      return { clientSecret: rotated.secret };
    },
  };
}
