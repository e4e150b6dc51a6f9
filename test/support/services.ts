/**
 * Starting the real services for a test file: own database, own stream and
 * subjects, port 0, logs captured in memory (so tests can check that no
 * secret is ever logged).
 */
import { Writable } from "node:stream";
import { createLogger, type Logger } from "@customer-platform/runtime/logger";
import { envToConfig as customerEnvToConfig } from "../../customer-service/src/config.js";
import { type CustomerServer, createCustomerServer } from "../../customer-service/src/server.js";
import { envToConfig as identityEnvToConfig } from "../../identity-service/src/config.js";
import { createIdentityServer, type IdentityServer } from "../../identity-service/src/server.js";
import { deleteStreams, type StreamNames, sharedNatsUrl, uniqueStreamNames } from "./nats.js";
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

export interface RunningCustomerService extends AsyncDisposable {
  readonly server: CustomerServer;
  readonly url: string;
  readonly database: TestDatabase;
  readonly streams: StreamNames;
  readonly natsUrl: string;
  readonly logs: CapturedLogs;
  close(): Promise<void>;
}

/**
 * Starts the customer service against a fresh database; env overrides the
 * test defaults. It follows token revocations on `identityStreams` (those of
 * the identity service under test); without them, on names no stream has.
 */
export async function startCustomerService(
  env: Record<string, string>,
  opts: { natsUrl?: string; database?: TestDatabase; streams?: StreamNames; identityStreams?: StreamNames } = {},
): Promise<RunningCustomerService> {
  const database = opts.database ?? (await createTestDatabase("customer"));
  const streams = opts.streams ?? uniqueStreamNames("customer");
  const identityStreams = opts.identityStreams ?? uniqueStreamNames("identity");
  const natsUrl = opts.natsUrl ?? sharedNatsUrl;
  const config = customerEnvToConfig({
    CUSTOMER_PORT: "0",
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
  const server = await createCustomerServer(config, { logger: logs.logger });
  await server.start();
  const close = async () => {
    await server.stop();
    if (!opts.database) await database.drop();
    if (!opts.streams && natsUrl === sharedNatsUrl) await deleteStreams(natsUrl, streams.stream);
  };
  return { server, url: server.url, database, streams, natsUrl, logs, close, [Symbol.asyncDispose]: close };
}

export interface RunningIdentityService extends AsyncDisposable {
  readonly server: IdentityServer;
  readonly url: string;
  readonly database: TestDatabase;
  readonly streams: StreamNames;
  readonly natsUrl: string;
  readonly logs: CapturedLogs;
  readonly env: Record<string, string>;
  close(): Promise<void>;
}

/**
 * Starts the identity service against a fresh database. The issuer must be
 * known before the port is, so tests pass IDENTITY_ISSUER (or get one that
 * only has to be consistent between issuer and verifiers).
 */
export async function startIdentityService(
  env: Record<string, string>,
  opts: { natsUrl?: string; database?: TestDatabase; streams?: StreamNames } = {},
): Promise<RunningIdentityService> {
  const database = opts.database ?? (await createTestDatabase("identity"));
  const streams = opts.streams ?? uniqueStreamNames("identity");
  const natsUrl = opts.natsUrl ?? sharedNatsUrl;
  const fullEnv = {
    IDENTITY_PORT: "0",
    IDENTITY_DATABASE_URL: database.url,
    NATS_URL: natsUrl,
    IDENTITY_STREAM: streams.stream,
    IDENTITY_SUBJECT_PREFIX: streams.subjectPrefix,
    IDENTITY_ISSUER: "http://identity.test",
    // Cheap hashes keep tests fast; the OWASP defaults are covered by their own test.
    IDENTITY_ARGON2_MEMORY_KIB: "1024",
    IDENTITY_ARGON2_ITERATIONS: "1",
    SHUTDOWN_GRACE_MS: "2000",
    ...env,
  };
  const config = identityEnvToConfig(fullEnv);
  const logs = captureLogs("identity-service");
  const server = await createIdentityServer(config, { logger: logs.logger });
  await server.start();
  const close = async () => {
    await server.stop();
    if (!opts.database) await database.drop();
    if (!opts.streams && natsUrl === sharedNatsUrl) await deleteStreams(natsUrl, streams.stream);
  };
  return {
    server,
    url: server.url,
    database,
    streams,
    natsUrl,
    logs,
    env: fullEnv,
    close,
    [Symbol.asyncDispose]: close,
  };
}
