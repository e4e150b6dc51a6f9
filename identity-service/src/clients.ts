/**
 * Clients and changes to them: registering one (checked: checkClientSettings),
 * changing its registration, disabling it, enabling it again, and rotating
 * its secret. Disabling and rotating end its live tokens: they set
 * the client's cut-off (tokens issued before it are refused by the identity
 * service at once) and write TokensRevoked with `client_id` and
 * `issued_before` to the outbox in the same transaction, so offline
 * verifiers refuse them too. Every change is audited (AuditRecorded in the
 * same transaction). AdminService, the CLI and tests
 * go through here.
 */
import type { Db } from "@customer-platform/runtime/db";
import type { Outbox } from "@customer-platform/runtime/outbox";
import { and, asc, eq, gt, isNotNull, isNull } from "drizzle-orm";
import type { AccountChange } from "./accounts.js";
import type * as schema from "./db/schema.js";
import { clients } from "./db/schema.js";
import {
  type AuditAction,
  type AuditActor,
  emitAuditRecorded,
  emitTokensRevoked,
  TokenRevocationReason,
} from "./events.js";
import { newOpaqueSecret } from "./tokens.js";

/** What registering or changing a client needs. */
export interface ClientChangeContext {
  db: Db<typeof schema>;
  outbox: Outbox;
  now: Date;
}

