/** Reading back what the relays published, with JetStream's own store times. */
import { CE_TIME } from "@customer-platform/sdk/cloudevents";
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";

/** One stored event: when it happened (`ce-time`) and when JetStream stored (and acked) it, in epoch ms. */
export interface StoredEvent {
  seq: number;
  occurMs: number;
  storedMs: number;
}

/** The last sequence of stream (0 when empty). */
export async function lastSeq(natsUrl: string, stream: string): Promise<number> {
  const nc = await connect({ servers: natsUrl });
  try {
    const info = await (await jetstreamManager(nc)).streams.info(stream);
    return info.state.last_seq;
  } finally {
    await nc.close();
  }
}

/** Headers and store times of messages fromSeq..(last at call time), in order. */
export async function storedEvents(natsUrl: string, stream: string, fromSeq: number): Promise<StoredEvent[]> {
  const nc = await connect({ servers: natsUrl });
  try {
    const last = (await (await jetstreamManager(nc)).streams.info(stream)).state.last_seq;
    if (last < fromSeq) return [];
    const consumer = await jetstream(nc).consumers.get(stream, {
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: fromSeq,
      headers_only: true,
    });
    const out: StoredEvent[] = [];
    const messages = await consumer.consume();
    const timeout = setTimeout(() => messages.stop(), 60_000);
    for await (const m of messages) {
      const ceTime = m.headers?.get(CE_TIME);
      out.push({
        seq: m.seq,
        occurMs: ceTime ? Date.parse(ceTime) : Number.NaN,
        storedMs: m.info.timestampNanos / 1e6,
      });
      if (m.seq >= last) break;
    }
    clearTimeout(timeout);
    return out;
  } finally {
    await nc.close();
  }
}
