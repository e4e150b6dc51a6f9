import type { ServiceImpl } from "@connectrpc/connect";
import type { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { fieldViolation } from "@customer-platform/runtime/errors";
import { CLIENT_ID, listClients as list } from "../../clients.js";
import { type AdminServiceDeps, authorizeAdmin } from "./authorize.js";
import { clientMessage } from "./client-message.js";

const DEFAULT_PAGE_SIZE = 100;
/** A page token: the last client id of the page before, marked so that only ours decode. */
const TOKEN_PREFIX = "clients:";
const pageToken = (after: string) => Buffer.from(`${TOKEN_PREFIX}${after}`).toString("base64url");

function afterOf(token: string): string {
  if (token === "") return "";
  const text = Buffer.from(token, "base64url").toString();
  const after = text.startsWith(TOKEN_PREFIX) ? text.slice(TOKEN_PREFIX.length) : "";
  if (!CLIENT_ID.test(after) || pageToken(after) !== token) {
    throw fieldViolation("page_token", "page_token.valid", "is not a page token of ListClients");
  }
  return after;
}

/** ListClients: clients in client id order, a page at a time (keyset on the client id). */
export function listClients(deps: AdminServiceDeps): Pick<ServiceImpl<typeof AdminService>, "listClients"> {
  return {
    async listClients(req, ctx) {
      await authorizeAdmin(deps, ctx);
      const after = afterOf(req.pageToken);
      const size = req.pageSize || DEFAULT_PAGE_SIZE;
      // One more than the page: whether there is a next one.
      const rows = await list(deps.db, size + 1, after);
      const page = rows.slice(0, size);
      const last = page.at(-1);
      return {
        clients: page.map(clientMessage),
        nextPageToken: rows.length > size && last ? pageToken(last.clientId) : "",
      };
    },
  };
}
