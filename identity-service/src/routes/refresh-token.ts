import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { placeholder } from "@customer-platform/runtime/db";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { and, eq, exists, gt, isNull, or, sql } from "drizzle-orm";
import { identities, refreshTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { TokenRevocationReason } from "../events.js";
import { revokeSessions, type TokenSetInit } from "../sessions.js";
import { hashToken, invalidRefreshToken, newRefreshToken, signAccessToken } from "../tokens.js";

/**
 * RefreshToken: rotation, in one prepared statement and one round trip (no
 * BEGIN/COMMIT: a statement is atomic by itself). Its `UPDATE … RETURNING`
 * marks the presented token rotated only if it is still live (not rotated,
 * not revoked, not expired, its session not ended, its identity active) and
 * its session allows the audiences asked for (RFC 8707: fewer, never more);
 * the successor is inserted by the same statement, from the row it
 * returned. Two parallel uses of one token cannot both succeed: the second
 * waits for the first's row lock, then matches nothing. A token that matched
 * nothing is looked at once more, in a transaction: a rotated one is reuse,
 * which revokes the family (RFC 9700), with a TokensRevoked event for the
 * family's access tokens; a live one whose session does not allow the
 * audiences is PERMISSION_DENIED, still unrotated. The new tokens keep the
 * session's audiences (the access token may ask for fewer) and its end
 * (sign-in + the absolute session lifetime).
 */
export function refreshToken(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "refreshToken"> {
  const grant = refreshTokenGrant(deps);
  return {
    async refreshToken(req) {
      return { tokens: await grant(req.refreshToken, req.audience) };
    },
  };
}

/**
 * The rotation itself, shared by RefreshToken and the OAuth token endpoint's
 * `refresh_token` grant (oauth/): the new token set, or UNAUTHENTICATED
 * (`invalid refresh token`, OAuth `invalid_grant`) or PERMISSION_DENIED (an
 * audience the session does not allow, OAuth `invalid_target`).
 */
export function refreshTokenGrant(
  deps: AuthServiceDeps,
): (refreshToken: string, audience: readonly string[], clientId?: string) => Promise<TokenSetInit> {
  const rotate = prepareRotation(deps);
  // A session is refreshed by the client it was issued to (RFC 6749 §6): the first-party app's by the RPC.
  return async (refreshToken, audience, clientId = deps.firstPartyClientId) => {
    const hash = hashToken(refreshToken);
    const now = deps.now();
    const requested = [...new Set(audience)];
    // The signing key before the rotation commits: with none live the token must stay unrotated.
    deps.keys.current();
    const successor = newRefreshToken();
    const [token] = await rotate.execute({
      hash,
      now,
      requested,
      defaultAudiences: [...deps.firstPartyAudiences.default],
      id: uuidv7(),
      successorHash: successor.hash,
      clientId,
      refreshUntil: new Date(now.getTime() + deps.tokens.refreshTokenTtlSec * 1000),
      sessionUntil: new Date(now.getTime() + deps.tokens.sessionMaxLifetimeSec * 1000),
    });
    if (!token) return notRotated(deps, hash, requested, now, clientId);
    const access = await signAccessToken(deps.keys, deps.tokens, {
      sub: token.customerId,
      clientId,
      scope: token.scope,
      audience: requested.length > 0 ? requested : token.audiences,
      sid: token.familyId,
      email: token.email,
    });
    return {
      accessToken: access.token,
      tokenType: "Bearer",
      expiresIn: access.expiresIn,
      refreshToken: successor.token,
      scope: token.scope,
      audience: access.audience,
    };
  };
}

/**
 * The rotation as one statement: a CTE `rotated` (the conditional `UPDATE …
 * RETURNING`), a CTE inserting the successor for each row it returned, and
 * the rotated row's customer, family and session audiences (a session from
 * before audiences has the first-party default). Built once and prepared, so
 * PostgreSQL parses and plans it once per connection.
 */
function prepareRotation(deps: AuthServiceDeps) {
  const { db } = deps;
  const now = placeholder("now", refreshTokens.rotatedAt);
  const textArray = (name: string) => sql`${placeholder(name, refreshTokens.audiences)}::text[]`;
  // The session's audiences: the row's, or the first-party default for a row older than audiences.
  const sessionAudiences = sql`(case when cardinality(${refreshTokens.audiences}) = 0 then ${textArray("defaultAudiences")} else ${refreshTokens.audiences} end)`;
  const rotated = db.$with("rotated").as(
    db
      .update(refreshTokens)
      .set({ rotatedAt: now })
      .where(
        and(
          eq(refreshTokens.tokenHash, placeholder("hash", refreshTokens.tokenHash)),
          eq(refreshTokens.clientId, placeholder("clientId", refreshTokens.clientId)),
          isNull(refreshTokens.rotatedAt),
          isNull(refreshTokens.revokedAt),
          gt(refreshTokens.expiresAt, now),
          or(isNull(refreshTokens.sessionExpiresAt), gt(refreshTokens.sessionExpiresAt, now)),
          exists(
            db
              .select({ one: sql`1` })
              .from(identities)
              .where(and(eq(identities.customerId, refreshTokens.customerId), eq(identities.status, "active"))),
          ),
          // Narrowing only (RFC 8707): every audience asked for is one of the session's; none asked, all.
          sql`${sessionAudiences} @> ${textArray("requested")}`,
        ),
      )
      .returning({
        id: sql<string>`${refreshTokens.id}`.as("id"),
        familyId: sql<string>`${refreshTokens.familyId}`.as("family_id"),
        customerId: sql<string>`${refreshTokens.customerId}`.as("customer_id"),
        scope: sql<string>`${refreshTokens.scope}`.as("scope"),
        audiences: sql<string[]>`${sessionAudiences}`.as("audiences"),
        sessionExpiresAt: sql<Date | null>`${refreshTokens.sessionExpiresAt}`.as("session_expires_at"),
        // The access token's `email` claim: the identity's, if verified (a primary-key lookup). Qualified
        // by hand: drizzle writes a RETURNING's columns without their table, which the subquery would capture.
        email: sql<string | null>`(select i.email from identities i
          where i.customer_id = "refresh_tokens"."customer_id" and i.email_verified_at is not null)`.as("email"),
      }),
  );
  // No refresh token of a session outlives its end; a session older than the absolute lifetime ends a lifetime from now.
  const sessionEnd = sql`coalesce(${rotated}."session_expires_at", ${placeholder("sessionUntil", refreshTokens.sessionExpiresAt)})`;
  const successor = db.$with("successor", {}).as(
    sql`insert into ${refreshTokens} (id, token_hash, family_id, parent_id, customer_id, client_id, scope, audiences,
      created_at, expires_at, session_expires_at)
      select ${placeholder("id", refreshTokens.id)}, ${placeholder("successorHash", refreshTokens.tokenHash)},
        ${rotated}."family_id", ${rotated}."id", ${rotated}."customer_id", ${placeholder("clientId", refreshTokens.clientId)},
        ${rotated}."scope", ${rotated}."audiences", ${now},
        least(${placeholder("refreshUntil", refreshTokens.expiresAt)}, ${sessionEnd}), ${sessionEnd}
      from ${rotated}`,
  );
  return db
    .with(rotated, successor)
    .select({
      customerId: sql<string>`${rotated}."customer_id"`,
      familyId: sql<string>`${rotated}."family_id"`,
      scope: sql<string>`${rotated}."scope"`,
      audiences: sql<string[]>`${rotated}."audiences"`,
      email: sql<string | null>`${rotated}."email"`,
    })
    .from(rotated)
    .prepare("refresh_token_rotate");
}

/**
 * Why a token was not rotated, under its row lock: a rotated one is reuse
 * (which wins over its expiry, as it must) and revokes its family, committed
 * before the caller hears of it; a live one was asked for audiences its
 * session does not allow (PERMISSION_DENIED, the token stays usable);
 * anything else is an invalid refresh token.
 */
async function notRotated(
  deps: AuthServiceDeps,
  hash: Buffer,
  requested: string[],
  now: Date,
  clientId: string,
): Promise<never> {
  const outcome = await deps.db.transaction(async (tx): Promise<"invalid" | "reused" | string[]> => {
    const [presented] = await tx
      .select({
        customerId: refreshTokens.customerId,
        familyId: refreshTokens.familyId,
        clientId: refreshTokens.clientId,
        rotatedAt: refreshTokens.rotatedAt,
        revokedAt: refreshTokens.revokedAt,
        expiresAt: refreshTokens.expiresAt,
        sessionExpiresAt: refreshTokens.sessionExpiresAt,
        audiences: refreshTokens.audiences,
        active: exists(
          tx
            .select({ one: sql`1` })
            .from(identities)
            .where(and(eq(identities.customerId, refreshTokens.customerId), eq(identities.status, "active"))),
        ).mapWith(Boolean),
      })
      .from(refreshTokens)
      .where(eq(refreshTokens.tokenHash, hash))
      .for("update");
    // Another client's token is not this client's to use, nor to revoke by replaying it.
    if (!presented || presented.revokedAt || presented.clientId !== clientId) return "invalid";
    if (presented.rotatedAt) {
      await revokeSessions(tx, deps, presented, TokenRevocationReason.REFRESH_TOKEN_REUSED, now);
      return "reused";
    }
    const live =
      presented.expiresAt > now &&
      (presented.sessionExpiresAt === null || presented.sessionExpiresAt > now) &&
      presented.active;
    if (!live) return "invalid";
    const audiences = presented.audiences.length > 0 ? presented.audiences : deps.firstPartyAudiences.default;
    return requested.filter((a) => !audiences.includes(a));
  });
  if (typeof outcome === "string" || outcome.length === 0) throw invalidRefreshToken();
  throw new ConnectError(`audience not allowed for this session: ${outcome.join(" ")}`, Code.PermissionDenied);
}
