/** Entry point: `npm run start:identity`. */
import { runMain } from "@customer-platform/runtime/main";
import { envToConfig } from "./config.js";
import { createIdentityServer } from "./server.js";

runMain("identity-service", envToConfig, createIdentityServer);
