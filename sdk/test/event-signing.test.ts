/**
 * The event verifier against a real JWKS over HTTP: a genuine event
 * verifies; a changed header, payload or subject, an untrusted source or a
 * foreign key is refused with its reason; an unknown `kid` makes it fetch
 * the keys again, at most once per cooldown; keys it cannot fetch are
 * neither acceptance nor refusal.
 */
import { randomUUID } from "node:crypto";
import { flattenedVerify, importJWK, type JWK } from "jose";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { eventHeaders, startTestEventKeys, type TestEventKeys } from "../../test/support/events.js";
import { freePort } from "../../test/support/ports.js";
import { CE_ID, CE_SIGNATURE, CE_SOURCE, CE_SUBJECT, CE_TIME } from "../src/cloudevents.js";
import { createEventVerifier, EventKeysUnavailableError, EventSignatureError } from "../src/event-signing.js";

let keys: TestEventKeys;

beforeEach(async () => {
  keys = await startTestEventKeys();
});

afterEach(async () => {
  await keys?.close();
});

const subject = "customer.updated.c1";
const payload = new Uint8Array([8, 1, 18, 3, 97, 98, 99]);
const attrs = () => ({
  id: randomUUID(),
  type: "customer.v1.CustomerUpdated",
  source: "customer-service",
  time: new Date(),
  subject: "c1",
});

async function signed(signer = keys.signer) {
  return { subject, data: payload, headers: await eventHeaders(signer, subject, payload, attrs()) };
}

async function refusal(promise: Promise<unknown>): Promise<string> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof EventSignatureError)) throw new Error(`expected a refusal, got ${String(err)}`);
  return err.reason;
}

