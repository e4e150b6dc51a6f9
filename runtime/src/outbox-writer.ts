/**
 * Writing events to the outbox, in the statement or transaction of the
 * change they record, each write waking the relay with a NOTIFY that
 * Postgres delivers at commit.
 */
import { type DescMessage, type MessageShape, toBinary } from "@bufbuild/protobuf";
import { sql, type WithSubquery } from "drizzle-orm";
import { type Db, placeholder } from "./db.js";
import type { Outbox } from "./outbox.js";
import { outbox as outboxTable } from "./outbox-schema.js";

/** One event as the outbox stores it. */
export interface OutboxEvent {
  /** UUIDv7; also `Nats-Msg-Id` and `ce-id`. */
  eventId: string;
  /** NATS subject, e.g. `customer.registered.<customer_id>`. */
  subject: string;
  /** The protobuf message full name (`ce-type`). */
  type: string;
  /** `ce-source`, e.g. `customer-service`. */
  source: string;
  /** `ce-subject`: the customer id. */
  ceSubject: string;
  /** The event message in protobuf binary. */
  payload: Uint8Array;
  occurTime: Date;
}

/** A drizzle transaction (or database) over any schema that includes `outbox`. */
export type OutboxTx = Pick<Db<Record<string, unknown>>, "insert" | "execute">;

/** A drizzle database over any schema that includes `outbox`: the pool's, or a transaction's. */
export type OutboxDb = Pick<Db<Record<string, unknown>>, "$with" | "with">;

/**
 * Writes an event to the outbox inside the caller's transaction and wakes the
 * relay with `pg_notify(outbox.channel)`, which Postgres delivers only at commit.
 */
export async function enqueueEvent(tx: OutboxTx, event: OutboxEvent, outbox: Outbox): Promise<void> {
  const insert = tx.insert(outboxTable).values(event);
  // One round trip: a data-modifying CTE always runs. Postgres folds identical
  // notifications of one transaction into one, so a batch wakes the relay once.
  await tx.execute(sql`with e as ${insert} select pg_notify(${outbox.channel}, '')`);
}

/** The outbox columns an event sets; the others (id, published_at, attempts) take their defaults. */
export const EVENT_COLUMNS = [
  "eventId",
  "subject",
  "type",
  "source",
  "ceSubject",
  "payload",
  "occurTime",
] as const satisfies readonly (keyof OutboxEvent)[];

/**
 * Prepares `change` (an INSERT or UPDATE … RETURNING, as a CTE) together with
 * its event: for each row the change returns, one outbox row and a
 * `pg_notify(outbox.channel)`, in one statement. One round trip, and no
 * explicit transaction: a statement is atomic by itself. A change that
 * matches no row writes no event. Execute with the change's values and
 * `eventValues(event)`; it returns one row per changed row. Prepared on
 * `db`'s session: prepare it on the transaction that is to run it.
 */
export function prepareWithEvent(db: OutboxDb, change: WithSubquery, outbox: Outbox, name: string) {
  const columns = EVENT_COLUMNS.map((k) => sql.identifier(outboxTable[k].name));
  const values = EVENT_COLUMNS.map((k) => placeholder(`event.${k}`, outboxTable[k]));
  const queued = db
    .$with("queued", {})
    .as(
      sql`insert into ${outboxTable} (${sql.join(columns, sql`, `)}) select ${sql.join(values, sql`, `)} from ${change}`,
    );
  return db
    .with(change, queued)
    .select({ notified: sql`pg_notify(${outbox.channel}, '')` })
    .from(change)
    .prepare(name);
}

/** The values of `event` for a statement of `prepareWithEvent`. */
export function eventValues(event: OutboxEvent): Record<string, unknown> {
  return Object.fromEntries(EVENT_COLUMNS.map((k) => [`event.${k}`, event[k]]));
}

/**
 * Builds an outbox event from a protobuf-es message: binary payload, `type`
 * its full name, `source` the outbox's. The subject must lie under the
 * outbox's subject prefix: the relay could publish nothing else.
 */
export function outboxEvent<Desc extends DescMessage>(
  outbox: Outbox,
  schema: Desc,
  message: MessageShape<Desc>,
  meta: Pick<OutboxEvent, "eventId" | "subject" | "ceSubject" | "occurTime">,
): OutboxEvent {
  if (!meta.subject.startsWith(`${outbox.subjectPrefix}.`)) {
    throw new Error(`event subject "${meta.subject}" is not under the outbox's prefix "${outbox.subjectPrefix}"`);
  }
  return { ...meta, type: schema.typeName, source: outbox.source, payload: toBinary(schema, message) };
}
