/**
 * The platform's access tokens (RFC 9068 JWTs from the identity service),
 * verified offline against its JWKS (cached no longer than the response's
 * `cache-control: max-age`): signature with the pinned algorithm,
 * `typ: at+jwt`, issuer, audience, expiry; and, given a revocation list,
 * not revoked. Independent of any RPC framework: a failure is a
 * {@link TokenError} whose `reason` says what to answer.
 *
 * ```ts
 * const tokens = createTokenVerifier({
 *   jwksUrl: "http://127.0.0.1:8081/.well-known/jwks.json",
 *   issuer: "http://127.0.0.1:8081",
 *   audience: "orders-service",
 * });
 * const principal = await tokens.verifyAuthorizationHeader(req.headers.authorization);
 * ```
 */
import {
  createLocalJWKSet,
  errors,
  type JSONWebKeySet,
  type JWTHeaderParameters,
  type JWTPayload,
  type JWTVerifyGetKey,
  jwtVerify,
} from "jose";
import { freshnessMs } from "./cache-control.js";

/** Who is calling: a customer (token subject is the customer id) or a service (client credentials). */
export interface Principal {
  readonly kind: "customer" | "service";
  /** The customer id, or the client id of a service. */
  readonly subject: string;
  /** `first-party` for a customer signed in through the company's apps; a service's own client id. */
  readonly clientId: string;
  readonly scopes: ReadonlySet<string>;
  /** The token's `jti`. */
  readonly tokenId: string;
  /** The token's `sid`: the customer's sign-in session (refresh-token family); absent for a service. */
  readonly sessionId?: string;
  /** The `kid` of the key that signed it (its header), so a revoked key's tokens can be refused. */
  readonly keyId?: string;
  /**
   * The customer's verified login email when the token was issued: the
   * `email` claim, only if the token also says `email_verified: true`. An
   * email change later makes it stale until the token expires.
   */
  readonly email?: string;
  readonly expiresAt: Date;
  readonly issuedAt: Date;
}

/**
 * Why a token was refused. `keys_unavailable` is the identity service's JWKS
 * being unreachable (not the caller's fault: answer 503 / UNAVAILABLE); every
 * other reason is the caller's (401 / UNAUTHENTICATED).
 */
export type TokenErrorReason = "missing" | "malformed" | "invalid" | "expired" | "revoked" | "keys_unavailable";

const MESSAGES: Record<TokenErrorReason, string> = {
  missing: "missing bearer token",
  malformed: "malformed authorization header",
  invalid: "invalid access token",
  expired: "access token expired",
  revoked: "access token revoked",
  keys_unavailable: "token keys unavailable",
};

/** A refused access token; `message` is fit to answer the caller with, `cause` (if any) is for the log. */
export class TokenError extends Error {
  override readonly name = "TokenError";
  readonly reason: TokenErrorReason;

  constructor(reason: TokenErrorReason, options?: { cause?: unknown }) {
    super(MESSAGES[reason], options);
    this.reason = reason;
  }
}

/**
 * The algorithms access tokens may be signed with: what the identity service
 * signs with. Anything else (and `none`) is refused, so a token cannot pick
 * how it is checked.
 */
export const ACCESS_TOKEN_ALGORITHMS: readonly string[] = ["EdDSA"];

/** The `typ` header of an access token (RFC 9068); an ID token or other JWT is refused. */
export const ACCESS_TOKEN_TYPE = "at+jwt";

export interface AccessTokenOptions {
  /** The identity service's `IDENTITY_ISSUER`, exactly (no trailing slash). */
  issuer: string;
  /**
   * Your service's audience: a token must name it in `aud`. Clients ask for
   * it (RFC 8707: the `audience` field of AuthenticateClient and the sign-in
   * RPCs) and must be allowed it (`identity clients create --audiences`,
   * `IDENTITY_AUDIENCES` for the first-party apps).
   */
  audience: string;
  /** Allowed clock skew in seconds; default 5. */
  clockToleranceSec?: number;
  /** The current time, for expiry (and the age of createTokenVerifier's key set); default the wall clock. */
  now?: () => Date;
}

/** What a revocation check looks at: the token's `jti` and `sid`, and its `kid`, `client_id` and `iat` when known. */
export type RevocationSubject = Pick<Principal, "tokenId" | "sessionId"> &
  Partial<Pick<Principal, "keyId" | "clientId" | "issuedAt">>;

