import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  // Workspace packages (runtime, sdk) resolve to their TypeScript sources, not their build.
  resolve: { conditions: ["source", "module", "node", "development|production"] },
  ssr: { resolve: { conditions: ["source", "module", "node", "development|production"] } },
  test: {
    include: [
      "test/**/*.test.ts",
      "customer-service/**/*.test.ts",
      "identity-service/**/*.test.ts",
      "runtime/**/*.test.ts",
      "sdk/**/*.test.ts",
      "examples/**/*.test.ts",
      "bench/**/*.test.ts",
    ],
    // Build output (npm run build) is never a test source.
    exclude: [...configDefaults.exclude, "**/dist/**"],
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Files are isolated by database and stream names, not by process count:
    // two cores, so two forks keep argon2 and the servers from starving.
    pool: "forks",
    maxWorkers: 2,
  },
});
