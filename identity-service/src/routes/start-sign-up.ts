import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { addressLimitKey } from "@customer-platform/runtime/interceptors";
import { MAIL_NOTIFY, mailInsertFrom } from "@customer-platform/runtime/mail";
import { sql } from "drizzle-orm";
import { newCode } from "../codes.js";
import type { AuthServiceDeps } from "../deps.js";
import { mailLocale } from "../mail/templates.js";
import { normalizeEmail } from "./credentials.js";

/**
 * StartSignUp: one statement, the same whether or not the email has an
 * account, so neither the answer nor its timing says which. Without an
 * account: the email's earlier sign-up codes are used up, the new code's
 * hash stored and the code mailed. With one: only a "someone tried to sign
 * up with your address" mail to its owner. No password is taken here: the
 * one CompleteSignUp is given is the account's, so a sign-up someone else
 * started with your address cannot leave you with their password.
 */
export function startSignUp(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "startSignUp"> {
  const start = signUpStarter(deps);
  return {
    async startSignUp(req, ctx) {
      await start(req, deps.clientAddress(ctx));
      return {};
    },
  };
}

/**
 * StartSignUp's core, for the RPC and the hosted sign-up page: `address` is
 * the caller's (deps.clientAddress), for the per-address limit.
 */
export function signUpStarter(
  deps: AuthServiceDeps,
): (req: { email: string; locale: string }, address: string) => Promise<void> {
  return async (req, address) => {
    const email = normalizeEmail(req.email);
    await deps.rateLimits.signUp.consume(addressLimitKey(address));
    await deps.rateLimits.signUpEmail.consume(email);
    const { code, salt, hash } = newCode();
    const now = deps.now();
    const expiresAt = new Date(now.getTime() + deps.codeTtlSec.signUp * 1000);
    const locale = mailLocale(req.locale);
    const codeMail = mailInsertFrom(sql`select ${email}::text where not exists (select 1 from existing)`, {
      template: "verification-code",
      locale,
      data: { code, expiresInMinutes: Math.round(deps.codeTtlSec.signUp / 60) },
    });
    const attemptMail = mailInsertFrom(sql`select email from existing`, {
      template: "sign-up-attempt",
      locale,
      data: {},
    });
    await deps.db.execute(sql`
        with existing as (
          select email from identities where lower(email) = ${email}::text
        ), replaced as (
          update one_time_codes set consumed_at = ${now.toISOString()}::timestamptz
          where purpose = 'sign-up' and email = ${email}::text and consumed_at is null
            and not exists (select 1 from existing)
        ), stored as (
          insert into one_time_codes (id, customer_id, email, purpose, salt, code_hash, attempts, created_at, expires_at)
          select ${uuidv7()}::uuid, null, ${email}::text, 'sign-up', ${salt}::bytea, ${hash}::bytea, 0,
            ${now.toISOString()}::timestamptz, ${expiresAt.toISOString()}::timestamptz
          where not exists (select 1 from existing)
        ), code_mail as (${codeMail}), attempt_mail as (${attemptMail})
        select ${MAIL_NOTIFY}`);
  };
}