describe("createEventVerifier", () => {
  it("verifies a genuine event and names its key", async () => {
    const verifier = keys.verifier("customer-service");
    const msg = await signed();
    expect(await verifier.verify(msg)).toMatchObject({ source: "customer-service", kid: keys.signer.kid });
    // Ed25519 is deterministic: the relay re-sending an event sends the same signature.
    const again = await keys.signer.sign(payload, {
      specversion: "1.0",
      id: msg.headers.get(CE_ID),
      source: "customer-service",
      type: "customer.v1.CustomerUpdated",
      subject: "c1",
      time: msg.headers.get(CE_TIME),
      datacontenttype: "application/protobuf",
      natssubject: subject,
    });
    expect(again).toBe(msg.headers.get(CE_SIGNATURE));
  });

  it("is a standard detached JWS (RFC 7797) that jose's flattenedVerify accepts over the payload", async () => {
    const msg = await signed();
    const [protectedHeader, payloadPart, signature] = (msg.headers.get(CE_SIGNATURE) ?? "").split(".");
    expect(payloadPart).toBe("");
    const jwks = (await (await fetch(keys.url)).json()) as { keys: JWK[] };
    expect(jwks.keys).toEqual([
      { kty: "OKP", crv: "Ed25519", x: expect.any(String), kid: keys.signer.kid, alg: "EdDSA", use: "sig" },
    ]);
    const publicKey = await importJWK(jwks.keys[0] as JWK, "EdDSA");
    const verified = await flattenedVerify(
      { protected: protectedHeader ?? "", payload: payload, signature: signature ?? "" },
      publicKey,
      { algorithms: ["EdDSA"] },
    );
    expect(verified.protectedHeader).toMatchObject({
      alg: "EdDSA",
      kid: keys.signer.kid,
      b64: false,
      crit: ["b64"],
      ce: { id: msg.headers.get(CE_ID), type: "customer.v1.CustomerUpdated", natssubject: subject },
    });
    await expect(
      flattenedVerify(
        { protected: protectedHeader ?? "", payload: new Uint8Array([1]), signature: signature ?? "" },
        publicKey,
      ),
    ).rejects.toThrow("signature verification failed");
  });

  it("refuses a changed header, payload or subject, a missing or broken signature", async () => {
    const verifier = keys.verifier("customer-service");
    for (const [name, value] of [
      [CE_ID, randomUUID()],
      [CE_SUBJECT, "c2"],
      [CE_TIME, new Date(0).toISOString()],
    ] as const) {
      const msg = await signed();
      msg.headers.set(name, value);
      expect(await refusal(verifier.verify(msg))).toBe("attributes_mismatch");
    }
    const moved = await signed();
    expect(await refusal(verifier.verify({ ...moved, subject: "customer.updated.c2" }))).toBe("attributes_mismatch");
    const altered = await signed();
    expect(await refusal(verifier.verify({ ...altered, data: new Uint8Array([8, 2]) }))).toBe("bad_signature");
    const unsigned = await signed();
    unsigned.headers.delete(CE_SIGNATURE);
    expect(await refusal(verifier.verify(unsigned))).toBe("unsigned");
    const broken = await signed();
    const [protectedHeader, , signature] = (broken.headers.get(CE_SIGNATURE) ?? "").split(".");
    broken.headers.set(CE_SIGNATURE, `${protectedHeader}.${signature}`);
    expect(await refusal(verifier.verify(broken))).toBe("malformed");
    // The protected header itself changed (another ce-type signed in it) breaks the signature.
    const tampered = await signed();
    const header = JSON.parse(Buffer.from(protectedHeader ?? "", "base64url").toString()) as Record<string, unknown>;
    const forgedHeader = Buffer.from(JSON.stringify({ ...header, alg: "none" })).toString("base64url");
    tampered.headers.set(CE_SIGNATURE, `${forgedHeader}..${signature}`);
    expect(await refusal(verifier.verify(tampered))).toBe("malformed");
  });

  it("refuses a source it does not trust, even signed with a trusted source's key", async () => {
    const verifier = keys.verifier("identity-service");
    expect(await refusal(verifier.verify(await signed()))).toBe("untrusted_source");
    const msg = await signed();
    msg.headers.set(CE_SOURCE, "identity-service");
    expect(await refusal(verifier.verify(msg))).toBe("attributes_mismatch");
  });

  it("fetches the keys again for an unknown kid, at most once per cooldown", async () => {
    const verifier = keys.verifier("customer-service", { cooldownMs: 60_000 });
    await verifier.verify(await signed());
    expect(keys.fetches).toBe(1);
    // A key published after the verifier's fetch: the unknown kid is fetched for once the cooldown allows.
    let now = Date.now();
    const later = keys.verifier("customer-service", { cooldownMs: 60_000, now: () => now });
    await later.verify(await signed());
    expect(keys.fetches).toBe(2);
    const rotated = await keys.rotate({ publish: true });
    expect(await refusal(later.verify(await signed(rotated)))).toBe("unknown_key");
    expect(keys.fetches).toBe(2);
    now += 60_000;
    expect(await later.verify(await signed(rotated))).toMatchObject({ kid: rotated.kid });
    expect(keys.fetches).toBe(3);
    // A key nobody published is refused after the one refetch, and forgeries do not make it fetch again.
    const foreign = await startTestEventKeys();
    try {
      now += 60_000;
      expect(await refusal(later.verify(await signed(foreign.signer)))).toBe("unknown_key");
      expect(keys.fetches).toBe(4);
      for (let i = 0; i < 5; i++) expect(await refusal(later.verify(await signed(foreign.signer)))).toBe("unknown_key");
      expect(keys.fetches).toBe(4);
    } finally {
      await foreign.close();
    }
  });

  it("neither accepts nor refuses while the keys cannot be fetched", async () => {
    const verifier = createEventVerifier({
      trust: { "customer-service": `http://127.0.0.1:${await freePort()}/.well-known/event-keys.json` },
      timeoutMs: 1_000,
    });
    await expect(verifier.verify(await signed())).rejects.toBeInstanceOf(EventKeysUnavailableError);
  });
});
