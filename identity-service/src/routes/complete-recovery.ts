import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { addressLimitKey } from "@customer-platform/runtime/interceptors";
import { enqueueMail } from "@customer-platform/runtime/mail";
import { and, desc, eq, isNull, sql } from "drizzle-orm";
import { redeemCode, storedCodeColumns, useCode } from "../codes.js";
import { identities, oneTimeCodes } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import {
  emitCustomerEmailVerified,
  emitPasswordChanged,
  PasswordChangeKind,
  TokenRevocationReason,
} from "../events.js";
import { identityMail, mailLocale } from "../mail/templates.js";
import { checkNewPassword } from "../passwords.js";
import { revokeSessions } from "../sessions.js";
import { loginThrottleKey, unlockKey } from "../throttle.js";
import { normalizeEmail } from "./credentials.js";

/**
 * CompleteRecovery: the new password's rules first (so a weak one leaves the
 * code usable), then the email's newest live recovery code (codes.ts
 * redeemCode: constant-time, wrong guesses counted). The password is hashed
 * before the transaction, which uses the code up (of two parallel
 * completions one wins), sets the password, ends every session
 * (TokensRevoked), emits PasswordChanged (RESET) and queues the "password
 * changed" mail; an email not yet verified is now (the code proved it:
 * CustomerEmailVerified). Then the email's failed sign-ins and lock are
 * forgotten: its owner just proved they read its mail.
 */
export function completeRecovery(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "completeRecovery"> {
  const complete = recoveryCompleter(deps);
  return {
    async completeRecovery(req, ctx) {
      await complete(req, deps.clientAddress(ctx));
      return {};
    },
  };
}

/**
 * CompleteRecovery's core, for the RPC and the hosted recovery page:
 * `client` is the caller's address (deps.clientAddress).
 */
export function recoveryCompleter(
  deps: AuthServiceDeps,
): (req: { email: string; code: string; newPassword: string; locale: string }, client: string) => Promise<void> {
  return async (req, client) => {
    const email = normalizeEmail(req.email);
    await deps.rateLimits.recovery.consume(addressLimitKey(client));
    checkNewPassword(req.newPassword, req.email, "new_password");
    const now = deps.now();
    const [candidate] = await deps.db
      .select({
        ...storedCodeColumns,
        customerId: identities.customerId,
        email: identities.email,
        emailVerifiedAt: identities.emailVerifiedAt,
      })
      .from(identities)
      .innerJoin(oneTimeCodes, eq(oneTimeCodes.customerId, identities.customerId))
      .where(
        and(
          sql`lower(${identities.email}) = ${email}`,
          eq(identities.status, "active"),
          eq(oneTimeCodes.purpose, "recovery"),
          isNull(oneTimeCodes.consumedAt),
        ),
      )
      .orderBy(desc(oneTimeCodes.createdAt))
      .limit(1);
    const found = await redeemCode(deps.db, candidate, req.code, now);
    const passwordHash = await deps.passwords.hash(req.newPassword, client);
    await deps.db.transaction(async (tx) => {
      await useCode(tx, found.id, now);
      const [identity] = await tx
        .update(identities)
        .set({
          passwordHash,
          passwordChangedAt: now,
          updatedAt: now,
          emailVerifiedAt: sql`coalesce(${identities.emailVerifiedAt}, ${now.toISOString()}::timestamptz)`,
          emailVersion: sql`${identities.emailVersion} + (case when ${identities.emailVerifiedAt} is null then 1 else 0 end)`,
        })
        .where(eq(identities.customerId, found.customerId))
        .returning({ version: identities.emailVersion });
      if (!found.emailVerifiedAt && identity) {
        await emitCustomerEmailVerified(
          tx,
          deps.events,
          { customerId: found.customerId, email: found.email, version: identity.version },
          now,
        );
      }
      await revokeSessions(tx, deps, { customerId: found.customerId }, TokenRevocationReason.PASSWORD_RESET, now);
      await emitPasswordChanged(tx, deps.events, { customerId: found.customerId, kind: PasswordChangeKind.RESET }, now);
      await enqueueMail(tx, identityMail(found.email, "password-changed", mailLocale(req.locale), {}));
    });
    await unlockKey(deps.db, loginThrottleKey(email));
  };
}
