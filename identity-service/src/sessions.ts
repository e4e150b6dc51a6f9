/**
 * Issuing token sets and checking the access tokens that callers present to
 * the identity service itself, revocations included (offline verifiers learn
 * of them from TokensRevoked events).
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { TokenSetSchema } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { type Authenticator, bearerToken, type Principal, revokedAccessToken } from "@customer-platform/runtime/auth";
import type { Db } from "@customer-platform/runtime/db";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { and, eq, isNotNull, isNull, sql } from "drizzle-orm";
import type * as schema from "./db/schema.js";
import { refreshTokens, revokedAccessTokens } from "./db/schema.js";
import type { AuthServiceDeps } from "./deps.js";
import { emitTokensRevoked, TokenRevocationReason } from "./events.js";
import { type KeyStore, newRefreshToken, signAccessToken, type TokenSettings, verifyOwnAccessToken } from "./tokens.js";

export type TokenSetInit = MessageInitShape<typeof TokenSetSchema>;

/** Scopes a customer's own tokens carry. */
export const CUSTOMER_SCOPE = "openid profile customer:self";

type Tx = Parameters<Parameters<Db<typeof schema>["transaction"]>[0]>[0];

/**
 * Issues an access token and a refresh token for a customer. The refresh
 * token row is written in tx; familyId continues a rotation chain. The
 * family is the sign-in session: the access token's `sid`.
 */
export async function issueCustomerTokens(
  deps: Pick<AuthServiceDeps, "keys" | "tokens" | "firstPartyClientId">,
  tx: Tx,
  customerId: string,
  family?: { familyId: string; parentId: string },
): Promise<TokenSetInit> {
  const id = uuidv7();
  const familyId = family?.familyId ?? id;
  const access = await signAccessToken(deps.keys, deps.tokens, {
    sub: customerId,
    clientId: deps.firstPartyClientId,
    scope: CUSTOMER_SCOPE,
    sid: familyId,
  });
  const refresh = newRefreshToken();
  const now = new Date();
  await tx.insert(refreshTokens).values({
    id,
    tokenHash: refresh.hash,
    familyId,
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
      if (await isAccessTokenRevoked(db, principal)) throw revokedAccessToken();
      return principal;
    },
  };
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * True when one of our verified access tokens was revoked: by its `jti`
 * (RevokeToken), or with its session (`sid`: the refresh-token family was
 * revoked by RevokeToken, reuse detection or ChangePassword).
 */
export async function isAccessTokenRevoked(
  db: Db<typeof schema>,
  principal: Pick<Principal, "tokenId" | "sessionId">,
): Promise<boolean> {
  const byJti = db
    .select({ revoked: sql<number>`1` })
    .from(revokedAccessTokens)
    .where(eq(revokedAccessTokens.jti, principal.tokenId));
  const sid = principal.sessionId;
  // We sign sid as a family id (a UUID); anything else cannot name a family.
  const rows =
    sid && UUID.test(sid)
      ? await byJti
          .unionAll(
            db
              .select({ revoked: sql<number>`1` })
              .from(refreshTokens)
              .where(and(eq(refreshTokens.familyId, sid), isNotNull(refreshTokens.revokedAt))),
          )
          .limit(1)
      : await byJti;
  return rows.length > 0;
}

/**
 * When the last access token of a session revoked now expires: none is
 * issued after the revocation, and none lives longer than the TTL.
 */
function sessionRevocationExpiry(tokens: Pick<TokenSettings, "accessTokenTtlSec">, now: Date): Date {
  // Tokens are stamped with the service's clock (the key store's, deps.now), as `now` is.
  return new Date(now.getTime() + tokens.accessTokenTtlSec * 1000);
}

/** What refresh_tokens.revoke_reason records for each reason a session is revoked. */
const REVOKE_REASON: Record<SessionRevocationReason, string> = {
  [TokenRevocationReason.REVOKED]: "revoked",
  [TokenRevocationReason.REFRESH_TOKEN_REUSED]: "reuse",
  [TokenRevocationReason.PASSWORD_CHANGED]: "password_changed",
};
type SessionRevocationReason = Exclude<TokenRevocationReason, TokenRevocationReason.UNSPECIFIED>;

/**
 * Revokes sessions (refresh-token families) in tx: one session, or every
 * session of the customer. Marks their live refresh tokens with the reason
 * and emits one TokensRevoked for their `sid`s in the same
 * transaction. False when nothing was live (then nothing is emitted).
 */
export async function revokeSessions(
  tx: Tx,
  deps: Pick<AuthServiceDeps, "events" | "tokens">,
  scope: { customerId: string; familyId?: string },
  reason: SessionRevocationReason,
  now: Date,
): Promise<boolean> {
  const revoked = await tx
    .update(refreshTokens)
    .set({ revokedAt: now, revokeReason: REVOKE_REASON[reason] })
    .where(
      and(
        scope.familyId ? eq(refreshTokens.familyId, scope.familyId) : eq(refreshTokens.customerId, scope.customerId),
        isNull(refreshTokens.revokedAt),
      ),
    )
    .returning({ familyId: refreshTokens.familyId });
  const sessionIds = [...new Set(revoked.map((r) => r.familyId))];
  if (sessionIds.length === 0) return false;
  await emitTokensRevoked(
    tx,
    deps.events,
    {
      owner: { customerId: scope.customerId },
      sessionIds,
      expireTime: sessionRevocationExpiry(deps.tokens, now),
      reason,
    },
    now,
  );
  return true;
}

/** The owner of a token, as TokensRevoked names it. */
export function tokenOwner(principal: Pick<Principal, "kind" | "subject" | "clientId">) {
  return principal.kind === "customer" ? { customerId: principal.subject } : { clientId: principal.clientId };
}