/** Tells whether a verified token was revoked before it expires (e.g. `createRevocationList`). */
export interface RevocationCheck {
  /**
   * True when the token's `jti`, its `sid` or its signing key (`kid`) is
   * known to be revoked, or its client's tokens issued before its `iat`.
   */
  isRevoked(principal: RevocationSubject): boolean;
  /**
   * How many signing-key revocations were seen: when it changes, a verifier
   * drops its cached JWKS and refetches it (the revoked keys are gone from it).
   */
  readonly keyRevocations?: number;
}

/** The Bearer token of an `Authorization` header; TokenError `missing` or `malformed` otherwise. */
export function bearerToken(authorization: string | null | undefined): string {
  if (!authorization) throw new TokenError("missing");
  const match = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i.exec(authorization);
  if (!match?.[1]) throw new TokenError("malformed");
  return match[1];
}

/**
 * Verifies an access token with the given keys and turns its claims into a
 * principal. Throws TokenError `expired` or `invalid`; an error of keys (e.g.
 * TokenError `keys_unavailable`) passes through.
 */
export async function verifyAccessToken(
  token: string,
  keys: JWTVerifyGetKey,
  opts: AccessTokenOptions,
): Promise<Principal> {
  return (await verifyClaims(token, keys, opts)).principal;
}

/** verifyAccessToken, with the `exp` and `nbf` it checked (a cached principal is checked against them again). */
async function verifyClaims(
  token: string,
  keys: JWTVerifyGetKey,
  opts: AccessTokenOptions,
): Promise<{ principal: Principal; exp: number; nbf: number | undefined }> {
  let payload: JWTPayload;
  let header: JWTHeaderParameters;
  try {
    ({ payload, protectedHeader: header } = await jwtVerify(token, keys, {
      issuer: opts.issuer,
      audience: opts.audience,
      algorithms: [...ACCESS_TOKEN_ALGORITHMS],
      typ: ACCESS_TOKEN_TYPE,
      requiredClaims: ["sub", "exp", "iat", "jti", "client_id"],
      clockTolerance: opts.clockToleranceSec ?? 5,
      ...(opts.now && { currentDate: opts.now() }),
    }));
  } catch (err) {
    if (err instanceof errors.JWTExpired) throw new TokenError("expired", { cause: err });
    if (err instanceof errors.JOSEError) throw new TokenError("invalid", { cause: err });
    throw err;
  }
  return { principal: principalFromClaims(payload, header), exp: payload.exp ?? 0, nbf: payload.nbf };
}

/**
 * The principal a verified token's claims (and header: its `kid`) describe;
 * a service token has `sub` equal to `client_id`. `email` is set only for a
 * string `email` claim with `email_verified: true`.
 */
export function principalFromClaims(payload: JWTPayload, header?: Pick<JWTHeaderParameters, "kid">): Principal {
  const sub = payload.sub;
  const clientId = payload.client_id;
  const scope = payload.scope ?? "";
  const sid = payload.sid;
  const email = payload.email;
  if (
    typeof sub !== "string" ||
    typeof clientId !== "string" ||
    typeof scope !== "string" ||
    !payload.jti ||
    (sid !== undefined && (typeof sid !== "string" || sid === ""))
  ) {
    throw new TokenError("invalid");
  }
  return {
    kind: sub === clientId ? "service" : "customer",
    subject: sub,
    clientId,
    scopes: new Set(scope.split(" ").filter(Boolean)),
    tokenId: payload.jti,
    ...(typeof sid === "string" && { sessionId: sid }),
    ...(typeof header?.kid === "string" && { keyId: header.kid }),
    // An unverified address is no proof of anything: it is left out.
    ...(typeof email === "string" && email !== "" && payload.email_verified === true && { email }),
    expiresAt: new Date((payload.exp ?? 0) * 1000),
    issuedAt: new Date((payload.iat ?? 0) * 1000),
  };
}

export interface TokenVerifierOptions extends AccessTokenOptions {
  /** The identity service's key set, `<issuer>/.well-known/jwks.json`. */
  jwksUrl: string;
  /**
   * The longest fetched keys are trusted before a refetch (default 5 minutes,
   * the identity service's default max-age). A response's `cache-control`
   * shortens it: `max-age` less its `Age`, nothing for `no-store`/`no-cache`.
   * The identity service signs with a new key only after every copy cached
   * for its max-age has expired, so the key is here before its first token.
   */
  cacheMaxAgeMs?: number;
  /**
   * Minimum time between refetches for a token whose `kid` the cached keys
   * lack (default 30 s). Not needed for the identity service's rotations;
   * a second chance when something in between cached the JWKS too long.
   */
  cooldownMs?: number;
  /** Timeout of one JWKS request (default 5 s). */
  jwksTimeoutMs?: number;
  /** Revocations to honour; without, a genuine token is accepted until it expires. */
  revocations?: RevocationCheck;
  /**
   * How many verified tokens to remember (default 10,000; 0 for none): a
   * token seen before skips its signature check while it has not expired
   * and the key that signed it is still in the fresh JWKS unchanged. The
   * revocation check runs on every call all the same.
   */
  cacheSize?: number;
}

