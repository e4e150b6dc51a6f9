import { timingSafeEqual } from "node:crypto";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq, sql } from "drizzle-orm";
import { clients } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { grantAudiences } from "../sessions.js";
import { hashToken, signAccessToken } from "../tokens.js";

// Compared against when the client is unknown, so both paths do the same work.
const NO_SECRET = hashToken("no such client");

/** AuthenticateClient: client credentials grant for services. */
export function authenticateClient(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "authenticateClient"> {
  // Built once: the SQL text is not rebuilt per call, and PostgreSQL parses and plans it once per connection.
  const byId = deps.db
    .select()
    .from(clients)
    .where(eq(clients.clientId, sql.placeholder("clientId")))
    .prepare("authenticate_client");
  return {
    async authenticateClient(req) {
      const [client] = await byId.execute({ clientId: req.clientId });
      const presented = hashToken(req.clientSecret);
      const matches = timingSafeEqual(presented, client?.secretHash ?? NO_SECRET);
      if (!client || !matches) {
        throw new ConnectError("invalid client credentials", Code.Unauthenticated);
      }
      // Told only to whoever holds the secret.
      if (client.disabledAt) throw new ConnectError("client disabled", Code.FailedPrecondition);
      const requested = req.scope.split(" ").filter(Boolean);
      const denied = requested.filter((s) => !client.scopes.includes(s));
      if (denied.length > 0) {
        throw new ConnectError(`scope not allowed for this client: ${denied.join(" ")}`, Code.PermissionDenied);
      }
      const scope = (requested.length > 0 ? [...new Set(requested)] : client.scopes).join(" ");
      const audience = grantAudiences(req.audience, { allowed: client.audiences, default: client.defaultAudiences });
      const access = await signAccessToken(deps.keys, deps.tokens, {
        sub: client.clientId,
        clientId: client.clientId,
        scope,
        audience,
        // Never stamped before the client's cut-off, which revoked its earlier tokens.
        ...(client.tokensValidAfter && { notBefore: Math.ceil(client.tokensValidAfter.getTime() / 1000) }),
      });
      return {
        tokens: {
          accessToken: access.token,
          tokenType: "Bearer",
          expiresIn: access.expiresIn,
          refreshToken: "",
          scope,
          audience: access.audience,
        },
      };
    },
  };
}
