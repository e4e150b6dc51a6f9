/**
 * Issuing token sets and checking the access tokens that callers present to
 * the identity service itself, revocations included (offline verifiers learn
 * of them from TokensRevoked events).
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import type { TokenSetSchema } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { type Authenticator, bearerToken, type Principal, revokedAccessToken } from "@customer-platform/runtime/auth";
import type { Db } from "@customer-platform/runtime/db";
import { uuidv7 } from "@customer-platform/runtime/ids";
import type { Outbox } from "@customer-platform/runtime/outbox";
import { and, eq, gt, isNotNull, isNull, ne, or, sql } from "drizzle-orm";
import type * as schema from "./db/schema.js";
import {
  clients,
  deletedIdentities,
  identities,
  refreshTokens,
  revokedAccessTokens,
  signingKeys,
} from "./db/schema.js";
import type { AuthServiceDeps } from "./deps.js";
import { emitTokensRevoked, TokenRevocationReason } from "./events.js";
import { type KeyStore, newRefreshToken, signAccessToken, type TokenSettings, verifyOwnAccessToken } from "./tokens.js";

export type TokenSetInit = MessageInitShape<typeof TokenSetSchema>;

/** Scopes a customer's own tokens carry. */
export const CUSTOMER_SCOPE = "openid profile customer:self";

type Tx = Parameters<Parameters<Db<typeof schema>["transaction"]>[0]>[0];

/** The audiences a client may ask tokens for (RFC 8707), and those it gets when it asks for none. */
export interface AudiencePolicy {
  readonly allowed: readonly string[];
  readonly default: readonly string[];
}

/**
 * The audiences to grant: the requested ones, each allowed, or the default
 * when none are requested. PERMISSION_DENIED names those not allowed (RFC
 * 8707 `invalid_target`; a malformed one is INVALID_ARGUMENT from the
 * contract's rules).
 */
export function grantAudiences(requested: readonly string[], policy: AudiencePolicy): string[] {
  if (requested.length === 0) return [...policy.default];
  const denied = requested.filter((a) => !policy.allowed.includes(a));
  if (denied.length > 0) {
    throw new ConnectError(`audience not allowed for this client: ${denied.join(" ")}`, Code.PermissionDenied);
  }
  return [...new Set(requested)];
}

/** A session to continue (a refresh), or a new one's audiences. */
export type SessionInit = (
  | { audiences: readonly string[] }
  | {
      /** The session's audiences; the refresh token keeps them all. */
      audiences: readonly string[];
      /** This access token's: the session's, or some of them (a narrowing refresh). */
      accessAudiences: readonly string[];
      familyId: string;
      parentId: string;
      /** When the session ends; null for a session older than the absolute lifetime, which ends a lifetime from now. */
      sessionExpiresAt: Date | null;
    }
) & {
  /** The customer's verified email, for the access token's `email` claim; null or absent while unverified. */
  email?: string | null;
  /** A new session's sign-in (ignored for a rotation): stored on its first refresh-token row for ListSessions. */
  client?: SessionClient;
  /** The OAuth client the session is for (the authorization code flow); default the first-party app. */
  clientId?: string;
  /** The session's scope (what the customer granted that client); default CUSTOMER_SCOPE. */
  scope?: string;
};

/** Who signed in, as ListSessions shows it: the User-Agent header and the client address seen at sign-in. */
export interface SessionClient {
  readonly userAgent: string | null;
  readonly ipAddress: string | null;
}

/** The most of a User-Agent header a session keeps. */
export const USER_AGENT_MAX_LENGTH = 256;

/** The sign-in's client: its User-Agent (cut to 256 characters; null if absent or empty) and address. */
export function sessionClient(
  deps: Pick<AuthServiceDeps, "clientAddress">,
  ctx: Pick<HandlerContext, "values" | "requestHeader">,
): SessionClient {
  const userAgent = ctx.requestHeader.get("user-agent");
  return {
    userAgent: userAgent ? userAgent.slice(0, USER_AGENT_MAX_LENGTH) : null,
    ipAddress: deps.clientAddress(ctx),
  };
}

