/** The identity service's database: its schema and the migrations that build it. */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ServiceDatabase } from "@customer-platform/runtime/service-host";
import * as schema from "./db/schema.js";

export const identityDatabase: ServiceDatabase<typeof schema> = {
  schema,
  migrations: join(dirname(fileURLToPath(import.meta.url)), "db/migrations"),
};
