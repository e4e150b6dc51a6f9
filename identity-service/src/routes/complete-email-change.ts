import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { pgConstraint, pgErrorCode } from "@customer-platform/runtime/db";
import { enqueueMail } from "@customer-platform/runtime/mail";
import { and, desc, eq, isNull, sql } from "drizzle-orm";
import { invalidCode, redeemCode, storedCodeColumns, useCode } from "../codes.js";
import { identities, oneTimeCodes } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { emitCustomerEmailVerified } from "../events.js";
import { identityMail, mailLocale } from "../mail/templates.js";

/**
 * CompleteEmailChange: the customer's newest live email-change code
 * (codes.ts redeemCode), then one transaction that uses it up, makes the
 * address it was sent to the verified login email with the next email
 * version, emits CustomerEmailVerified and tells the old address (if it
 * changed). An address another account took since the code was sent answers
 * as a wrong code does, and the code is used up.
 */
export function completeEmailChange(
  deps: AuthServiceDeps,
): Pick<ServiceImpl<typeof AuthService>, "completeEmailChange"> {
  return {
    async completeEmailChange(req, ctx) {
      const principal = await deps.auth.authenticate(ctx);
      if (principal.kind !== "customer") {
        throw new ConnectError("only a customer token can change an email", Code.PermissionDenied);
      }
      await deps.rateLimits.emailChange.consume(principal.subject);
      const now = deps.now();
      const [stored] = await deps.db
        .select({ ...storedCodeColumns, email: oneTimeCodes.email })
        .from(oneTimeCodes)
        .where(
          and(
            eq(oneTimeCodes.customerId, principal.subject),
            eq(oneTimeCodes.purpose, "email-change"),
            isNull(oneTimeCodes.consumedAt),
          ),
        )
        .orderBy(desc(oneTimeCodes.createdAt))
        .limit(1);
      const code = await redeemCode(deps.db, stored, req.code, now);
      const newEmail = code.email;
      if (!newEmail) throw invalidCode();
      try {
        return await deps.db.transaction(async (tx) => {
          await useCode(tx, code.id, now);
          const [before] = await tx
            .select({ email: identities.email })
            .from(identities)
            .where(and(eq(identities.customerId, principal.subject), eq(identities.status, "active")))
            .for("update");
          if (!before) throw invalidCode();
          const [after] = await tx
            .update(identities)
            .set({
              email: newEmail,
              emailVerifiedAt: now,
              emailVersion: sql`${identities.emailVersion} + 1`,
              updatedAt: now,
            })
            .where(eq(identities.customerId, principal.subject))
            .returning({ version: identities.emailVersion });
          const version = after?.version ?? 0;
          await emitCustomerEmailVerified(
            tx,
            deps.events,
            { customerId: principal.subject, email: newEmail, version },
            now,
          );
          if (before.email !== newEmail) {
            await enqueueMail(
              tx,
              identityMail(before.email, "email-change-notice", mailLocale(req.locale), { stage: "confirmed" }),
            );
          }
          return { email: newEmail, emailVersion: BigInt(version) };
        });
      } catch (err) {
        if (pgErrorCode(err) === "23505" && pgConstraint(err) === "identities_email_key") {
          await useCode(deps.db, code.id, now).catch(() => {});
          throw invalidCode();
        }
        throw err;
      }
    },
  };
}
