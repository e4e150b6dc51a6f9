/**
 * Proof of origin for the platform's events. Each producer signs every event
 * it publishes with its own Ed25519 key: a detached JWS (RFC 7515 appendix F,
 * unencoded payload per RFC 7797) whose payload is the message's bytes and
 * whose protected header carries the CloudEvents attributes and the NATS
 * subject, sent in the `ce-signature` header as `<protected>..<signature>`.
 * Producers publish their public keys as a JWKS at
 * `/.well-known/event-keys.json`.
 *
 * A consumer trusts producers by `ce-source`: each source maps to the URL of
 * its event keys. An event verifies only if its source is trusted, its `kid`
 * is one of that source's keys, the signature holds over the payload as
 * received, and every signed attribute equals the header received (so
 * neither the payload nor `ce-type`, `ce-subject`, `ce-id`, `ce-time`,
 * `ce-source`, the content type or the NATS subject can be changed).
 *
 * ```ts
 * const verifier = createEventVerifier({
 *   trust: { "customer-service": "http://127.0.0.1:8080/.well-known/event-keys.json" },
 * });
 * await verifier.verify(msg); // throws EventSignatureError, or EventKeysUnavailableError (retry later)
 * ```
 *
 * Anyone can write to NATS if its permissions are wrong; only the producer's
 * key can sign. A genuine event published again (a replay) still verifies:
 * consumers stay idempotent by `ce-id` and by version.
 *
 * The signature is a standard JWS: `flattenedVerify` of jose (or any JOSE
 * library with RFC 7797) verifies `{ protected, payload: data, signature }`.
 * It is computed here with node:crypto's Ed25519 directly, about three times
 * cheaper per event than through WebCrypto (bench/event-signing.ts).
 */
import {
  createPrivateKey,
  createPublicKey,
  type JsonWebKey,
  type KeyObject,
  sign as signBytes,
  verify as verifyBytes,
} from "node:crypto";
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from "jose";
import { freshnessMs } from "./cache-control.js";
import {
  CE_DATACONTENTTYPE,
  CE_ID,
  CE_SIGNATURE,
  CE_SOURCE,
  CE_SPECVERSION,
  CE_SUBJECT,
  CE_TIME,
  CE_TYPE,
  type HeaderSource,
} from "./cloudevents.js";

/** The only algorithm events are signed with. */
export const EVENT_SIGNING_ALGORITHM = "EdDSA";

/** Where a service publishes its event keys (a JWKS), relative to its base URL. */
export const EVENT_KEYS_PATH = "/.well-known/event-keys.json";

/** What a signature covers besides the payload: the attributes exactly as sent in the headers. */
export interface SignedAttributes {
  readonly specversion: string;
  readonly id: string;
  readonly source: string;
  readonly type: string;
  readonly subject: string;
  /** `ce-time` as sent (RFC 3339 text). */
  readonly time: string;
  readonly datacontenttype: string;
  /** The NATS subject the event is published on. */
  readonly natssubject: string;
}

const ATTRIBUTE_NAMES = [
  "specversion",
  "id",
  "source",
  "type",
  "subject",
  "time",
  "datacontenttype",
  "natssubject",
] as const satisfies readonly (keyof SignedAttributes)[];

/** The signed attributes of a message as received: its headers, verbatim ("" when absent), and its subject. */
export function signedAttributesOf(natsSubject: string, headers: HeaderSource | undefined): SignedAttributes {
  const get = (name: string) => headers?.get(name) ?? "";
  return {
    specversion: get(CE_SPECVERSION),
    id: get(CE_ID),
    source: get(CE_SOURCE),
    type: get(CE_TYPE),
    subject: get(CE_SUBJECT),
    time: get(CE_TIME),
    datacontenttype: get(CE_DATACONTENTTYPE),
    natssubject: natsSubject,
  };
}

