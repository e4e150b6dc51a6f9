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
import type { Outbox } from "@customer-platform/runtime/outbox";
import { ACCESS_TOKEN_ALGORITHMS, ACCESS_TOKEN_TYPE, principalFromClaims } from "@customer-platform/sdk/tokens";
import { and, desc, eq, gt, isNull, ne, or, sql } from "drizzle-orm";
import {
  type CryptoKey,
  createLocalJWKSet,
  exportJWK,
  generateKeyPair,
  importJWK,
  type JSONWebKeySet,
  type JWK,
  type JWTVerifyGetKey,
  jwtVerify,
  SignJWT,
} from "jose";
import type * as schema from "./db/schema.js";
import { signingKeys } from "./db/schema.js";
import { emitTokensRevoked, TokenRevocationReason } from "./events.js";

/**
 * The channel `keys revoke` notifies at commit: every instance reloads its
 * keys at once instead of within KEY_RELOAD_MS, so a revoked key stops
 * signing and leaves the JWKS now. (A rotation needs no hurry: its key
 * signs only after the activation delay, which counts KEY_RELOAD_MS in.)
 */
export const KEYS_CHANGED_CHANNEL = "identity_keys";

/** The algorithm new keys use. */
export const SIGNING_ALG = "EdDSA";

export interface TokenSettings {
  /** Token `iss`, and the audience of the identity service's own RPCs. */
  issuer: string;
  accessTokenTtlSec: number;
  refreshTokenTtlSec: number;
  /** A session ends this long after its sign-in, however often it is refreshed. */
  sessionMaxLifetimeSec: number;
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
  /** Its `aud`. */
  audience: string[];
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
      .where(and(isNull(signingKeys.revokedAt), or(isNull(signingKeys.retiredAt), gt(signingKeys.retiredAt, at))));
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
      .where(
        and(
          isNull(signingKeys.revokedAt),
          or(isNull(signingKeys.retiredAt), gt(signingKeys.retiredAt, new Date(at - policy.retiredKeyGraceMs))),
        ),
      )
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
      .where(and(isNull(signingKeys.retiredAt), isNull(signingKeys.revokedAt)))
      .returning({ kid: signingKeys.kid });
    const [stillLive] = await tx
      .select({ kid: signingKeys.kid })
      .from(signingKeys)
      .where(and(gt(signingKeys.retiredAt, now), isNull(signingKeys.revokedAt)))
      .limit(1);
    await tx.insert(signingKeys).values(key);
    // With no other live key, signingKeyAt picks this one at once.
    const alone = retired.length === 0 && !stillLive;
    return { kid: key.kid, createdAt: now, signsFrom: alone ? now : activatesAt };
  });
}

/** A key revoked by {@link revokeSigningKey}. */
export interface RevokedKey {
  kid: string;
  /** The key that signs from now on, and whether it was created by the revocation. */
  signer: { kid: string; created: boolean };
}

/**
 * Revokes a signing key at once (a leaked key): it leaves the JWKS (every
 * instance reloads at the commit's notification, or within KEY_RELOAD_MS),
 * the identity service refuses its tokens from the commit on, and a
 * TokensRevoked with its kid, written to the outbox in the same transaction,
 * tells offline verifiers to refuse them and refetch the JWKS. If no other
 * live key is left, a new one is created that signs at once (no verifier can
 * have it cached: they refetch for an unknown kid and on the event), or
 * once the keys still live retire. A pending successor signs at once
 * (signingKeyAt falls back to the oldest live key). Undefined for an unknown
 * or already revoked kid.
 */
export async function revokeSigningKey(
  db: Db<typeof schema>,
  outbox: Outbox,
  opts: { policy: KeyPolicy; accessTokenTtlSec: number },
  kid: string,
  now: Date,
): Promise<RevokedKey | undefined> {
  const spare = await newSigningKey(now);
  const at = sql`${now.toISOString()}::timestamptz`;
  return db.transaction(async (tx) => {
    await tx.execute(sql`select pg_advisory_xact_lock(${KEY_BOOTSTRAP_LOCK})`);
    const [revoked] = await tx
      .update(signingKeys)
      .set({ revokedAt: now, retiredAt: sql`least(coalesce(${signingKeys.retiredAt}, ${at}), ${at})` })
      .where(and(eq(signingKeys.kid, kid), isNull(signingKeys.revokedAt)))
      .returning({ kid: signingKeys.kid });
    if (!revoked) return undefined;
    const live = await tx
      .select({ kid: signingKeys.kid, createdAt: signingKeys.createdAt, retiredAt: signingKeys.retiredAt })
      .from(signingKeys)
      .where(
        and(
          ne(signingKeys.kid, kid),
          isNull(signingKeys.revokedAt),
          or(isNull(signingKeys.retiredAt), gt(signingKeys.retiredAt, now)),
        ),
      )
      .orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
    // A key that keeps signing must remain (one retiring soon is not enough): else a new one, which
    // signs at once if nothing else is live, or when the last retiring key retires.
    const created = !live.some((k) => k.retiredAt === null);
    if (created) await tx.insert(signingKeys).values(spare);
    const next = created ? [spare, ...live].map((k) => ({ retiredAt: null, ...k })) : live;
    const signer = { kid: signingKeyAt(next, now, opts.policy)?.kid ?? spare.kid, created };
    await emitTokensRevoked(
      tx,
      outbox,
      {
        owner: { keyId: kid },
        keyIds: [kid],
        // Nothing signed with it is accepted after it, and nothing it signed lives longer than the TTL.
        expireTime: new Date(now.getTime() + opts.accessTokenTtlSec * 1000),
        reason: TokenRevocationReason.SIGNING_KEY_REVOKED,
      },
      now,
    );
    await tx.execute(sql`select pg_notify(${KEYS_CHANGED_CHANNEL}, ${kid})`);
    return { kid, signer };
  });
}

