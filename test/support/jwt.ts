/**
 * Tokens made by hand, for tests of what a service must refuse: compact JWS
 * over exactly the header and payload given (any alg, any claims, any
 * signature), the identity service's real signing key read from its
 * database, access-token claims as the identity service issues them, and
 * the check that both services refuse a token.
 */
import { createPrivateKey, sign as cryptoSign, type KeyObject, randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import type { JWK } from "jose";
import type postgres from "postgres";
import { expect } from "vitest";
import { bearer, CORE_PROTOCOLS, rpcError } from "./clients.js";
import type { Platform } from "./platform.js";

/** base64url of bytes, of text, or of an object as JSON. */
export const b64url = (x: object | Buffer | string) =>
  Buffer.from(Buffer.isBuffer(x) ? x : typeof x === "string" ? x : JSON.stringify(x)).toString("base64url");

/** A compact JWS over exactly this header and payload; sign returns the raw signature. */
export function jwt(header: object, payload: object, sign: (input: Buffer) => Buffer | string): string {
  const input = `${b64url(header)}.${b64url(payload)}`;
  return `${input}.${b64url(sign(Buffer.from(input, "ascii")))}`;
}

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicJwk: JWK;
  /** Signs a JWS input with the key (EdDSA), for jwt(). */
  sign(input: Buffer): Buffer;
}

/**
 * The identity service's one active signing key, read from its database:
 * with it a test mints tokens the real issuer could have signed.
 */
export async function readSigningKey(identitySql: postgres.Sql): Promise<SigningKey> {
  const rows = await identitySql<{ kid: string; private_jwk: JWK; public_jwk: JWK }[]>`
    select kid, private_jwk, public_jwk from signing_keys where retired_at is null`;
  const [row] = rows;
  if (!row || rows.length !== 1) throw new Error(`expected one active signing key, found ${rows.length}`);
  const privateKey = createPrivateKey({ key: row.private_jwk as never, format: "jwk" });
  return { kid: row.kid, privateKey, publicJwk: row.public_jwk, sign: (input) => cryptoSign(null, input, privateKey) };
}

export const nowSec = () => Math.floor(Date.now() / 1000);

/**
 * The claims of a customer's access token as the identity service at issuer
 * issues them (valid for ten minutes); an override set to undefined leaves
 * that claim out.
 */
export function customerClaims(issuer: string, customerId: string, overrides: Record<string, unknown> = {}) {
  const now = nowSec();
  return {
    iss: issuer,
    sub: customerId,
    aud: ["customer-service", issuer],
    iat: now,
    exp: now + 600,
    jti: randomUUID(),
    client_id: "first-party",
    scope: "openid profile customer:self",
    ...overrides,
  };
}

/**
 * Both services of the platform refuse token as a bearer token with
 * UNAUTHENTICATED and message, over Connect and gRPC, and introspection (by
 * the service token introspector) calls it inactive.
 */
export async function expectRejectedEverywhere(
  platform: Platform,
  token: string,
  message: string,
  who: { customerId: string; introspector: string },
): Promise<void> {
  for (const protocol of CORE_PROTOCOLS) {
    await expect(
      platform.customers(protocol).getCustomer({ customerId: who.customerId }, bearer(token)),
      `customer service over ${protocol}`,
    ).rejects.toMatchObject(rpcError(message, Code.Unauthenticated));
    await expect(
      platform.auth(protocol).introspectToken({ token: "x" }, bearer(token)),
      `identity service over ${protocol}`,
    ).rejects.toMatchObject(rpcError(message, Code.Unauthenticated));
  }
  await expect(platform.auth().introspectToken({ token }, bearer(who.introspector))).resolves.toMatchObject({
    active: false,
  });
}
