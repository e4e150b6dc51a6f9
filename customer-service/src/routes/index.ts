import type { ServiceImpl } from "@connectrpc/connect";
import type { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import type { CustomerServiceDeps } from "../deps.js";
import { getCustomer } from "./get-customer.js";
import { registerCustomer } from "./register-customer.js";
import { updateCustomer } from "./update-customer.js";

/** The CustomerService handlers: one file per RPC under routes/. */
export function createCustomerService(deps: CustomerServiceDeps): ServiceImpl<typeof CustomerService> {
  return {
    ...registerCustomer(deps),
    ...updateCustomer(deps),
    ...getCustomer(deps),
  };
}