/**
 * Signs an access token (RFC 9068) for `audience` (RFC 8707). A customer's
 * carries `sid`, its sign-in session (the refresh-token family), so revoking
 * the session revokes it. `notBefore` (seconds) is the earliest `iat`: a
 * client's cut-off (clients.tokens_valid_after), so a token issued after it
 * is never taken for one it revoked.
 */
export async function signAccessToken(
  keys: KeyStore,
  settings: TokenSettings,
  claims: {
    sub: string;
    clientId: string;
    scope: string;
    audience: readonly string[];
    sid?: string;
    /** The customer's verified login email (OpenID Connect's `email`, with `email_verified: true`); none if unverified. */
    email?: string | null;
    notBefore?: number;
  },
): Promise<IssuedAccessToken> {
  // One clock picks the key and stamps iat/exp: the schedule `keys list` prints is what tokens show.
  const key = keys.current();
  const jti = uuidv7();
  const issuedAt = Math.max(Math.floor(keys.now().getTime() / 1000), claims.notBefore ?? 0);
  const audiences = [...new Set(claims.audience)];
  const token = await new SignJWT({
    client_id: claims.clientId,
    scope: claims.scope,
    ...(claims.sid !== undefined && { sid: claims.sid }),
    ...(claims.email && { email: claims.email, email_verified: true }),
  })
    .setProtectedHeader({ alg: key.alg, typ: "at+jwt", kid: key.kid })
    .setIssuer(settings.issuer)
    .setAudience(audiences)
    .setSubject(claims.sub)
    .setIssuedAt(issuedAt)
    .setExpirationTime(issuedAt + settings.accessTokenTtlSec)
    .setJti(jti)
    .sign(key.privateKey);
  return { token, jti, expiresIn: settings.accessTokenTtlSec, issuedAt, audience: audiences };
}

/**
 * Verifies an access token presented to the identity service's own RPCs
 * (signature, typ, issuer, expiry, and an audience that is the issuer: a
 * token for a resource server is refused here).
 */
export function verifyOwnAccessToken(keys: KeyStore, settings: TokenSettings, token: string): Promise<Principal> {
  return verifyAccessToken(token, keys.getKey, { issuer: settings.issuer, audience: settings.issuer, now: keys.now });
}

/** A verified token we issued, for any audience, with its `aud` (what RevokeToken and IntrospectToken describe). */
export interface IssuedToken {
  principal: Principal;
  audience: string[];
}

/**
 * Verifies an access token we issued, whatever its audience (signature, typ,
 * issuer, expiry): for RevokeToken and IntrospectToken, which name a token
 * rather than present it. Undefined if it is not valid.
 */
export async function verifyIssuedAccessToken(
  keys: KeyStore,
  settings: TokenSettings,
  token: string,
): Promise<IssuedToken | undefined> {
  try {
    const { payload, protectedHeader } = await jwtVerify(token, keys.getKey, {
      issuer: settings.issuer,
      algorithms: [...ACCESS_TOKEN_ALGORITHMS],
      typ: ACCESS_TOKEN_TYPE,
      requiredClaims: ["sub", "exp", "iat", "jti", "client_id", "aud"],
      clockTolerance: 5,
      currentDate: keys.now(),
    });
    const audience = typeof payload.aud === "string" ? [payload.aud] : (payload.aud ?? []);
    return { principal: principalFromClaims(payload, protectedHeader), audience };
  } catch {
    return undefined;
  }
}

/** A new opaque secret (256 random bits, base64url) and the hash that is stored: refresh tokens, client secrets. */
export function newOpaqueSecret(): { token: string; hash: Buffer } {
  const token = randomBytes(32).toString("base64url");
  return { token, hash: hashToken(token) };
}

/** A new opaque refresh token and the hash that is stored. */
export const newRefreshToken = newOpaqueSecret;

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
