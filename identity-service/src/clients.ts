/**
 * Changes to a service's client that end its live tokens: disabling it and
 * rotating its secret. Both set the client's cut-off (tokens issued before it
 * are refused by the identity service at once) and write TokensRevoked with
 * `client_id` and `issued_before` to the outbox in the same transaction, so
 * offline verifiers refuse them too. The CLI and tests go through here.
 */
import type { Db } from "@customer-platform/runtime/db";
import type { Outbox } from "@customer-platform/runtime/outbox";
import { eq } from "drizzle-orm";
import type * as schema from "./db/schema.js";
import { clients } from "./db/schema.js";
import { emitTokensRevoked, TokenRevocationReason } from "./events.js";

/** What revoking a client's tokens needs to know. */
export interface ClientRevocationContext {
  db: Db<typeof schema>;
  outbox: Outbox;
  /** The access-token lifetime: no token revoked here outlives now + it. */
  accessTokenTtlSec: number;
  now: Date;
}

/**
 * The cut-off for tokens issued up to `now`: the next whole second, since
 * `iat` counts seconds (tokens issued later are stamped no earlier).
 */
export const cutOffAfter = (now: Date) => new Date((Math.floor(now.getTime() / 1000) + 1) * 1000);

async function changeClient(
  ctx: ClientRevocationContext,
  clientId: string,
  change: Partial<typeof clients.$inferInsert>,
  reason: TokenRevocationReason,
): Promise<boolean> {
  const issuedBefore = cutOffAfter(ctx.now);
  return ctx.db.transaction(async (tx) => {
    const changed = await tx
      .update(clients)
      .set({ ...change, tokensValidAfter: issuedBefore })
      .where(eq(clients.clientId, clientId))
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
  });
}

/** Disables a client and revokes its live tokens; false if there is no such client. */
export function disableClient(ctx: ClientRevocationContext, clientId: string): Promise<boolean> {
  return changeClient(ctx, clientId, { disabledAt: ctx.now }, TokenRevocationReason.CLIENT_DISABLED);
}

/** Replaces a client's secret (its hash) and revokes the tokens issued so far; false if there is no such client. */
export function rotateClientSecret(
  ctx: ClientRevocationContext,
  clientId: string,
  secretHash: Buffer,
): Promise<boolean> {
  return changeClient(ctx, clientId, { secretHash }, TokenRevocationReason.CLIENT_SECRET_ROTATED);
}
