/**
 * Token issuing: signing keys (created on first start, rotatable, kept in
 * the database so every instance signs and publishes the same keys; a new
 * key signs only once every cached copy of the JWKS without it has
 * expired), access tokens as RFC 9068 JWTs, opaque refresh tokens stored as
 * hashes, and the JWKS that resource servers verify against.
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

/**
 * Instances reload keys this often, so a key another instance or the CLI
 * stored is in every instance's JWKS at most this long after it was stored
 * (while reloads succeed; PublishedKeys covers the time they fail).
 */
export const KEY_RELOAD_MS = 60_000;

/** Allowance for clock skew between machines and for slow JWKS fetches. */
export const KEY_ACTIVATION_MARGIN_MS = 60_000;

/**
 * How long after it is stored a new key starts signing: the key rule. A
 * verifier that cached the JWKS just before the key was stored, or fetched
 * it from an instance that had not reloaded yet, holds that copy at most
 * KEY_RELOAD_MS + max-age after the key was stored; the margin covers clocks
 * and slow fetches. So a verifier that caches the JWKS no longer than its
 * `cache-control: max-age` knows every key before the first token carries
 * its kid, without refetching on an unknown kid.
 */
export function keyActivationDelayMs(jwksMaxAgeSec: number): number {
  return KEY_RELOAD_MS + jwksMaxAgeSec * 1000 + KEY_ACTIVATION_MARGIN_MS;
}

/** When keys sign and how long they are published: one policy for the service and the CLI. */
export interface KeyPolicy {
  /** The JWKS `cache-control: max-age` in seconds (`IDENTITY_JWKS_MAX_AGE`). */
  jwksMaxAgeSec: number;
  /** keyActivationDelayMs(jwksMaxAgeSec). */
  activationDelayMs: number;
  /**
   * How long a retired key stays in the JWKS: the lifetime of the last token
   * it signed, and five minutes for clocks and caches.
   */
  retiredKeyGraceMs: number;
}

/** The key policy of a configuration. */
export function keyPolicy(config: { jwksMaxAgeSec: number; accessTokenTtlSec: number }): KeyPolicy {
  return {
    jwksMaxAgeSec: config.jwksMaxAgeSec,
    activationDelayMs: keyActivationDelayMs(config.jwksMaxAgeSec),
    retiredKeyGraceMs: (config.accessTokenTtlSec + 300) * 1000,
  };
}

/** What the signing schedule needs of a key. */
export interface ScheduledKey {
  kid: string;
  createdAt: Date;
  /** After this, the key no longer signs; it stays in the JWKS for the grace period. */
  retiredAt: Date | null;
}

/** When a key starts signing. */
export const activationTime = (key: Pick<ScheduledKey, "createdAt">, policy: Pick<KeyPolicy, "activationDelayMs">) =>
  new Date(key.createdAt.getTime() + policy.activationDelayMs);

/**
 * The key that signs at `now`: the newest live key whose activation time has
 * come; before any has (a fresh install, whose first key no verifier can have
 * missed), the oldest live one. `keys` are newest first.
 */
export function signingKeyAt<K extends ScheduledKey>(
  keys: readonly K[],
  now: Date,
  policy: Pick<KeyPolicy, "activationDelayMs">,
): K | undefined {
  const live = keys.filter((k) => k.retiredAt === null || k.retiredAt > now);
  return live.find((k) => activationTime(k, policy) <= now) ?? live[live.length - 1];
}

/** When a key signs, from `now` on: `from` (now, if it signs already) until `until` (if another key takes over). */
export interface SigningSpan {
  from: Date;
  until?: Date;
}

/**
 * Which key signs when, from `now` on, as signingKeyAt decides it: keys
 * that will not sign again are absent. `keys` are newest first.
 */
export function signingSchedule(
  keys: readonly ScheduledKey[],
  now: Date,
  policy: Pick<KeyPolicy, "activationDelayMs">,
): Map<string, SigningSpan> {
  // The signer changes only when a key activates or retires.
  const changes = keys
    .flatMap((k) => [activationTime(k, policy), k.retiredAt])
    .filter((t): t is Date => t !== null && t > now)
    .sort((a, b) => a.getTime() - b.getTime());
  const spans = new Map<string, SigningSpan>();
  let signer: string | undefined;
  for (const at of [now, ...changes]) {
    const kid = signingKeyAt(keys, at, policy)?.kid;
    if (kid === signer) continue;
    const ended = signer === undefined ? undefined : spans.get(signer);
    if (ended && !ended.until) ended.until = at;
    // A key that stopped signing does not sign again (rotateSigningKey retires it after its successor starts).
    if (kid !== undefined && !spans.has(kid)) spans.set(kid, { from: at });
    signer = kid;
  }
  return spans;
}

