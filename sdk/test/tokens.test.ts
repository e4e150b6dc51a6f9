/**
 * createTokenVerifier against a real JWKS over loopback: it says who a valid
 * token stands for, and refuses everything else with the TokenError reason a
 * resource server answers by: missing, malformed, invalid (issuer,
 * audience, typ, a key it does not know, an algorithm the identity service
 * does not sign with), expired, revoked, and keys_unavailable when the JWKS
 * cannot be fetched.
 */
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { customerEmail, startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { freePort } from "../../test/support/ports.js";
import {
  ACCESS_TOKEN_ALGORITHMS,
  bearerToken,
  createTokenVerifier,
  type Principal,
  principalFromClaims,
  TokenError,
  type TokenErrorReason,
  type TokenVerifier,
} from "../src/tokens.js";

let issuer: TestIssuer;
let verifier: TokenVerifier;
const revokedIds = new Set<string>();

beforeAll(async () => {
  issuer = await startTestIssuer();
  verifier = createTokenVerifier({
    jwksUrl: issuer.jwksUrl,
    issuer: issuer.issuer,
    audience: issuer.audience,
    revocations: { isRevoked: (p) => revokedIds.has(p.tokenId) || revokedIds.has(p.sessionId ?? "") },
  });
});

afterAll(() => issuer?.close());

const refused = (p: Promise<unknown>, reason: TokenErrorReason) =>
  expect(p).rejects.toSatisfy((err) => err instanceof TokenError && err.reason === reason);

const claims = (token: string) =>
  JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()) as Record<string, unknown>;

