/**
 * `npm run events -- tail [subject…] [--all]`: prints the platform's events
 * as they arrive, one JSON line each, decoded by `ce-type` with the generated
 * schemas. Default subjects `customer.>` and `identity.>`; new events only
 * unless `--all` replays each stream from its start. NATS_URL as for the
 * services. Each line says whether the event's signature verified against
 * its producer's event keys. No NATS CLI needed.
 */
import { type DescMessage, toJson } from "@bufbuild/protobuf";
import { ConfigError, envNats, type NatsConfig } from "@customer-platform/runtime/config";
import { describeNatsAuth, isNatsRefusal, natsConnectOptions } from "@customer-platform/runtime/nats";
import { readCloudEvent } from "@customer-platform/sdk/cloudevents";
import {
  createEventVerifier,
  EVENT_KEYS_PATH,
  EventKeysUnavailableError,
  EventSignatureError,
  type EventVerifier,
} from "@customer-platform/sdk/event-signing";
import { decodeEvent, eventSchemas } from "@customer-platform/sdk/events";
import { customerSubjects, identitySubjects } from "@customer-platform/sdk/subjects";
import { DeliverPolicy, type JetStreamManager, type JsMsg, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";

const USAGE = `usage: npm run events -- tail [subject…] [--all]

Prints each event on the subjects (default: customer.> identity.>) as one JSON
line: subject, stream sequence, ce-type/ce-id/ce-time/ce-source/ce-subject,
whether its signature verified (verified, and the key id or why not) and the
event decoded with the generated schemas. The producers' keys come from
CUSTOMER_EVENT_KEYS_URL and IDENTITY_EVENT_KEYS_URL (default
http://127.0.0.1:8080 and IDENTITY_ISSUER or http://127.0.0.1:8081, each
+ /.well-known/event-keys.json). New events only; --all replays
the streams from the start. NATS_URL sets the server (default nats://127.0.0.1:4222);
credentials as the services take them, with the prefix EVENTS_READER (e.g.
EVENTS_READER_NATS_USER and EVENTS_READER_NATS_PASSWORD), or in NATS_URL.`;

/**
 * The producers whose signatures are checked: each service's event keys,
 * from CUSTOMER_EVENT_KEYS_URL and IDENTITY_EVENT_KEYS_URL (default: the
 * services' default addresses, `<url>/.well-known/event-keys.json`).
 */
function trustedProducers(env: NodeJS.ProcessEnv): EventVerifier {
  const issuer = (env.IDENTITY_ISSUER || "http://127.0.0.1:8081").replace(/\/+$/, "");
  return createEventVerifier({
    trust: {
      "customer-service": env.CUSTOMER_EVENT_KEYS_URL || `http://127.0.0.1:8080${EVENT_KEYS_PATH}`,
      "identity-service": env.IDENTITY_EVENT_KEYS_URL || `${issuer}${EVENT_KEYS_PATH}`,
    },
    timeoutMs: 2_000,
  });
}

/** Whether msg's signature verified: `verified`, and the key (`signature`) or why not. */
async function signatureOf(verifier: EventVerifier, m: JsMsg): Promise<{ verified: boolean; signature: string }> {
  try {
    return { verified: true, signature: (await verifier.verify(m)).kid };
  } catch (err) {
    if (err instanceof EventSignatureError) return { verified: false, signature: `refused: ${err.reason}` };
    if (err instanceof EventKeysUnavailableError) return { verified: false, signature: "keys unavailable" };
    return { verified: false, signature: `not checked: ${(err as Error).message}` };
  }
}

/** One output line for msg, with whether its signature verified. */
async function eventLine(verifier: EventVerifier, m: JsMsg): Promise<string> {
  const ce = readCloudEvent(m.headers);
  const base = {
    subject: m.subject,
    seq: m.seq,
    type: ce.type || null,
    id: ce.id || null,
    time: ce.time?.toISOString() ?? null,
    source: ce.source || null,
    customer_id: ce.subject || null,
    ...(await signatureOf(verifier, m)),
  };
  try {
    const decoded = decodeEvent(m);
    if (!decoded) return JSON.stringify({ ...base, error: "unknown ce-type", bytes: m.data.length });
    const schema: DescMessage = eventSchemas[decoded.type];
    return JSON.stringify({ ...base, event: toJson(schema, decoded.event) });
  } catch (err) {
    return JSON.stringify({ ...base, error: `undecodable: ${(err as Error).message}`, bytes: m.data.length });
  }
}

/** The streams capturing subject, waiting (and saying so once) until one exists. */
async function streamsFor(jsm: JetStreamManager, subject: string, stopped: () => boolean): Promise<string[]> {
  let told = false;
  while (!stopped()) {
    const names = await jsm.streams.names(subject).next();
    if (names.length > 0) return names;
    if (!told) {
      console.error(`events: no stream captures ${subject} yet; waiting (start the services, or npm start)`);
      told = true;
    }
    await new Promise((r) => setTimeout(r, 1_000));
  }
  return [];
}

async function tail(nc: NatsConnection, subjects: string[], all: boolean): Promise<void> {
  const verifier = trustedProducers(process.env);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  let stopping = false;
  const loops: Promise<void>[] = [];
  const closers: Array<() => Promise<unknown>> = [];
  const stop = () => {
    stopping = true;
    for (const close of closers) void close();
  };
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  for (const subject of subjects) {
    for (const stream of await streamsFor(jsm, subject, () => stopping)) {
      // "New" is fixed here, before the line below says we are listening:
      // everything after the stream's current last sequence.
      const from = all ? undefined : (await jsm.streams.info(stream)).state.last_seq + 1;
      const consumer = await js.consumers.get(stream, {
        filter_subjects: subject,
        ...(from === undefined ? { deliver_policy: DeliverPolicy.All } : { opt_start_seq: from }),
      });
      const messages = await consumer.consume();
      closers.push(() => messages.close());
      loops.push(
        (async () => {
          for await (const m of messages) process.stdout.write(`${await eventLine(verifier, m)}\n`);
        })(),
      );
      console.error(`events: tailing ${subject} on stream ${stream}${all ? " from the start" : ""}`);
    }
  }
  if (stopping) for (const close of closers) await close();
  await Promise.all(loops);
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command !== "tail" || rest.includes("--help") || rest.includes("-h")) {
    console.error(USAGE);
    return command === undefined || command === "tail" || rest.includes("--help") ? 0 : 64;
  }
  const unknown = rest.filter((a) => a.startsWith("-") && a !== "--all");
  if (unknown.length > 0) {
    console.error(`events: unknown option ${unknown.join(" ")}\n\n${USAGE}`);
    return 64;
  }
  const subjects = rest.filter((a) => !a.startsWith("-"));
  let nats: NatsConfig;
  try {
    nats = envNats(process.env, "EVENTS_READER");
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    console.error(`events: configuration error: ${err.message}`);
    return 78; // EX_CONFIG
  }
  let nc: NatsConnection;
  try {
    nc = await connect({ ...natsConnectOptions(nats), name: "npm run events" });
  } catch (err) {
    if (isNatsRefusal(err)) {
      console.error(`events: NATS at ${nats.url} refused ${describeNatsAuth(nats.auth)}: ${(err as Error).message}`);
      return 78; // EX_CONFIG
    }
    console.error(`events: cannot reach NATS at ${nats.url} (${(err as Error).message}); set NATS_URL`);
    return 69; // EX_UNAVAILABLE
  }
  try {
    const defaults = [customerSubjects().all, identitySubjects().all];
    await tail(nc, subjects.length > 0 ? subjects : defaults, rest.includes("--all"));
  } finally {
    await nc.close();
  }
  return 0;
}

process.stdout.on("error", () => {});
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    console.error("events:", err instanceof Error ? err.message : err);
    process.exitCode = 1;
  },
);
