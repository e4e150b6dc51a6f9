/**
 * The event this service publishes (identity.v1 events.proto), written to
 * the outbox in the transaction of the sign-in it records.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { AuthenticationMethod, CustomerAuthenticatedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { uuidv7 } from "../../runtime/ids.js";
import { enqueueEvent, type OutboxTx, outboxEvent } from "../../runtime/outbox.js";
import type { EventsConfig } from "./deps.js";

/** Writes identity.v1.CustomerAuthenticated to the outbox. It carries no credential. */
export async function emitCustomerAuthenticated(
  tx: OutboxTx,
  cfg: EventsConfig,
  customerId: string,
  method: AuthenticationMethod,
  occurTime: Date,
) {
  const eventId = uuidv7();
  const event = create(CustomerAuthenticatedSchema, {
    eventId,
    occurTime: timestampFromDate(occurTime),
    customerId,
    method,
  });
  await enqueueEvent(
    tx,
    outboxEvent(CustomerAuthenticatedSchema, event, {
      eventId,
      occurTime,
      subject: `${cfg.subjectPrefix}.customer.authenticated.${customerId}`,
      source: cfg.source,
      ceSubject: customerId,
    }),
    cfg.notifyChannel,
  );
}

export { AuthenticationMethod };
