/**
 * The Connect adapter over the SDK's token verifier, through a router
 * transport: a valid token reaches the handler as its principal; every
 * refusal is the ConnectError clients have always seen — UNAUTHENTICATED
 * with the same messages, UNAVAILABLE when the JWKS cannot be fetched.
 */
import { randomUUID } from "node:crypto";
import { Code, ConnectError, createClient, createRouterTransport } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rpcError } from "../../test/support/clients.js";
import { startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { freePort } from "../../test/support/ports.js";
import { type Authenticator, createJwksAuthenticator, revokedAccessToken } from "../src/auth.js";

let issuer: TestIssuer;
const revoked = new Set<string>();

beforeAll(async () => {
  issuer = await startTestIssuer();
});
afterAll(() => issuer?.close());

/** A CustomerService whose GetCustomer answers with the caller's subject as the customer id. */
function clientWith(auth: Authenticator) {
  const transport = createRouterTransport(({ service }) =>
    service(CustomerService, {
      async getCustomer(_req, ctx) {
        const principal = await auth.authenticate(ctx);
        return { customer: { customerId: principal.subject, email: principal.kind } };
      },
    }),
  );
  return createClient(CustomerService, transport);
}

const authenticator = () =>
  createJwksAuthenticator({
    jwksUrl: issuer.jwksUrl,
    issuer: issuer.issuer,
    audience: issuer.audience,
    revocations: { isRevoked: (p) => revoked.has(p.tokenId) },
  });

const call = (auth: Authenticator, authorization?: string) =>
  clientWith(auth).getCustomer(
    { customerId: randomUUID() },
    authorization === undefined ? {} : { headers: { authorization } },
  );

describe("createJwksAuthenticator", () => {
  it("hands the handler the caller's principal", async () => {
    const id = randomUUID();
    const res = await call(authenticator(), `Bearer ${await issuer.customer(id)}`);
    expect(res.customer).toMatchObject({ customerId: id, email: "customer" });
    const service = await call(authenticator(), `Bearer ${await issuer.service("orders", "customer:read")}`);
    expect(service.customer).toMatchObject({ customerId: "orders", email: "service" });
  });

  it.each([
    ["no header", undefined, "missing bearer token"],
    ["another scheme", "Basic Zm9vOmJhcg==", "malformed authorization header"],
    ["garbage", "Bearer not-a-jwt", "invalid access token"],
  ])("answers UNAUTHENTICATED to %s", async (_what, authorization, message) => {
    await expect(call(authenticator(), authorization)).rejects.toMatchObject(rpcError(message, Code.Unauthenticated));
  });

  it("answers UNAUTHENTICATED to an expired, a foreign-audience and a revoked token", async () => {
    const sub = randomUUID();
    await expect(call(authenticator(), `Bearer ${await issuer.issue({ sub, expiresIn: -60 })}`)).rejects.toMatchObject(
      rpcError("access token expired", Code.Unauthenticated),
    );
    await expect(call(authenticator(), `Bearer ${await issuer.issue({ sub, aud: "billing" })}`)).rejects.toMatchObject(
      rpcError("invalid access token", Code.Unauthenticated),
    );
    const token = await issuer.customer(sub);
    const jti = JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()).jti as string;
    revoked.add(jti);
    await expect(call(authenticator(), `Bearer ${token}`)).rejects.toMatchObject(
      rpcError("access token revoked", Code.Unauthenticated),
    );
    expect(revokedAccessToken()).toEqual(new ConnectError("access token revoked", Code.Unauthenticated));
  });

  it("answers UNAVAILABLE when the identity provider's keys cannot be fetched", async () => {
    const down = createJwksAuthenticator({
      jwksUrl: `http://127.0.0.1:${await freePort()}/.well-known/jwks.json`,
      issuer: issuer.issuer,
      audience: issuer.audience,
    });
    await expect(call(down, `Bearer ${await issuer.customer(randomUUID())}`)).rejects.toMatchObject(
      rpcError("token keys unavailable", Code.Unavailable),
    );
  });
});
