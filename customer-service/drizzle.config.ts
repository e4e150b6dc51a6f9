import { defineConfig } from "drizzle-kit";

/** `npm run db:generate -w …` or `npx drizzle-kit generate --config customer-service/drizzle.config.ts`. */
export default defineConfig({
  dialect: "postgresql",
  schema: "./customer-service/src/db/schema.ts",
  out: "./customer-service/src/db/migrations",
});