/** A producer's signing key: an Ed25519 private JWK and its key id. */
export interface EventSigningKey {
  readonly kid: string;
  readonly privateJwk: JWK;
}

/** A new Ed25519 key: `kid` is the public key's JWK thumbprint (RFC 7638). Store `privateJwk` as a secret. */
export async function generateEventSigningKey(): Promise<EventSigningKey & { readonly publicJwk: JWK }> {
  const { privateKey, publicKey } = await generateKeyPair(EVENT_SIGNING_ALGORITHM, {
    crv: "Ed25519",
    extractable: true,
  });
  const publicJwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(publicJwk);
  return { kid, privateJwk: await exportJWK(privateKey), publicJwk: { ...publicJwk, kid } };
}

/** Signs events with one key. */
export interface EventSigner {
  readonly kid: string;
  /** The `ce-signature` value for `payload` published with `attributes`. */
  sign(payload: Uint8Array, attributes: SignedAttributes): Promise<string>;
}

/** The JWS signing input with an unencoded payload (RFC 7797 section 3): ASCII(protected) || "." || payload. */
function signingInput(encodedProtected: string, payload: Uint8Array): Buffer {
  return Buffer.concat([Buffer.from(`${encodedProtected}.`, "ascii"), payload]);
}

/** A signer for `key`; the key is imported once. */
export async function createEventSigner(key: EventSigningKey): Promise<EventSigner> {
  if (key.privateJwk.kty !== "OKP" || key.privateJwk.crv !== "Ed25519" || !key.privateJwk.d) {
    throw new TypeError("an event signing key is an Ed25519 private JWK");
  }
  const privateKey = createPrivateKey({ key: key.privateJwk as JsonWebKey, format: "jwk" });
  return {
    kid: key.kid,
    async sign(payload, attributes) {
      const ce = Object.fromEntries(ATTRIBUTE_NAMES.map((name) => [name, attributes[name]]));
      const header = { alg: EVENT_SIGNING_ALGORITHM, kid: key.kid, b64: false, crit: ["b64"], ce };
      const encoded = Buffer.from(JSON.stringify(header)).toString("base64url");
      const signature = signBytes(null, signingInput(encoded, payload), privateKey).toString("base64url");
      return `${encoded}..${signature}`;
    },
  };
}

/**
 * Why an event was refused. `unsigned`: no `ce-signature`; `malformed`: not
 * a detached JWS of ours; `untrusted_source`: no keys configured for its
 * `ce-source`; `unknown_key`: its `kid` is not among the source's keys (after
 * a refetch); `attributes_mismatch`: a header or the subject differs from
 * what was signed; `bad_signature`: the signature does not hold over the payload.
 */
export type EventRejection =
  | "unsigned"
  | "malformed"
  | "untrusted_source"
  | "unknown_key"
  | "attributes_mismatch"
  | "bad_signature";

/** An event whose origin cannot be proven: never to be handled. */
export class EventSignatureError extends Error {
  override readonly name = "EventSignatureError";
  constructor(
    readonly reason: EventRejection,
    /** What was wrong, e.g. the attributes that differ; never key material. */
    readonly detail?: string,
    options?: { cause?: unknown },
  ) {
    super(`event signature refused: ${reason}${detail ? ` (${detail})` : ""}`, options);
  }
}

/** The keys of a trusted source could not be fetched: the event is neither accepted nor refused; try again later. */
export class EventKeysUnavailableError extends Error {
  override readonly name = "EventKeysUnavailableError";
  constructor(
    readonly source: string,
    options?: { cause?: unknown },
  ) {
    super(`event keys of ${source} unavailable`, options);
  }
}

/** A message as NATS delivers it: subject, headers, payload. */
export interface SignedMessage {
  readonly subject: string;
  readonly headers?: HeaderSource | undefined;
  readonly data: Uint8Array;
}

/** What a verified event was signed with. */
export interface VerifiedEvent {
  readonly source: string;
  readonly kid: string;
  readonly attributes: SignedAttributes;
}

