import type { ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import type { AdminServiceDeps } from "./authorize.js";
import { createClient } from "./create-client.js";
import { deleteIdentity } from "./delete-identity.js";
import { disableClient } from "./disable-client.js";
import { disableIdentity } from "./disable-identity.js";
import { enableClient } from "./enable-client.js";
import { enableIdentity } from "./enable-identity.js";
import { getClient } from "./get-client.js";
import { listClients } from "./list-clients.js";
import { rotateClientSecret } from "./rotate-client-secret.js";
import { updateClient } from "./update-client.js";

export type { AdminServiceDeps } from "./authorize.js";

/**
 * The AdminService handlers, one file per RPC: an operator's actions on
 * accounts and clients (suspension, erasure, client registration), for a
 * service token with the scope identity:admin.
 * Every change is audited (AuditRecorded) in its own transaction.
 */
export function createAdminService(deps: AdminServiceDeps): ServiceImpl<typeof AdminService> {
  return {
    ...disableIdentity(deps),
    ...enableIdentity(deps),
    ...deleteIdentity(deps),
    ...disableClient(deps),
    ...enableClient(deps),
    ...createClient(deps),
    ...getClient(deps),
    ...listClients(deps),
    ...updateClient(deps),
    ...rotateClientSecret(deps),
  };
}
