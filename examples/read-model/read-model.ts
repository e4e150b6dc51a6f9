/**
 * An example read model: a local `customers_read_model` table, in the
 * consumer's own database, kept up to date from CustomerRegistered and
 * CustomerUpdated, and emptied of a customer on CustomerErased, with a
 * durable JetStream consumer. Built only on the
 * generated code, @customer-platform/sdk and postgres.js, as another team would.
 *
 * Both events carry the full profile with its version. An event applies
 * only if its version is the stored one + 1 (1 for a customer not yet held):
 * a redelivery, a duplicate or an older event arriving late changes nothing.
 * A version further ahead is a jump the read model cannot explain (a missed
 * event, or an event that lies): it re-reads the customer from the customer
 * service (GetCustomer) when given `fetchCustomer` and stores that, and
 * otherwise refuses the event, which is redelivered later (its predecessor
 * may still come). Only events signed by the customer service are handled
 * (`verifier`), so a forged event never reaches the table.
 *
 * CustomerErased (the customer's account was deleted) deletes the row and
 * keeps the id alone in `customers_read_model_erased`, so a profile event
 * redelivered late never brings the customer back (the customer service
 * purges those events from the stream after the tombstone).
 */
import { create, fromJson, type JsonValue, toJson } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { type Customer, CustomerSchema, PostalAddressSchema } from "@customer-platform/gen/customer/v1/customer_pb.js";
import { consumeEvents, type EventConsumer, type EventMeta, type EventVerifier } from "@customer-platform/sdk";
import type { JetStreamClient, JsMsg } from "@nats-io/jetstream";
import type postgres from "postgres";

/** The table, created if missing. */
export async function migrateReadModel(sql: postgres.Sql): Promise<void> {
  // No unique email: an email moves between customers over time, and events
  // of different customers are not ordered relative to each other.
  await sql`
    create table if not exists customers_read_model (
      customer_id uuid primary key,
      email text not null,
      given_name text not null,
      family_name text not null,
      phone_number text,
      address jsonb,
      version bigint not null,
      create_time timestamptz,
      update_time timestamptz,
      last_event_id uuid not null
    )`;
  // Erased customers: ids only.
  await sql`
    create table if not exists customers_read_model_erased (
      customer_id uuid primary key,
      erased_at timestamptz not null
    )`;
}

/** What applying one event did, for logs, metrics and tests. */
export interface AppliedEvent {
  eventId: string;
  customerId: string;
  version: bigint;
  /** False when the table already held this version or a later one. */
  applied: boolean;
  /** True when the event's version jumped and the customer was read again from the customer service. */
  reread?: boolean;
  /** True for CustomerErased, and for a profile event of a customer erased before: the row is gone for good. */
  erased?: boolean;
}

/** An event whose version is more than one ahead of the stored one, and no way (or no reason) to believe it. */
export class VersionGapError extends Error {
  override readonly name = "VersionGapError";
  constructor(
    readonly customerId: string,
    readonly stored: bigint,
    readonly received: bigint,
  ) {
    super(`customer ${customerId}: event version ${received} does not follow stored version ${stored}`);
  }
}

/** What applyNextVersion found: applied, already held (older or equal), the customer erased, or a gap. */
export type NextVersionOutcome =
  | { kind: "applied" }
  | { kind: "held" }
  | { kind: "erased" }
  | { kind: "gap"; stored: bigint };

/**
 * Deletes the customer's row and remembers the id, in one statement; a
 * repeat changes nothing. Returns whether a row was deleted.
 */
export async function eraseCustomer(sql: postgres.Sql, customerId: string, erasedAt: Date): Promise<boolean> {
  const [row] = await sql<[{ deleted: boolean }]>`
    with deleted as (delete from customers_read_model where customer_id = ${customerId} returning 1),
    tombstone as (
      insert into customers_read_model_erased (customer_id, erased_at) values (${customerId}, ${erasedAt})
      on conflict (customer_id) do nothing
    )
    select exists (select 1 from deleted) as deleted`;
  return row?.deleted ?? false;
}

