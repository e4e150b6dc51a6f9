import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { pgConstraint, pgErrorCode, placeholders } from "@customer-platform/runtime/db";
import { eventValues, prepareWithEvent } from "@customer-platform/runtime/outbox-writer";
import { eq } from "drizzle-orm";
import { rejectBlank, sameAddress, toCustomer, toStoredAddress } from "../customer.js";
import { type CustomerRow, customers } from "../db/schema.js";
import type { CustomerServiceDeps } from "../deps.js";
import { customerRegistered } from "../events.js";

/** RegisterCustomer: creates the caller's profile, idempotent for an identical retry. */
export function registerCustomer(
  deps: CustomerServiceDeps,
): Pick<ServiceImpl<typeof CustomerService>, "registerCustomer"> {
  // Built once, as in get-customer.ts: the profile, its event and the relay's
  // wake-up in one prepared statement, one round trip.
  const created = deps.db.$with("created").as(
    deps.db
      .insert(customers)
      .values(
        placeholders(customers, [
          "customerId",
          "email",
          "givenName",
          "familyName",
          "phoneNumber",
          "address",
          "version",
          "createTime",
          "updateTime",
        ]),
      )
      .returning({ customerId: customers.customerId }),
  );
  const insert = prepareWithEvent(deps.db, created, deps.events, "register_customer");
  return {
    async registerCustomer(req, ctx) {
      const principal = await deps.auth.authenticate(ctx);
      if (principal.kind !== "customer") {
        throw new ConnectError("only a customer token can register a profile", Code.PermissionDenied);
      }
      const now = deps.now();
      const row: CustomerRow = {
        customerId: principal.subject,
        email: req.email.trim(),
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
      const customer = toCustomer(row);
      try {
        await insert.execute({ ...row, ...eventValues(customerRegistered(deps.events, customer, now)) });
        return { customer };
      } catch (err) {
        if (pgErrorCode(err) !== "23505") throw err;
        const [existing] = await deps.db.select().from(customers).where(eq(customers.customerId, row.customerId));
        if (existing) {
          if (sameProfile(existing, row)) return { customer: toCustomer(existing) };
          throw new ConnectError("customer already has a different profile", Code.AlreadyExists);
        }
        if (pgConstraint(err) === "customers_email_key") {
          throw new ConnectError("email already belongs to another customer", Code.AlreadyExists);
        }
        throw err;
      }
    },
  };
}

function sameProfile(a: CustomerRow, b: CustomerRow): boolean {
  return (
    a.email.toLowerCase() === b.email.toLowerCase() &&
    a.givenName === b.givenName &&
    a.familyName === b.familyName &&
    a.phoneNumber === b.phoneNumber &&
    sameAddress(a.address, b.address)
  );
}
