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
 * StartRecovery: one statement, the same whether or not the email has an
 * active identity, so neither the answer nor its timing says which: for the
 * identity it finds (none, or one), it uses up the email's earlier recovery
 * codes, stores the new code's hash and queues the mail (mail_outbox, sent by
 * the deliverer after commit). Limited per client address and per email
 * before anything is looked up.
 */
export function startRecovery(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "startRecovery"> {
  const start = recoveryStarter(deps);
  return {
    async startRecovery(req, ctx) {
      await start(req, deps.clientAddress(ctx));
      return {};
    },
  };
}

/**
 * StartRecovery's core, for the RPC and the hosted recovery page: `address`
 * is the caller's (deps.clientAddress), for the per-address limit.
 */
export function recoveryStarter(
  deps: AuthServiceDeps,
): (req: { email: string; locale: string }, address: string) => Promise<void> {
  return async (req, address) => {
    const email = normalizeEmail(req.email);
    await deps.rateLimits.recovery.consume(addressLimitKey(address));
    await deps.rateLimits.recoveryEmail.consume(email);
    const { code, salt, hash } = newCode();
    const now = deps.now();
    const expiresAt = new Date(now.getTime() + deps.codeTtlSec.recovery * 1000);
    const mail = mailInsertFrom(sql`select email from target`, {
      template: "recovery-code",
      locale: mailLocale(req.locale),
      data: { code, expiresInMinutes: Math.round(deps.codeTtlSec.recovery / 60) },
    });
    await deps.db.execute(sql`
        with target as (
          select customer_id, email from identities where lower(email) = ${email}::text and status = 'active'
        ), replaced as (
          update one_time_codes set consumed_at = ${now.toISOString()}::timestamptz
          where purpose = 'recovery' and consumed_at is null and customer_id in (select customer_id from target)
        ), stored as (
          insert into one_time_codes (id, customer_id, purpose, salt, code_hash, attempts, created_at, expires_at)
          select ${uuidv7()}::uuid, customer_id, 'recovery', ${salt}::bytea, ${hash}::bytea, 0,
            ${now.toISOString()}::timestamptz, ${expiresAt.toISOString()}::timestamptz from target
        ), queued as (${mail})
        select ${MAIL_NOTIFY} from target`);
  };
}
