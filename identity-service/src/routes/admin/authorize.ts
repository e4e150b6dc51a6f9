import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { SCOPE_IDENTITY_ADMIN } from "@customer-platform/sdk/scopes";
import type { AccountChangeContext } from "../../accounts.js";
import type { ClientRevocationContext } from "../../clients.js";
import type { AuthServiceDeps } from "../../deps.js";
import type { AuditActor } from "../../events.js";

/** The scope an AdminService caller's token must carry (with the identity service's audience, the issuer). */
export { SCOPE_IDENTITY_ADMIN };

/** What the AdminService handlers need: the AuthService's deps, in part. */
export type AdminServiceDeps = Pick<
  AuthServiceDeps,
  "db" | "auth" | "events" | "tokens" | "now" | "firstPartyClientId" | "firstPartyAudiences"
>;

/**
 * The caller of an AdminService RPC, as the audit names it: a service token
 * for the identity service with the scope identity:admin. UNAUTHENTICATED
 * without a valid token (deps.auth), PERMISSION_DENIED for a customer token
 * or a service token without the scope.
 */
export async function authorizeAdmin(
  deps: AdminServiceDeps,
  ctx: HandlerContext,
): Promise<AuditActor & { kind: "client" }> {
  const principal = await deps.auth.authenticate(ctx);
  if (principal.kind !== "service") {
    throw new ConnectError("only a service token may call AdminService", Code.PermissionDenied);
  }
  if (!principal.scopes.has(SCOPE_IDENTITY_ADMIN)) {
    throw new ConnectError(`AdminService requires the scope ${SCOPE_IDENTITY_ADMIN}`, Code.PermissionDenied);
  }
  return { kind: "client", id: principal.clientId };
}

/** An account change's context, at this moment. */
export const accountContext = (deps: AdminServiceDeps): AccountChangeContext => ({
  db: deps.db,
  events: deps.events,
  tokens: deps.tokens,
  now: deps.now(),
});

/** A client change's context, at this moment (registrations, status, secrets). */
export const clientContext = (deps: AdminServiceDeps): ClientRevocationContext => ({
  db: deps.db,
  outbox: deps.events,
  accessTokenTtlSec: deps.tokens.accessTokenTtlSec,
  now: deps.now(),
});

export const customerNotFound = () => new ConnectError("customer not found", Code.NotFound);
export const clientNotFound = () => new ConnectError("client not found", Code.NotFound);
