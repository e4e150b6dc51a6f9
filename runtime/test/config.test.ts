/**
 * envDatabase: a service's database URL is required, `pglite:<dir>` is the
 * embedded database (relative to the working directory), and the variables
 * a reader might expect to work instead (DATABASE_URL, the former
 * <PREFIX>_DATA_DIR) are refused, naming the one that is read.
 * envHttpsUrl: plain http: only for this machine or with
 * ALLOW_INSECURE_HTTP_URLS=true. envHostConfig: the HTTP limits and the
 * reflection switch.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, envDatabase, envHostConfig, envHttpsUrl } from "../src/config.js";
import { DEFAULT_HTTP_LIMITS } from "../src/http-server.js";

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

describe("envHttpsUrl", () => {
  const url = (env: Record<string, string>) => envHttpsUrl(env, "ISSUER", "http://127.0.0.1:8081");

  it.each([
    "https://id.example.com",
    "http://127.0.0.1:8081",
    "http://127.8.9.10",
    "http://localhost:8081/x",
    "http://LOCALHOST.",
    "http://[::1]:8081",
  ])("takes %s", (value) => {
    expect(url({ ISSUER: value })).toBe(value);
  });

  it("takes the loopback default", () => {
    expect(url({})).toBe("http://127.0.0.1:8081");
  });

  it.each([
    "http://identity:8081",
    "http://id.example.com",
    "http://10.0.0.5:8081",
    "http://128.0.0.1",
    "http://[::2]",
    "http://127.0.0.1.example.com",
    "http://localhost.example.com",
  ])("refuses %s unless ALLOW_INSECURE_HTTP_URLS=true", (value) => {
    expect(() => url({ ISSUER: value })).toThrow(
      new ConfigError(
        `ISSUER must use https: for a host other than this machine, got "${new URL(value).toString()}" ` +
          "(set ALLOW_INSECURE_HTTP_URLS=true to allow http: on a private network)",
      ),
    );
    expect(() => url({ ISSUER: value, ALLOW_INSECURE_HTTP_URLS: "false" })).toThrow(ConfigError);
    expect(url({ ISSUER: value, ALLOW_INSECURE_HTTP_URLS: "true" })).toBe(value);
  });

  it("redacts a password in the message, and refuses other schemes and a bad opt-in", () => {
    expect(() => url({ ISSUER: "http://u:secret@id.example.com" })).toThrow(/"http:\/\/u:\*\*\*@id\.example\.com\/"/);
    expect(() => url({ ISSUER: "ftp://id.example.com" })).toThrow(
      new ConfigError('ISSUER must use https: or http:, got "ftp:"'),
    );
    expect(() => url({ ISSUER: "http://id.example.com", ALLOW_INSECURE_HTTP_URLS: "yes" })).toThrow(
      new ConfigError('ALLOW_INSECURE_HTTP_URLS must be true or false, got "yes"'),
    );
  });
});

describe("envHostConfig", () => {
  const host = (env: Record<string, string>) =>
    envHostConfig({ ORDERS_DATABASE_URL: "postgres://db/orders", ...env }, "ORDERS", { port: 8080, cwd: "/srv" });

  it("reads the HTTP limits both services share, with the listener's defaults", () => {
    expect(host({}).httpLimits).toEqual(DEFAULT_HTTP_LIMITS);
    expect(DEFAULT_HTTP_LIMITS).toEqual({
      maxConnections: 1_000,
      maxConcurrentStreams: 100,
      idleTimeoutMs: 75_000,
      requestTimeoutMs: 30_000,
    });
    const env = {
      HTTP_MAX_CONNECTIONS: "50",
      HTTP_MAX_CONCURRENT_STREAMS: "10",
      HTTP_IDLE_TIMEOUT_MS: "0",
      HTTP_REQUEST_TIMEOUT_MS: "5000",
    };
    expect(host(env).httpLimits).toEqual({
      maxConnections: 50,
      maxConcurrentStreams: 10,
      idleTimeoutMs: 0,
      requestTimeoutMs: 5000,
    });
    expect(() => host({ HTTP_MAX_CONNECTIONS: "0" })).toThrow(
      new ConfigError("HTTP_MAX_CONNECTIONS must be between 1 and 1000000, got 0"),
    );
    expect(() => host({ HTTP_MAX_CONCURRENT_STREAMS: "4294967295" })).toThrow(
      new ConfigError("HTTP_MAX_CONCURRENT_STREAMS must be between 1 and 10000, got 4294967295"),
    );
    expect(() => host({ HTTP_REQUEST_TIMEOUT_MS: "30s" })).toThrow(
      new ConfigError('HTTP_REQUEST_TIMEOUT_MS must be an integer, got "30s"'),
    );
  });

  it("serves reflection unless <PREFIX>_REFLECTION=false", () => {
    expect(host({}).reflection).toBe(true);
    expect(host({ ORDERS_REFLECTION: "false" }).reflection).toBe(false);
    expect(host({ ORDERS_REFLECTION: "TRUE" }).reflection).toBe(true);
    expect(() => host({ ORDERS_REFLECTION: "off" })).toThrow(
      new ConfigError('ORDERS_REFLECTION must be true or false, got "off"'),
    );
  });
});
