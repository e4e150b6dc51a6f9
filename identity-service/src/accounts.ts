/**
 * What an operator does to a customer's account: suspending it and lifting
 * the suspension (AdminService, the CLI's `identities disable|enable`). Each
 * change commits in one transaction with its events and an AuditRecorded
 * naming who made it; a change that changes nothing writes nothing.
 * Erasure is in erase.ts.
 */
import type { Db } from "@customer-platform/runtime/db";
import type { Outbox } from "@customer-platform/runtime/outbox";
import { and, eq } from "drizzle-orm";
import type * as schema from "./db/schema.js";
import { identities } from "./db/schema.js";
import { type AuditActor, emitAuditRecorded, emitIdentityStatusChanged, TokenRevocationReason } from "./events.js";
import { revokeSessions } from "./sessions.js";
import type { TokenSettings } from "./tokens.js";

/** What an account change needs: the database, the outbox, the token lifetimes (for revocations), the time. */
export interface AccountChangeContext {
  readonly db: Db<typeof schema>;
  readonly events: Outbox;
  readonly tokens: Pick<TokenSettings, "accessTokenTtlSec">;
  readonly now: Date;
}

/** What a change did: `changed`, nothing (`unchanged`: it was so already), or `not_found` (no such account). */
export type AccountChange = "changed" | "unchanged" | "not_found";

/**
 * Suspends a customer's account: status `disabled`, every live session
 * revoked (TokensRevoked, reason IDENTITY_DISABLED), IdentityDisabled and
 * AuditRecorded, in one transaction.
 */
export function disableIdentity(ctx: AccountChangeContext, customerId: string, actor: AuditActor) {
  return setIdentityStatus(ctx, customerId, actor, true);
}

/** Lifts a suspension: status `active`, IdentityEnabled and AuditRecorded (old sessions stay ended). */
export function enableIdentity(ctx: AccountChangeContext, customerId: string, actor: AuditActor) {
  return setIdentityStatus(ctx, customerId, actor, false);
}

async function setIdentityStatus(
  ctx: AccountChangeContext,
  customerId: string,
  actor: AuditActor,
  disable: boolean,
): Promise<AccountChange> {
  const { now } = ctx;
  // As the service writes ids (lower case): subjects and audit name it so, however it was typed.
  customerId = customerId.toLowerCase();
  return ctx.db.transaction(async (tx) => {
    const changed = await tx
      .update(identities)
      .set(
        disable
          ? { status: "disabled", disabledAt: now, updatedAt: now }
          : { status: "active", disabledAt: null, updatedAt: now },
      )
      .where(and(eq(identities.customerId, customerId), eq(identities.status, disable ? "active" : "disabled")))
      .returning({ customerId: identities.customerId });
    if (changed.length === 0) {
      const [found] = await tx
        .select({ customerId: identities.customerId })
        .from(identities)
        .where(eq(identities.customerId, customerId));
      return found ? "unchanged" : "not_found";
    }
    if (disable) await revokeSessions(tx, ctx, { customerId }, TokenRevocationReason.IDENTITY_DISABLED, now);
    await emitIdentityStatusChanged(tx, ctx.events, { customerId, disabled: disable }, now);
    await emitAuditRecorded(
      tx,
      ctx.events,
      { actor, action: disable ? "identity.disable" : "identity.enable", target: { kind: "customer", id: customerId } },
      now,
    );
    return "changed";
  });
}
