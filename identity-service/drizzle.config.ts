import { defineConfig } from "drizzle-kit";

/** `npx drizzle-kit generate --config identity-service/drizzle.config.ts`. */
export default defineConfig({
  dialect: "postgresql",
  schema: "./identity-service/src/db/schema.ts",
  out: "./identity-service/src/db/migrations",
});
