/**
 * Fails the run at once, with the fix, when PostgreSQL or NATS is not there.
 */
import { connect } from "@nats-io/transport-node";
import postgres from "postgres";
import { sharedNatsUrl } from "./support/nats.js";
import { adminUrl } from "./support/postgres.js";

export default async function setup(): Promise<void> {
  const sql = postgres(adminUrl, { max: 1, connect_timeout: 5, onnotice: () => {} });
  try {
    await sql`select 1`;
  } catch (err) {
    throw new Error(
      `PostgreSQL is not reachable at ${adminUrl} (${(err as Error).message}). ` +
        "Start it (see README, 'Test it') or set TEST_DATABASE_URL.",
    );
  } finally {
    await sql.end({ timeout: 1 });
  }
  try {
    const nc = await connect({ servers: sharedNatsUrl, reconnect: false, timeout: 5000 });
    const { jetstreamManager } = await import("@nats-io/jetstream");
    await (await jetstreamManager(nc)).getAccountInfo();
    await nc.close();
  } catch (err) {
    throw new Error(
      `NATS with JetStream is not reachable at ${sharedNatsUrl} (${(err as Error).message}). ` +
        "Start it (see README, 'Test it') or set TEST_NATS_URL.",
    );
  }
}
