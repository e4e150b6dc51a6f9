/**
 * envDatabase: a service's database URL is required, `pglite:<dir>` is the
 * embedded database (relative to the working directory), and the variables
 * a reader might expect to work instead (DATABASE_URL, the former
 * <PREFIX>_DATA_DIR) are refused, naming the one that is read.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, envDatabase } from "../src/config.js";

const opts = { cwd: "/srv/app", embedded: "./.data/orders", dataDirVariable: "ORDERS_DATA_DIR" };
const timeouts = { statementTimeoutMs: 30_000, idleInTransactionTimeoutMs: 60_000 };
const database = (env: Record<string, string>) => envDatabase(env, "ORDERS_DATABASE_URL", opts);

describe("envDatabase", () => {
  it("takes PostgreSQL URLs as they are, and resolves an embedded directory against the working directory", () => {
    const pg = "postgresql://orders:secret@db.internal:5432/orders";
    expect(database({ ORDERS_DATABASE_URL: pg })).toEqual({ url: pg, variable: "ORDERS_DATABASE_URL", ...timeouts });
    expect(database({ ORDERS_DATABASE_URL: "pglite:./.data/orders" }).url).toBe("pglite:/srv/app/.data/orders");
    expect(database({ ORDERS_DATABASE_URL: "pglite:/var/lib/orders" }).url).toBe("pglite:/var/lib/orders");
  });

  it("reads the two session timeouts both services share", () => {
    const env = {
      ORDERS_DATABASE_URL: "postgres://db/orders",
      DATABASE_STATEMENT_TIMEOUT_MS: "5000",
      DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: "0",
    };
    expect(database(env)).toMatchObject({ statementTimeoutMs: 5000, idleInTransactionTimeoutMs: 0 });
    expect(() => database({ ...env, DATABASE_STATEMENT_TIMEOUT_MS: "30s" })).toThrow(
      new ConfigError('DATABASE_STATEMENT_TIMEOUT_MS must be an integer, got "30s"'),
    );
  });

  it.each([
    [{}, "ORDERS_DATABASE_URL is required (postgres://… or pglite:./.data/orders for the embedded database)"],
    [
      { DATABASE_URL: "postgres://db/orders" },
      "ORDERS_DATABASE_URL is required; DATABASE_URL is ignored (each service has its own): set ORDERS_DATABASE_URL",
    ],
    [
      { ORDERS_DATABASE_URL: "postgres://db/orders", ORDERS_DATA_DIR: "/var/lib/orders" },
      "ORDERS_DATA_DIR is no longer read: set ORDERS_DATABASE_URL=pglite:<dir> for the embedded database instead",
    ],
    [
      { ORDERS_DATABASE_URL: "pglite:" },
      "ORDERS_DATABASE_URL must name a directory after pglite:, e.g. pglite:./.data/orders",
    ],
    [
      { ORDERS_DATABASE_URL: "mysql://db/orders" },
      'ORDERS_DATABASE_URL must use postgres: or postgresql: or pglite:, got "mysql:"',
    ],
  ])("refuses %j", (env, message) => {
    expect(() => database(env)).toThrow(new ConfigError(message));
  });
});