/** Verifies access tokens; every failure is a {@link TokenError}. */
export interface TokenVerifier {
  /** The principal of a valid, unrevoked access token. */
  verify(token: string): Promise<Principal>;
  /** The principal of the Bearer token of an `Authorization` header (`missing` without one). */
  verifyAuthorizationHeader(authorization: string | null | undefined): Promise<Principal>;
}

/**
 * A verifier for a resource server: keys come from the identity service's
 * JWKS URL, cached for the response's max-age, and refetched when a token
 * names an unknown `kid`. With `revocations`, a revoked token is refused like
 * an invalid one.
 */
export function createTokenVerifier(opts: TokenVerifierOptions): TokenVerifier {
  const clock = opts.now;
  const now = clock ? () => clock().getTime() : Date.now;
  const keySet = createRemoteKeySet(new URL(opts.jwksUrl), {
    maxAgeMs: opts.cacheMaxAgeMs ?? 300_000,
    cooldownMs: opts.cooldownMs ?? 30_000,
    timeoutMs: opts.jwksTimeoutMs ?? 5_000,
    now,
  });
  const revocations = opts.revocations;
  const tolerance = opts.clockToleranceSec ?? 5;
  const cache = createVerifiedCache(opts.cacheSize ?? 10_000);
  let keyRevocations = revocations?.keyRevocations ?? 0;

  // The principal of a token verified before, if its verification still holds: not expired (as jwtVerify
  // counts it: whole seconds, with the tolerance), and its key still the one the fresh JWKS lists.
  const cached = (token: string): Principal | undefined => {
    const entry = cache.get(token);
    if (!entry) return undefined;
    const nowSec = Math.floor(now() / 1000);
    const keys = keySet.current();
    if (
      entry.exp <= nowSec - tolerance ||
      (entry.nbf !== undefined && entry.nbf > nowSec + tolerance) ||
      keys === undefined ||
      keyMaterial(keys, entry.kid) !== entry.material
    ) {
      cache.delete(token);
      return undefined;
    }
    cache.touch(token, entry);
    return entry.principal;
  };

  const verifyAndRemember = async (token: string): Promise<Principal> => {
    let used: KeySnapshot | undefined;
    const getKey: JWTVerifyGetKey = (header, jws) =>
      keySet.select(header, jws, (snapshot) => {
        used = snapshot;
      });
    const { principal, exp, nbf } = await verifyClaims(token, cache.enabled ? getKey : keySet, opts);
    const material = used && keyMaterial(used, principal.keyId);
    // A set fetched while this one verified makes the entry miss at once; no harm.
    if (material !== undefined) cache.set(token, { principal, exp, nbf, kid: principal.keyId, material });
    return principal;
  };

  const verify = async (token: string) => {
    // A signing key was revoked: the cached JWKS may still list it, and its successor may be new.
    const seen = revocations?.keyRevocations ?? 0;
    if (seen !== keyRevocations) {
      keyRevocations = seen;
      keySet.invalidate();
      cache.clear();
    }
    const principal = cached(token) ?? (await verifyAndRemember(token));
    // On every call, remembered or not: a revocation is honoured as soon as it is known.
    if (revocations?.isRevoked(principal)) throw new TokenError("revoked");
    return principal;
  };
  return {
    verify,
    verifyAuthorizationHeader(authorization) {
      let token: string;
      try {
        token = bearerToken(authorization);
      } catch (err) {
        return Promise.reject(err);
      }
      return verify(token);
    },
  };
}

/** A verified token remembered: its principal, the claims its validity hangs on, the key that signed it. */
interface VerifiedEntry {
  readonly principal: Principal;
  readonly exp: number;
  readonly nbf: number | undefined;
  readonly kid: string | undefined;
  /** The signing key's JWK as the JWKS listed it (the whole set for a token without `kid`). */
  readonly material: string;
}

/**
 * Verified tokens by their exact text, least recently used dropped first
 * (a Map keeps insertion order; a hit moves its entry to the end).
 */
function createVerifiedCache(max: number) {
  const entries = new Map<string, VerifiedEntry>();
  return {
    enabled: max > 0,
    get: (token: string) => entries.get(token),
    touch(token: string, entry: VerifiedEntry) {
      entries.delete(token);
      entries.set(token, entry);
    },
    set(token: string, entry: VerifiedEntry) {
      if (max <= 0) return;
      entries.delete(token);
      entries.set(token, entry);
      if (entries.size > max) {
        const oldest = entries.keys().next();
        if (!oldest.done) entries.delete(oldest.value);
      }
    },
    delete: (token: string) => entries.delete(token),
    clear: () => entries.clear(),
  };
}