export interface EventVerifierOptions {
  /** The producers trusted: `ce-source` → the URL of its event keys, e.g. `http://identity:8081/.well-known/event-keys.json`. */
  trust: Readonly<Record<string, string>>;
  /** Longest a fetched key set is used before it is fetched again (default 5 minutes); its `cache-control` max-age shortens it. */
  maxAgeMs?: number;
  /** Minimum time between two fetches of one source's keys for an unknown `kid` (default 10 s). */
  cooldownMs?: number;
  /** Timeout of one key request (default 5 s). */
  timeoutMs?: number;
  now?: () => number;
}

/** Verifies events against the keys of their trusted producers. */
export interface EventVerifier {
  /** The trusted sources. */
  readonly sources: readonly string[];
  /**
   * Resolves if `msg` carries a valid signature of its trusted source;
   * throws EventSignatureError if not, EventKeysUnavailableError if its
   * source's keys cannot be fetched (neither accepted nor refused).
   */
  verify(msg: SignedMessage): Promise<VerifiedEvent>;
}

type KeyLike = KeyObject;
const BASE64URL = /^[A-Za-z0-9_-]+$/;

interface ProtectedHeader {
  alg?: unknown;
  kid?: unknown;
  b64?: unknown;
  crit?: unknown;
  ce?: unknown;
}

/** A verifier over the key sets of `opts.trust`, each fetched on first use and cached. */
export function createEventVerifier(opts: EventVerifierOptions): EventVerifier {
  const now = opts.now ?? Date.now;
  const sets = new Map<string, ReturnType<typeof createRemoteEventKeys>>();
  for (const [source, url] of Object.entries(opts.trust)) {
    sets.set(
      source,
      createRemoteEventKeys(source, new URL(url), {
        maxAgeMs: opts.maxAgeMs ?? 300_000,
        cooldownMs: opts.cooldownMs ?? 10_000,
        timeoutMs: opts.timeoutMs ?? 5_000,
        now,
      }),
    );
  }
  return {
    sources: [...sets.keys()],
    async verify(msg) {
      const value = msg.headers?.get(CE_SIGNATURE);
      if (!value) throw new EventSignatureError("unsigned");
      const parts = value.split(".");
      if (parts.length !== 3 || parts[1] !== "" || !parts[0] || !parts[2]) {
        throw new EventSignatureError("malformed", "not <protected>..<signature>");
      }
      const [encoded, , signature] = parts as [string, string, string];
      if (!BASE64URL.test(encoded) || !BASE64URL.test(signature)) {
        throw new EventSignatureError("malformed", "not base64url");
      }
      let header: ProtectedHeader;
      try {
        header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(Buffer.from(encoded, "base64url")));
      } catch (err) {
        throw new EventSignatureError("malformed", "protected header", { cause: err });
      }
      if (
        typeof header !== "object" ||
        header === null ||
        header.alg !== EVENT_SIGNING_ALGORITHM ||
        header.b64 !== false ||
        !Array.isArray(header.crit) ||
        header.crit.length !== 1 ||
        header.crit[0] !== "b64" ||
        typeof header.kid !== "string" ||
        typeof header.ce !== "object" ||
        header.ce === null
      ) {
        throw new EventSignatureError("malformed", "protected header");
      }
      const attributes = signedAttributesOf(msg.subject, msg.headers);
      const signed = header.ce as Record<string, unknown>;
      const differs = ATTRIBUTE_NAMES.filter((name) => signed[name] !== attributes[name]);
      if (differs.length > 0) throw new EventSignatureError("attributes_mismatch", differs.join(", "));
      const keys = sets.get(attributes.source);
      if (!keys) throw new EventSignatureError("untrusted_source", attributes.source || "no ce-source");
      const key = await keys.get(header.kid);
      if (!key) throw new EventSignatureError("unknown_key", header.kid);
      const sig = Buffer.from(signature, "base64url");
      if (sig.length !== 64 || !verifyBytes(null, signingInput(encoded, msg.data), key, sig)) {
        throw new EventSignatureError("bad_signature");
      }
      return { source: attributes.source, kid: header.kid, attributes };
    },
  };
}

