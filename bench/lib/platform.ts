/**
 * The system under test: the real services as child processes (identity,
 * customer, a second customer service on a private NATS for the drain row,
 * the JWT-cost pair), fresh databases, unique streams, and the data the
 * rows need (customers, sign-ups, a service client, the signing key).
 */
import { randomBytes, randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { openDatabase } from "@customer-platform/runtime/db";
import type { JWK } from "jose";
import postgres from "postgres";
import * as customerSchema from "../../customer-service/src/db/schema.js";
import { runCli } from "../../identity-service/src/cli.js";
import {
  deleteStreams,
  freePort,
  type PrivateNats,
  type StreamNames,
  sharedNatsUrl,
  startPrivateNats,
  uniqueStreamNames,
} from "../../test/support/nats.js";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import type { SignerSpec } from "../scenarios.js";
import { type IpcChild, ROOT, spawnChild, waitReady } from "./child.js";
import { commandName, parentPid, rssMiB } from "./proc.js";

export interface Service {
  readonly child: IpcChild;
  readonly url: string;
  readonly db: TestDatabase;
  readonly streams: StreamNames;
}

export interface Account {
  email: string;
  password: string;
  customerId: string;
  refreshToken: string;
  hash: string;
}

export interface Platform {
  readonly identity: Service;
  readonly customer: Service;
  /**
   * A second customer service from `BENCH_CUSTOMER_ENTRY_B` (another build, on
   * the same database, its own streams), measured in the transport rows'
   * rounds beside the first: a change's effect without the drift between runs.
   */
  readonly customerB: Service | undefined;
  /** A customer service whose NATS is a private nats-server the bench kills and restarts. */
  readonly drain: Service & { nats: PrivateNats };
  /** The JWT-cost pair (bench/customer-variant.ts) over the customer database. */
  readonly variant: { child: IpcChild; jwksUrl: string; fixedUrl: string; stubUrl: string };
  /** An empty customer database (same migrations, same rows), for the raw postgres.js baselines. */
  readonly baselineDb: TestDatabase;
  readonly agent: IpcChild;
  /**
   * The PostgreSQL postmaster, whose process tree's CPU the per-vCPU rows
   * count with the service's; undefined when /proc does not show it (a
   * database on another host or in another PID namespace).
   */
  readonly postmasterPid: number | undefined;
  /** RSS right after start, before any request (MiB). */
  readonly idleRss: { customer: number; identity: number };
  readonly customerIds: string[];
  readonly drainIds: string[];
  /** A service access token (client credentials) with customer:read and customer:write. */
  readonly serviceToken: string;
  /** A service access token (client credentials) with customer:read alone. */
  readonly readToken: string;
  readonly client: { id: string; secret: string; scope: string };
  readonly accounts: Account[];
  readonly signer: SignerSpec;
  readonly logDir: string;
  close(): Promise<void>;
}

const CUSTOMER_MIGRATIONS = join(ROOT, "customer-service/src/db/migrations");
const ADDRESS = JSON.stringify({
  addressLines: ["Unter den Linden 1"],
  locality: "Berlin",
  region: "BE",
  postalCode: "10117",
  countryCode: "DE",
});

/** Starts everything; on failure stops what already started. */
export async function startPlatform(opts: { customers: number; accounts: number; log: (s: string) => void }) {
  const closers: Array<() => Promise<unknown>> = [];
  const close = async () => {
    for (const c of closers.reverse()) await c().catch((err: unknown) => opts.log(`cleanup: ${String(err)}`));
    closers.length = 0;
  };
  try {
    return await start(opts, closers, close);
  } catch (err) {
    await close();
    throw err;
  }
}

async function start(
  opts: { customers: number; accounts: number; log: (s: string) => void },
  closers: Array<() => Promise<unknown>>,
  close: () => Promise<void>,
): Promise<Platform> {
  const logDir = join(ROOT, ".tmp/bench");
  mkdirSync(logDir, { recursive: true });
  const [identityDb, customerDb, drainDb, baselineDb] = await Promise.all(
    ["bench_identity", "bench_customer", "bench_drain", "bench_baseline"].map((l) => createTestDatabase(l)),
  );
  for (const db of [identityDb, customerDb, drainDb, baselineDb]) closers.push(() => (db as TestDatabase).drop());
  const identityStreams = uniqueStreamNames("identity");
  const customerStreams = uniqueStreamNames("customer");
  const customerBStreams = uniqueStreamNames("customer");
  const drainStreams = uniqueStreamNames("customer");
  closers.push(() =>
    deleteStreams(sharedNatsUrl, identityStreams.stream, customerStreams.stream, customerBStreams.stream),
  );
  const nats = await startPrivateNats();
  closers.push(() => nats.stop());

  const [identityPort, customerPort, drainPort, jwksPort, fixedPort, stubPort, customerBPort] = await Promise.all(
    Array.from({ length: 7 }, () => freePort()),
  );
  const issuer = `http://127.0.0.1:${identityPort}`;
  const common = { LOG_LEVEL: process.env.LOG_LEVEL ?? "info", SHUTDOWN_GRACE_MS: "2000" };
  const spawnService = (name: string, entry: string, env: Record<string, string>) => {
    const child = spawnChild({
      name,
      entry,
      env: { ...common, ...env },
      probe: true,
      // BENCH_SERVICE_NODE_FLAGS: node flags for the services only (a runtime setting measured before it lands).
      nodeFlags: (process.env.BENCH_SERVICE_NODE_FLAGS ?? "").split(" ").filter(Boolean),
      logFile: join(logDir, `${name}.log`),
    });
    closers.push(() => child.stop());
    return child;
  };
  // The services run compiled (dist/, built by `prebench`), as `npm run serve:*` and the image run them.
  // BENCH_*_ENTRY runs another entry point in place of a service (a change measured before it lands;
  // a .ts entry runs from source).
  const identityChild = spawnService(
    "identity-service",
    process.env.BENCH_IDENTITY_ENTRY ?? "identity-service/dist/main.js",
    {
      IDENTITY_PORT: String(identityPort),
      IDENTITY_DATABASE_URL: identityDb.url,
      IDENTITY_ISSUER: issuer,
      NATS_URL: sharedNatsUrl,
      IDENTITY_STREAM: identityStreams.stream,
      IDENTITY_SUBJECT_PREFIX: identityStreams.subjectPrefix,
      // The load agent is one client address: the per-address limits would refuse it as the flood it
      // looks like, so they are off; the argon2 queue stays, with room for every virtual user.
      IDENTITY_SIGN_IN_LIMIT: "0",
      IDENTITY_SIGN_UP_LIMIT: "0",
      IDENTITY_ARGON2_QUEUE_PER_ADDRESS: "1000",
      IDENTITY_MAILBOX_DIR: join(logDir, "mailbox"),
      // The sign-in rows need many logins, not verified emails (their profiles are seeded in SQL): the
      // deprecated one-call sign-up, which the mailed-code sign-up (three calls and a mail) would slow down.
      IDENTITY_LEGACY_CREATE_CREDENTIALS: "true",
    },
  );
  const customerEnv = (port: number, db: TestDatabase, natsUrl: string, s: StreamNames) => ({
    CUSTOMER_PORT: String(port),
    CUSTOMER_DATABASE_URL: db.url,
    IDENTITY_ISSUER: issuer,
    NATS_URL: natsUrl,
    CUSTOMER_STREAM: s.stream,
    CUSTOMER_SUBJECT_PREFIX: s.subjectPrefix,
  });
  const customerChild = spawnService(
    "customer-service",
    process.env.BENCH_CUSTOMER_ENTRY ?? "customer-service/dist/main.js",
    customerEnv(customerPort, customerDb, sharedNatsUrl, customerStreams),
  );
  const entryB = process.env.BENCH_CUSTOMER_ENTRY_B;
  const customerBChild =
    entryB === undefined || entryB === ""
      ? undefined
      : spawnService(
          "customer-service-b",
          entryB,
          customerEnv(customerBPort, customerDb, sharedNatsUrl, customerBStreams),
        );
  const drainChild = spawnService(
    "customer-service-drain",
    "customer-service/dist/main.js",
    customerEnv(drainPort, drainDb, nats.url, drainStreams),
  );
  const agent = spawnChild({ name: "load-agent", entry: "bench/agent.ts", logFile: join(logDir, "load-agent.log") });
  closers.push(() => agent.stop());

  const identity: Service = { child: identityChild, url: issuer, db: identityDb, streams: identityStreams };
  const customer: Service = {
    child: customerChild,
    url: `http://127.0.0.1:${customerPort}`,
    db: customerDb,
    streams: customerStreams,
  };
  const customerB: Service | undefined = customerBChild && {
    child: customerBChild,
    url: `http://127.0.0.1:${customerBPort}`,
    db: customerDb,
    streams: customerBStreams,
  };
  const drain = { child: drainChild, url: `http://127.0.0.1:${drainPort}`, db: drainDb, streams: drainStreams, nats };
  const migrateBaseline = async () => {
    const database = await openDatabase({ url: baselineDb.url, schema: customerSchema });
    try {
      await database.migrate(CUSTOMER_MIGRATIONS);
    } finally {
      await database.close();
    }
  };
  await Promise.all([
    waitReady(identity.url, identityChild),
    waitReady(customer.url, customerChild),
    waitReady(drain.url, drainChild),
    customerB && waitReady(customerB.url, customerB.child),
    migrateBaseline(),
  ]);
  opts.log("services ready");
  // Idle: started, migrated, connected, not one request served yet.
  await new Promise((r) => setTimeout(r, 1000));
  const idleRss = { customer: rssMiB(customerChild.pid), identity: rssMiB(identityChild.pid) };

  const variantChild = spawnService("customer-service-variants", "bench/customer-variant.ts", {
    CUSTOMER_DATABASE_URL: customerDb.url,
    IDENTITY_ISSUER: issuer,
    IDENTITY_JWKS_URL: `${issuer}/.well-known/jwks.json`,
    BENCH_JWKS_PORT: String(jwksPort),
    BENCH_FIXED_PORT: String(fixedPort),
    BENCH_STUB_PORT: String(stubPort),
  });
  const variant = {
    child: variantChild,
    jwksUrl: `http://127.0.0.1:${jwksPort}`,
    fixedUrl: `http://127.0.0.1:${fixedPort}`,
    stubUrl: `http://127.0.0.1:${stubPort}`,
  };

  const customerIds = Array.from({ length: opts.customers }, () => randomUUID());
  const drainIds = Array.from({ length: 64 }, () => randomUUID());
  const [seeded] = await Promise.all([
    seedIdentity(identity, opts.accounts),
    seedCustomers(customerDb.url, customerIds),
    seedCustomers(baselineDb.url, customerIds),
    seedCustomers(drainDb.url, drainIds),
    waitReady(variant.jwksUrl, variantChild),
    waitReady(variant.fixedUrl, variantChild),
    waitReady(variant.stubUrl, variantChild),
  ]);
  opts.log("data seeded");
  const postmasterPid = await findPostmaster(baselineDb.url);
  opts.log(
    postmasterPid === undefined
      ? "PostgreSQL's processes are not visible here: per-vCPU rows cannot count its CPU"
      : `PostgreSQL postmaster: pid ${postmasterPid}`,
  );
  return {
    identity,
    customer,
    customerB,
    drain,
    variant,
    baselineDb,
    agent,
    postmasterPid,
    idleRss,
    customerIds,
    drainIds,
    ...seeded,
    logDir,
    close,
  };
}

/** Profiles straight into the database: the rows under test are reads and updates, not these inserts. */
async function seedCustomers(url: string, ids: string[]): Promise<void> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    await sql`insert into customers (customer_id, email, given_name, family_name, phone_number, address, version,
      create_time, update_time)
      select id::uuid, id || '@bench.example.com', 'Ada', 'Lovelace', '+4915112345678', ${ADDRESS}::jsonb, 1, now(), now()
      from unnest(${`{${ids.join(",")}}`}::text[]) as t(id)`;
    await sql`analyze customers`;
  } finally {
    await sql.end();
  }
}

