/**
 * Transactional outbox. A command writes its events to the `outbox` table in
 * its own statement or transaction (outbox-writer.ts); one relay per service
 * (elected with a Postgres advisory lock, outbox-leader.ts) publishes
 * committed rows to JetStream in id order (outbox-publisher.ts) and marks
 * each row sent only after its JetStream ack (outbox-relay.ts). NATS being
 * down never touches the request path: rows wait in the outbox until it is
 * back.
 *
 * A service describes its outbox once, with `defineOutbox`, and gives that
 * one object to its writers and to its relay, so the two always agree on the
 * NOTIFY channel that wakes the relay.
 */

/** Everything the writers and the relay of one service's outbox agree on. */
export interface Outbox {
  /** `ce-source` of every event, e.g. `customer-service`. */
  readonly source: string;
  /** The JetStream stream the relay publishes to; created if missing. */
  readonly stream: string;
  /** Every event's subject starts with `<subjectPrefix>.`; the stream captures `<subjectPrefix>.>`. */
  readonly subjectPrefix: string;
  /** The NOTIFY channel a write wakes the relay on. */
  readonly channel: string;
  /** The advisory lock that one relay per database holds. */
  readonly lockKey: bigint;
}

// JetStream forbids whitespace, `.`, `*`, `>` and path separators in a stream name.
const STREAM = /^[^\s.*>/\\]+$/;
const CHANNEL = /^[a-z_][a-z0-9_]{0,62}$/;
const SUBJECT_PREFIX = /^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/;
const MIN_LOCK = -(2n ** 63n);
const MAX_LOCK = 2n ** 63n - 1n;

/**
 * Checks and freezes an outbox description. The channel is a lower-case SQL
 * identifier (PGlite folds unquoted names); the lock key a bigint; the
 * subject prefix dot-separated tokens without wildcards, as config.ts checks.
 */
export function defineOutbox(outbox: Outbox): Outbox {
  const { source, stream, subjectPrefix, channel, lockKey } = outbox;
  if (!source) throw new Error("outbox source must not be empty");
  if (!STREAM.test(stream)) throw new Error(`outbox stream "${stream}" is not a valid stream name`);
  if (!SUBJECT_PREFIX.test(subjectPrefix)) {
    throw new Error(`outbox subject prefix "${subjectPrefix}" is not dot-separated tokens`);
  }
  if (!CHANNEL.test(channel)) throw new Error(`outbox channel "${channel}" is not a lower-case SQL identifier`);
  if (lockKey < MIN_LOCK || lockKey > MAX_LOCK) throw new Error(`outbox lock key ${lockKey} is not a bigint`);
  return Object.freeze({ source, stream, subjectPrefix, channel, lockKey });
}