describe("createTokenVerifier", () => {
  it("says who a customer's and a service's token stand for", async () => {
    const customerId = randomUUID();
    const customer = await issuer.customer(customerId);
    const principal: Principal = await verifier.verifyAuthorizationHeader(`Bearer ${customer}`);
    expect(principal).toEqual({
      kind: "customer",
      subject: customerId,
      clientId: "first-party",
      scopes: new Set(),
      tokenId: claims(customer).jti,
      keyId: JSON.parse(Buffer.from(customer.split(".")[0] ?? "", "base64url").toString()).kid,
      email: customerEmail(customerId),
      expiresAt: new Date(Number(claims(customer).exp) * 1000),
      issuedAt: new Date(Number(claims(customer).iat) * 1000),
    });
    const service = await verifier.verify(await issuer.service("orders-service", "customer:read customer:write"));
    expect(service).toMatchObject({
      kind: "service",
      subject: "orders-service",
      clientId: "orders-service",
      scopes: new Set(["customer:read", "customer:write"]),
    });
  });

  it("gives a customer's email only when the token says it is verified", async () => {
    const customerId = randomUUID();
    const withEmail = await verifier.verify(await issuer.customer(customerId, "Ada@Example.com"));
    expect(withEmail.email).toBe("Ada@Example.com");
    const without = await verifier.verify(await issuer.issue({ sub: customerId }));
    expect(without).not.toHaveProperty("email");
    const base = { sub: customerId, client_id: "first-party", jti: randomUUID(), iat: 1, exp: 2 };
    expect(principalFromClaims({ ...base, email: "ada@example.com", email_verified: true }).email).toBe(
      "ada@example.com",
    );
    for (const unproven of [
      { email: "ada@example.com" },
      { email: "ada@example.com", email_verified: false },
      { email: "ada@example.com", email_verified: "true" },
      { email: ["ada@example.com"], email_verified: true },
      { email: "", email_verified: true },
    ]) {
      expect(principalFromClaims({ ...base, ...unproven })).not.toHaveProperty("email");
    }
  });

  it("refuses a missing or malformed Authorization header", async () => {
    await refused(verifier.verifyAuthorizationHeader(undefined), "missing");
    await refused(verifier.verifyAuthorizationHeader(""), "missing");
    await refused(verifier.verifyAuthorizationHeader("Basic Zm9vOmJhcg=="), "malformed");
    await refused(verifier.verifyAuthorizationHeader("Bearer "), "malformed");
    expect(() => bearerToken("bearer  abc.def.ghi ")).not.toThrow();
    expect(bearerToken("bearer  abc.def.ghi ")).toBe("abc.def.ghi");
  });

  it("refuses another issuer, another audience, another typ, an unknown key and garbage as invalid", async () => {
    const sub = randomUUID();
    await refused(verifier.verify(await issuer.issue({ sub, iss: "https://evil.example" })), "invalid");
    await refused(verifier.verify(await issuer.issue({ sub, aud: "payments-service" })), "invalid");
    await refused(verifier.verify(await issuer.issue({ sub, typ: "JWT" })), "invalid");
    await refused(verifier.verify(await issuer.issue({ sub, kid: "unknown-kid" })), "invalid");
    await refused(verifier.verify("not-a-jwt"), "invalid");
  });

  it("pins EdDSA, what the identity service signs with: an ES256 token from the same JWKS is invalid", async () => {
    expect(ACCESS_TOKEN_ALGORITHMS).toEqual(["EdDSA"]);
    // A JWKS that does publish an ES256 key, so only the algorithm pin can refuse the token.
    const { privateKey, publicKey } = await generateKeyPair("ES256");
    const jwk = { ...(await exportJWK(publicKey)), kid: "es", alg: "ES256", use: "sig" };
    const server = createServer((_req, res) => {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const now = Math.floor(Date.now() / 1000);
      const token = await new SignJWT({ client_id: "first-party", scope: "" })
        .setProtectedHeader({ alg: "ES256", typ: "at+jwt", kid: "es" })
        .setIssuer(base)
        .setAudience("customer-service")
        .setSubject(randomUUID())
        .setJti(randomUUID())
        .setIssuedAt(now)
        .setExpirationTime(now + 600)
        .sign(privateKey);
      const es = createTokenVerifier({ jwksUrl: base, issuer: base, audience: "customer-service" });
      await expect(es.verify(token)).rejects.toMatchObject({
        reason: "invalid",
        cause: expect.objectContaining({ code: "ERR_JOSE_ALG_NOT_ALLOWED" }),
      });
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it("refuses an expired token as expired, and judges expiry by the given clock", async () => {
    const token = await issuer.issue({ sub: randomUUID(), expiresIn: -60 });
    await refused(verifier.verify(token), "expired");
    const inThePast = createTokenVerifier({
      jwksUrl: issuer.jwksUrl,
      issuer: issuer.issuer,
      audience: issuer.audience,
      now: () => new Date(Date.now() - 120_000),
    });
    await expect(inThePast.verify(token)).resolves.toMatchObject({ kind: "customer" });
  });

  it("refuses a revoked token or session as revoked", async () => {
    const token = await issuer.customer(randomUUID());
    await expect(verifier.verify(token)).resolves.toBeDefined();
    revokedIds.add(String(claims(token).jti));
    await refused(verifier.verify(token), "revoked");
  });

  it("says keys_unavailable, keeping the cause, when the JWKS cannot be fetched", async () => {
    const nowhere = `http://127.0.0.1:${await freePort()}/.well-known/jwks.json`;
    const down = createTokenVerifier({ jwksUrl: nowhere, issuer: issuer.issuer, audience: issuer.audience });
    const err = await down.verify(await issuer.customer(randomUUID())).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TokenError);
    expect(err).toMatchObject({ reason: "keys_unavailable", message: "token keys unavailable" });
    expect((err as TokenError).cause).toBeInstanceOf(TypeError);
  });

  it("gives each reason the message a resource server answers with", () => {
    const reasons: TokenErrorReason[] = ["missing", "malformed", "invalid", "expired", "revoked", "keys_unavailable"];
    expect(reasons.map((r) => new TokenError(r).message)).toEqual([
      "missing bearer token",
      "malformed authorization header",
      "invalid access token",
      "access token expired",
      "access token revoked",
      "token keys unavailable",
    ]);
  });
});
