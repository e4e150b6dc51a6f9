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
