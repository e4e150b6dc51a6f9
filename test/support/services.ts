/**
 * Starting the real services for a test file: own database, own stream and
 * subjects, port 0 (or a reserved one), logs captured in memory (so tests
 * can check that no secret is ever logged), and clients of it that close
 * with it.
 */
import { Writable } from "node:stream";
import { createLogger, type Logger } from "@customer-platform/runtime/logger";
import { envToConfig as customerEnvToConfig } from "../../customer-service/src/config.js";
import { type CustomerServer, createCustomerServer } from "../../customer-service/src/server.js";
import { envToConfig as identityEnvToConfig } from "../../identity-service/src/config.js";
import { createIdentityServer, type IdentityServer } from "../../identity-service/src/server.js";
import { type Clients, createClients } from "./clients.js";
import { IDENTITY_TEST_LIMITS, identityTestMail } from "./limits.js";
import { deleteStreams, type StreamNames, sharedNatsUrl, uniqueStreamNames } from "./nats.js";
import type { ReservedPort } from "./ports.js";
import { createTestDatabase, type TestDatabase } from "./postgres.js";

/** Log lines written by a service under test. */
export interface CapturedLogs {
  readonly lines: string[];
  readonly logger: Logger;
}

/** A logger that keeps every JSON line in memory. */
export function captureLogs(name: string): CapturedLogs {
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _enc, done) {
      lines.push(...String(chunk).split("\n").filter(Boolean));
      done();
    },
  });
  return { lines, logger: createLogger({ name, level: "debug", destination }) };
}

/** Where a service listens: port 0 by default, or a reserved port, released right before it listens. */
export interface ServiceOptions {
  natsUrl?: string;
  /** Its database; one passed in is not dropped by close(). */
  database?: TestDatabase;
  /** Its stream names; a stream passed in is not deleted by close(). */
  streams?: StreamNames;
  port?: ReservedPort;
  /** The service's clock (its `now` option); default the wall clock. */
  now?: () => Date;
}

/** A service under test, started by startCustomerService or startIdentityService. */
export interface RunningService<S> extends AsyncDisposable {
  readonly server: S;
  readonly url: string;
  readonly database: TestDatabase;
  readonly streams: StreamNames;
  readonly natsUrl: string;
  readonly logs: CapturedLogs;
  /** Clients of this server over every protocol, opened on first use and closed by close(). */
  readonly clients: Clients;
  /** Stops the server; drops the database and deletes the stream it created (not those passed in). */
  close(): Promise<void>;
}

export type RunningCustomerService = RunningService<CustomerServer>;

/**
 * Starts the customer service against a fresh database; env overrides the
 * test defaults. It follows token revocations on `identityStreams` (those of
 * the identity service under test); without them, on names no stream has.
 */
export async function startCustomerService(
  env: Record<string, string>,
  opts: ServiceOptions & { identityStreams?: StreamNames } = {},
): Promise<RunningCustomerService> {
  const database = opts.database ?? (await createTestDatabase("customer"));
  const streams = opts.streams ?? uniqueStreamNames("customer");
  const identityStreams = opts.identityStreams ?? uniqueStreamNames("identity");
  const natsUrl = opts.natsUrl ?? sharedNatsUrl;
  const config = customerEnvToConfig({
    CUSTOMER_PORT: String(opts.port?.port ?? 0),
    CUSTOMER_DATABASE_URL: database.url,
    NATS_URL: natsUrl,
    CUSTOMER_STREAM: streams.stream,
    CUSTOMER_SUBJECT_PREFIX: streams.subjectPrefix,
    CUSTOMER_REVOCATION_STREAM: identityStreams.stream,
    CUSTOMER_REVOCATION_SUBJECT_PREFIX: identityStreams.subjectPrefix,
    SHUTDOWN_GRACE_MS: "2000",
    ...env,
  });
  const logs = captureLogs("customer-service");
  const server = await createCustomerServer(config, { logger: logs.logger, ...(opts.now && { now: opts.now }) });
  return run(server, { database, streams, natsUrl, logs }, opts);
}

export interface RunningIdentityService extends RunningService<IdentityServer> {
  /** The environment it was configured from (for the identity CLI). */
  readonly env: Record<string, string>;
}

/**
 * Starts the identity service against a fresh database. The issuer must be
 * known before the port is, so tests pass IDENTITY_ISSUER (or get one that
 * only has to be consistent between issuer and verifiers).
 */
export async function startIdentityService(
  env: Record<string, string>,
  opts: ServiceOptions = {},
): Promise<RunningIdentityService> {
  const database = opts.database ?? (await createTestDatabase("identity"));
  const streams = opts.streams ?? uniqueStreamNames("identity");
  const natsUrl = opts.natsUrl ?? sharedNatsUrl;
  const fullEnv = {
    IDENTITY_PORT: String(opts.port?.port ?? 0),
    IDENTITY_DATABASE_URL: database.url,
    NATS_URL: natsUrl,
    IDENTITY_STREAM: streams.stream,
    IDENTITY_SUBJECT_PREFIX: streams.subjectPrefix,
    IDENTITY_ISSUER: "https://identity.test",
    // Cheap hashes keep tests fast; the OWASP defaults are covered by their own test.
    IDENTITY_ARGON2_MEMORY_KIB: "1024",
    IDENTITY_ARGON2_ITERATIONS: "1",
    SHUTDOWN_GRACE_MS: "2000",
    ...IDENTITY_TEST_LIMITS,
    ...identityTestMail(env),
    ...env,
  };
  const config = identityEnvToConfig(fullEnv);
  const logs = captureLogs("identity-service");
  const server = await createIdentityServer(config, { logger: logs.logger, ...(opts.now && { now: opts.now }) });
  return Object.assign(await run(server, { database, streams, natsUrl, logs }, opts), { env: fullEnv });
}

/**
 * Starts server (the reserved port, if any, released right before it
 * listens) and wraps it; a start that fails drops the database it created.
 */
async function run<S extends { readonly url: string; start(): Promise<void>; stop(): Promise<void> }>(
  server: S,
  parts: { database: TestDatabase; streams: StreamNames; natsUrl: string; logs: CapturedLogs },
  opts: ServiceOptions,
): Promise<RunningService<S>> {
  const { database, streams, natsUrl } = parts;
  const cleanUp = async () => {
    if (!opts.database) await database.drop();
    if (!opts.streams && natsUrl === sharedNatsUrl) await deleteStreams(natsUrl, streams.stream);
  };
  await opts.port?.release();
  try {
    await server.start();
  } catch (err) {
    await server.stop();
    await cleanUp();
    throw err;
  }
  // Created on first use, so a test that never calls the server opens nothing.
  let clients: Clients | undefined;
  const close = async () => {
    clients?.close();
    await server.stop();
    await cleanUp();
  };
  return {
    ...parts,
    server,
    url: server.url,
    get clients() {
      clients ??= createClients(server.url);
      return clients;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