/**
 * Writes customer if its version is greater than the stored one. Returns
 * whether the row changed. Idempotent by construction.
 */
export async function applyCustomer(sql: postgres.Sql, customer: Customer, eventId: string): Promise<boolean> {
  const c = customer;
  const address = c.address ? sql.json(toJson(PostalAddressSchema, c.address) as postgres.JSONValue) : null;
  const rows = await sql`
    insert into customers_read_model as r
      (customer_id, email, given_name, family_name, phone_number, address, version, create_time, update_time, last_event_id)
    select ${c.customerId}, ${c.email}, ${c.givenName}, ${c.familyName}, ${c.phoneNumber ?? null}, ${address},
      ${c.version.toString()}::bigint, ${c.createTime ? timestampDate(c.createTime) : null}::timestamptz,
      ${c.updateTime ? timestampDate(c.updateTime) : null}::timestamptz, ${eventId}::uuid
    where not exists (select 1 from customers_read_model_erased where customer_id = ${c.customerId})
    on conflict (customer_id) do update set
      email = excluded.email, given_name = excluded.given_name, family_name = excluded.family_name,
      phone_number = excluded.phone_number, address = excluded.address, version = excluded.version,
      create_time = excluded.create_time, update_time = excluded.update_time, last_event_id = excluded.last_event_id
    where r.version < excluded.version
      and not exists (select 1 from customers_read_model_erased e where e.customer_id = r.customer_id)
    returning 1`;
  return rows.length > 0;
}

/**
 * Writes customer only if its version is the stored one + 1 (or 1 when the
 * customer is not held yet), in one statement.
 */
export async function applyNextVersion(
  sql: postgres.Sql,
  customer: Customer,
  eventId: string,
): Promise<NextVersionOutcome> {
  const c = customer;
  const address = c.address ? sql.json(toJson(PostalAddressSchema, c.address) as postgres.JSONValue) : null;
  const [row] = await sql<[{ applied: boolean; stored: string | null; erased: boolean }]>`
    with stored as (select version from customers_read_model where customer_id = ${c.customerId}),
    erased as (select 1 from customers_read_model_erased where customer_id = ${c.customerId}),
    upserted as (
      insert into customers_read_model as r
        (customer_id, email, given_name, family_name, phone_number, address, version, create_time, update_time, last_event_id)
      select ${c.customerId}, ${c.email}, ${c.givenName}, ${c.familyName}, ${c.phoneNumber ?? null}, ${address},
        ${c.version.toString()}::bigint, ${c.createTime ? timestampDate(c.createTime) : null}::timestamptz,
        ${c.updateTime ? timestampDate(c.updateTime) : null}::timestamptz, ${eventId}::uuid
      where coalesce((select version from stored), 0) + 1 = ${c.version.toString()}::bigint
        and not exists (select 1 from erased)
      on conflict (customer_id) do update set
        email = excluded.email, given_name = excluded.given_name, family_name = excluded.family_name,
        phone_number = excluded.phone_number, address = excluded.address, version = excluded.version,
        create_time = excluded.create_time, update_time = excluded.update_time, last_event_id = excluded.last_event_id
      where r.version + 1 = excluded.version
      returning 1
    )
    select exists (select 1 from upserted) as applied, (select version::text from stored) as stored,
      exists (select 1 from erased) as erased`;
  if (row?.applied) return { kind: "applied" };
  if (row?.erased) return { kind: "erased" };
  const stored = BigInt(row?.stored ?? "0");
  return c.version <= stored ? { kind: "held" } : { kind: "gap", stored };
}

interface Row {
  customer_id: string;
  email: string;
  given_name: string;
  family_name: string;
  phone_number: string | null;
  address: JsonValue | null;
  version: string;
  create_time: Date | null;
  update_time: Date | null;
}

