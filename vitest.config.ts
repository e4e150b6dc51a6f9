import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  // Workspace packages (runtime, sdk) resolve to their TypeScript sources, not their build.
  resolve: { conditions: ["source", "module", "node", "development|production"] },
  ssr: { resolve: { conditions: ["source", "module", "node", "development|production"] } },
  test: {
    // Build output (npm run build) is never a test source.
    exclude: [...configDefaults.exclude, "**/dist/**"],
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Files are isolated by database and stream names, not by process count:
    // two cores, so two forks keep argon2 and the servers from starving.
    pool: "forks",
    maxWorkers: 2,
    projects: [
      {
        extends: true,
        test: {
          name: "suite",
          include: [
            "test/**/*.test.ts",
            "customer-service/**/*.test.ts",
            "identity-service/**/*.test.ts",
            "runtime/**/*.test.ts",
            "sdk/**/*.test.ts",
            "examples/**/*.test.ts",
          ],
          sequence: { groupOrder: 0 },
        },
      },
      {
        // The quick bench loads both cores for a minute: it runs alone, after every
        // other file has finished, so it neither slows timing-sensitive tests nor is
        // slowed by them.
        extends: true,
        test: { name: "bench", include: ["bench/**/*.test.ts"], sequence: { groupOrder: 1 } },
      },
    ],
  },
});
