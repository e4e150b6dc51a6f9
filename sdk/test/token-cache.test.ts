/**
 * createTokenVerifier's cache of verified tokens: a token seen before skips
 * its signature check (counted on jose's jwtVerify, not timed), yet is
 * refused at once when it is revoked (its jti, its session, its key, its
 * client's cut-off), when it expires (with the clock tolerance), when its
 * key leaves the JWKS or changes; a tampered copy of a cached token is
 * verified, and refused, on its own; the cache holds no more than its size.
 */
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import * as jose from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import {
  createTokenVerifier,
  type RevocationCheck,
  type RevocationSubject,
  type TokenVerifierOptions,
} from "../src/tokens.js";

// Every signature verification the SDK makes goes through jose's jwtVerify: count them.
const verifications = vi.hoisted(() => ({ count: 0 }));
vi.mock("jose", async (importOriginal) => {
  const actual = await importOriginal<typeof import("jose")>();
  return {
    ...actual,
    jwtVerify: (...args: Parameters<typeof actual.jwtVerify>) => {
      verifications.count++;
      return actual.jwtVerify(...args);
    },
  };
});

let clock = new Date();
const now = () => clock;
const advance = (ms: number) => {
  clock = new Date(clock.getTime() + ms);
};

const jwksServer = { keys: [] as Array<{ kid: string; privateKey: jose.CryptoKey; jwk: jose.JWK }>, fetches: 0 };
let url = "";
const server = createServer((_req, res) => {
  jwksServer.fetches++;
  res.writeHead(200, { "content-type": "application/jwk-set+json", "cache-control": "max-age=300" });
  res.end(JSON.stringify({ keys: jwksServer.keys.map((k) => k.jwk) }));
});

async function addKey(kid = randomUUID()) {
  const { privateKey, publicKey } = await jose.generateKeyPair("EdDSA", { extractable: true });
  const key = { kid, privateKey, jwk: { ...(await jose.exportJWK(publicKey)), kid, alg: "EdDSA", use: "sig" } };
  jwksServer.keys.push(key);
  return key;
}

/** An access token signed with key, valid for ttlSec from the test's clock. */
async function token(key: { kid: string; privateKey: jose.CryptoKey }, ttlSec = 3600) {
  const iat = Math.floor(clock.getTime() / 1000);
  return new jose.SignJWT({ client_id: "first-party", scope: "customer:self", sid: randomUUID() })
    .setProtectedHeader({ alg: "EdDSA", typ: "at+jwt", kid: key.kid })
    .setIssuer("http://identity.test")
    .setAudience("orders-service")
    .setSubject(randomUUID())
    .setJti(randomUUID())
    .setIssuedAt(iat)
    .setExpirationTime(iat + ttlSec)
    .sign(key.privateKey);
}

/** A revocation check the test drives, shaped as the SDK's revocation list answers. */
function revocationsUnderTest() {
  const tokenIds = new Set<string>();
  const sessionIds = new Set<string>();
  const keyIds = new Set<string>();
  const cutOffs = new Map<string, Date>();
  const check: RevocationCheck & { checks: number } = {
    checks: 0,
    isRevoked(p: RevocationSubject) {
      check.checks++;
      const cutOff = p.clientId === undefined ? undefined : cutOffs.get(p.clientId);
      return (
        tokenIds.has(p.tokenId) ||
        (p.sessionId !== undefined && sessionIds.has(p.sessionId)) ||
        (p.keyId !== undefined && keyIds.has(p.keyId)) ||
        (cutOff !== undefined && p.issuedAt !== undefined && p.issuedAt < cutOff)
      );
    },
    get keyRevocations() {
      return keyIds.size;
    },
  };
  return { check, tokenIds, sessionIds, keyIds, cutOffs };
}

const verifier = (opts: Partial<TokenVerifierOptions> = {}) =>
  createTokenVerifier({ jwksUrl: url, issuer: "http://identity.test", audience: "orders-service", now, ...opts });

const claims = (t: string) => jose.decodeJwt(t) as { jti: string; sid: string };

beforeAll(async () => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
});

afterAll(() => {
  server.closeAllConnections();
  server.close();
});

beforeEach(() => {
  clock = new Date();
  jwksServer.keys = [];
  jwksServer.fetches = 0;
  verifications.count = 0;
});

