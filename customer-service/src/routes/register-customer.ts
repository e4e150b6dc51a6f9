import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { pgErrorCode, placeholder, placeholders } from "@customer-platform/runtime/db";
import { fieldViolation } from "@customer-platform/runtime/errors";
import { eventValues, type OutboxDb, prepareWithEvent } from "@customer-platform/runtime/outbox-writer";
import { eq, getTableColumns, sql, type WithSubquery } from "drizzle-orm";
import { rejectBlank, sameAddress, toCustomer, toStoredAddress } from "../customer.js";
import { type CustomerRow, customers, erasures, verifiedEmails } from "../db/schema.js";
import type { CustomerServiceDeps } from "../deps.js";
import { ERASURE_LOCK_CLASS } from "../erasure.js";
import { customerRegistered } from "../events.js";

const PROFILE_COLUMNS = [
  "customerId",
  "email",
  "givenName",
  "familyName",
  "phoneNumber",
  "address",
  "version",
  "createTime",
  "updateTime",
] as const;

/**
 * The registration as one statement, for an email the caller expects to be
 * the verified one: `verified` takes the customer's row of verified_emails
 * (recording the token's `email` as version 0 if there is none yet), and the
 * profile with its event is written only if that row's email is the one
 * expected; zero rows otherwise. Taking the row as an upsert locks it, so
 * registration and the consumer of CustomerEmailVerified (which locks it
 * first too) take turns: each sees what the other committed, and no profile
 * keeps an email older than the last event applied. An erased customer (or
 * one being erased) gets zero rows too.
 */
function prepareRegister(db: CustomerServiceDeps["db"], events: CustomerServiceDeps["events"]) {
  const customerId = placeholder("customerId", verifiedEmails.customerId);
  // Nothing is written for an erased customer, nor while an erasure of this customer runs
  // (it holds the lock exclusively: erasure.ts); the caller then looks again.
  const verified = db.$with("verified", { email: verifiedEmails.email }).as(
    sql`insert into ${verifiedEmails} (customer_id, email, email_version, updated_at)
      select ${customerId}, ${placeholder("email", verifiedEmails.email)}, 0, ${placeholder("createTime", verifiedEmails.updatedAt)}
      where not exists (select 1 from ${erasures} where ${erasures.customerId} = ${customerId})
        and pg_try_advisory_xact_lock_shared(${sql.raw(String(ERASURE_LOCK_CLASS))}, hashtext(${customerId}::text))
      on conflict (customer_id) do update set email_version = ${verifiedEmails}.email_version
      returning ${verifiedEmails.email}`,
  );
  const values = placeholders(customers, PROFILE_COLUMNS);
  const columns = getTableColumns(customers);
  const created = db.$with("created", { customerId: customers.customerId }).as(
    sql`insert into ${customers} (${sql.join(
      PROFILE_COLUMNS.map((k) => sql.identifier(columns[k].name)),
      sql`, `,
    )}) select ${sql.join(
      PROFILE_COLUMNS.map((k) => values[k]),
      sql`, `,
    )} from ${verified} where ${verified.email} = ${placeholder("email", customers.email)} returning ${customers.customerId}`,
  );
  // prepareWithEvent puts `created` and the outbox insert in one WITH; `verified` goes first.
  const withVerified: OutboxDb = {
    $with: db.$with.bind(db),
    with: ((...ctes: WithSubquery[]) => db.with(verified, ...ctes)) as OutboxDb["with"],
  };
  return prepareWithEvent(withVerified, created, events, "register_customer");
}

/**
 * RegisterCustomer: creates the caller's profile with their verified email,
 * idempotent for an identical retry. One round trip when the access token
 * carries the verified email the service knows (or it knows none yet);
 * another when it knows a newer one.
 */