/** A new session's (or a rotation's) tokens, and the refresh-token row that stores the refresh token's hash. */
export interface CustomerSession {
  row: typeof refreshTokens.$inferInsert & { id: string; customerId: string; createdAt: Date };
  tokens: TokenSetInit;
}

/**
 * Mints an access token and a refresh token for a customer, and the refresh
 * token row to write (the caller writes it, in the statement or transaction
 * of the change it belongs to). A family continues a rotation chain. The
 * family is the sign-in session: the access token's `sid`. No refresh token
 * of a session outlives its sign-in + the absolute session lifetime.
 */
export async function newCustomerSession(
  deps: Pick<AuthServiceDeps, "keys" | "tokens" | "firstPartyClientId" | "now">,
  customerId: string,
  session: SessionInit,
): Promise<CustomerSession> {
  const id = uuidv7();
  const family = "familyId" in session ? session : undefined;
  const familyId = family?.familyId ?? id;
  const audience = family?.accessAudiences ?? session.audiences;
  const clientId = session.clientId ?? deps.firstPartyClientId;
  const scope = session.scope ?? CUSTOMER_SCOPE;
  const access = await signAccessToken(deps.keys, deps.tokens, {
    sub: customerId,
    clientId,
    scope,
    audience,
    sid: familyId,
    email: session.email ?? null,
  });
  const refresh = newRefreshToken();
  const now = deps.now();
  const sessionExpiresAt =
    family?.sessionExpiresAt ?? new Date(now.getTime() + deps.tokens.sessionMaxLifetimeSec * 1000);
  const expiresAt = new Date(
    Math.min(now.getTime() + deps.tokens.refreshTokenTtlSec * 1000, sessionExpiresAt.getTime()),
  );
  return {
    row: {
      id,
      tokenHash: refresh.hash,
      familyId,
      parentId: family?.parentId ?? null,
      customerId,
      clientId,
      scope,
      audiences: [...session.audiences],
      createdAt: now,
      expiresAt,
      sessionExpiresAt,
      // The sign-in's client, on the family's first row only: a rotation does not copy it.
      userAgent: family ? null : (session.client?.userAgent ?? null),
      ipAddress: family ? null : (session.client?.ipAddress ?? null),
    },
    tokens: {
      accessToken: access.token,
      tokenType: "Bearer",
      expiresIn: access.expiresIn,
      refreshToken: refresh.token,
      scope,
      audience: access.audience,
    },
  };
}

/** The email for an access token's `email` claim: the identity's, if verified. */
export function verifiedEmail(identity: { email: string; emailVerifiedAt: Date | null }): string | null {
  return identity.emailVerifiedAt ? identity.email : null;
}

/** Issues an access token and a refresh token for a customer (newCustomerSession), the refresh token row written in tx. */
export async function issueCustomerTokens(
  deps: Pick<AuthServiceDeps, "keys" | "tokens" | "firstPartyClientId" | "now">,
  tx: Tx,
  customerId: string,
  session: SessionInit,
): Promise<TokenSetInit> {
  const { row, tokens } = await newCustomerSession(deps, customerId, session);
  await tx.insert(refreshTokens).values(row);
  return tokens;
}

/**
 * An authenticator for the identity service's own RPCs: our signature, our
 * issuer, our audience (the issuer: a token for a resource server is
 * refused), not revoked.
 */
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

/**
 * The customer a call is from: their access token for the identity service
 * (deps.auth, revocations included). PERMISSION_DENIED for a service's token:
 * `only a customer token can <action>`.
 */