/** One fetched JWKS: the keys to verify with, and each key's JWK text (by `kid`) to tell a changed key. */
interface KeySnapshot {
  readonly keys: JWTVerifyGetKey;
  readonly byKid: ReadonlyMap<string, string>;
  /** The whole key set's text, for a token without `kid`. */
  readonly all: string;
}

/** The JWK text of the key a token with this `kid` is verified with in the snapshot; undefined if it has none. */
function keyMaterial(snapshot: KeySnapshot, kid: string | undefined): string | undefined {
  return kid === undefined ? snapshot.all : snapshot.byKid.get(kid);
}

function snapshotOf(jwks: JSONWebKeySet): KeySnapshot {
  const keys = createLocalJWKSet(jwks);
  const byKid = new Map<string, string>();
  for (const jwk of jwks.keys) {
    if (typeof jwk.kid !== "string") continue;
    const text = JSON.stringify(jwk);
    // Two keys under one kid: both texts, so a change to either one counts.
    byKid.set(jwk.kid, byKid.has(jwk.kid) ? `${byKid.get(jwk.kid)}\n${text}` : text);
  }
  return { keys, byKid, all: JSON.stringify(jwks.keys) };
}

/**
 * Keys from a JWKS URL, fetched on first use and again once the copy is
 * stale (its freshness counted from when it was requested), or for an
 * unknown `kid` after the cooldown; one fetch at a time. A failed fetch is
 * TokenError `keys_unavailable`. `invalidate()` makes the next use refetch;
 * `current()` is the copy while it is fresh; `select` is the key getter
 * that also says which copy it used.
 */
function createRemoteKeySet(
  url: URL,
  opts: { maxAgeMs: number; cooldownMs: number; timeoutMs: number; now: () => number },
): JWTVerifyGetKey & {
  invalidate(): void;
  current(): KeySnapshot | undefined;
  select(
    header: JWTHeaderParameters,
    token: Parameters<JWTVerifyGetKey>[1],
    used: (snapshot: KeySnapshot) => void,
  ): ReturnType<JWTVerifyGetKey>;
} {
  let local: KeySnapshot | undefined;
  let fetchedAt = Number.NEGATIVE_INFINITY;
  let freshUntil = Number.NEGATIVE_INFINITY;
  let pending: Promise<KeySnapshot> | undefined;
  const fetchKeys = async (): Promise<KeySnapshot> => {
    const requestedAt = opts.now();
    try {
      const res = await fetch(url, {
        redirect: "manual",
        signal: AbortSignal.timeout(opts.timeoutMs),
        headers: { accept: "application/jwk-set+json, application/json" },
      });
      if (res.status !== 200) throw new Error(`JWKS answered HTTP ${res.status}`);
      const snapshot = snapshotOf((await res.json()) as JSONWebKeySet);
      local = snapshot;
      fetchedAt = requestedAt;
      freshUntil = requestedAt + Math.min(freshnessMs(res.headers) ?? opts.maxAgeMs, opts.maxAgeMs);
      return snapshot;
    } catch (err) {
      // Unreachable, timed out, an error status, not a key set: the identity service's problem, not the caller's.
      throw new TokenError("keys_unavailable", { cause: err });
    }
  };
  const refetch = () => {
    pending ??= fetchKeys().finally(() => {
      pending = undefined;
    });
    return pending;
  };
  const current = () => (local && opts.now() < freshUntil ? local : undefined);
  const select = async (
    header: JWTHeaderParameters,
    token: Parameters<JWTVerifyGetKey>[1],
    used: (snapshot: KeySnapshot) => void,
  ) => {
    let snapshot = current() ?? (await refetch());
    try {
      const key = await snapshot.keys(header, token);
      used(snapshot);
      return key;
    } catch (err) {
      if (err instanceof errors.JWKSNoMatchingKey && opts.now() >= fetchedAt + opts.cooldownMs) {
        snapshot = await refetch();
        const key = await snapshot.keys(header, token);
        used(snapshot);
        return key;
      }
      throw err;
    }
  };
  const getKey = (header: JWTHeaderParameters, token: Parameters<JWTVerifyGetKey>[1]) =>
    select(header, token, () => {});
  return Object.assign(getKey, {
    invalidate() {
      freshUntil = Number.NEGATIVE_INFINITY;
    },
    current,
    select,
  });
}
