/**
 * The events this service publishes (customer.v1 events.proto), written to
 * the outbox in the transaction of the change they record.
 */
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Customer } from "@customer-platform/gen/customer/v1/customer_pb.js";
import { CustomerRegisteredSchema, CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { uuidv7 } from "../../runtime/ids.js";
import { enqueueEvent, type OutboxTx, outboxEvent } from "../../runtime/outbox.js";

/** Where events go: the `ce-source`, the subject prefix (default "customer") and the NOTIFY channel. */
export interface EventsConfig {
  readonly source: string;
  readonly subjectPrefix: string;
  readonly notifyChannel: string;
}

/** Writes customer.v1.CustomerRegistered to the outbox. */
export async function emitCustomerRegistered(tx: OutboxTx, cfg: EventsConfig, customer: Customer, occurTime: Date) {
  const eventId = uuidv7();
  const event = create(CustomerRegisteredSchema, { eventId, occurTime: timestampFromDate(occurTime), customer });
  await enqueueEvent(
    tx,
    outboxEvent(CustomerRegisteredSchema, event, {
      eventId,
      occurTime,
      subject: `${cfg.subjectPrefix}.registered.${customer.customerId}`,
      source: cfg.source,
      ceSubject: customer.customerId,
    }),
    cfg.notifyChannel,
  );
}

/** Writes customer.v1.CustomerUpdated to the outbox. */
export async function emitCustomerUpdated(
  tx: OutboxTx,
  cfg: EventsConfig,
  customer: Customer,
  changedPaths: string[],
  occurTime: Date,
) {
  const eventId = uuidv7();
  const event = create(CustomerUpdatedSchema, {
    eventId,
    occurTime: timestampFromDate(occurTime),
    customer,
    updateMask: create(FieldMaskSchema, { paths: changedPaths }),
  });
  await enqueueEvent(
    tx,
    outboxEvent(CustomerUpdatedSchema, event, {
      eventId,
      occurTime,
      subject: `${cfg.subjectPrefix}.updated.${customer.customerId}`,
      source: cfg.source,
      ceSubject: customer.customerId,
    }),
    cfg.notifyChannel,
  );
}
