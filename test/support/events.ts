/**
 * Signed events for tests that publish by hand: a service's real event key
 * (read from its database), or a key of the test's own served as a JWKS, and
 * the headers of a signed event. Verification stays on everywhere; a test's
 * hand-made event is signed like the producer's would be.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { CE_SIGNATURE, type CloudEventAttributes, setCloudEventHeaders } from "@customer-platform/sdk/cloudevents";
import {
  createEventSigner,
  createEventVerifier,
  EVENT_KEYS_PATH,
  type EventSigner,
  type EventVerifier,
  type EventVerifierOptions,
  publicEventKeys,
  signedAttributesOf,
} from "@customer-platform/sdk/event-signing";
import type { JetStreamClient } from "@nats-io/jetstream";
import { headers, type MsgHdrs } from "@nats-io/transport-node";
import type { JWK } from "jose";
import { newEventKey } from "../../runtime/src/event-keys.js";
import { connectSql } from "./postgres.js";

/**
 * A message's headers for a secret scan: `ce-signature` (a JWS, which a scan
 * for JWTs would flag by its shape) replaced by what it carries, its
 * protected header decoded.
 */
export function scannableHeaders(msg: { headers?: MsgHdrs | undefined }): Record<string, string[]> {
  const h = msg.headers;
  if (!h) throw new Error("message without headers");
  return Object.fromEntries(
    h
      .keys()
      .map((k) => [
        k,
        k === CE_SIGNATURE
          ? h.values(k).map((v) => Buffer.from(v.split(".")[0] ?? "", "base64url").toString())
          : h.values(k),
      ]),
  );
}

/** The signer of a service: its newest key from the `event_keys` table of its database. */
export async function serviceEventSigner(databaseUrl: string): Promise<EventSigner> {
  const sql = connectSql(databaseUrl);
  try {
    const [row] = await sql<[{ kid: string; private_jwk: JWK }]>`
      select kid, private_jwk from event_keys order by created_at desc, kid desc limit 1`;
    if (!row) throw new Error("the service has no event key yet (not started?)");
    return await createEventSigner({ kid: row.kid, privateJwk: row.private_jwk });
  } finally {
    await sql.end();
  }
}

/** A verifier trusting `source` at `<serviceUrl>/.well-known/event-keys.json`. */
export function verifierFor(
  source: string,
  serviceUrl: string,
  opts: Omit<EventVerifierOptions, "trust"> = {},
): EventVerifier {
  return createEventVerifier({ ...opts, trust: { [source]: `${serviceUrl}${EVENT_KEYS_PATH}` } });
}

/** The headers of an event as its producer publishes it: CloudEvents attributes and `ce-signature` (unless `signer` is undefined). */
export async function eventHeaders(
  signer: EventSigner | undefined,
  subject: string,
  payload: Uint8Array,
  attrs: CloudEventAttributes,
): Promise<MsgHdrs> {
  const h = setCloudEventHeaders(headers(), attrs);
  if (signer) h.set(CE_SIGNATURE, await signer.sign(payload, signedAttributesOf(subject, h)));
  return h;
}

/** Publishes an event signed by `signer` (or unsigned without one), `Nats-Msg-Id` its id. */
export async function publishEvent(
  js: JetStreamClient,
  signer: EventSigner | undefined,
  subject: string,
  payload: Uint8Array,
  attrs: CloudEventAttributes,
) {
  const h = await eventHeaders(signer, subject, payload, attrs);
  return js.publish(subject, payload, { headers: h, msgID: attrs.id });
}

/** A producer's keys served by the test: `url` is its JWKS, `signer` signs with the newest key. */
export interface TestEventKeys {
  readonly url: string;
  readonly signer: EventSigner;
  /** Times the JWKS was fetched. */
  readonly fetches: number;
  /** Adds a new key and signs with it from now on; the JWKS lists it only after `publish()` unless `publish` is true. */
  rotate(opts?: { publish?: boolean }): Promise<EventSigner>;
  /** Lists every key made so far in the JWKS. */
  publish(): void;
  /** false: the JWKS answers 503 (the producer is down) until set true again. */
  available: boolean;
  /** A verifier trusting `source` with these keys. */
  verifier(source: string, opts?: Omit<EventVerifierOptions, "trust">): EventVerifier;
  close(): Promise<void>;
}

/** Serves a fresh Ed25519 key as a JWKS on a free port (`cache-control: max-age=<maxAgeSec>`). */
export async function startTestEventKeys(opts: { maxAgeSec?: number } = {}): Promise<TestEventKeys> {
  const keys: { kid: string; publicJwk: JWK }[] = [];
  let published: { kid: string; publicJwk: JWK }[] = [];
  let fetches = 0;
  let available = true;
  const make = async () => {
    const key = await newEventKey(new Date());
    keys.push({ kid: key.kid, publicJwk: key.publicJwk });
    return createEventSigner({ kid: key.kid, privateJwk: key.privateJwk });
  };
  let signer = await make();
  published = [...keys];
  const server: Server = createServer((req, res) => {
    if (req.url !== EVENT_KEYS_PATH) {
      res.writeHead(404).end();
      return;
    }
    fetches++;
    if (!available) {
      res.writeHead(503).end();
      return;
    }
    res.writeHead(200, {
      "content-type": "application/jwk-set+json",
      "cache-control": `max-age=${opts.maxAgeSec ?? 300}`,
    });
    res.end(JSON.stringify(publicEventKeys(published)));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}${EVENT_KEYS_PATH}`;
  return {
    url,
    get signer() {
      return signer;
    },
    get fetches() {
      return fetches;
    },
    get available() {
      return available;
    },
    set available(value: boolean) {
      available = value;
    },
    async rotate({ publish = false } = {}) {
      signer = await make();
      if (publish) published = [...keys];
      return signer;
    },
    publish() {
      published = [...keys];
    },
    verifier: (source, verifierOpts = {}) => createEventVerifier({ ...verifierOpts, trust: { [source]: url } }),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