/** A customer as the read model holds it, in the shape GetCustomer answers; undefined if unknown. */
export async function readCustomer(sql: postgres.Sql, customerId: string): Promise<Customer | undefined> {
  const [row] = await sql<Row[]>`
    select customer_id, email, given_name, family_name, phone_number, address, version::text as version,
      create_time, update_time
    from customers_read_model where customer_id = ${customerId}`;
  if (!row) return undefined;
  return create(CustomerSchema, {
    customerId: row.customer_id,
    email: row.email,
    givenName: row.given_name,
    familyName: row.family_name,
    ...(row.phone_number === null ? {} : { phoneNumber: row.phone_number }),
    ...(row.address === null ? {} : { address: fromJson(PostalAddressSchema, row.address) }),
    version: BigInt(row.version),
    ...(row.create_time ? { createTime: timestampFromDate(row.create_time) } : {}),
    ...(row.update_time ? { updateTime: timestampFromDate(row.update_time) } : {}),
  });
}

export interface ReadModelOptions {
  sql: postgres.Sql;
  js: JetStreamClient;
  /** Verifies each event was signed by the customer service (trust `customer-service` → its event keys URL). */
  verifier: EventVerifier;
  /**
   * The customer as the customer service holds it now (GetCustomer with a
   * `customer:read` token; undefined if not found), read when an event's
   * version jumps. Without it such an event is refused and redelivered later.
   */
  fetchCustomer?: (customerId: string) => Promise<Customer | undefined>;
  /** Default `CUSTOMER`. */
  stream?: string;
  /** Durable consumer name; default `customers-read-model`. */
  consumer?: string;
  /** Default: the whole stream. */
  subjects?: string[];
  onApplied?: (event: AppliedEvent) => void;
  onError?: (err: unknown, msg: JsMsg | undefined) => void;
}

/** Creates the table and starts consuming; stop() the returned consumer to end. */
export async function startReadModel(opts: ReadModelOptions): Promise<EventConsumer> {
  const { sql } = opts;
  await migrateReadModel(sql);
  const apply = async (customer: Customer | undefined, meta: EventMeta) => {
    if (!customer) throw new Error(`event ${meta.id} carries no customer`);
    const { customerId, version } = customer;
    const outcome = await applyNextVersion(sql, customer, meta.id);
    if (outcome.kind !== "gap") {
      opts.onApplied?.({
        eventId: meta.id,
        customerId,
        version,
        applied: outcome.kind === "applied",
        ...(outcome.kind === "erased" && { erased: true }),
      });
      return;
    }
    if (!opts.fetchCustomer) throw new VersionGapError(customerId, outcome.stored, version);
    const current = await opts.fetchCustomer(customerId);
    // The customer service has not reached this version: the event claims what never happened.
    if (!current || current.version < version) throw new VersionGapError(customerId, outcome.stored, version);
    const applied = await applyCustomer(sql, current, meta.id);
    opts.onApplied?.({ eventId: meta.id, customerId, version: current.version, applied, reread: true });
  };
  return consumeEvents({
    js: opts.js,
    stream: opts.stream ?? "CUSTOMER",
    consumer: opts.consumer ?? "customers-read-model",
    verifier: opts.verifier,
    ...(opts.subjects ? { subjects: opts.subjects } : {}),
    ...(opts.onError ? { onError: opts.onError } : {}),
    handlers: {
      "customer.v1.CustomerRegistered": (event, meta) => apply(event.customer, meta),
      "customer.v1.CustomerUpdated": (event, meta) => apply(event.customer, meta),
      "customer.v1.CustomerErased": async (event, meta) => {
        const applied = await eraseCustomer(sql, event.customerId, meta.time ?? new Date());
        opts.onApplied?.({ eventId: meta.id, customerId: event.customerId, version: 0n, applied, erased: true });
      },
    },
  });
}