/**
 * Sign-ups through the service (argon2id hashes as it makes them; the deprecated CreateCredentials, on
 * for the bench), a service client, the signing key.
 */
async function seedIdentity(identity: Service, count: number) {
  const scope = "customer:read customer:write";
  const clientId = `bench-${randomBytes(3).toString("hex")}`;
  let secret = "";
  const code = await runCli(
    ["clients", "create", clientId, "--scopes", scope],
    {
      IDENTITY_DATABASE_URL: identity.db.url,
    },
    (line: string) => {
      if (line.startsWith("{")) secret = (JSON.parse(line) as { client_secret: string }).client_secret;
    },
  );
  if (code !== 0 || !secret) throw new Error("could not create the bench client");

  const sessions = new Http2SessionManager(identity.url);
  const auth = createClient(AuthService, createGrpcTransport({ baseUrl: identity.url, sessionManager: sessions }));
  try {
    const signUps: Array<Omit<Account, "hash">> = [];
    const run = randomBytes(3).toString("hex");
    for (let i = 0; i < count; i += 8) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(8, count - i) }, async (_, k) => {
          const email = `signin-${run}-${i + k}@bench.example.com`;
          const password = `pw-${randomBytes(12).toString("base64url")}`;
          const res = await auth.createCredentials({ email, password });
          return { email, password, customerId: res.customerId, refreshToken: res.tokens?.refreshToken ?? "" };
        }),
      );
      signUps.push(...batch);
    }
    const cc = await auth.authenticateClient({ clientId, clientSecret: secret, scope });
    const serviceToken = cc.tokens?.accessToken;
    if (!serviceToken) throw new Error("no service token");
    // What a reading service holds: customer:read alone (the transport rows' GetCustomer).
    const read = await auth.authenticateClient({ clientId, clientSecret: secret, scope: "customer:read" });
    const readToken = read.tokens?.accessToken;
    if (!readToken) throw new Error("no customer:read service token");

    const sql = postgres(identity.db.url, { max: 1, onnotice: () => {} });
    try {
      const hashes = new Map(
        (await sql<{ email: string; password_hash: string }[]>`select email, password_hash from identities`).map(
          (r) => [r.email, r.password_hash],
        ),
      );
      const [key] = await sql<{ kid: string; alg: string; private_jwk: JWK }[]>`
        select kid, alg, private_jwk from signing_keys where retired_at is null order by created_at desc limit 1`;
      if (!key) throw new Error("identity service has no signing key");
      const accounts: Account[] = signUps.map((a) => ({ ...a, hash: hashes.get(a.email) ?? "" }));
      const signer: SignerSpec = {
        privateJwk: key.private_jwk,
        kid: key.kid,
        alg: key.alg,
        issuer: identity.url,
        audiences: ["customer-service"],
        clientId: "first-party",
        scope: "openid profile customer:self",
      };
      return { serviceToken, readToken, client: { id: clientId, secret, scope }, accounts, signer };
    } finally {
      await sql.end();
    }
  } finally {
    sessions.abort();
  }
}

/** The postmaster of the cluster at url: the parent of one of its backends, if /proc shows a postgres there. */
async function findPostmaster(url: string): Promise<number | undefined> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql<{ pid: number }[]>`select pg_backend_pid() as pid`;
    const parent = row ? parentPid(row.pid) : undefined;
    if (parent === undefined || !commandName(parent)?.startsWith("postgres")) return undefined;
    return parent;
  } finally {
    await sql.end();
  }
}

/** Waits until the outbox of the database at url holds no unsent event. */
export async function waitOutboxEmpty(url: string, timeoutMs: number): Promise<number> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  const t0 = Date.now();
  try {
    for (;;) {
      const [row] = await sql<{ n: number }[]>`select count(*)::int as n from outbox where published_at is null`;
      if (!row?.n) return Date.now() - t0;
      if (Date.now() - t0 > timeoutMs)
        throw new Error(`outbox still holds ${row.n} unsent events after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    await sql.end();
  }
}

/** How many events the outbox of the database at url holds unsent. */
export async function unsentCount(url: string): Promise<number> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const [row] = await sql<{ n: number }[]>`select count(*)::int as n from outbox where published_at is null`;
    return row?.n ?? 0;
  } finally {
    await sql.end();
  }
}
