/**
 * The customer service's configuration: the identity provider's URLs it
 * trusts keys from (issuer, JWKS, event keys) must be https: unless they
 * name this machine or ALLOW_INSECURE_HTTP_URLS=true, and reflection can be
 * turned off.
 */
import { ConfigError } from "@customer-platform/runtime/config";
import { describe, expect, it } from "vitest";
import { envToConfig } from "../src/config.js";

const config = (env: Record<string, string>) =>
  envToConfig({ CUSTOMER_DATABASE_URL: "postgres://db/customer", ...env }, "/srv");

const insecure = (variable: string, url: string) =>
  new ConfigError(
    `${variable} must use https: for a host other than this machine, got "${url}" ` +
      "(set ALLOW_INSECURE_HTTP_URLS=true to allow http: on a private network)",
  );

describe("identity provider URLs", () => {
  it("derives https: URLs from an https: issuer, and takes loopback http:", () => {
    expect(config({ IDENTITY_ISSUER: "https://id.example.com" })).toMatchObject({
      issuer: "https://id.example.com",
      jwksUrl: "https://id.example.com/.well-known/jwks.json",
    });
    expect(config({})).toMatchObject({
      issuer: "http://127.0.0.1:8081",
      jwksUrl: "http://127.0.0.1:8081/.well-known/jwks.json",
    });
  });

  it.each([
    ["IDENTITY_ISSUER", { IDENTITY_ISSUER: "http://identity:8081" }, "http://identity:8081/"],
    ["IDENTITY_JWKS_URL", { IDENTITY_JWKS_URL: "http://10.1.2.3/jwks.json" }, "http://10.1.2.3/jwks.json"],
    [
      "IDENTITY_EVENT_KEYS_URL",
      { IDENTITY_EVENT_KEYS_URL: "http://keys.internal/k.json" },
      "http://keys.internal/k.json",
    ],
  ])("refuses http: for another host in %s unless ALLOW_INSECURE_HTTP_URLS=true", (variable, env, shown) => {
    expect(() => config(env)).toThrow(insecure(variable, shown));
    expect(() => config({ ...env, ALLOW_INSECURE_HTTP_URLS: "true" })).not.toThrow();
  });

  it("takes http: for every URL derived from an issuer allowed by ALLOW_INSECURE_HTTP_URLS=true", () => {
    const c = config({ IDENTITY_ISSUER: "http://identity:8081", ALLOW_INSECURE_HTTP_URLS: "true" });
    expect(c.jwksUrl).toBe("http://identity:8081/.well-known/jwks.json");
  });
});

describe("CUSTOMER_REFLECTION", () => {
  it("is on unless set to false", () => {
    expect(config({}).reflection).toBe(true);
    expect(config({ CUSTOMER_REFLECTION: "false" }).reflection).toBe(false);
  });
});

describe("CUSTOMER_IDENTITY_CONSUMER", () => {
  it("names the durable consumer of identity events, customer-service-identity by default", () => {
    expect(config({}).identityConsumer).toBe("customer-service-identity");
    expect(config({ CUSTOMER_IDENTITY_CONSUMER: "identity_eu-1" }).identityConsumer).toBe("identity_eu-1");
  });

  it.each(["a.b", "email>", "two words"])("refuses %j, which is no JetStream consumer name", (name) => {
    expect(() => config({ CUSTOMER_IDENTITY_CONSUMER: name })).toThrow(
      new ConfigError(
        `CUSTOMER_IDENTITY_CONSUMER must be a JetStream consumer name (letters, digits, - and _), got "${name}"`,
      ),
    );
  });
});
