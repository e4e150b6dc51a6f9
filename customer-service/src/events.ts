/**
 * The events this service publishes (customer.v1 events.proto), written to
 * the outbox by the statement of the change they record.
 */
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Customer } from "@customer-platform/gen/customer/v1/customer_pb.js";
import { CustomerRegisteredSchema, CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { type OutboxEvent, outboxEvent } from "@customer-platform/runtime/outbox";

/** Where events go: the `ce-source`, the subject prefix (default "customer") and the NOTIFY channel. */
export interface EventsConfig {
  readonly source: string;
  readonly subjectPrefix: string;
  readonly notifyChannel: string;
}

/** customer.v1.CustomerRegistered, as an outbox event. */
export function customerRegistered(cfg: EventsConfig, customer: Customer, occurTime: Date): OutboxEvent {
  const eventId = uuidv7();
  const event = create(CustomerRegisteredSchema, { eventId, occurTime: timestampFromDate(occurTime), customer });
  return outboxEvent(CustomerRegisteredSchema, event, {
    eventId,
    occurTime,
    subject: `${cfg.subjectPrefix}.registered.${customer.customerId}`,
    source: cfg.source,
    ceSubject: customer.customerId,
  });
}

/** customer.v1.CustomerUpdated, as an outbox event. */
export function customerUpdated(
  cfg: EventsConfig,
  customer: Customer,
  changedPaths: string[],
  occurTime: Date,
): OutboxEvent {
  const eventId = uuidv7();
  const event = create(CustomerUpdatedSchema, {
    eventId,
    occurTime: timestampFromDate(occurTime),
    customer,
    updateMask: create(FieldMaskSchema, { paths: changedPaths }),
  });
  return outboxEvent(CustomerUpdatedSchema, event, {
    eventId,
    occurTime,
    subject: `${cfg.subjectPrefix}.updated.${customer.customerId}`,
    source: cfg.source,
    ceSubject: customer.customerId,
  });
}