describe("createTokenVerifier's cache of verified tokens", () => {
  it("verifies a token's signature once, and checks its revocation on every call", async () => {
    const key = await addKey();
    const revocations = revocationsUnderTest();
    const tokens = verifier({ revocations: revocations.check });
    const t = await token(key);
    const first = await tokens.verify(t);
    for (let i = 0; i < 5; i++) await expect(tokens.verify(t)).resolves.toBe(first);
    expect(verifications.count).toBe(1);
    expect(revocations.check.checks).toBe(6);
    expect(jwksServer.fetches).toBe(1);

    // Without a cache, every call verifies.
    const uncached = verifier({ cacheSize: 0 });
    await uncached.verify(t);
    await uncached.verify(t);
    expect(verifications.count).toBe(3);
  });

  it("refuses a cached token at once when its jti, its session or its client's tokens are revoked", async () => {
    const key = await addKey();
    const revocations = revocationsUnderTest();
    const tokens = verifier({ revocations: revocations.check });
    const [a, b, c] = await Promise.all([token(key), token(key), token(key)]);
    for (const t of [a, b, c]) await tokens.verify(t);
    expect(verifications.count).toBe(3);

    revocations.tokenIds.add(claims(a).jti);
    await expect(tokens.verify(a)).rejects.toMatchObject({ reason: "revoked" });
    revocations.sessionIds.add(claims(b).sid);
    await expect(tokens.verify(b)).rejects.toMatchObject({ reason: "revoked" });
    await expect(tokens.verify(c)).resolves.toMatchObject({ kind: "customer" });
    // Client cut-off: tokens issued before the client's secret rotation.
    advance(1000);
    revocations.cutOffs.set("first-party", clock);
    await expect(tokens.verify(c)).rejects.toMatchObject({ reason: "revoked" });
    // All answered from the cache: the refusals came from the revocation check alone.
    expect(verifications.count).toBe(3);
  });

  it("refuses a cached token at once when its signing key is revoked, and verifies the successor's afresh", async () => {
    const old = await addKey();
    const next = await addKey();
    const revocations = revocationsUnderTest();
    const tokens = verifier({ revocations: revocations.check });
    const t = await token(old);
    await tokens.verify(t);
    const u = await token(next);
    await tokens.verify(u);
    expect(verifications.count).toBe(2);

    // The key is revoked (and gone from the JWKS); the cache is dropped with the cached key set.
    revocations.keyIds.add(old.kid);
    jwksServer.keys = jwksServer.keys.filter((k) => k.kid !== old.kid);
    await expect(tokens.verify(t)).rejects.toMatchObject({ reason: "invalid" });
    await expect(tokens.verify(u)).resolves.toMatchObject({ keyId: next.kid });
    expect(verifications.count).toBe(4);
    await tokens.verify(u);
    expect(verifications.count).toBe(4);
  });

  it("refuses a cached token once its key has left the refetched JWKS, or changed under its kid", async () => {
    const key = await addKey();
    const tokens = verifier();
    const t = await token(key);
    await tokens.verify(t);
    // The JWKS copy expires (max-age=300) and the refetched one lacks the key: no answer from the cache.
    jwksServer.keys = [];
    advance(300_000);
    await expect(tokens.verify(t)).rejects.toMatchObject({ reason: "invalid" });
    expect(jwksServer.fetches).toBe(2);

    // Same kid, another key: a token of the old key is verified again, and fails.
    jwksServer.keys = [key];
    advance(300_000);
    await tokens.verify(t);
    const before = verifications.count;
    await tokens.verify(t);
    expect(verifications.count).toBe(before);
    const reused = await addKey(key.kid);
    jwksServer.keys = [reused];
    advance(300_000);
    await expect(tokens.verify(t)).rejects.toMatchObject({ reason: "invalid" });
    await expect(tokens.verify(await token(reused))).resolves.toMatchObject({ keyId: key.kid });
    expect(verifications.count - before).toBe(2);
  });

  it("refuses a cached token as soon as it expires, with the same clock tolerance as a fresh verification", async () => {
    const key = await addKey();
    const tokens = verifier({ clockToleranceSec: 5, cacheMaxAgeMs: Number.POSITIVE_INFINITY });
    const t = await token(key, 60);
    await tokens.verify(t);
    const exp = (jose.decodeJwt(t).exp ?? 0) * 1000;
    clock = new Date(exp + 4_999);
    await expect(tokens.verify(t)).resolves.toMatchObject({ kind: "customer" });
    expect(verifications.count).toBe(1);
    clock = new Date(exp + 5_000);
    await expect(tokens.verify(t)).rejects.toMatchObject({ reason: "expired" });
    // Clock set back (the cache entry is gone; a fresh verification decides).
    clock = new Date(exp);
    await expect(tokens.verify(t)).resolves.toMatchObject({ kind: "customer" });
    expect(verifications.count).toBe(3);
  });

  it("never answers a tampered token from the genuine one's entry", async () => {
    const key = await addKey();
    const tokens = verifier();
    const t = await token(key);
    const genuine = await tokens.verify(t);
    const [header, payload, signature] = t.split(".") as [string, string, string];
    const forged = JSON.parse(Buffer.from(payload, "base64url").toString()) as Record<string, unknown>;
    forged.sub = randomUUID();
    const tampered = [
      `${header}.${Buffer.from(JSON.stringify(forged)).toString("base64url")}.${signature}`,
      `${header}.${payload}.${signature.slice(0, -2)}${signature.endsWith("AA") ? "BA" : "AA"}`,
      `${header}.${payload}.`,
    ];
    for (const x of tampered) {
      await expect(tokens.verifyAuthorizationHeader(`Bearer ${x}`)).rejects.toMatchObject({ reason: "invalid" });
    }
    expect(verifications.count).toBe(4);
    await expect(tokens.verify(t)).resolves.toBe(genuine);
    expect(verifications.count).toBe(4);
  });

  it("holds no more tokens than its size, dropping the least recently used", async () => {
    const key = await addKey();
    const tokens = verifier({ cacheSize: 3 });
    const ts = await Promise.all(Array.from({ length: 4 }, () => token(key)));
    const [t0, t1, t2, t3] = ts as [string, string, string, string];
    for (const t of [t0, t1, t2]) await tokens.verify(t);
    await tokens.verify(t0); // t1 is now the least recently used
    await tokens.verify(t3); // drops t1
    expect(verifications.count).toBe(4);
    for (const t of [t0, t2, t3]) await tokens.verify(t);
    expect(verifications.count).toBe(4);
    await tokens.verify(t1);
    expect(verifications.count).toBe(5);
  });
});
