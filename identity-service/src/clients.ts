/**
 * Changes to a service's client: disabling it, enabling it again, and
 * rotating its secret. Disabling and rotating end its live tokens: they set
 * the client's cut-off (tokens issued before it are refused by the identity
 * service at once) and write TokensRevoked with `client_id` and
 * `issued_before` to the outbox in the same transaction, so offline
 * verifiers refuse them too. Disabling and enabling are audited
 * (AuditRecorded in the same transaction). AdminService, the CLI and tests
 * go through here.
 */
import type { Db } from "@customer-platform/runtime/db";
import type { Outbox } from "@customer-platform/runtime/outbox";
import { and, eq, isNotNull, isNull } from "drizzle-orm";
import type { AccountChange } from "./accounts.js";
import type * as schema from "./db/schema.js";
import { clients } from "./db/schema.js";
import { type AuditActor, emitAuditRecorded, emitTokensRevoked, TokenRevocationReason } from "./events.js";

/** What revoking a client's tokens needs to know. */
export interface ClientRevocationContext {
  db: Db<typeof schema>;
  outbox: Outbox;
  /** The access-token lifetime: no token revoked here outlives now + it. */
  accessTokenTtlSec: number;
  now: Date;
}

type Tx = Parameters<Parameters<Db<typeof schema>["transaction"]>[0]>[0];

/**
 * The cut-off for tokens issued up to `now`: the next whole second, since
 * `iat` counts seconds (tokens issued later are stamped no earlier).
 */
export const cutOffAfter = (now: Date) => new Date((Math.floor(now.getTime() / 1000) + 1) * 1000);

/** Sets the client's cut-off with `change` and writes TokensRevoked; false if no row matched `where`. */
async function revokeClientTokens(
  tx: Tx,
  ctx: ClientRevocationContext,
  clientId: string,
  change: Partial<typeof clients.$inferInsert>,
  reason: TokenRevocationReason,
  onlyIfEnabled = false,
): Promise<boolean> {
  const issuedBefore = cutOffAfter(ctx.now);
  const changed = await tx
    .update(clients)
    .set({ ...change, tokensValidAfter: issuedBefore })
    .where(and(eq(clients.clientId, clientId), onlyIfEnabled ? isNull(clients.disabledAt) : undefined))
    .returning({ clientId: clients.clientId });
  if (changed.length === 0) return false;
  await emitTokensRevoked(
    tx,
    ctx.outbox,
    {
      owner: { clientId },
      issuedBefore,
      expireTime: new Date(issuedBefore.getTime() + ctx.accessTokenTtlSec * 1000),
      reason,
    },
    ctx.now,
  );
  return true;
}

/** `changed` if a row changed, else `unchanged` if the client exists, else `not_found`. */
async function outcome(tx: Tx, clientId: string, changed: boolean): Promise<AccountChange> {
  if (changed) return "changed";
  const [found] = await tx.select({ clientId: clients.clientId }).from(clients).where(eq(clients.clientId, clientId));
  return found ? "unchanged" : "not_found";
}

/**
 * Disables a client and revokes its live tokens (TokensRevoked, reason
 * CLIENT_DISABLED), audited as `actor`'s; a disabled client stays as it is
 * (nothing written).
 */
export function disableClient(
  ctx: ClientRevocationContext,
  clientId: string,
  actor: AuditActor,
): Promise<AccountChange> {
  return ctx.db.transaction(async (tx) => {
    const changed = await revokeClientTokens(
      tx,
      ctx,
      clientId,
      { disabledAt: ctx.now },
      TokenRevocationReason.CLIENT_DISABLED,
      true,
    );
    if (changed) await audit(tx, ctx, actor, "client.disable", clientId);
    return outcome(tx, clientId, changed);
  });
}

/**
 * Enables a disabled client again, audited as `actor`'s; tokens revoked
 * while it was disabled stay revoked (its cut-off stays). An enabled client
 * stays as it is (nothing written).
 */
