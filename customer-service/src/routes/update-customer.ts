import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { type Customer, CustomerSchema } from "@customer-platform/gen/customer/v1/customer_pb.js";
import type { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import type { Principal } from "@customer-platform/runtime/auth";
import { placeholder, placeholders } from "@customer-platform/runtime/db";
import type { Outbox } from "@customer-platform/runtime/outbox";
import { eventValues, prepareWithEvent } from "@customer-platform/runtime/outbox-writer";
import { and, eq, sql } from "drizzle-orm";
import {
  authorize,
  rejectBlank,
  SCOPE_READ,
  SCOPE_WRITE,
  sameAddress,
  toCustomer,
  toStoredAddress,
} from "../customer.js";
import { type CustomerRow, customers, type StoredAddress } from "../db/schema.js";
import type { CustomerServiceDeps } from "../deps.js";
import { customerUpdated } from "../events.js";

type Change = Partial<Pick<CustomerRow, "givenName" | "familyName" | "phoneNumber" | "address">>;

interface MaskField<K extends keyof Change> {
  column: K;
  read(input: Customer | undefined): CustomerRow[K];
  equal(a: CustomerRow[K], b: CustomerRow[K]): boolean;
}

const same = <T>(a: T, b: T) => a === b;

/**
 * The update_mask paths and the column each one sets. Not the email: it
 * follows the identity's verified email (verified-email.ts).
 */
const MASK_FIELDS: Record<string, MaskField<keyof Change>> = {
  given_name: { column: "givenName", read: (c) => c?.givenName.trim() ?? "", equal: same },
  family_name: { column: "familyName", read: (c) => c?.familyName.trim() ?? "", equal: same },
  phone_number: { column: "phoneNumber", read: (c) => c?.phoneNumber ?? null, equal: same },
  address: {
    column: "address",
    read: (c) => toStoredAddress(c?.address),
    equal: (a, b) => sameAddress(a as StoredAddress | null, b as StoredAddress | null),
  },
} satisfies { [path: string]: MaskField<keyof Change> };

/** The Customer field each update_mask path names. */
const MASK_MESSAGE_FIELDS = {
  given_name: "givenName",
  family_name: "familyName",
  phone_number: "phoneNumber",
  address: "address",
} as const satisfies Record<string, keyof Customer>;

/**
 * The updated profile as `principal` may see it: whole for the customer and
 * for a service that may also read profiles (customer:read); for one that may
 * only write, its id, version and times and the fields it set, so that
 * writing is no way to read the rest (a no-op update would return it all).
 */
function visibleTo(principal: Principal, customer: Customer, paths: string[]): Customer {
  if (principal.kind === "customer" || principal.scopes.has(SCOPE_READ)) return customer;
  const { customerId, version, createTime, updateTime } = customer;
  const visible = create(CustomerSchema, { customerId, version, createTime, updateTime });
  for (const path of paths) {
    const field = MASK_MESSAGE_FIELDS[path as keyof typeof MASK_MESSAGE_FIELDS];
    if (field) Object.assign(visible, { [field]: customer[field] });
  }
  return visible;
}

/**
 * The whole new row, its event and the relay's wake-up in one statement, but
 * only if the row is still at the version it was read at: zero rows when
 * another update came first.
 */
function prepareWrite(db: CustomerServiceDeps["db"], outbox: Outbox) {
  const updated = db.$with("updated").as(
    db
      .update(customers)
      .set({
        ...placeholders(customers, ["givenName", "familyName", "phoneNumber", "address", "updateTime"]),
        version: sql`${customers.version} + 1`,
      })
      .where(
        and(
          eq(customers.customerId, placeholder("customerId", customers.customerId)),
          eq(customers.version, placeholder("version", customers.version)),
        ),
      )
      .returning({ customerId: customers.customerId }),
  );
  return prepareWithEvent(db, updated, outbox, "update_customer");
}

/**
 * UpdateCustomer: applies the masked fields to the row as read, if no other
 * update has changed it since: one read and one write, no transaction. When
 * one has, it reads again under a row lock, so concurrent updates serialise
 * and each real change gets its own version and event.
 */
export function updateCustomer(deps: CustomerServiceDeps): Pick<ServiceImpl<typeof CustomerService>, "updateCustomer"> {
  // Built once, as in get-customer.ts.
  const read = deps.db
    .select()
    .from(customers)
    .where(eq(customers.customerId, sql.placeholder("customerId")))
    .prepare("update_customer_read");
  const write = prepareWrite(deps.db, deps.events);
  return {
    async updateCustomer(req, ctx) {
      const customerId = req.customer?.customerId ?? "";
      const principal = await deps.auth.authenticate(ctx);
      authorize(principal, customerId, SCOPE_WRITE);
      const input = req.customer;
      const paths = [...new Set(req.updateMask?.paths ?? [])];

      // The row after the update, or undefined when the write found the row at
      // another version than `current`.
      const apply = async (current: CustomerRow | undefined, execute: typeof write.execute) => {
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
        const updated: CustomerRow = { ...current, ...change, version: current.version + 1, updateTime: now };
        const event = customerUpdated(deps.events, toCustomer(updated), changed, now);
        const written = await execute({ ...updated, version: current.version, ...eventValues(event) });
        return written.length === 1 ? updated : undefined;
      };

      const row =
        (await apply((await read.execute({ customerId }))[0], write.execute.bind(write))) ??
        (await deps.db.transaction(async (tx) => {
          const [current] = await tx.select().from(customers).where(eq(customers.customerId, customerId)).for("update");
          const txWrite = prepareWrite(tx, deps.events);
          const row = await apply(current, txWrite.execute.bind(txWrite));
          if (!row) throw new Error("locked row changed inside its transaction");
          return row;
        }));
      return { customer: visibleTo(principal, toCustomer(row), paths) };
    },
  };
}
