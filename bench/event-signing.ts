/**
 * The cost of proof of origin per event, measured in this process: signing
 * one event as the outbox relay does (CloudEvents headers + detached JWS over
 * payload and attributes) and verifying it as a consumer does (keys cached),
 * against the same headers unsigned. A micro measurement: one core, no
 * network, a CustomerUpdated-sized payload.
 *
 *   npx tsx --conditions=source bench/event-signing.ts [iterations]
 */
import { randomBytes, randomUUID } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { CE_SIGNATURE, setCloudEventHeaders } from "@customer-platform/sdk/cloudevents";
import {
  createEventSigner,
  createEventVerifier,
  EVENT_KEYS_PATH,
  generateEventSigningKey,
  publicEventKeys,
  signedAttributesOf,
} from "@customer-platform/sdk/event-signing";
import { headers } from "@nats-io/transport-node";

/** µs per event, mean over `iterations`, after a warm-up. */
export interface EventSigningCost {
  iterations: number;
  payloadBytes: number;
  /** The `ce-signature` header's length. */
  signatureBytes: number;
  /** Setting the CloudEvents headers alone (what publishing cost before signing). */
  headersUs: number;
  /** Headers + signature, as the relay publishes an event. */
  signUs: number;
  /** Verifying one event (keys cached), as a consumer does before handling it. */
  verifyUs: number;
}

async function meanUs(iterations: number, op: (i: number) => Promise<unknown> | unknown): Promise<number> {
  for (let i = 0; i < Math.min(500, iterations); i++) await op(i);
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) await op(i);
  return Number(process.hrtime.bigint() - start) / 1_000 / iterations;
}

/** Measures signing and verifying `iterations` events of `payloadBytes` (default 5,000 of 300 bytes). */
export async function measureEventSigning(
  opts: { iterations?: number; payloadBytes?: number } = {},
): Promise<EventSigningCost> {
  const iterations = opts.iterations ?? 5_000;
  const payload = randomBytes(opts.payloadBytes ?? 300);
  const key = await generateEventSigningKey();
  const signer = await createEventSigner(key);
  const server = createServer((_req, res) => {
    res.writeHead(200, { "content-type": "application/jwk-set+json", "cache-control": "max-age=300" });
    res.end(JSON.stringify(publicEventKeys([key])));
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}${EVENT_KEYS_PATH}`;
    const verifier = createEventVerifier({ trust: { "customer-service": url } });
    const customerId = randomUUID();
    const subject = `customer.updated.${customerId}`;
    const attrs = () => ({
      id: randomUUID(),
      type: "customer.v1.CustomerUpdated",
      source: "customer-service",
      time: new Date(),
      subject: customerId,
    });
    const sign = async () => {
      const h = setCloudEventHeaders(headers(), attrs());
      h.set(CE_SIGNATURE, await signer.sign(payload, signedAttributesOf(subject, h)));
      return h;
    };
    const headersUs = await meanUs(iterations, () => setCloudEventHeaders(headers(), attrs()));
    const signUs = await meanUs(iterations, sign);
    const messages = await Promise.all(
      Array.from({ length: 256 }, async () => ({ subject, data: payload, headers: await sign() })),
    );
    const verifyUs = await meanUs(iterations, (i) =>
      verifier.verify(messages[i % messages.length] as (typeof messages)[number]),
    );
    const signatureBytes = (messages[0]?.headers.get(CE_SIGNATURE) ?? "").length;
    return { iterations, payloadBytes: payload.length, signatureBytes, headersUs, signUs, verifyUs };
  } finally {
    server.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const iterations = Number(process.argv[2] ?? 5_000);
  const cost = await measureEventSigning({ iterations });
  console.log(JSON.stringify(cost, (_k, v) => (typeof v === "number" ? Math.round(v * 10) / 10 : v)));
}