export function enableClient(
  ctx: ClientRevocationContext,
  clientId: string,
  actor: AuditActor,
): Promise<AccountChange> {
  return ctx.db.transaction(async (tx) => {
    const rows = await tx
      .update(clients)
      .set({ disabledAt: null })
      .where(and(eq(clients.clientId, clientId), isNotNull(clients.disabledAt)))
      .returning({ clientId: clients.clientId });
    const changed = rows.length > 0;
    if (changed) await audit(tx, ctx, actor, "client.enable", clientId);
    return outcome(tx, clientId, changed);
  });
}

/** Replaces a client's secret (its hash) and revokes the tokens issued so far; false if there is no such client. */
export function rotateClientSecret(
  ctx: ClientRevocationContext,
  clientId: string,
  secretHash: Buffer,
): Promise<boolean> {
  return ctx.db.transaction((tx) =>
    revokeClientTokens(tx, ctx, clientId, { secretHash }, TokenRevocationReason.CLIENT_SECRET_ROTATED),
  );
}

function audit(
  tx: Tx,
  ctx: ClientRevocationContext,
  actor: AuditActor,
  action: "client.disable" | "client.enable",
  clientId: string,
) {
  return emitAuditRecorded(tx, ctx.outbox, { actor, action, target: { kind: "client", id: clientId } }, ctx.now);
}

/** The grant types a client may be registered for. */
export const CLIENT_GRANT_TYPES = ["client_credentials", "authorization_code", "refresh_token"] as const;

/** Whether a host is a loopback address or name, where RFC 8252 §7.3 and §8.3 allow plain http. */
function isLoopback(hostname: string): boolean {
  return hostname === "localhost" || hostname === "[::1]" || /^127(\.\d{1,3}){3}$/.test(hostname);
}

/**
 * A redirect URI a client may register: absolute, no fragment (RFC 6749
 * §3.1.2), no user info, https unless the host is loopback (RFC 8252); the
 * reason it may not, otherwise undefined. Matched exactly, character for
 * character, at the authorization endpoint.
 */
export function redirectUriProblem(uri: string): string | undefined {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return "is not an absolute URI";
  }
  if (uri.includes("#")) return "has a fragment";
  if (url.username || url.password) return "has user information";
  if (uri.length > 2000) return "is longer than 2000 characters";
  if (url.protocol === "https:") return undefined;
  if (url.protocol === "http:" && isLoopback(url.hostname)) return undefined;
  return "must be https (http only on a loopback host)";
}

/** What a client is registered for beyond its scopes and audiences: the authorization code flow's settings. */
export interface ClientRegistration {
  redirectUris: string[];
  postLogoutRedirectUris: string[];
  grantTypes: string[];
  isPublic: boolean;
  firstParty: boolean;
}

/**
 * Checks a registration: each URI as redirectUriProblem says, known grant
 * types, at least one redirect URI for authorization_code, and no
 * client_credentials for a public client (it has no secret). Throws an Error
 * naming the problem.
 */
export function checkRegistration(r: ClientRegistration): ClientRegistration {
  for (const uri of [...r.redirectUris, ...r.postLogoutRedirectUris]) {
    const problem = redirectUriProblem(uri);
    if (problem) throw new Error(`redirect URI ${JSON.stringify(uri)} ${problem}`);
  }
  const unknown = r.grantTypes.filter((g) => !(CLIENT_GRANT_TYPES as readonly string[]).includes(g));
  if (r.grantTypes.length === 0 || unknown.length > 0) {
    throw new Error(`--grant-types must name some of: ${CLIENT_GRANT_TYPES.join(" ")}`);
  }
  if (r.grantTypes.includes("authorization_code") && r.redirectUris.length === 0) {
    throw new Error("authorization_code needs --redirect-uris");
  }
  if (r.redirectUris.length > 0 && !r.grantTypes.includes("authorization_code")) {
    throw new Error("--redirect-uris are for the authorization_code grant");
  }
  if (r.isPublic && r.grantTypes.includes("client_credentials")) {
    throw new Error("a public client has no secret: client_credentials is for confidential clients");
  }
  return r;
}
