/**
 * Publishing outbox rows to JetStream: CloudEvents binary mode (attributes
 * in `ce-*` headers, the protobuf message as payload, `Nats-Msg-Id` the
 * event id), each signed by the service (`ce-signature`), in waves of
 * distinct customers, each wave acked before the next is sent.
 */
import { CE_SIGNATURE, setCloudEventHeaders } from "@customer-platform/sdk/cloudevents";
import { type EventSigner, signedAttributesOf } from "@customer-platform/sdk/event-signing";
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, StorageType } from "@nats-io/jetstream";
import { headers, type MsgHdrs, nanos } from "@nats-io/transport-node";
import { errMessage, type Logger } from "./logger.js";
import type { Outbox } from "./outbox.js";

/** An unsent outbox row as the relay reads it. */
export interface OutboxRecord {
  /** The row id (bigint, as decimal text). */
  id: string;
  event_id: string;
  subject: string;
  type: string;
  source: string;
  ce_subject: string;
  payload: Uint8Array;
  occur_time: Date | string;
}

/** An event JetStream acked. */
export interface PublishedEvent {
  /** The outbox row id (decimal). */
  id: string;
  eventId: string;
  subject: string;
  /** Stream sequence. */
  seq: number;
  /** True when JetStream had it already (a repeat within the duplicate window). */
  duplicate: boolean;
}

/** A publish that was not acked: the row and why. */
export class PublishError extends Error {
  constructor(
    readonly row: OutboxRecord,
    options: { cause: unknown },
  ) {
    super(`event ${row.event_id}: ${errMessage(options.cause)}`, options);
    this.name = "PublishError";
  }
}

/** What one call of `publish` did: the acked prefix of the rows, and the failure that ended it, if any. */
export interface PublishOutcome {
  readonly sent: PublishedEvent[];
  readonly failure: PublishError | undefined;
  /** False when `keepGoing` said stop (or the signal aborted) before every row was sent. */
  readonly complete: boolean;
}

export interface OutboxPublisher {
  /** Creates the stream (file storage) unless it is known to exist; a failed publish makes it look again. */
  ensureStream(client: JetStreamClient): Promise<void>;
  /**
   * Publishes `rows` in order until one fails; `keepGoing` is asked before
   * each wave, and an aborted `signal` stops waiting for acks.
   */
  publish(
    client: JetStreamClient,
    rows: readonly OutboxRecord[],
    opts: { keepGoing: () => boolean; signal: AbortSignal },
  ): Promise<PublishOutcome>;
}

/** Splits rows, in order, into runs in which no `ce_subject` repeats. */
export function waves(rows: readonly OutboxRecord[]): OutboxRecord[][] {
  const out: OutboxRecord[][] = [];
  let wave: OutboxRecord[] = [];
  const seen = new Set<string>();
  for (const row of rows) {
    if (seen.has(row.ce_subject)) {
      out.push(wave);
      wave = [];
      seen.clear();
    }
    seen.add(row.ce_subject);
    wave.push(row);
  }
  if (wave.length > 0) out.push(wave);
  return out;
}

/** Creates the publisher to `outbox`'s stream. */
export function createOutboxPublisher(opts: {
  outbox: Outbox;
  /** Wait for one JetStream ack. */
  publishTimeoutMs: number;
  logger: Logger;
  /**
   * Signs every event as it is published (`ce-signature`). Signed at publish
   * time, not stored: Ed25519 signatures are deterministic, so an event
   * published again carries the same signature (with the same key) and the
   * same `Nats-Msg-Id`. Without it events go out unsigned (relay tests only).
   */
  signer?: EventSigner;
}): OutboxPublisher {
  const { outbox, publishTimeoutMs, logger, signer } = opts;
  // The client the stream is known to exist for; a failed publish checks again.
  let streamKnownFor: JetStreamClient | undefined;

  async function ensureStream(client: JetStreamClient): Promise<void> {
    if (streamKnownFor === client) return;
    const jsm = await client.jetstreamManager();
    try {
      await jsm.streams.info(outbox.stream);
    } catch (err) {
      if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamNotFound)) throw err;
      const subjects = [`${outbox.subjectPrefix}.>`];
      await jsm.streams.add({
        name: outbox.stream,
        subjects,
        storage: StorageType.File,
        duplicate_window: nanos(120_000),
      });
      logger.info({ subjects }, "created stream");
    }
    streamKnownFor = client;
  }

  async function headersOf(row: OutboxRecord): Promise<MsgHdrs> {
    const h = setCloudEventHeaders(headers(), {
      id: row.event_id,
      type: row.type,
      source: row.source,
      time: new Date(row.occur_time),
      subject: row.ce_subject,
    });
    if (signer) h.set(CE_SIGNATURE, await signer.sign(row.payload, signedAttributesOf(row.subject, h)));
    return h;
  }

  function send(client: JetStreamClient, row: OutboxRecord, h: MsgHdrs) {
    return client.publish(row.subject, row.payload, { msgID: row.event_id, headers: h, timeout: publishTimeoutMs });
  }

  return {
    ensureStream,
    // Pipelined in waves: a wave holds consecutive rows of distinct `ce_subject`s
    // (customers) and is published all at once on the one connection, which
    // JetStream stores in the order sent. The next wave starts only when every
    // publish of this one is acked, so a failed publish is never overtaken by a
    // later event of the same customer (a pipelined row could otherwise land
    // first, e.g. flushed from the reconnect buffer). After a failure only the
    // acked prefix counts as sent; the rest is retried, and a repeat within the
    // duplicate window is dropped by `Nats-Msg-Id`.
    async publish(client, rows, { keepGoing, signal }) {
      const sent: PublishedEvent[] = [];
      let onAbort = () => {};
      const aborted = new Promise<"aborted">((resolve) => {
        onAbort = () => resolve("aborted");
      });
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
      try {
        for (const wave of waves(rows)) {
          if (!keepGoing()) return { sent, failure: undefined, complete: false };
          // Signed first, then sent in order without a pause between publishes.
          const signed = await Promise.all(wave.map(headersOf));
          // Stopping does not wait for acks: what is not marked sent is published again later.
          const acks = await Promise.race([
            Promise.allSettled(wave.map((row, i) => send(client, row, signed[i] as MsgHdrs))),
            aborted,
          ]);
          if (acks === "aborted") return { sent, failure: undefined, complete: false };
          for (const [i, ack] of acks.entries()) {
            const row = wave[i] as OutboxRecord;
            if (ack.status === "rejected") {
              // Check the stream again before the retry: a missing stream fails like this too.
              streamKnownFor = undefined;
              return { sent, failure: new PublishError(row, { cause: ack.reason }), complete: false };
            }
            const { seq, duplicate } = ack.value;
            sent.push({ id: row.id, eventId: row.event_id, subject: row.subject, seq, duplicate });
          }
        }
        return { sent, failure: undefined, complete: true };
      } finally {
        signal.removeEventListener("abort", onAbort);
      }
    },
  };
}
