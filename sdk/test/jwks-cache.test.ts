/**
 * createTokenVerifier's copy of the JWKS, on a clock the test moves: kept no
 * longer than the response's max-age (less its Age) or cacheMaxAgeMs, not
 * at all with no-store or no-cache; refetched for an unknown kid at most once
 * per cooldown; one fetch for many verifications; an error answer is
 * keys_unavailable. The identity service's key rotation counts on the first.
 */
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createTokenVerifier, TokenError, type TokenVerifierOptions } from "../src/tokens.js";

let clock = new Date();
const now = () => clock;
const advance = (ms: number) => {
  clock = new Date(clock.getTime() + ms);
};

/** What the JWKS server answers next; `fetches` counts its answers. */
const jwksServer = {
  keys: [] as Array<{ kid: string; privateKey: CryptoKey; jwk: JWK }>,
  headers: {} as Record<string, string>,
  status: 200,
  body: undefined as string | undefined,
  fetches: 0,
};
let url = "";
const server = createServer((_req, res) => {
  jwksServer.fetches++;
  res.writeHead(jwksServer.status, { "content-type": "application/jwk-set+json", ...jwksServer.headers });
  res.end(jwksServer.body ?? JSON.stringify({ keys: jwksServer.keys.map((k) => k.jwk) }));
});

async function addKey() {
  const { privateKey, publicKey } = await generateKeyPair("EdDSA", { extractable: true });
  const kid = randomUUID();
  const key = { kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: "EdDSA", use: "sig" } };
  jwksServer.keys.push(key);
  return key;
}

/** An access token signed with `key`, valid for an hour from the test's clock. */
async function token(key: { kid: string; privateKey: CryptoKey }) {
  const iat = Math.floor(clock.getTime() / 1000);
  return new SignJWT({ client_id: "first-party", scope: "" })
    .setProtectedHeader({ alg: "EdDSA", typ: "at+jwt", kid: key.kid })
    .setIssuer("http://identity.test")
    .setAudience("orders-service")
    .setSubject(randomUUID())
    .setJti(randomUUID())
    .setIssuedAt(iat)
    .setExpirationTime(iat + 3600)
    .sign(key.privateKey);
}

const verifier = (opts: Partial<TokenVerifierOptions> = {}) =>
  createTokenVerifier({ jwksUrl: url, issuer: "http://identity.test", audience: "orders-service", now, ...opts });

beforeAll(async () => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
});

afterAll(() => {
  server.closeAllConnections();
  server.close();
});

beforeEach(async () => {
  clock = new Date();
  jwksServer.keys = [];
  jwksServer.headers = {};
  jwksServer.status = 200;
  jwksServer.body = undefined;
  jwksServer.fetches = 0;
  await addKey();
});

const firstKey = () => {
  const key = jwksServer.keys[0];
  if (!key) throw new Error("no key");
  return key;
};

describe("createTokenVerifier's key set", () => {
  it("is kept for the response's max-age less its Age, then fetched again", async () => {
    jwksServer.headers = { "cache-control": "public, max-age=60", age: "20" };
    const tokens = verifier();
    const t = await token(firstKey());
    await tokens.verify(t);
    expect(jwksServer.fetches).toBe(1);
    advance(40_000 - 1);
    await tokens.verify(t);
    expect(jwksServer.fetches).toBe(1);
    advance(1);
    await tokens.verify(t);
    expect(jwksServer.fetches).toBe(2);
  });

  it("a key published since a copy expired is known at once, without a refetch for its kid", async () => {
    jwksServer.headers = { "cache-control": "public, max-age=300" };
    // No second chance for an unknown kid: only the max-age can bring the new key.
    const tokens = verifier({ cooldownMs: Number.POSITIVE_INFINITY });
    await tokens.verify(await token(firstKey()));
    const next = await addKey();
    advance(299_999);
    await expect(tokens.verify(await token(next))).rejects.toMatchObject({ reason: "invalid" });
    advance(1);
    await expect(tokens.verify(await token(next))).resolves.toMatchObject({ kind: "customer" });
    expect(jwksServer.fetches).toBe(2);
  });

  it("is kept no longer than cacheMaxAgeMs, 5 minutes by default, and not at all with no-store or no-cache", async () => {
    jwksServer.headers = { "cache-control": "max-age=3600" };
    const capped = verifier({ cacheMaxAgeMs: 10_000 });
    const t = await token(firstKey());
    await capped.verify(t);
    advance(10_000);
    await capped.verify(t);
    expect(jwksServer.fetches).toBe(2);

    jwksServer.headers = {};
    const byDefault = verifier();
    await byDefault.verify(t);
    advance(300_000 - 1);
    await byDefault.verify(t);
    expect(jwksServer.fetches).toBe(3);
    advance(1);
    await byDefault.verify(t);
    expect(jwksServer.fetches).toBe(4);

    for (const cacheControl of ["no-store", "no-cache", "max-age=0"]) {
      jwksServer.headers = { "cache-control": cacheControl };
      const uncached = verifier();
      const before = jwksServer.fetches;
      await uncached.verify(t);
      await uncached.verify(t);
      expect(jwksServer.fetches - before).toBe(2);
    }
  });

  it("is fetched again for an unknown kid at most once per cooldown", async () => {
    jwksServer.headers = { "cache-control": "max-age=300" };
    const tokens = verifier({ cooldownMs: 30_000 });
    await tokens.verify(await token(firstKey()));
    const next = await addKey();
    advance(29_999);
    await expect(tokens.verify(await token(next))).rejects.toMatchObject({ reason: "invalid" });
    expect(jwksServer.fetches).toBe(1);
    advance(1);
    await expect(tokens.verify(await token(next))).resolves.toMatchObject({ kind: "customer" });
    expect(jwksServer.fetches).toBe(2);
  });

  it("is fetched once for verifications that need it at the same time", async () => {
    const tokens = verifier();
    const t = await token(firstKey());
    await Promise.all(Array.from({ length: 10 }, () => tokens.verify(t)));
    expect(jwksServer.fetches).toBe(1);
  });

  it("is keys_unavailable, not the caller's fault, when the JWKS answers an error or no key set", async () => {
    const t = await token(firstKey());
    jwksServer.status = 503;
    const down = await verifier()
      .verify(t)
      .catch((e: unknown) => e);
    expect(down).toBeInstanceOf(TokenError);
    expect(down).toMatchObject({ reason: "keys_unavailable", cause: new Error("JWKS answered HTTP 503") });
    jwksServer.status = 200;
    jwksServer.body = "<html>maintenance</html>";
    await expect(verifier().verify(t)).rejects.toMatchObject({ reason: "keys_unavailable" });
    jwksServer.body = JSON.stringify({ keys: "none" });
    await expect(verifier().verify(t)).rejects.toMatchObject({ reason: "keys_unavailable" });
  });
});