/** What revoking a client's tokens needs to know. */
export interface ClientRevocationContext extends ClientChangeContext {
  /** The access-token lifetime: no token revoked here outlives now + it. */
  accessTokenTtlSec: number;
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

/**
 * Gives a confidential client a new secret (only its hash is stored) and
 * revokes the tokens issued so far, audited as `actor`'s
 * ("client.rotate_secret"); `public` for a client without a secret.
 */
export function rotateClientSecret(
  ctx: ClientRevocationContext,
  clientId: string,
  actor: AuditActor,
): Promise<{ secret: string } | "not_found" | "public"> {
  const secret = newOpaqueSecret();
  return ctx.db.transaction(async (tx) => {
    const [found] = await tx
      .select({ isPublic: clients.isPublic })
      .from(clients)
      .where(eq(clients.clientId, clientId))
      .for("update");
    if (!found) return "not_found";
    if (found.isPublic) return "public";
    await revokeClientTokens(
      tx,
      ctx,
      clientId,
      { secretHash: secret.hash },
      TokenRevocationReason.CLIENT_SECRET_ROTATED,
    );
    await audit(tx, ctx, actor, "client.rotate_secret", clientId);
    return { secret: secret.token };
  });
}

/** The AuditRecorded of a change to a client, in its transaction. */
function audit(
  tx: Tx,
  ctx: ClientChangeContext,
  actor: AuditActor,
  action: Extract<AuditAction, `client.${string}`>,
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

/** A registration that cannot work, naming the field (as the proto names it) and the rule. */
export class ClientRegistrationError extends Error {
  constructor(
    readonly field: string,
    readonly ruleId: string,
    readonly reason: string,
  ) {
    super(`${field}: ${reason}`);
    this.name = "ClientRegistrationError";
  }
}

/** What a client is registered for: everything but its id, secret and status. */
export interface ClientSettings {
  description: string;
  scopes: string[];
  /** Resource servers it may ask tokens for (RFC 8707). */
  audiences: string[];
  /** Its tokens' audiences when it asks for none; each one of `audiences`. */
  defaultAudiences: string[];
  grantTypes: string[];
  redirectUris: string[];
  postLogoutRedirectUris: string[];
  isPublic: boolean;
  firstParty: boolean;
}

/** A client id: lower-case letters, digits, ".", "_", "-", starting with a letter, 3 to 64 characters. */
export const CLIENT_ID = /^[a-z][a-z0-9._-]{2,63}$/;
/** A scope token (RFC 6749 §3.3). */
const SCOPE = /^[!#-[\]-~]{1,128}$/;
/** An audience: printable ASCII without spaces. */
const AUDIENCE = /^[!-~]{1,256}$/;

/**
 * A new client's settings with the defaults filled in: audiences from
 * `defaultAudiences` (IDENTITY_DEFAULT_AUDIENCES), default audiences all of
 * them, grant types `authorization_code refresh_token` with redirect URIs and
 * `client_credentials` without; then checked (checkClientSettings).
 */
export function newClientSettings(
  input: Partial<ClientSettings>,
  defaults: { audiences: readonly string[] },
): ClientSettings {
  const redirectUris = unique(input.redirectUris ?? []);
  const audiences = input.audiences?.length ? unique(input.audiences) : [...defaults.audiences];
  return checkClientSettings({
    description: input.description ?? "",
    scopes: unique(input.scopes ?? []),
    audiences,
    defaultAudiences: input.defaultAudiences?.length ? unique(input.defaultAudiences) : audiences,
    grantTypes: input.grantTypes?.length
      ? unique(input.grantTypes)
      : redirectUris.length > 0
        ? ["authorization_code", "refresh_token"]
        : ["client_credentials"],
    redirectUris,
    postLogoutRedirectUris: unique(input.postLogoutRedirectUris ?? []),
    isPublic: input.isPublic ?? false,
    firstParty: input.firstParty ?? false,
  });
}

const unique = (xs: readonly string[]) => [...new Set(xs)];

/**
 * Checks a registration: scopes and audiences present and well formed,
 * default audiences among the audiences, each URI as redirectUriProblem says,
 * known grant types, at least one redirect URI for authorization_code and
 * none without it, and no client_credentials for a public client (it has no
 * secret). Throws a ClientRegistrationError naming the field.
 */
export function checkClientSettings(s: ClientSettings): ClientSettings {
  const fail = (field: string, ruleId: string, reason: string): never => {
    throw new ClientRegistrationError(field, ruleId, reason);
  };
  if (s.description.length > 500) fail("description", "client.description", "must be at most 500 characters");
  if (s.scopes.length === 0) fail("scopes", "client.scopes", 'must name at least one scope, e.g. "customer:read"');
  for (const scope of s.scopes)
    if (!SCOPE.test(scope)) fail("scopes", "client.scopes", `${JSON.stringify(scope)} is not a scope`);
  if (s.audiences.length === 0) fail("audiences", "client.audiences", "must name at least one audience");
  for (const a of s.audiences)
    if (!AUDIENCE.test(a)) fail("audiences", "client.audiences", `${JSON.stringify(a)} is not an audience`);
  if (s.defaultAudiences.length === 0 || !s.defaultAudiences.every((a) => s.audiences.includes(a))) {
    fail("default_audiences", "client.default_audiences", "must name one or more of audiences");
  }
  for (const [field, uris] of [
    ["redirect_uris", s.redirectUris],
    ["post_logout_redirect_uris", s.postLogoutRedirectUris],
  ] as const) {
    for (const uri of uris) {
      const problem = redirectUriProblem(uri);
      if (problem) fail(field, "client.redirect_uri", `${JSON.stringify(uri)} ${problem}`);
    }
  }
  const unknown = s.grantTypes.filter((g) => !(CLIENT_GRANT_TYPES as readonly string[]).includes(g));
  if (s.grantTypes.length === 0 || unknown.length > 0) {
    fail("grant_types", "client.grant_types", `must name some of: ${CLIENT_GRANT_TYPES.join(" ")}`);
  }
  if (s.grantTypes.includes("authorization_code") && s.redirectUris.length === 0) {
    fail("redirect_uris", "client.redirect_uris_required", "authorization_code needs at least one redirect URI");
  }
  if (s.redirectUris.length > 0 && !s.grantTypes.includes("authorization_code")) {
    fail(
      "redirect_uris",
      "client.redirect_uris_unused",
      "are for the authorization_code grant, which grant_types lacks",
    );
  }
  if (s.isPublic && s.grantTypes.includes("client_credentials")) {
    fail(
      "grant_types",
      "client.public_credentials",
      "a public client has no secret: client_credentials is for confidential clients",
    );
  }
  return s;
}

/** A client's row as stored. */
export type ClientRecord = typeof clients.$inferSelect;

/**
 * Registers a client with a new secret (only its hash is stored; a public
 * client's is of a secret nobody is shown), audited as `actor`'s
 * ("client.create"); `exists` if the id is taken.
 */
export async function createClient(
  ctx: ClientChangeContext,
  clientId: string,
  settings: ClientSettings,
  actor: AuditActor,
): Promise<{ client: ClientRecord; secret: string } | "exists"> {
  const secret = newOpaqueSecret();
  return ctx.db.transaction(async (tx) => {
    const [client] = await tx
      .insert(clients)
      .values({ clientId, secretHash: secret.hash, createdAt: ctx.now, ...settings })
      .onConflictDoNothing({ target: clients.clientId })
      .returning();
    if (!client) return "exists";
    await audit(tx, ctx, actor, "client.create", clientId);
    return { client, secret: secret.token };
  });
}

/**
 * Changes the settings `change` names, checked as a whole (checkClientSettings)
 * against the stored row under a row lock; audited ("client.update") when
 * something changed. Whether a client is public does not change here.
 */
export async function updateClient(
  ctx: ClientChangeContext,
  clientId: string,
  change: Partial<Omit<ClientSettings, "isPublic">>,
  actor: AuditActor,
): Promise<ClientRecord | "not_found"> {
  return ctx.db.transaction(async (tx) => {
    const [current] = await tx.select().from(clients).where(eq(clients.clientId, clientId)).for("update");
    if (!current) return "not_found";
    const next = checkClientSettings({
      description: change.description ?? current.description,
      scopes: unique(change.scopes ?? current.scopes),
      audiences: unique(change.audiences ?? current.audiences),
      defaultAudiences: unique(change.defaultAudiences ?? current.defaultAudiences),
      grantTypes: unique(change.grantTypes ?? current.grantTypes),
      redirectUris: unique(change.redirectUris ?? current.redirectUris),
      postLogoutRedirectUris: unique(change.postLogoutRedirectUris ?? current.postLogoutRedirectUris),
      isPublic: current.isPublic,
      firstParty: change.firstParty ?? current.firstParty,
    });
    const same = (Object.keys(next) as (keyof ClientSettings)[]).every(
      (k) => JSON.stringify(next[k]) === JSON.stringify(current[k]),
    );
    if (same) return current;
    const [updated] = await tx.update(clients).set(next).where(eq(clients.clientId, clientId)).returning();
    await audit(tx, ctx, actor, "client.update", clientId);
    return updated ?? current;
  });
}

/** One client's row. */
export async function getClient(db: Db<typeof schema>, clientId: string): Promise<ClientRecord | undefined> {
  const [row] = await db.select().from(clients).where(eq(clients.clientId, clientId));
  return row;
}

/** Up to `limit` clients after `after` (a client id), in client id order. */
export function listClients(db: Db<typeof schema>, limit: number, after = ""): Promise<ClientRecord[]> {
  return db.select().from(clients).where(gt(clients.clientId, after)).orderBy(asc(clients.clientId)).limit(limit);
}
