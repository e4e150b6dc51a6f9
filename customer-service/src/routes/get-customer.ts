import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import type { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { eq, sql } from "drizzle-orm";
import { authorize, SCOPE_READ, toCustomer } from "../customer.js";
import { customers } from "../db/schema.js";
import type { CustomerServiceDeps } from "../deps.js";

/** GetCustomer: one profile by id. */
export function getCustomer(deps: CustomerServiceDeps): Pick<ServiceImpl<typeof CustomerService>, "getCustomer"> {
  // Built once: the SQL text is not rebuilt per call, and PostgreSQL parses and plans it once per connection.
  const byId = deps.db
    .select()
    .from(customers)
    .where(eq(customers.customerId, sql.placeholder("customerId")))
    .prepare("get_customer");
  return {
    async getCustomer(req, ctx) {
      const principal = await deps.auth.authenticate(ctx);
      authorize(principal, req.customerId, SCOPE_READ);
      const [row] = await byId.execute({ customerId: req.customerId });
      if (!row) throw new ConnectError("customer not found", Code.NotFound);
      return { customer: toCustomer(row) };
    },
  };
}
