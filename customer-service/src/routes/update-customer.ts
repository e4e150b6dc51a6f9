import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { Customer } from "@customer-platform/gen/customer/v1/customer_pb.js";
import type { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { eq } from "drizzle-orm";
import { pgConstraint, pgErrorCode } from "../../../runtime/db.js";
import { authorize, rejectBlank, SCOPE_WRITE, sameAddress, toCustomer, toStoredAddress } from "../customer.js";
import { type CustomerRow, customers, type StoredAddress } from "../db/schema.js";
import type { CustomerServiceDeps } from "../deps.js";
import { emitCustomerUpdated } from "../events.js";

type Change = Partial<Pick<CustomerRow, "email" | "givenName" | "familyName" | "phoneNumber" | "address">>;

interface MaskField<K extends keyof Change> {
  column: K;
  read(input: Customer | undefined): CustomerRow[K];
  equal(a: CustomerRow[K], b: CustomerRow[K]): boolean;
}

const same = <T>(a: T, b: T) => a === b;

/** The update_mask paths and the column each one sets. */
const MASK_FIELDS: Record<string, MaskField<keyof Change>> = {
  email: { column: "email", read: (c) => c?.email.trim() ?? "", equal: same },
  given_name: { column: "givenName", read: (c) => c?.givenName.trim() ?? "", equal: same },
  family_name: { column: "familyName", read: (c) => c?.familyName.trim() ?? "", equal: same },
  phone_number: { column: "phoneNumber", read: (c) => c?.phoneNumber ?? null, equal: same },
  address: {
    column: "address",
    read: (c) => toStoredAddress(c?.address),
    equal: (a, b) => sameAddress(a as StoredAddress | null, b as StoredAddress | null),
  },
} satisfies { [path: string]: MaskField<keyof Change> };

/**
 * UpdateCustomer: applies the masked fields under a row lock, so concurrent
 * updates serialise and each real change gets its own version and event.
 */
export function updateCustomer(deps: CustomerServiceDeps): Pick<ServiceImpl<typeof CustomerService>, "updateCustomer"> {
  return {
    async updateCustomer(req, ctx) {
      const customerId = req.customer?.customerId ?? "";
      const principal = await deps.auth.authenticate(ctx);
      authorize(principal, customerId, SCOPE_WRITE);
      const input = req.customer;
      const paths = [...new Set(req.updateMask?.paths ?? [])];
      try {
        const row = await deps.db.transaction(async (tx) => {
          const [current] = await tx.select().from(customers).where(eq(customers.customerId, customerId)).for("update");
          if (!current) throw new ConnectError("customer not found", Code.NotFound);
          if (req.expectedVersion !== undefined && BigInt(current.version) !== req.expectedVersion) {
            throw new ConnectError(
              `customer is at version ${current.version}, not the expected ${req.expectedVersion}`,
              Code.Aborted,
            );
          }
          const change: Change = {};
          const changed: string[] = [];
          for (const path of paths) {
            const field = MASK_FIELDS[path];
            if (!field) {
              // The contract's field_mask.in rule admits no other path.
              throw new ConnectError(`update_mask path "${path}" is not updatable`, Code.InvalidArgument);
            }
            const next = field.read(input);
            if (path !== "phone_number") rejectBlank(`customer.${path}`, next as string | StoredAddress | null);
            if (!field.equal(next as never, current[field.column] as never)) {
              Object.assign(change, { [field.column]: next });
              changed.push(path);
            }
          }
          if (changed.length === 0) return current;
          const now = deps.now();
          const [updated] = await tx
            .update(customers)
            .set({ ...change, version: current.version + 1, updateTime: now })
            .where(eq(customers.customerId, customerId))
            .returning();
          if (!updated) throw new Error("updated row vanished inside its transaction");
          await emitCustomerUpdated(tx, deps.events, toCustomer(updated), changed, now);
          return updated;
        });
        return { customer: toCustomer(row) };
      } catch (err) {
        if (pgErrorCode(err) === "23505" && pgConstraint(err) === "customers_email_key") {
          throw new ConnectError("email already belongs to another customer", Code.AlreadyExists);
        }
        throw err;
      }
    },
  };
}