export async function authenticateCustomerCall(
  deps: Pick<AuthServiceDeps, "auth">,
  ctx: HandlerContext,
  action: string,
): Promise<Principal> {
  const principal = await deps.auth.authenticate(ctx);
  if (principal.kind !== "customer") {
    throw new ConnectError(`only a customer token can ${action}`, Code.PermissionDenied);
  }
  return principal;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * True when one of our verified access tokens must no longer be accepted:
 * revoked by its `jti` (RevokeToken) or with its session (`sid`: the
 * refresh-token family was revoked by RevokeToken, reuse detection or
 * ChangePassword), signed with a revoked key, issued to a client that was
 * disabled or whose tokens were cut off (secret rotation) since, or to a
 * customer whose identity is no longer active or was erased. One round trip.
 */
export async function isAccessTokenRevoked(
  db: Db<typeof schema>,
  principal: Pick<Principal, "kind" | "subject" | "clientId" | "tokenId" | "sessionId" | "keyId" | "issuedAt">,
): Promise<boolean> {
  const sid = principal.sessionId;
  // We sign sid as a family id and a customer's sub as a customer id (UUIDs); anything else names none.
  const family = sid && UUID.test(sid) ? sid : null;
  const customer = principal.kind === "customer" && UUID.test(principal.subject) ? principal.subject : null;
  const one = { revoked: sql<number>`1` };
  const never = sql`false`;
  const rows = await db
    .select(one)
    .from(revokedAccessTokens)
    .where(eq(revokedAccessTokens.jti, principal.tokenId))
    .unionAll(
      db
        .select(one)
        .from(refreshTokens)
        .where(family ? and(eq(refreshTokens.familyId, family), isNotNull(refreshTokens.revokedAt)) : never),
    )
    .unionAll(
      db
        .select(one)
        .from(signingKeys)
        .where(and(eq(signingKeys.kid, principal.keyId ?? ""), isNotNull(signingKeys.revokedAt))),
    )
    .unionAll(
      db
        .select(one)
        .from(clients)
        .where(
          and(
            eq(clients.clientId, principal.clientId),
            or(isNotNull(clients.disabledAt), gt(clients.tokensValidAfter, principal.issuedAt)),
          ),
        ),
    )
    .unionAll(
      db
        .select(one)
        .from(identities)
        .where(customer ? and(eq(identities.customerId, customer), ne(identities.status, "active")) : never),
    )
    // An erased customer's identity row is gone (and with it the check above): its tombstone revokes.
    .unionAll(
      db
        .select(one)
        .from(deletedIdentities)
        .where(customer ? eq(deletedIdentities.customerId, customer) : never),
    )
    .limit(1);
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
  [TokenRevocationReason.PASSWORD_RESET]: "password_reset",
  [TokenRevocationReason.IDENTITY_DISABLED]: "identity_disabled",
  [TokenRevocationReason.ACCOUNT_DELETED]: "account_deleted",
};
type SessionRevocationReason =
  | TokenRevocationReason.REVOKED
  | TokenRevocationReason.REFRESH_TOKEN_REUSED
  | TokenRevocationReason.PASSWORD_CHANGED
  | TokenRevocationReason.PASSWORD_RESET
  | TokenRevocationReason.IDENTITY_DISABLED
  | TokenRevocationReason.ACCOUNT_DELETED;

/**
 * Revokes sessions (refresh-token families) in tx: one session, or every
 * session of the customer. Marks their live refresh tokens with the reason
 * and emits one TokensRevoked for their `sid`s in the same
 * transaction. False when nothing was live (then nothing is emitted).
 */
export async function revokeSessions(
  tx: Tx,
  deps: { readonly events: Outbox; readonly tokens: Pick<TokenSettings, "accessTokenTtlSec"> },
  scope: { customerId: string; familyId?: string },
  reason: SessionRevocationReason,
  now: Date,
): Promise<boolean> {
  const revoked = await tx
    .update(refreshTokens)
    .set({ revokedAt: now, revokeReason: REVOKE_REASON[reason] })
    .where(
      and(
        eq(refreshTokens.customerId, scope.customerId),
        scope.familyId ? eq(refreshTokens.familyId, scope.familyId) : undefined,
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

/**
 * Ends one session of a customer at their request (RevokeToken of a refresh
 * token, RevokeSession): revokeSessions with reason REVOKED, in a
 * transaction of its own. False when it had already ended.
 */
export function revokeSession(
  deps: Pick<AuthServiceDeps, "db" | "events" | "tokens">,
  session: { customerId: string; familyId: string },
  now: Date,
): Promise<boolean> {
  return deps.db.transaction((tx) => revokeSessions(tx, deps, session, TokenRevocationReason.REVOKED, now));
}

/** The owner of a token, as TokensRevoked names it. */
export function tokenOwner(principal: Pick<Principal, "kind" | "subject" | "clientId">) {
  return principal.kind === "customer" ? { customerId: principal.subject } : { clientId: principal.clientId };
}
