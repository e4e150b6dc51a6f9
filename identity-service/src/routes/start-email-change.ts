import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { MAIL_NOTIFY, mailInsertFrom } from "@customer-platform/runtime/mail";
import { sql } from "drizzle-orm";
import { newCode } from "../codes.js";
import type { AuthServiceDeps } from "../deps.js";
import { mailLocale } from "../mail/templates.js";
import { normalizeEmail, reauthenticate } from "./credentials.js";

/**
 * StartEmailChange: the caller's token names the customer, the current
 * password proves it is them (counted with sign-ins, as ChangePassword).
 * Then one statement, the same whether or not the new address belongs to
 * another account: the customer's earlier email-change codes are used up;
 * unless the address is taken, a new code's hash is stored and the code
 * mailed to it; and the current address gets a notice. Naming the current
 * address asks for a code that verifies it (no notice; nothing at all if it
 * is verified already).
 */
export function startEmailChange(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "startEmailChange"> {
  return {
    async startEmailChange(req, ctx) {
      const identity = await reauthenticate(deps, ctx, {
        action: "change an email",
        currentPassword: req.currentPassword,
        beforeAttempt: (found) => deps.rateLimits.emailChange.consume(found.customerId),
      });
      const newEmail = normalizeEmail(req.newEmail);
      const verifying = newEmail === normalizeEmail(identity.email);
      if (verifying && identity.emailVerifiedAt) return {};
      const { code, salt, hash } = newCode();
      const now = deps.now();
      const ttl = deps.codeTtlSec.emailChange;
      const expiresAt = new Date(now.getTime() + ttl * 1000);
      const locale = mailLocale(req.locale);
      const codeMail = mailInsertFrom(sql`select email from stored`, {
        template: verifying ? "verification-code" : "email-change-code",
        locale,
        data: { code, expiresInMinutes: Math.round(ttl / 60) },
      });
      const notice = verifying
        ? sql`select 1`
        : mailInsertFrom(sql`select ${identity.email}::text`, {
            template: "email-change-notice",
            locale,
            data: { stage: "requested" },
          });
      await deps.db.execute(sql`
        with taken as (
          select 1 from identities where lower(email) = ${newEmail}::text and customer_id <> ${identity.customerId}::uuid
        ), replaced as (
          update one_time_codes set consumed_at = ${now.toISOString()}::timestamptz
          where purpose = 'email-change' and customer_id = ${identity.customerId}::uuid and consumed_at is null
        ), stored as (
          insert into one_time_codes (id, customer_id, email, purpose, salt, code_hash, attempts, created_at, expires_at)
          select ${uuidv7()}::uuid, ${identity.customerId}::uuid, ${newEmail}::text, 'email-change', ${salt}::bytea,
            ${hash}::bytea, 0, ${now.toISOString()}::timestamptz, ${expiresAt.toISOString()}::timestamptz
          where not exists (select 1 from taken)
          returning email
        ), code_mail as (${codeMail}), notice as (${notice})
        select ${MAIL_NOTIFY}`);
      return {};
    },
  };
}
