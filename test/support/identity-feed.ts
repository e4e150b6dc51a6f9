/**
 * A stand-in for the identity service, as the customer service sees it: a
 * test issuer (customer tokens), the identity service's event keys (test
 * keys that sign) and an identity stream the test publishes on, as the
 * identity service would. For tests of what the customer service does with
 * identity events (verified emails, deletions).
 */
import { create, type DescMessage, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { uuidv7 } from "@customer-platform/runtime/ids";
import type { EventSigner } from "@customer-platform/sdk/event-signing";
import { type IdentitySubjects, identitySubjects } from "@customer-platform/sdk/subjects";
import { type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { publishEvent, startTestEventKeys, type TestEventKeys } from "./events.js";
import { startTestIssuer, type TestIssuer } from "./issuer.js";
import { deleteStreams, type StreamNames, sharedNatsUrl, uniqueStreamNames } from "./nats.js";
import { type RunningCustomerService, startCustomerService } from "./services.js";
import { startTcpProxy, type TcpProxy } from "./tcp-proxy.js";
import { until } from "./timing.js";

export interface PublishOptions {
  /** The signer; null for an unsigned event. Default: the identity service's key. */
  signer?: EventSigner | null;
  /** Default: the feed's stream. */
  streams?: StreamNames;
  /** Default: the feed's connection. */
  js?: JetStreamClient;
}

export interface IdentityFeed {
  readonly issuer: TestIssuer;
  readonly keys: TestEventKeys;
  /** The identity stream the customer service under test reads. */
  readonly streams: StreamNames;
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /** What a customer service needs to trust this identity service (issuer, JWKS, event keys). */
  env(): Record<string, string>;
  /** Another identity stream, as the identity service creates one (`<prefix>.>`); deleted by close(). */
  newStream(): Promise<StreamNames>;
  /**
   * Publishes an identity event about `customerId` as the identity service
   * does (CloudEvents headers, signed); resolves with its stream sequence.
   */
  publish<Desc extends DescMessage>(
    schema: Desc,
    customerId: string,
    fields: Omit<MessageInitShape<Desc>, "eventId" | "occurTime" | "customerId" | "$typeName">,
    subject: (subjects: IdentitySubjects) => string,
    opts?: PublishOptions,
  ): Promise<number>;
  /** Waits (15 s by default) until the durable consumer `durable` settled every event up to stream sequence `seq`. */
  consumed(seq: number, durable: string, streams?: StreamNames, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export async function startIdentityFeed(): Promise<IdentityFeed> {
  const issuer = await startTestIssuer();
  const keys = await startTestEventKeys();
  const nc = await connect({ servers: sharedNatsUrl });
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const created: StreamNames[] = [];
  const newStream = async () => {
    const names = uniqueStreamNames("identity");
    await jsm.streams.add({ name: names.stream, subjects: [`${names.subjectPrefix}.>`] });
    created.push(names);
    return names;
  };
  const streams = await newStream();
  return {
    issuer,
    keys,
    streams,
    nc,
    js,
    jsm,
    env: () => ({
      IDENTITY_ISSUER: issuer.issuer,
      IDENTITY_JWKS_URL: issuer.jwksUrl,
      IDENTITY_EVENT_KEYS_URL: keys.url,
    }),
    newStream,
    async publish(schema, customerId, fields, subject, opts = {}) {
      const names = opts.streams ?? streams;
      const eventId = uuidv7();
      const occurTime = new Date();
      const event = create(schema, {
        ...fields,
        eventId,
        occurTime: timestampFromDate(occurTime),
        customerId,
        // Every identity event about a customer has these three fields.
      } as unknown as MessageInitShape<typeof schema>);
      const signer = opts.signer === undefined ? keys.signer : (opts.signer ?? undefined);
      const ack = await publishEvent(
        opts.js ?? js,
        signer,
        subject(identitySubjects(names.subjectPrefix)),
        toBinary(schema, event),
        { id: eventId, type: schema.typeName, source: "identity-service", time: occurTime, subject: customerId },
      );
      return ack.seq;
    },
    async consumed(seq, durable, names = streams, timeoutMs) {
      await until(
        `the identity-event consumer past sequence ${seq}`,
        async () => {
          const info = await jsm.consumers.info(names.stream, durable);
          return info.ack_floor.stream_seq >= seq && info.num_ack_pending === 0;
        },
        timeoutMs,
      );
    },
    async close() {
      for (const names of created) await jsm.streams.delete(names.stream).catch(() => false);
      await nc.close();
      await keys.close();
      await issuer.close();
    },
  };
}

/** A customer service that reaches NATS through a proxy the test can cut (an outage as it sees it). */
export interface CutOffService {
  readonly service: RunningCustomerService;
  /** The identity stream of its own that it consumes. */
  readonly streams: StreamNames;
  /** `cut()` is the outage, `restore()` its end. */
  readonly proxy: TcpProxy;
  /** Resolves once the service has bound its durable consumer (before an outage begins). */
  bound(): Promise<void>;
  close(): Promise<void>;
}

/**
 * Starts a customer service trusting `feed`, with a new identity stream and
 * the durable consumer `durable`, connected to the shared NATS through a
 * cuttable TCP proxy.
 */
export async function startCutOffService(feed: IdentityFeed, durable: string): Promise<CutOffService> {
  const target = new URL(sharedNatsUrl);
  const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port) });
  const streams = await feed.newStream();
  let service: RunningCustomerService;
  try {
    service = await startCustomerService(
      { ...feed.env(), CUSTOMER_IDENTITY_CONSUMER: durable },
      { natsUrl: proxy.rewrite(sharedNatsUrl), identityStreams: streams },
    );
  } catch (err) {
    await proxy.close();
    throw err;
  }
  return {
    service,
    streams,
    proxy,
    bound: () =>
      until("the durable consumer", async () => (await feed.jsm.consumers.info(streams.stream, durable)) !== null),
    async close() {
      await service.close();
      // Streams on a NATS URL other than the shared one are left to the test (the feed deletes its own).
      await deleteStreams(sharedNatsUrl, service.streams.stream);
      await proxy.close();
    },
  };
}
