/**
 * Issuing token sets and checking the access tokens that callers present to
 * the identity service itself (with revocations, which offline verifiers
 * cannot see).
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { TokenSetSchema } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { eq } from "drizzle-orm";
import { type Authenticator, bearerToken } from "../../runtime/auth.js";
import type { Db } from "../../runtime/db.js";
import { uuidv7 } from "../../runtime/ids.js";
import type * as schema from "./db/schema.js";
import { refreshTokens, revokedAccessTokens } from "./db/schema.js";
import type { AuthServiceDeps } from "./deps.js";
import { type KeyStore, newRefreshToken, signAccessToken, type TokenSettings, verifyOwnAccessToken } from "./tokens.js";

export type TokenSetInit = MessageInitShape<typeof TokenSetSchema>;

/** Scopes a customer's own tokens carry. */
export const CUSTOMER_SCOPE = "openid profile customer:self";

type Tx = Parameters<Parameters<Db<typeof schema>["transaction"]>[0]>[0];

/**
 * Issues an access token and a refresh token for a customer. The refresh
 * token row is written in tx; familyId continues a rotation chain.
 */
export async function issueCustomerTokens(
  deps: Pick<AuthServiceDeps, "keys" | "tokens" | "firstPartyClientId">,
  tx: Tx,
  customerId: string,
  family?: { familyId: string; parentId: string },
): Promise<TokenSetInit> {
  const access = await signAccessToken(deps.keys, deps.tokens, {
    sub: customerId,
    clientId: deps.firstPartyClientId,
    scope: CUSTOMER_SCOPE,
  });
  const refresh = newRefreshToken();
  const now = new Date();
  const id = uuidv7();
  await tx.insert(refreshTokens).values({
    id,
    tokenHash: refresh.hash,
    familyId: family?.familyId ?? id,
    parentId: family?.parentId ?? null,
    customerId,
    clientId: deps.firstPartyClientId,
    scope: CUSTOMER_SCOPE,
    createdAt: now,
    expiresAt: new Date(now.getTime() + deps.tokens.refreshTokenTtlSec * 1000),
  });
  return {
    accessToken: access.token,
    tokenType: "Bearer",
    expiresIn: access.expiresIn,
    refreshToken: refresh.token,
    scope: CUSTOMER_SCOPE,
  };
}

/** An authenticator for the identity service's own RPCs: our signature, our issuer, not revoked. */
export function createOwnTokenAuthenticator(
  db: Db<typeof schema>,
  keys: KeyStore,
  tokens: TokenSettings,
): Authenticator {
  return {
    async authenticate(ctx) {
      const principal = await verifyOwnAccessToken(keys, tokens, bearerToken(ctx));
      const [revoked] = await db
        .select({ jti: revokedAccessTokens.jti })
        .from(revokedAccessTokens)
        .where(eq(revokedAccessTokens.jti, principal.tokenId));
      if (revoked) throw new ConnectError("access token revoked", Code.Unauthenticated);
      return principal;
    },
  };
}