export function registerCustomer(
  deps: CustomerServiceDeps,
): Pick<ServiceImpl<typeof CustomerService>, "registerCustomer"> {
  // Built once, as in get-customer.ts.
  const insert = prepareRegister(deps.db, deps.events);
  // The verified email, and whether the customer was erased (then no profile may be made again);
  // it waits for an erasure of the customer under way, so the next attempt sees it.
  const readVerified = deps.db
    .select({
      email: sql<
        string | null
      >`(select ${verifiedEmails.email} from ${verifiedEmails} where ${verifiedEmails.customerId} = ${sql.placeholder("customerId")})`,
      erased: sql<boolean>`exists (select 1 from ${erasures} where ${erasures.customerId} = ${sql.placeholder("customerId")})`,
    })
    .from(
      sql`(select pg_advisory_xact_lock_shared(${sql.raw(String(ERASURE_LOCK_CLASS))}, hashtext(${sql.placeholder("customerId")}::text))) as waited`,
    )
    .prepare("register_customer_verified");
  const verifiedEmail = async (customerId: string) => {
    const [row] = await readVerified.execute({ customerId });
    if (row?.erased) throw new ConnectError("account deleted", Code.FailedPrecondition);
    return row?.email ?? undefined;
  };

  return {
    async registerCustomer(req, ctx) {
      const principal = await deps.auth.authenticate(ctx);
      if (principal.kind !== "customer") {
        throw new ConnectError("only a customer token can register a profile", Code.PermissionDenied);
      }
      const customerId = principal.subject;
      // The deprecated email field: no longer the profile's email, only checked against it.
      const claimed = req.email.trim();
      const now = deps.now();
      const row: CustomerRow = {
        customerId,
        email: "",
        givenName: req.givenName.trim(),
        familyName: req.familyName.trim(),
        phoneNumber: req.phoneNumber ?? null,
        address: toStoredAddress(req.address),
        version: 1,
        createTime: now,
        updateTime: now,
      };
      rejectBlank("given_name", row.givenName);
      rejectBlank("family_name", row.familyName);
      rejectBlank("address", row.address);

      // The token's email first; the stored one when the token has none or the
      // request names another (the token may predate a change).
      let email = principal.email;
      if (email === undefined || (claimed !== "" && !sameEmail(claimed, email))) {
        email = (await verifiedEmail(customerId)) ?? email;
      }
      try {
        // A second attempt only if an email change committed in between (or an erasure: refused).
        for (let attempt = 0; attempt < 3; attempt++) {
          if (email === undefined) {
            throw new ConnectError(
              "the customer has no verified email: verify it with the identity service first",
              Code.FailedPrecondition,
            );
          }
          rejectUnverified(claimed, email);
          const customer = toCustomer({ ...row, email });
          const written = await insert.execute({
            ...row,
            email,
            ...eventValues(customerRegistered(deps.events, customer, now)),
          });
          if (written.length === 1) return { customer };
          email = await verifiedEmail(customerId);
        }
        throw new Error("the verified email kept changing during registration");
      } catch (err) {
        if (pgErrorCode(err) !== "23505") throw err;
        const [existing] = await deps.db.select().from(customers).where(eq(customers.customerId, customerId));
        if (!existing) throw err;
        // The profile's email follows the verified one.
        rejectUnverified(claimed, existing.email);
        if (sameProfile(existing, row)) return { customer: toCustomer(existing) };
        throw new ConnectError("customer already has a different profile", Code.AlreadyExists);
      }
    },
  };
}

function sameEmail(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

/** INVALID_ARGUMENT if the request names an email (`claimed`) other than the verified one. */
function rejectUnverified(claimed: string, verified: string): void {
  if (claimed !== "" && !sameEmail(claimed, verified)) {
    throw fieldViolation("email", "email.verified", "value must be the customer's verified email");
  }
}

function sameProfile(a: CustomerRow, b: CustomerRow): boolean {
  return (
    a.givenName === b.givenName &&
    a.familyName === b.familyName &&
    a.phoneNumber === b.phoneNumber &&
    sameAddress(a.address, b.address)
  );
}
