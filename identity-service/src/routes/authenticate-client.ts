import { timingSafeEqual } from "node:crypto";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq, sql } from "drizzle-orm";
import { clients } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { grantAudiences, type TokenSetInit } from "../sessions.js";
import { hashToken, signAccessToken } from "../tokens.js";

// Compared against when the client is unknown, so both paths do the same work.
const NO_SECRET = hashToken("no such client");

/** A confidential client, as stored. */
export type ClientRow = typeof clients.$inferSelect;

/**
 * Client credentials, checked: the client whose secret this is, enabled.
 * UNAUTHENTICATED for an unknown client or a wrong secret (the same work
 * either way); FAILED_PRECONDITION for a disabled client, told only to
 * whoever holds the secret. Shared by AuthenticateClient and the OAuth
 * endpoints (oauth/), which answer these as `invalid_client`.
 */
export function clientAuthenticator(
  deps: Pick<AuthServiceDeps, "db">,
): (clientId: string, clientSecret: string) => Promise<ClientRow> {
  // Built once: the SQL text is not rebuilt per call, and PostgreSQL parses and plans it once per connection.
  const byId = deps.db
    .select()
    .from(clients)
    .where(eq(clients.clientId, sql.placeholder("clientId")))
    .prepare("authenticate_client");
  return async (clientId, clientSecret) => {
    const [client] = await byId.execute({ clientId });
    const presented = hashToken(clientSecret);
    const matches = timingSafeEqual(presented, client?.secretHash ?? NO_SECRET);
    if (!client || !matches) {
      throw new ConnectError("invalid client credentials", Code.Unauthenticated);
    }
    if (client.disabledAt) throw new ConnectError("client disabled", Code.FailedPrecondition);
    return client;
  };
}

/** The scope to grant: the requested one (each allowed to the client), or all of the client's; else PERMISSION_DENIED (OAuth `invalid_scope`). */
export function clientScope(client: Pick<ClientRow, "scopes">, requestedScope: string): string {
  const requested = requestedScope.split(" ").filter(Boolean);
  const denied = requested.filter((s) => !client.scopes.includes(s));
  if (denied.length > 0) {
    throw new ConnectError(`scope not allowed for this client: ${denied.join(" ")}`, Code.PermissionDenied);
  }
  return (requested.length > 0 ? [...new Set(requested)] : client.scopes).join(" ");
}

/** The audiences to grant (RFC 8707) within the client's; else PERMISSION_DENIED (OAuth `invalid_target`). */
export function clientAudiences(
  client: Pick<ClientRow, "audiences" | "defaultAudiences">,
  requested: readonly string[],
): string[] {
  return grantAudiences(requested, { allowed: client.audiences, default: client.defaultAudiences });
}

/** The access token of a client credentials grant, for a scope and audiences already granted. */
export async function issueClientToken(
  deps: Pick<AuthServiceDeps, "keys" | "tokens">,
  client: Pick<ClientRow, "clientId" | "tokensValidAfter">,
  scope: string,
  audience: readonly string[],
): Promise<TokenSetInit> {
  const access = await signAccessToken(deps.keys, deps.tokens, {
    sub: client.clientId,
    clientId: client.clientId,
    scope,
    audience: [...audience],
    // Never stamped before the client's cut-off, which revoked its earlier tokens.
    ...(client.tokensValidAfter && { notBefore: Math.ceil(client.tokensValidAfter.getTime() / 1000) }),
  });
  return {
    accessToken: access.token,
    tokenType: "Bearer",
    expiresIn: access.expiresIn,
    refreshToken: "",
    scope,
    audience: access.audience,
  };
}

/** AuthenticateClient: client credentials grant for services (POST /oauth2/token does the same, oauth/). */
export function authenticateClient(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "authenticateClient"> {
  const authenticate = clientAuthenticator(deps);
  return {
    async authenticateClient(req) {
      const client = await authenticate(req.clientId, req.clientSecret);
      // A client registered for the authorization code grant only signs customers in, never itself.
      if (!client.grantTypes.includes("client_credentials")) {
        throw new ConnectError("client not registered for client credentials", Code.PermissionDenied);
      }
      const scope = clientScope(client, req.scope);
      const audience = clientAudiences(client, req.audience);
      return { tokens: await issueClientToken(deps, client, scope, audience) };
    },
  };
}
