import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { createBatchRead } from "@customer-platform/runtime/batch-read";
import { sql } from "drizzle-orm";
import { authorize, SCOPE_READ, toCustomer } from "../customer.js";
import { customers } from "../db/schema.js";
import type { CustomerServiceDeps } from "../deps.js";

/** GetCustomer: one profile by id. */
export function getCustomer(deps: CustomerServiceDeps): Pick<ServiceImpl<typeof CustomerService>, "getCustomer"> {
  // Built once: the SQL text is not rebuilt per call, and PostgreSQL parses and plans it once per connection.
  // The calls that arrive together are read together (one statement for their ids): under load one round
  // trip serves a batch; alone, a call is read in the same I/O round.
  const byIds = deps.db
    .select()
    .from(customers)
    .where(sql`${customers.customerId} = any(${sql.placeholder("customerIds")}::uuid[])`)
    .prepare("get_customers");
  const read = createBatchRead({
    readMany: (customerIds: string[]) => byIds.execute({ customerIds }),
    keyOf: (row) => row.customerId,
  });
  return {
    async getCustomer(req, ctx) {
      const principal = await deps.auth.authenticate(ctx);
      authorize(principal, req.customerId, SCOPE_READ);
      // The statement answers ids in their canonical (lowercase) form, the key each row is matched by.
      const row = await read(req.customerId.toLowerCase());
      if (!row) throw new ConnectError("customer not found", Code.NotFound);
      return { customer: toCustomer(row) };
    },
  };
}
