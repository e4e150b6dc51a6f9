/**
 * What the load agent can run: one operation per scenario, issued by each of
 * `concurrency` virtual users in a closed loop. Services are called with the
 * generated clients; baselines go straight to postgres.js, argon2 and
 * JetStream, issuing the same statements / verifications / publishes.
 */

import { randomBytes, randomUUID } from "node:crypto";
import type { DescService } from "@bufbuild/protobuf";
import { type Client, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { setCloudEventHeaders } from "@customer-platform/sdk/cloudevents";
import { customerSubjects } from "@customer-platform/sdk/subjects";
import { jetstream, jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect, headers, type NatsConnection, nanos } from "@nats-io/transport-node";
import argon2 from "argon2";
import { importJWK, type JWK, SignJWT } from "jose";
import postgres from "postgres";

/** A key the identity service signs with, for minting customer tokens without a sign-in each. */
export interface SignerSpec {
  privateJwk: JWK;
  kid: string;
  alg: string;
  issuer: string;
  audiences: string[];
  clientId: string;
  scope: string;
}

export type ScenarioSpec =
  | { kind: "get-grpc"; url: string; token: string; ids: string[]; connections: number }
  | { kind: "update-grpc"; url: string; token: string; ids: string[]; connections: number }
  | { kind: "pg-update"; dbUrl: string; ids: string[]; poolMax: number; subjectPrefix: string }
  | { kind: "register-grpc"; url: string; signer: SignerSpec; connections: number; tokens: number }
  | { kind: "pg-register"; dbUrl: string; poolMax: number; subjectPrefix: string }
  | {
      kind: "authenticate-grpc";
      url: string;
      accounts: Array<{ email: string; password: string }>;
      connections: number;
    }
  | { kind: "argon2-verify"; accounts: Array<{ hash: string; password: string }> }
  | { kind: "refresh-grpc"; url: string; refreshTokens: string[]; connections: number }
  | {
      kind: "client-credentials-grpc";
      url: string;
      clientId: string;
      clientSecret: string;
      scope: string;
      connections: number;
    }
  | { kind: "js-publish"; natsUrl: string; stream: string; subjectPrefix: string; payloadBytes: number };

/** The content types a client's calls carried, as its transport put them on the wire, and what came back. */
export interface Wire {
  request: Set<string>;
  response: Set<string>;
}

export interface Scenario {
  /** One operation by virtual user `vu`, its `i`-th; throws on any failure. */
  op(vu: number, i: number): Promise<void>;
  close(): Promise<void>;
  /** For the RPC scenarios: the content types seen, request and response. */
  wire?: Wire;
  /** The request content type every call must carry (the agent checks it once per run). */
  sends?: string;
}

/** The content type a Connect unary call with JSON carries (the JSON row must send exactly this). */
export const CONNECT_JSON = "application/json";
/** The content type a gRPC call with binary protobuf carries (connect-node's gRPC transport). */
export const GRPC_PROTO = "application/grpc+proto";

/** Builds the scenario a spec describes (connections opened, tokens minted). */
export async function createScenario(spec: ScenarioSpec, concurrency: number): Promise<Scenario> {
  const ownRow = <T>(items: readonly T[], vu: number, i: number) => rowOf(items, concurrency, vu, i);
  switch (spec.kind) {
    case "get-grpc": {
      const pool = grpcClients(CustomerService, spec.url, spec.connections);
      const opts = { headers: { authorization: `Bearer ${spec.token}` } };
      const ids = spec.ids;
      return {
        async op(vu, i) {
          const customerId = pick(ids, vu, i);
          const res = await pool.client(vu).getCustomer({ customerId }, opts);
          if (res.customer?.customerId !== customerId) throw new Error("wrong customer");
        },
        close: pool.close,
        wire: pool.wire,
        sends: GRPC_PROTO,
      };
    }
    case "update-grpc": {
      const pool = grpcClients(CustomerService, spec.url, spec.connections);
      const opts = { headers: { authorization: `Bearer ${spec.token}` } };
      const run = randomBytes(3).toString("hex");
      return {
        async op(vu, i) {
          const customerId = ownRow(spec.ids, vu, i);
          await pool
            .client(vu)
            .updateCustomer(
              { customer: { customerId, givenName: `Ada ${run} ${vu}.${i}` }, updateMask: { paths: ["given_name"] } },
              opts,
            );
        },
        close: pool.close,
        wire: pool.wire,
        sends: GRPC_PROTO,
      };
    }
    case "pg-update": {
      // The statements UpdateCustomer issues: a read, then the update (only if the row is still
      // at the version read) with its outbox row and NOTIFY in one statement.
      const sql = pg(spec.dbUrl, spec.poolMax);
      const payload = randomBytes(240);
      const run = randomBytes(3).toString("hex");
      return {
        async op(vu, i) {
          const customerId = ownRow(spec.ids, vu, i);
          const [row] = await sql`select customer_id, email, given_name, family_name, phone_number, address, version,
            create_time, update_time from customers where customer_id = ${customerId}`;
          if (!row) throw new Error("no row");
          const updated = sql`update customers set email = ${row.email}, given_name = ${`Ada ${run} ${vu}.${i}`},
            family_name = ${row.family_name}, phone_number = ${row.phone_number}, address = ${row.address},
            version = version + 1, update_time = ${new Date()}
            where customer_id = ${customerId} and version = ${row.version} returning customer_id`;
          const written = await withEvent(
            sql,
            updated,
            "customer.v1.CustomerUpdated",
            `${spec.subjectPrefix}.updated.${customerId}`,
            customerId,
            payload,
          );
          if (written.length !== 1) throw new Error("row changed under the update");
        },
        close: () => sql.end({ timeout: 5 }),
      };
    }
    case "register-grpc": {
      const pool = grpcClients(CustomerService, spec.url, spec.connections);
      const mint = await tokenMinter(spec.signer);
      // Tokens are minted before the clock starts, so the client's signing is not in the measurement.
      const ready: Array<{ sub: string; token: string }> = [];
      for (let n = 0; n < spec.tokens; n++) ready.push(await mint());
      return {
        async op(vu) {
          const { sub, token } = ready.pop() ?? (await mint());
          await pool
            .client(vu)
            .registerCustomer(
              { ...profile(sub), phoneNumber: "+4915112345678", address: ADDRESS },
              { headers: { authorization: `Bearer ${token}` } },
            );
        },
        close: pool.close,
        wire: pool.wire,
        sends: GRPC_PROTO,
      };
    }
    case "pg-register": {
      // The statement RegisterCustomer issues: insert, outbox insert and NOTIFY in one.
      const sql = pg(spec.dbUrl, spec.poolMax);
      const payload = randomBytes(260);
      return {
        async op() {
          const id = randomUUID();
          const p = profile(id);
          const now = new Date();
          const created = sql`insert into customers (customer_id, email, given_name, family_name, phone_number, address,
            version, create_time, update_time) values (${id}, ${p.email}, ${p.givenName}, ${p.familyName},
            ${"+4915112345678"}, ${sql.json(ADDRESS)}, 1, ${now}, ${now}) returning customer_id`;
          await withEvent(
            sql,
            created,
            "customer.v1.CustomerRegistered",
            `${spec.subjectPrefix}.registered.${id}`,
            id,
            payload,
          );
        },
        close: () => sql.end({ timeout: 5 }),
      };
    }
    case "authenticate-grpc": {
      const pool = grpcClients(AuthService, spec.url, spec.connections);
      return {
        async op(vu, i) {
          // One account per virtual user at a time, so the login throttle never sees parallel attempts.
          const account = ownRow(spec.accounts, vu, i);
          const res = await pool.client(vu).authenticateCustomer(account);
          if (!res.tokens?.accessToken) throw new Error("no token");
        },
        close: pool.close,
        wire: pool.wire,
        sends: GRPC_PROTO,
      };
    }
    case "argon2-verify": {
      return {
        async op(vu, i) {
          const account = ownRow(spec.accounts, vu, i);
          if (!(await argon2.verify(account.hash, account.password.normalize("NFKC")))) throw new Error("mismatch");
        },
        close: async () => {},
      };
    }
    case "refresh-grpc": {
      const pool = grpcClients(AuthService, spec.url, spec.connections);
      // Each virtual user rotates its own chain: the next call presents the token the last one returned,
      // also in the next run (a rotated token presented again would revoke its family, as it should).
      const key = spec.refreshTokens.join(",");
      const chains = refreshChains.get(key) ?? [...spec.refreshTokens];
      refreshChains.set(key, chains);
      return {
        async op(vu) {
          const k = vu % chains.length;
          const res = await pool.client(vu).refreshToken({ refreshToken: chains[k] as string });
          if (!res.tokens?.refreshToken) throw new Error("no refresh token");
          chains[k] = res.tokens.refreshToken;
        },
        close: pool.close,
        wire: pool.wire,
        sends: GRPC_PROTO,
      };
    }
    case "client-credentials-grpc": {
      const pool = grpcClients(AuthService, spec.url, spec.connections);
      const req = { clientId: spec.clientId, clientSecret: spec.clientSecret, scope: spec.scope };
      return {
        async op(vu) {
          const res = await pool.client(vu).authenticateClient(req);
          if (!res.tokens?.accessToken) throw new Error("no token");
        },
        close: pool.close,
        wire: pool.wire,
        sends: GRPC_PROTO,
      };
    }
    case "js-publish": {
      // What the relay does per event: one publish with the CloudEvents headers, waiting for its ack.
      const nc = await connect({ servers: spec.natsUrl, name: "bench raw publish" });
      const jsm = await addRawStream(nc, spec);
      const js = jetstream(nc, { timeout: 5000 });
      const payload = randomBytes(spec.payloadBytes);
      return {
        async op() {
          const eventId = randomUUID();
          const h = setCloudEventHeaders(headers(), {
            id: eventId,
            type: "customer.v1.CustomerUpdated",
            source: "bench",
            time: new Date(),
            subject: eventId,
          });
          await js.publish(customerSubjects(spec.subjectPrefix).updated(eventId), payload, {
            msgID: eventId,
            headers: h,
            timeout: 5000,
          });
        },
        close: async () => {
          await jsm.streams.delete(spec.stream).catch(() => false);
          await nc.close();
        },
      };
    }
  }
}

/** Refresh-token chains by their first tokens, carried from one run to the next. */
const refreshChains = new Map<string, string[]>();

const ADDRESS = {
  addressLines: ["Unter den Linden 1"],
  locality: "Berlin",
  region: "BE",
  postalCode: "10117",
  countryCode: "DE",
};

function profile(id: string) {
  return { email: `${id}@bench.example.com`, givenName: "Ada", familyName: "Lovelace" };
}

/** Spreads reads over all rows. */
function pick<T>(items: readonly T[], vu: number, i: number): T {
  return items[(vu * 7919 + i * 31) % items.length] as T;
}

/**
 * A row only virtual user vu touches (rows vu, vu + n, vu + 2n, … for n
 * users), so writers never wait on each other's row locks and one login never
 * sees parallel attempts.
 */
function rowOf<T>(items: readonly T[], users: number, vu: number, i: number): T {
  if (items.length < users) throw new Error(`need at least ${users} rows, have ${items.length}`);
  const perUser = Math.floor(items.length / users);
  return items[vu + users * (i % perUser)] as T;
}

function pg(url: string, max: number) {
  return postgres(url, { max, onnotice: () => {}, idle_timeout: 60 });
}

/** `change` (… RETURNING) with its outbox row and NOTIFY, one statement, as `prepareWithEvent` builds it. */
function withEvent(
  sql: postgres.Sql,
  change: postgres.PendingQuery<postgres.Row[]>,
  type: string,
  subject: string,
  ceSubject: string,
  payload: Buffer,
) {
  return sql`with changed as (${change}), queued as (insert into outbox (event_id, subject, type, source, ce_subject,
    payload, occur_time) select ${randomUUID()}, ${subject}, ${type}, ${"bench"}, ${ceSubject}, ${payload}, ${new Date()}
    from changed) select pg_notify(${"bench_outbox"}, '') from changed`;
}

interface ClientPool<S extends DescService> {
  client(vu: number): Client<S>;
  close(): Promise<void>;
  wire: Wire;
}

/** Records the content type of each call's request and response (a set: a handful of strings, whatever the load). */
function recordWire(wire: Wire): Interceptor {
  return (next) => async (req) => {
    wire.request.add(req.header.get("content-type") ?? "(none)");
    const res = await next(req);
    wire.response.add(res.header.get("content-type") ?? "(none)");
    return res;
  };
}

/** `connections` HTTP/2 connections, virtual users spread over them as concurrent streams. */
function grpcClients<S extends DescService>(service: S, baseUrl: string, connections: number): ClientPool<S> {
  const wire: Wire = { request: new Set(), response: new Set() };
  const managers = Array.from({ length: connections }, () => new Http2SessionManager(baseUrl));
  const clients = managers.map((sessionManager) =>
    createClient(
      service,
      createGrpcTransport({ baseUrl, sessionManager, interceptors: [recordWire(wire)] }) as Transport,
    ),
  );
  return {
    client: (vu) => clients[vu % clients.length] as Client<S>,
    async close() {
      for (const m of managers) m.abort();
    },
    wire,
  };
}

/** Mints access tokens for fresh customer ids, shaped exactly as the identity service issues them. */
async function tokenMinter(s: SignerSpec): Promise<(sub?: string) => Promise<{ sub: string; token: string }>> {
  const key = await importJWK(s.privateJwk, s.alg);
  const audience = [...new Set([...s.audiences, s.issuer])];
  return async (sub = randomUUID()) => {
    const now = Math.floor(Date.now() / 1000);
    // A customer token as the identity service issues one after a verified sign-up: with its email.
    const token = await new SignJWT({
      client_id: s.clientId,
      scope: s.scope,
      email: profile(sub).email,
      email_verified: true,
    })
      .setProtectedHeader({ alg: s.alg, typ: "at+jwt", kid: s.kid })
      .setIssuer(s.issuer)
      .setAudience(audience)
      .setSubject(sub)
      .setIssuedAt(now)
      .setExpirationTime(now + 900)
      .setJti(randomUUID())
      .sign(key);
    return { sub, token };
  };
}

/** An access token for the customer `sub`, shaped exactly as the identity service issues them. */
export async function mintCustomerToken(s: SignerSpec, sub: string): Promise<string> {
  return (await (await tokenMinter(s))(sub)).token;
}

/** The raw side of the outbox-drain row: held events published after NATS comes back, as the relay would. */
export interface RawDrainSpec {
  natsUrl: string;
  stream: string;
  subjectPrefix: string;
  payloadBytes: number;
  /** Events held while NATS is away. */
  events: number;
  /** Publishes in flight: a wave of this many events of distinct customers, all acked before the next. */
  window: number;
}

export interface RawDrainResult {
  /** Events acked. */
  published: number;
  errors: number;
  firstError?: string;
  waves: number;
  /** When nats.js reported the reconnect (epoch ms). */
  reconnectedAtMs: number;
  /** When the last ack arrived (epoch ms). */
  lastAckAtMs: number;
}

/**
 * The connection options of the services' NATS connection (runtime/src/nats.ts),
 * so the raw publisher comes back after an outage exactly when a relay would.
 */
const SERVICE_NATS_OPTIONS = { timeout: 2_000, reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 1_000 };

/** Creates the stream a raw baseline publishes to, configured as the services create theirs (2-minute de-duplication). */
async function addRawStream(nc: NatsConnection, spec: { stream: string; subjectPrefix: string }) {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({
    name: spec.stream,
    subjects: [`${spec.subjectPrefix}.>`],
    storage: StorageType.File,
    duplicate_window: nanos(120_000),
  });
  return jsm;
}

/**
 * Connects as a service does, creates the stream, warms up with one wave,
 * then calls `ready()` (the bench kills NATS and starts it again). Once
 * nats.js has reconnected, publishes `events` events in waves of `window`
 * distinct customers, each wave acked before the next is sent: the relay's
 * pipelining (runtime/src/outbox-publisher.ts) at its widest, without its
 * database reads and marks.
 */
export async function rawDrain(spec: RawDrainSpec, ready: () => void): Promise<RawDrainResult> {
  const nc = await connect({ servers: spec.natsUrl, name: "bench raw drain", ...SERVICE_NATS_OPTIONS });
  try {
    await addRawStream(nc, spec);
    const js = jetstream(nc, { timeout: 5000 });
    const payload = randomBytes(spec.payloadBytes);
    const subjects = customerSubjects(spec.subjectPrefix);
    const customers = Array.from({ length: spec.window }, () => randomUUID());
    // The rows as the relay reads them, made before the clock starts.
    const rows = (n: number) =>
      Array.from({ length: n }, (_, k) => {
        const customerId = customers[k % customers.length] as string;
        return { eventId: randomUUID(), customerId, subject: subjects.updated(customerId), time: new Date() };
      });
    const send = (row: ReturnType<typeof rows>[number]) => {
      const h = setCloudEventHeaders(headers(), {
        id: row.eventId,
        type: "customer.v1.CustomerUpdated",
        source: "bench",
        time: row.time,
        subject: row.customerId,
      });
      return js.publish(row.subject, payload, { msgID: row.eventId, headers: h, timeout: 5000 });
    };
    await Promise.all(rows(spec.window).map(send));
    const held = rows(spec.events);

    // Follow the connection from before the outage, so neither edge is missed.
    const status = nc.status();
    const back = (async () => {
      let down = false;
      for await (const s of status) {
        if (s.type === "disconnect") down = true;
        else if (s.type === "reconnect" && down) return Date.now();
      }
      throw new Error("the connection closed before NATS came back");
    })();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("NATS did not come back within 60 s")), 60_000);
    });
    ready();
    const reconnectedAtMs = await Promise.race([back, timeout]).finally(() => clearTimeout(timer));

    let published = 0;
    let errors = 0;
    let firstError: string | undefined;
    let waves = 0;
    for (let k = 0; k < held.length; k += spec.window) {
      const acks = await Promise.allSettled(held.slice(k, k + spec.window).map(send));
      waves++;
      for (const ack of acks) {
        if (ack.status === "fulfilled") published++;
        else {
          errors++;
          firstError ??= ack.reason instanceof Error ? ack.reason.message : String(ack.reason);
        }
      }
    }
    return {
      published,
      errors,
      ...(firstError !== undefined && { firstError }),
      waves,
      reconnectedAtMs,
      lastAckAtMs: Date.now(),
    };
  } finally {
    await nc.close();
  }
}
