/**
 * Runs the example read model until Ctrl-C:
 *
 *   READ_MODEL_DATABASE_URL=postgres://…/orders npx tsx examples/read-model/main.ts
 *
 * Environment: READ_MODEL_DATABASE_URL (required: the consumer's own
 * database), NATS_URL (default nats://127.0.0.1:4222), CUSTOMER_STREAM
 * (default CUSTOMER), READ_MODEL_CONSUMER (durable name, default
 * customers-read-model), CUSTOMER_URL (the customer service, default
 * http://127.0.0.1:8080: its event keys verify every event). With
 * READ_MODEL_CLIENT_ID and READ_MODEL_CLIENT_SECRET (a client with
 * `customer:read`) and IDENTITY_URL (default http://127.0.0.1:8081), a
 * version jump is resolved by reading the customer again (GetCustomer).
 * READ_MODEL_NATS_USER and READ_MODEL_NATS_PASSWORD sign in to a NATS that
 * wants credentials (give each consuming application its own read-only user,
 * as deploy/nats/nats.conf's events-reader).
 */
import { createEventVerifier, EVENT_KEYS_PATH } from "@customer-platform/sdk";
import { jetstream } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import postgres from "postgres";
import { connectCustomerClient, createTokenSource, findCustomer } from "../integrate/customer-client.js";
import { startReadModel } from "./read-model.js";

const databaseUrl = process.env.READ_MODEL_DATABASE_URL;
if (!databaseUrl) {
  console.error("READ_MODEL_DATABASE_URL must name the read model's own PostgreSQL database");
  process.exit(78);
}
const sql = postgres(databaseUrl, { max: 4, onnotice: () => {} });
const natsUser = process.env.READ_MODEL_NATS_USER;
const nc = await connect({
  servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222",
  maxReconnectAttempts: -1,
  ...(natsUser && { user: natsUser, pass: process.env.READ_MODEL_NATS_PASSWORD ?? "" }),
});
// The message and the driver's code only: a PostgreSQL error's DETAIL can quote the read model's rows.
const describe = (err: unknown) =>
  err instanceof Error ? `${err.message}${"code" in err ? ` (${String(err.code)})` : ""}` : String(err);
const customerUrl = process.env.CUSTOMER_URL ?? "http://127.0.0.1:8080";
const clientId = process.env.READ_MODEL_CLIENT_ID;
const clientSecret = process.env.READ_MODEL_CLIENT_SECRET;
const customers =
  clientId && clientSecret
    ? connectCustomerClient(
        customerUrl,
        createTokenSource({
          identityUrl: process.env.IDENTITY_URL ?? "http://127.0.0.1:8081",
          clientId,
          clientSecret,
          scope: "customer:read",
        }),
      )
    : undefined;
const consumer = await startReadModel({
  sql,
  js: jetstream(nc),
  verifier: createEventVerifier({ trust: { "customer-service": `${customerUrl}${EVENT_KEYS_PATH}` } }),
  ...(customers && { fetchCustomer: (id: string) => findCustomer(customers.client, id) }),
  stream: process.env.CUSTOMER_STREAM ?? "CUSTOMER",
  consumer: process.env.READ_MODEL_CONSUMER ?? "customers-read-model",
  onApplied: (e) => console.log(JSON.stringify({ ...e, version: e.version.toString() })),
  onError: (err, msg) => console.error(`event on ${msg?.subject ?? "(pull)"} not handled: ${describe(err)}`),
});
console.error("read model running; Ctrl-C stops it");

const shutdown = async () => {
  await consumer.stop();
  customers?.close();
  await nc.close();
  await sql.end();
};
process.once("SIGINT", () => void shutdown());
process.once("SIGTERM", () => void shutdown());
consumer.done.catch(async (err: unknown) => {
  console.error(`read model stopped: ${describe(err)}`);
  await shutdown();
  process.exitCode = 1;
});
