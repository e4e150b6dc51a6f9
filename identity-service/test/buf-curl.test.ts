/**
 * AuthService through `buf curl` with no proto files: the schema comes from
 * the server's reflection, requests are JSON, over Connect (the default) and
 * over gRPC on HTTP/2 cleartext.
 */
import { randomUUID } from "node:crypto";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bufCurl, type CurlProtocol, CURL_PROTOCOLS as PROTOCOLS } from "../../test/support/buf-curl.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";

const SERVICE = "identity.v1.AuthService";
const PASSWORD = "correct horse battery staple";
const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

let svc: RunningIdentityService;

beforeAll(async () => {
  svc = await startIdentityService({});
});

afterAll(async () => {
  await svc?.close();
});

/** Calls one method with a JSON body; resolves with the parsed JSON response. */
async function call(protocol: CurlProtocol, method: string, body: unknown): Promise<Record<string, unknown>> {
  const res = await bufCurl([...PROTOCOLS[protocol], "-d", JSON.stringify(body), `${svc.url}/${SERVICE}/${method}`]);
  if (res.exitCode !== 0) throw new Error(`buf curl ${method} exited ${res.exitCode}: ${res.stderr}`);
  return JSON.parse(res.stdout) as Record<string, unknown>;
}

describe("buf curl via server reflection", () => {
  it.each([
    ["connect", "grpc-v1"],
    ["grpc", "grpc-v1"],
    ["grpc", "grpc-v1alpha"],
  ] as const)("lists every AuthService method over %s (%s reflection)", async (protocol, reflection) => {
    const res = await bufCurl([...PROTOCOLS[protocol], "--reflect-protocol", reflection, "--list-methods", svc.url]);
    expect(res).toMatchObject({ exitCode: 0, stderr: "" });
    const methods = res.stdout.split("\n").filter((l) => l.startsWith(`${SERVICE}/`));
    expect(methods).toEqual(
      [
        "AuthenticateClient",
        "AuthenticateCustomer",
        "ChangePassword",
        "CompleteEmailChange",
        "CompleteRecovery",
        "CompleteSignUp",
        "CreateCredentials",
        "DeleteAccount",
        "IntrospectToken",
        "ListSessions",
        "RefreshToken",
        "RevokeAllSessions",
        "RevokeSession",
        "RevokeToken",
        "StartEmailChange",
        "StartRecovery",
        "StartSignUp",
      ].map((m) => `${SERVICE}/${m}`),
    );
    // The operators' service, on the same port.
    expect(res.stdout.split("\n").filter((l) => l.startsWith("identity.v1.AdminService/"))).toEqual(
      [
        "CreateClient",
        "DeleteIdentity",
        "DisableClient",
        "DisableIdentity",
        "EnableClient",
        "EnableIdentity",
        "GetClient",
        "ListClients",
        "RotateClientSecret",
        "UpdateClient",
      ].map((m) => `identity.v1.AdminService/${m}`),
    );
    expect(res.stdout).toContain("grpc.health.v1.Health/Check");
  });

  it.each(Object.keys(PROTOCOLS) as CurlProtocol[])(
    "signs up, signs in and refreshes over %s with JSON bodies only",
    async (protocol) => {
      const email = `curl.${protocol}.${randomUUID().slice(0, 8)}@example.com`;
      const signUp = await call(protocol, "CreateCredentials", { email, password: PASSWORD });
      expect(signUp.customerId).toMatch(UUID_V7);
      expect(signUp.tokens).toMatchObject({
        tokenType: "Bearer",
        expiresIn: 900,
        scope: "openid profile customer:self",
        refreshToken: expect.stringMatching(/^[A-Za-z0-9_-]{43}$/),
      });

      const signIn = await call(protocol, "AuthenticateCustomer", { email, password: PASSWORD });
      expect(signIn.customerId).toBe(signUp.customerId);
      const tokens = signIn.tokens as { accessToken: string; refreshToken: string };
      expect(decodeJwt(tokens.accessToken)).toMatchObject({ sub: signUp.customerId, client_id: "first-party" });
      expect(tokens.refreshToken).not.toBe((signUp.tokens as { refreshToken: string }).refreshToken);

      // Proto field names work as well as JSON names.
      const refreshed = await call(protocol, "RefreshToken", { refresh_token: tokens.refreshToken });
      expect(decodeJwt((refreshed.tokens as { accessToken: string }).accessToken).sub).toBe(signUp.customerId);
    },
  );

  it.each(Object.keys(PROTOCOLS) as CurlProtocol[])(
    "reports a wrong password as unauthenticated over %s",
    async (protocol) => {
      const email = `curl.bad.${protocol}.${randomUUID().slice(0, 8)}@example.com`;
      await call(protocol, "CreateCredentials", { email, password: PASSWORD });
      const res = await bufCurl([
        ...PROTOCOLS[protocol],
        "-d",
        JSON.stringify({ email, password: "not the password" }),
        `${svc.url}/${SERVICE}/AuthenticateCustomer`,
      ]);
      // buf curl exits with the gRPC code shifted left by three bits.
      expect(res.exitCode).toBe(16 << 3);
      expect(res.stdout).toBe("");
      expect(JSON.parse(res.stderr)).toEqual({ code: "unauthenticated", message: "invalid email or password" });
    },
  );
});
