/**
 * The identity service's configuration: its issuer URL must be https: unless
 * it names this machine or ALLOW_INSECURE_HTTP_URLS=true, and reflection can
 * be turned off.
 */
import { ConfigError } from "@customer-platform/runtime/config";
import { describe, expect, it } from "vitest";
import { envToConfig } from "../src/config.js";

const config = (env: Record<string, string>) =>
  envToConfig({ IDENTITY_DATABASE_URL: "postgres://db/identity", ...env }, "/srv");

describe("IDENTITY_ISSUER", () => {
  it("takes https: anywhere and http: on this machine", () => {
    expect(config({}).issuer).toBe("http://127.0.0.1:8081");
    expect(config({ IDENTITY_ISSUER: "https://id.example.com/" }).issuer).toBe("https://id.example.com");
    expect(config({ IDENTITY_ISSUER: "http://localhost:8081" }).issuer).toBe("http://localhost:8081");
    expect(config({ IDENTITY_ISSUER: "http://[::1]:8081" }).issuer).toBe("http://[::1]:8081");
  });

  it("refuses http: for another host unless ALLOW_INSECURE_HTTP_URLS=true", () => {
    expect(() => config({ IDENTITY_ISSUER: "http://identity:8081" })).toThrow(
      new ConfigError(
        'IDENTITY_ISSUER must use https: for a host other than this machine, got "http://identity:8081/" ' +
          "(set ALLOW_INSECURE_HTTP_URLS=true to allow http: on a private network)",
      ),
    );
    const allowed = config({ IDENTITY_ISSUER: "http://identity:8081", ALLOW_INSECURE_HTTP_URLS: "true" });
    expect(allowed.issuer).toBe("http://identity:8081");
  });
});

describe("IDENTITY_REFLECTION", () => {
  it("is on unless set to false", () => {
    expect(config({}).reflection).toBe(true);
    expect(config({ IDENTITY_REFLECTION: "false" }).reflection).toBe(false);
  });
});
