import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { addressLimitKey } from "@customer-platform/runtime/interceptors";
import { enqueueMail } from "@customer-platform/runtime/mail";
import { and, desc, eq, isNull, sql } from "drizzle-orm";
import { CODE_MAX_ATTEMPTS, codeMatches } from "../codes.js";
import { identities, oneTimeCodes } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { TokenRevocationReason } from "../events.js";
import { identityMail, mailLocale } from "../mail/templates.js";
import { checkNewPassword, fieldError } from "../passwords.js";
import { revokeSessions } from "../sessions.js";
import { loginThrottleKey, unlockKey } from "../throttle.js";
import { normalizeEmail } from "./credentials.js";

/** The answer to every code that does not work, whatever the reason (unknown email included). */
const invalidCode = () => fieldError("code", "code.invalid", "invalid or expired recovery code");

/**
 * CompleteRecovery: the new password's rules first (so a weak one leaves the
 * code usable), then the email's newest live recovery code, compared in
 * constant time; a wrong guess counts, and the last allowed one uses the
 * code up. The password is hashed before the transaction, which uses the
 * code up only if it is still live (of two parallel completions one wins),
 * sets the password, ends every session (TokensRevoked) and queues the
 * "password changed" mail. Then the email's failed sign-ins and lock are
 * forgotten: its owner just proved they read its mail.
 */
export function completeRecovery(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "completeRecovery"> {
  return {
    async completeRecovery(req, ctx) {
      const email = normalizeEmail(req.email);
      const client = deps.clientAddress(ctx);
      await deps.rateLimits.recovery.consume(addressLimitKey(client));
      checkNewPassword(req.newPassword, req.email, "new_password");
      const now = deps.now();
      const [found] = await deps.db
        .select({
          customerId: identities.customerId,
          email: identities.email,
          codeId: oneTimeCodes.id,
          salt: oneTimeCodes.salt,
          codeHash: oneTimeCodes.codeHash,
          attempts: oneTimeCodes.attempts,
          expiresAt: oneTimeCodes.expiresAt,
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
      if (!found || found.expiresAt <= now || found.attempts >= CODE_MAX_ATTEMPTS) throw invalidCode();
      if (!codeMatches(req.code, found.salt, found.codeHash)) {
        // Counted; the last allowed guess uses the code up.
        await deps.db
          .update(oneTimeCodes)
          .set({
            attempts: sql`${oneTimeCodes.attempts} + 1`,
            consumedAt: sql`case when ${oneTimeCodes.attempts} + 1 >= ${CODE_MAX_ATTEMPTS} then ${now.toISOString()}::timestamptz end`,
          })
          .where(and(eq(oneTimeCodes.id, found.codeId), isNull(oneTimeCodes.consumedAt)));
        throw invalidCode();
      }
      const passwordHash = await deps.passwords.hash(req.newPassword, client);
      await deps.db.transaction(async (tx) => {
        const used = await tx
          .update(oneTimeCodes)
          .set({ consumedAt: now })
          .where(and(eq(oneTimeCodes.id, found.codeId), isNull(oneTimeCodes.consumedAt)))
          .returning({ id: oneTimeCodes.id });
        if (used.length === 0) throw invalidCode();
        await tx
          .update(identities)
          .set({ passwordHash, passwordChangedAt: now, updatedAt: now })
          .where(eq(identities.customerId, found.customerId));
        await revokeSessions(tx, deps, { customerId: found.customerId }, TokenRevocationReason.PASSWORD_RESET, now);
        await enqueueMail(tx, identityMail(found.email, "password-changed", mailLocale(req.locale), {}));
      });
      await unlockKey(deps.db, loginThrottleKey(email));
      return {};
    },
  };
}
