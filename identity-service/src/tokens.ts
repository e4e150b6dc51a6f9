/**
 * Token issuing: signing keys (created on first start, rotatable, kept in
 * the database so every instance signs and publishes the same keys), access
 * tokens as RFC 9068 JWTs, opaque refresh tokens stored as hashes, and the
 * JWKS that resource servers verify against.
 */
import { createHash, randomBytes } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { type Principal, verifyAccessToken } from "@customer-platform/runtime/auth";
import type { Db } from "@customer-platform/runtime/db";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { desc, gt, isNull, or, sql } from "drizzle-orm";
import {
  type CryptoKey,
  createLocalJWKSet,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JSONWebKeySet,
  type JWK,
  type JWTVerifyGetKey,
  SignJWT,
} from "jose";
import type * as schema from "./db/schema.js";
import { signingKeys } from "./db/schema.js";

/** The algorithm new keys use. */
export const SIGNING_ALG = "EdDSA";

export interface TokenSettings {
  issuer: string;
  /** Audiences access tokens are issued for (resource servers); the issuer is always added. */
  audiences: string[];
  accessTokenTtlSec: number;
  refreshTokenTtlSec: number;
}

export interface SigningKey {
  kid: string;
  alg: string;
  privateKey: CryptoKey;
  publicJwk: JWK;
  createdAt: Date;
}

export interface IssuedAccessToken {
  token: string;
  jti: string;
  expiresIn: number;
  issuedAt: number;
}

/** Keys loaded from the database, reloaded periodically to pick up rotations by other instances. */
export interface KeyStore {
  /** The key that signs now (see KEY_ACTIVATION_DELAY_MS). */
  current(): SigningKey;
  /** The public keys resource servers should trust. */
  jwks(): JSONWebKeySet;
  /** Key lookup for verifying our own tokens. */
  readonly getKey: JWTVerifyGetKey;
  /** Rereads keys from the database. */
  reload(): Promise<void>;
}

/**
 * A new key is published in the JWKS at once but signs only after this long,
 * so every instance (reloading each minute) and every verifier (refetching
 * on an unknown kid) knows it before the first token carries its kid. The
 * key it replaces keeps signing until then (`keys rotate` retires it later).
 */
export const KEY_ACTIVATION_DELAY_MS = 2 * 60_000;

/** Creates a fresh key pair row (not yet stored). */
export async function newSigningKey(now: Date) {
  const { privateKey, publicKey } = await generateKeyPair(SIGNING_ALG, { extractable: true });
  const kid = uuidv7();
  return {
    kid,
    alg: SIGNING_ALG,
    privateJwk: { ...(await exportJWK(privateKey)), kid, alg: SIGNING_ALG },
    publicJwk: { ...(await exportJWK(publicKey)), kid, alg: SIGNING_ALG, use: "sig" },
    createdAt: now,
  };
}

interface LoadedKey extends SigningKey {
  retiredAt: Date | null;
}

// Serialises key bootstrap across instances starting at once.
const KEY_BOOTSTRAP_LOCK = 7_310_101;

/**
 * Loads signing keys, creating the first one if there is none. Keys retired
 * less than retiredKeyGraceSec ago stay in the JWKS so their tokens verify
 * until they expire.
 */
export async function openKeyStore(db: Db<typeof schema>, retiredKeyGraceSec: number): Promise<KeyStore> {
  await db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(${KEY_BOOTSTRAP_LOCK})`);
    const live = await tx
      .select({ kid: signingKeys.kid })
      .from(signingKeys)
      .where(or(isNull(signingKeys.retiredAt), gt(signingKeys.retiredAt, new Date())));
    if (live.length === 0) await tx.insert(signingKeys).values(await newSigningKey(new Date()));
  });
  let keys: LoadedKey[] = [];
  let jwks: JSONWebKeySet = { keys: [] };
  let local = createLocalJWKSet(jwks);
  const reload = async () => {
    const since = new Date(Date.now() - retiredKeyGraceSec * 1000);
    const rows = await db
      .select()
      .from(signingKeys)
      .where(or(isNull(signingKeys.retiredAt), gt(signingKeys.retiredAt, since)))
      .orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
    keys = await Promise.all(
      rows.map(async (r) => ({
        kid: r.kid,
        alg: r.alg,
        privateKey: (await importJWK(r.privateJwk as JWK, r.alg)) as CryptoKey,
        publicJwk: r.publicJwk as JWK,
        createdAt: r.createdAt,
        retiredAt: r.retiredAt,
      })),
    );
    jwks = { keys: rows.map((r) => r.publicJwk as JWK) };
    local = createLocalJWKSet(jwks);
  };
  await reload();
  const current = (): SigningKey => {
    const now = Date.now();
    const live = keys.filter((k) => k.retiredAt === null || k.retiredAt.getTime() > now);
    // The newest key old enough to be known everywhere; on a fresh install, the only one.
    const key = live.find((k) => k.createdAt.getTime() <= now - KEY_ACTIVATION_DELAY_MS) ?? live[live.length - 1];
    if (!key) throw new Error("no live signing key: run `npm run identity -- keys rotate`");
    return key;
  };
  return {
    current,
    jwks: () => jwks,
    getKey: (header, token) => local(header, token),
    reload,
  };
}

/**
 * Signs an access token (RFC 9068). A customer's carries `sid`, its sign-in
 * session (the refresh-token family), so revoking the session revokes it.
 */
export async function signAccessToken(
  keys: KeyStore,
  settings: TokenSettings,
  claims: { sub: string; clientId: string; scope: string; sid?: string },
): Promise<IssuedAccessToken> {
  const key = keys.current();
  const jti = uuidv7();
  const issuedAt = Math.floor(Date.now() / 1000);
  const audiences = [...new Set([...settings.audiences, settings.issuer])];
  const token = await new SignJWT({
    client_id: claims.clientId,
    scope: claims.scope,
    ...(claims.sid !== undefined && { sid: claims.sid }),
  })
    .setProtectedHeader({ alg: key.alg, typ: "at+jwt", kid: key.kid })
    .setIssuer(settings.issuer)
    .setAudience(audiences)
    .setSubject(claims.sub)
    .setIssuedAt(issuedAt)
    .setExpirationTime(issuedAt + settings.accessTokenTtlSec)
    .setJti(jti)
    .sign(key.privateKey);
  return { token, jti, expiresIn: settings.accessTokenTtlSec, issuedAt };
}

/** Verifies one of our own access tokens (signature, typ, issuer, audience = issuer, expiry). */
export function verifyOwnAccessToken(keys: KeyStore, settings: TokenSettings, token: string): Promise<Principal> {
  return verifyAccessToken(token, keys.getKey, { issuer: settings.issuer, audience: settings.issuer });
}

/** A new opaque refresh token (256 random bits) and the hash that is stored. */
export function newRefreshToken(): { token: string; hash: Buffer } {
  const token = randomBytes(32).toString("base64url");
  return { token, hash: hashToken(token) };
}

/** SHA-256 of a token or secret: random 256-bit values need no slow hash. */
export function hashToken(token: string): Buffer {
  return createHash("sha256").update(token, "utf8").digest();
}

/** A JWT is three base64url parts; anything else is treated as an opaque refresh token. */
export function looksLikeJwt(token: string): boolean {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token);
}

/** UNAUTHENTICATED for a refresh token that cannot be used. */
export const invalidRefreshToken = () => new ConnectError("invalid refresh token", Code.Unauthenticated);
