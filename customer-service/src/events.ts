/**
 * The events this service publishes (customer.v1 events.proto), written to
 * the outbox by the statement of the change they record.
 */
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { Customer } from "@customer-platform/gen/customer/v1/customer_pb.js";
import { CustomerRegisteredSchema, CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { uuidv7 } from "@customer-platform/runtime/ids";
import type { Outbox } from "@customer-platform/runtime/outbox";
import { type OutboxEvent, outboxEvent } from "@customer-platform/runtime/outbox-writer";
import { customerSubjects } from "@customer-platform/sdk/subjects";

/** customer.v1.CustomerRegistered, as an outbox event. */
export function customerRegistered(outbox: Outbox, customer: Customer, occurTime: Date): OutboxEvent {
  const eventId = uuidv7();
  const event = create(CustomerRegisteredSchema, { eventId, occurTime: timestampFromDate(occurTime), customer });
  return outboxEvent(outbox, CustomerRegisteredSchema, event, {
    eventId,
    occurTime,
    subject: customerSubjects(outbox.subjectPrefix).registered(customer.customerId),
    ceSubject: customer.customerId,
  });
}

/** customer.v1.CustomerUpdated, as an outbox event. */
export function customerUpdated(
  outbox: Outbox,
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
  return outboxEvent(outbox, CustomerUpdatedSchema, event, {
    eventId,
    occurTime,
    subject: customerSubjects(outbox.subjectPrefix).updated(customer.customerId),
    ceSubject: customer.customerId,
  });
}