/** The JWKS document as served, and how long it may be cached. */
export interface PublishedKeys {
  readonly jwks: JSONWebKeySet;
  /**
   * The `max-age` to serve it with: the policy's, shortened when this
   * instance's keys are older than KEY_RELOAD_MS (reloads failing), so no
   * copy outlives the moment a key stored since could start signing.
   */
  readonly maxAgeSec: number;
}

/** Keys loaded from the database, reloaded periodically to pick up rotations by other instances. */
export interface KeyStore {
  /** The clock that picks the signing key and stamps tokens (the service's). */
  readonly now: () => Date;
  /** The key that signs now (see keyActivationDelayMs). */
  current(): SigningKey;
  /** The public keys resource servers should trust, and for how long. */
  published(): PublishedKeys;
  /** Key lookup for verifying our own tokens. */
  readonly getKey: JWTVerifyGetKey;
  /** Rereads keys from the database. */
  reload(): Promise<void>;
}

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

export interface KeyStoreOptions {
  policy: KeyPolicy;
  /** Default: the wall clock. */
  now?: () => Date;
}

/**
 * Loads signing keys, creating the first one if there is none. Keys retired
 * less than the policy's grace ago stay in the JWKS so their tokens verify
 * until they expire.
 */
export async function openKeyStore(db: Db<typeof schema>, opts: KeyStoreOptions): Promise<KeyStore> {
  const { policy } = opts;
  const now = opts.now ?? (() => new Date());
  await db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(${KEY_BOOTSTRAP_LOCK})`);
    const at = now();
    const live = await tx
      .select({ kid: signingKeys.kid })
      .from(signingKeys)
      .where(or(isNull(signingKeys.retiredAt), gt(signingKeys.retiredAt, at)));
    if (live.length === 0) await tx.insert(signingKeys).values(await newSigningKey(at));
  });
  let keys: LoadedKey[] = [];
  let jwks: JSONWebKeySet = { keys: [] };
  let local = createLocalJWKSet(jwks);
  // When the last successful reload read the table: keys stored later are not in `jwks`.
  let loadedAt = 0;
  const reload = async () => {
    const at = now().getTime();
    const rows = await db
      .select()
      .from(signingKeys)
      .where(or(isNull(signingKeys.retiredAt), gt(signingKeys.retiredAt, new Date(at - policy.retiredKeyGraceMs))))
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
    loadedAt = at;
  };
  await reload();
  return {
    now,
    current: () => {
      const key = signingKeyAt(keys, now(), policy);
      if (!key) throw new Error("no live signing key: run `npm run identity -- keys rotate`");
      return key;
    },
    published: () => {
      // A copy served now must expire by loadedAt + KEY_RELOAD_MS + max-age, as the key rule assumes.
      const leftMs = loadedAt + KEY_RELOAD_MS + policy.jwksMaxAgeSec * 1000 - now().getTime();
      return { jwks, maxAgeSec: Math.max(0, Math.min(policy.jwksMaxAgeSec, Math.floor(leftMs / 1000))) };
    },
    getKey: (header, token) => local(header, token),
    reload,
  };
}

/** A key stored by {@link rotateSigningKey}. */
export interface RotatedKey {
  kid: string;
  createdAt: Date;
  /** When it starts signing: after the activation delay, or at once if no other key is live (a fresh database). */
  signsFrom: Date;
}

/**
 * Stores a new signing key, published at once (within KEY_RELOAD_MS on every
 * instance) and signing from `signsFrom`. The keys in use keep signing until
 * then and are retired a margin later; they stay in the JWKS for the
 * policy's grace after that, until the last token they signed has expired.
 */
export async function rotateSigningKey(db: Db<typeof schema>, policy: KeyPolicy, now: Date): Promise<RotatedKey> {
  const key = await newSigningKey(now);
  const activatesAt = activationTime(key, policy);
  return db.transaction(async (tx) => {
    const retired = await tx
      .update(signingKeys)
      .set({ retiredAt: new Date(activatesAt.getTime() + KEY_ACTIVATION_MARGIN_MS) })
      .where(isNull(signingKeys.retiredAt))
      .returning({ kid: signingKeys.kid });
    const [stillLive] = await tx
      .select({ kid: signingKeys.kid })
      .from(signingKeys)
      .where(gt(signingKeys.retiredAt, now))
      .limit(1);
    await tx.insert(signingKeys).values(key);
    // With no other live key, signingKeyAt picks this one at once.
    const alone = retired.length === 0 && !stillLive;
    return { kid: key.kid, createdAt: now, signsFrom: alone ? now : activatesAt };
  });
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
  // One clock picks the key and stamps iat/exp: the schedule `keys list` prints is what tokens show.
  const key = keys.current();
  const jti = uuidv7();
  const issuedAt = Math.floor(keys.now().getTime() / 1000);
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
  return verifyAccessToken(token, keys.getKey, { issuer: settings.issuer, audience: settings.issuer, now: keys.now });
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