/**
 * One source's keys from its JWKS URL: fetched on first use and again when
 * stale or, at most once per cooldown, for an unknown `kid`; one fetch at a
 * time. A stale copy is used while a refetch fails.
 */
function createRemoteEventKeys(
  source: string,
  url: URL,
  opts: { maxAgeMs: number; cooldownMs: number; timeoutMs: number; now: () => number },
) {
  let keys: Map<string, KeyLike> | undefined;
  // The last attempt to fetch, and whether it failed: refetches for unknown ids wait out the cooldown.
  let attemptedAt = Number.NEGATIVE_INFINITY;
  let failed = false;
  let freshUntil = Number.NEGATIVE_INFINITY;
  let pending: Promise<Map<string, KeyLike>> | undefined;

  const load = async (): Promise<Map<string, KeyLike>> => {
    const requestedAt = opts.now();
    attemptedAt = requestedAt;
    failed = true;
    let body: unknown;
    let res: Response;
    try {
      res = await fetch(url, {
        redirect: "manual",
        signal: AbortSignal.timeout(opts.timeoutMs),
        headers: { accept: "application/jwk-set+json, application/json" },
      });
      if (res.status !== 200) throw new Error(`event keys answered HTTP ${res.status}`);
      body = await res.json();
    } catch (err) {
      throw new EventKeysUnavailableError(source, { cause: err });
    }
    const list = (body as { keys?: unknown }).keys;
    if (!Array.isArray(list)) throw new EventKeysUnavailableError(source, { cause: new Error("not a key set") });
    const next = new Map<string, KeyLike>();
    for (const jwk of list as JWK[]) {
      if (jwk?.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.kid !== "string" || "d" in jwk) continue;
      if (jwk.alg !== undefined && jwk.alg !== EVENT_SIGNING_ALGORITHM) continue;
      if (jwk.use !== undefined && jwk.use !== "sig") continue;
      try {
        next.set(jwk.kid, createPublicKey({ key: jwk as JsonWebKey, format: "jwk" }));
      } catch {
        // Not a usable Ed25519 public key: as if it were not listed.
      }
    }
    keys = next;
    failed = false;
    freshUntil = requestedAt + Math.min(freshnessMs(res.headers) ?? opts.maxAgeMs, opts.maxAgeMs);
    return next;
  };
  const refetch = () => {
    pending ??= load().finally(() => {
      pending = undefined;
    });
    return pending;
  };
  const current = async () => {
    if (keys && opts.now() < freshUntil) return keys;
    try {
      return await refetch();
    } catch (err) {
      if (keys) return keys;
      throw err;
    }
  };
  return {
    /** The key named `kid`, undefined if the source has none by that id. */
    async get(kid: string): Promise<KeyLike | undefined> {
      const found = (await current()).get(kid);
      if (found) return found;
      if (opts.now() < attemptedAt + opts.cooldownMs) {
        // Unknown after a fresh fetch: refused. After a failed one: not known either way yet.
        if (failed) throw new EventKeysUnavailableError(source);
        return undefined;
      }
      return (await refetch()).get(kid);
    },
  };
}

/** The public JWKS of `keys` (private members dropped), as served at {@link EVENT_KEYS_PATH}. */
export function publicEventKeys(keys: readonly { kid: string; publicJwk: JWK }[]): { keys: JWK[] } {
  return {
    keys: keys.map(({ kid, publicJwk }) => ({
      kty: publicJwk.kty,
      crv: publicJwk.crv,
      x: publicJwk.x,
      kid,
      alg: EVENT_SIGNING_ALGORITHM,
      use: "sig",
    })) as JWK[],
  };
}
