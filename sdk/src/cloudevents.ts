/**
 * CloudEvents binary mode over NATS: every platform event is a protobuf
 * message in the payload, its attributes in `ce-*` headers. This is the one
 * place that spells the header names; publishers and consumers use the
 * constants and the two helpers below.
 *
 * ```ts
 * const h = headers(); // from @nats-io/transport-node
 * setCloudEventHeaders(h, { id, type: CustomerUpdatedSchema.typeName, source: "my-service", time: new Date(), subject: customerId });
 * await js.publish(subject, toBinary(CustomerUpdatedSchema, event), { headers: h, msgID: id });
 *
 * const { id, type, subject } = readCloudEvent(msg.headers);
 * ```
 */

/** `ce-specversion`: always {@link CLOUDEVENTS_SPEC_VERSION}. */
export const CE_SPECVERSION = "ce-specversion";
/** `ce-id`: the event id (also `Nats-Msg-Id`); the key for idempotent handling. */
export const CE_ID = "ce-id";
/** `ce-type`: the protobuf message's full name, e.g. `customer.v1.CustomerUpdated`. */
export const CE_TYPE = "ce-type";
/** `ce-source`: who published the event, e.g. `customer-service`. */
export const CE_SOURCE = "ce-source";
/** `ce-time`: when the change committed, RFC 3339. */
export const CE_TIME = "ce-time";
/** `ce-subject`: the customer id the event is about (a service's client id for its revoked token). */
export const CE_SUBJECT = "ce-subject";
/** `ce-datacontenttype`: the payload's media type. */
export const CE_DATACONTENTTYPE = "ce-datacontenttype";
/** `content-type`: the payload's media type again, for tools that know no CloudEvents. */
export const CONTENT_TYPE = "content-type";
/**
 * `ce-signature`: the producer's proof of origin, a detached JWS (compact,
 * `<protected>..<signature>`, RFC 7797 unencoded payload) over the payload
 * and the attributes above plus the NATS subject (./event-signing.ts). Set
 * by the publisher after the other headers; not a CloudEvents attribute.
 */
export const CE_SIGNATURE = "ce-signature";

/** Every header a platform event carries, in the order a publisher sets them. */
export const CLOUDEVENT_HEADER_NAMES = [
  CE_SPECVERSION,
  CE_ID,
  CE_TYPE,
  CE_SOURCE,
  CE_TIME,
  CE_SUBJECT,
  CE_DATACONTENTTYPE,
  CONTENT_TYPE,
] as const;

/** A header set by a publisher. */
export type CloudEventHeaderName = (typeof CLOUDEVENT_HEADER_NAMES)[number];

/** The CloudEvents version the platform speaks. */
export const CLOUDEVENTS_SPEC_VERSION = "1.0";

/** The payload's media type: protobuf binary. */
export const PROTOBUF_CONTENT_TYPE = "application/protobuf";

/** What a publisher says about an event besides its payload. */
export interface CloudEventAttributes {
  /** Unique per event; also pass it as the publish `msgID` so JetStream drops duplicates. */
  readonly id: string;
  /** The message's full name, e.g. `CustomerUpdatedSchema.typeName`. */
  readonly type: string;
  readonly source: string;
  readonly time: Date;
  readonly subject: string;
}

/** The header record for a publish, every name of {@link CLOUDEVENT_HEADER_NAMES} set. */
export function cloudEventHeaders(attrs: CloudEventAttributes): Record<CloudEventHeaderName, string> {
  return {
    [CE_SPECVERSION]: CLOUDEVENTS_SPEC_VERSION,
    [CE_ID]: attrs.id,
    [CE_TYPE]: attrs.type,
    [CE_SOURCE]: attrs.source,
    [CE_TIME]: attrs.time.toISOString(),
    [CE_SUBJECT]: attrs.subject,
    [CE_DATACONTENTTYPE]: PROTOBUF_CONTENT_TYPE,
    [CONTENT_TYPE]: PROTOBUF_CONTENT_TYPE,
  };
}

/** Anything headers can be set on: NATS `MsgHdrs`, fetch `Headers`, … */
export interface HeaderSink {
  set(name: string, value: string): void;
}

/** Sets the headers of {@link cloudEventHeaders} on a NATS `MsgHdrs` (or any {@link HeaderSink}). */
export function setCloudEventHeaders<H extends HeaderSink>(target: H, attrs: CloudEventAttributes): H {
  for (const [name, value] of Object.entries(cloudEventHeaders(attrs))) target.set(name, value);
  return target;
}

/** Anything headers can be read from: NATS `MsgHdrs` (answers "" when absent), fetch `Headers`, … */
export interface HeaderSource {
  get(name: string): string | null | undefined;
}

/** The attributes of a received event; a missing header reads as "" (time: undefined). */
export interface ReceivedCloudEvent {
  readonly specversion: string;
  readonly id: string;
  readonly type: string;
  readonly source: string;
  /** Undefined when `ce-time` is missing or not a date. */
  readonly time: Date | undefined;
  readonly subject: string;
  readonly datacontenttype: string;
}

/** Reads the CloudEvents attributes of a received message's headers (NATS `msg.headers` may be undefined). */
export function readCloudEvent(headers: HeaderSource | undefined): ReceivedCloudEvent {
  const get = (name: CloudEventHeaderName) => headers?.get(name) ?? "";
  const time = get(CE_TIME);
  const parsed = time ? new Date(time) : undefined;
  return {
    specversion: get(CE_SPECVERSION),
    id: get(CE_ID),
    type: get(CE_TYPE),
    source: get(CE_SOURCE),
    time: parsed && !Number.isNaN(parsed.getTime()) ? parsed : undefined,
    subject: get(CE_SUBJECT),
    datacontenttype: get(CE_DATACONTENTTYPE) || get(CONTENT_TYPE),
  };
}
