/**
 * A service's event signing key: one Ed25519 key per service, created by the
 * first instance that starts and stored in the service's own database
 * (event-keys-schema.ts), so every instance signs with the same key. The
 * relay signs each event as it publishes it (outbox-publisher.ts); the
 * public keys are served as a JWKS at `/.well-known/event-keys.json` for
 * consumers to verify with (`@customer-platform/sdk/event-signing`).
 */
import {
  createEventSigner,
  EVENT_KEYS_PATH,
  type EventSigner,
  generateEventSigningKey,
  publicEventKeys,
} from "@customer-platform/sdk/event-signing";
import { sql } from "drizzle-orm";
import type { JWK } from "jose";
import type { Database } from "./db.js";
import { eventKeys } from "./event-keys-schema.js";
import type { NodeHandlerFn } from "./health.js";

// Serialises the creation of the first key across instances starting at once.
// The platform's other advisory locks: 7_310_001 migrations, 7_310_002 and
// 7_310_003 the relays, 7_310_101 the identity signing-key bootstrap.
const EVENT_KEY_BOOTSTRAP_LOCK = 7_310_102;

/** How long consumers may cache the event keys (the JWKS's `cache-control: max-age`). */
export const EVENT_KEYS_MAX_AGE_SEC = 300;

/** The service's event keys: the signer (newest key) and the public key set. */
export interface EventKeys {
  readonly signer: EventSigner;
  /** The JWKS served at `/.well-known/event-keys.json`: public keys only. */
  readonly jwks: { keys: JWK[] };
}

/** A new Ed25519 key pair as a row of `event_keys` (not yet stored). */
export async function newEventKey(now: Date) {
  return { ...(await generateEventSigningKey()), createdAt: now };
}

/**
 * Loads the service's event keys, creating the first one if the table is
 * empty. A failure says which step failed, never the key material (a
 * driver's error would carry the statement's parameters).
 */
export async function openEventKeys(database: Pick<Database<Record<string, unknown>>, "db">): Promise<EventKeys> {
  const { db } = database;
  try {
    await db.transaction(async (tx) => {
      await tx.execute(sql`select pg_advisory_xact_lock(${EVENT_KEY_BOOTSTRAP_LOCK})`);
      const [any] = await tx.select({ kid: eventKeys.kid }).from(eventKeys).limit(1);
      if (!any) await tx.insert(eventKeys).values(await newEventKey(new Date()));
    });
  } catch (err) {
    throw new Error(`cannot create the event signing key${sqlState(err)}`);
  }
  const rows = await db
    .select()
    .from(eventKeys)
    .orderBy(sql`${eventKeys.createdAt} desc, ${eventKeys.kid} desc`)
    .catch((err: unknown) => {
      throw new Error(`cannot read the event signing keys${sqlState(err)}`);
    });
  const newest = rows[0];
  if (!newest) throw new Error("no event signing key");
  const signer = await createEventSigner({ kid: newest.kid, privateJwk: newest.privateJwk as JWK });
  const jwks = publicEventKeys(rows.map((r) => ({ kid: r.kid, publicJwk: r.publicJwk as JWK })));
  return { signer, jwks };
}

function sqlState(err: unknown): string {
  const code =
    (err as { code?: unknown; cause?: { code?: unknown } })?.cause?.code ?? (err as { code?: unknown })?.code;
  return typeof code === "string" && /^[0-9A-Z]{5}$/.test(code) ? ` (SQLSTATE ${code})` : "";
}

/** Serves `GET /.well-known/event-keys.json` (public keys, cacheable for {@link EVENT_KEYS_MAX_AGE_SEC}); other paths go to `next`. */
export function eventKeysHttpHandler(keys: Pick<EventKeys, "jwks">, next: NodeHandlerFn): NodeHandlerFn {
  const body = JSON.stringify(keys.jwks);
  return (req, res) => {
    if (req.url?.split("?")[0] !== EVENT_KEYS_PATH) return next(req, res);
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" });
      res.end();
      return;
    }
    res.writeHead(200, {
      "content-type": "application/jwk-set+json",
      "cache-control": `public, max-age=${EVENT_KEYS_MAX_AGE_SEC}`,
    });
    if (req.method === "HEAD") res.end();
    else res.end(body);
  };
}
