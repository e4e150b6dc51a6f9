/** Entry point: `npm run start:customer`. */
import { runMain } from "@customer-platform/runtime/main";
import { envToConfig } from "./config.js";
import { createCustomerServer } from "./server.js";

runMain("customer-service", envToConfig, createCustomerServer);
