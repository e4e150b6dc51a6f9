/**
 * The customer service's configuration, read from the environment once in
 * main.ts. Every value is checked; a bad one names its variable.
 */
import {
  type DatabaseConfig,
  type Env,
  envDatabase,
  envEnum,
  envInt,
  envPort,
  envString,
  envSubjectPrefix,
  envUrl,
  LOG_LEVELS,
  type LogLevel,
} from "@customer-platform/runtime/config";

export interface CustomerConfig {
  host: string;
  port: number;
  /** CUSTOMER_DATABASE_URL: PostgreSQL, or `pglite:<dir>` for the embedded database. */
  database: DatabaseConfig;
  natsUrl: string;
  /** JetStream stream for this service's events, and the subject prefix it captures. */
  stream: string;
  subjectPrefix: string;
  jwksUrl: string;
  issuer: string;
  audience: string;
  /** Where the identity provider publishes TokensRevoked: its stream and subject prefix. */
  revocationStream: string;
  revocationSubjectPrefix: string;
  /** How far back revocations are read at start: the identity provider's access-token lifetime. */
  revocationLookbackSec: number;
  logLevel: LogLevel;
  /** Largest request message accepted, in bytes. */
  maxRequestBytes: number;
  /** Time allowed for in-flight calls at shutdown. */
  shutdownGraceMs: number;
}

/** The configuration `env` describes, or a ConfigError naming the bad variable. */
export function envToConfig(env: Env, cwd: string = process.cwd()): CustomerConfig {
  const issuer = envUrl(env, "IDENTITY_ISSUER", ["http:", "https:"], "http://127.0.0.1:8081").replace(/\/+$/, "");
  const subjectPrefix = envSubjectPrefix(env, "CUSTOMER_SUBJECT_PREFIX", "customer");
  // Where the identity service publishes, if it is configured in the same environment.
  const revocationSubjectPrefix = envSubjectPrefix(
    env,
    "CUSTOMER_REVOCATION_SUBJECT_PREFIX",
    envSubjectPrefix(env, "IDENTITY_SUBJECT_PREFIX", "identity"),
  );
  return {
    host: envString(env, "CUSTOMER_HOST", "127.0.0.1"),
    port: envPort(env, "CUSTOMER_PORT", 8080),
    natsUrl: envUrl(env, "NATS_URL", ["nats:", "tls:", "ws:", "wss:"], "nats://127.0.0.1:4222"),
    stream: envString(env, "CUSTOMER_STREAM", "CUSTOMER"),
    subjectPrefix,
    jwksUrl: envUrl(env, "IDENTITY_JWKS_URL", ["http:", "https:"], `${issuer}/.well-known/jwks.json`),
    issuer,
    audience: envString(env, "CUSTOMER_AUDIENCE", "customer-service"),
    revocationStream: envString(env, "CUSTOMER_REVOCATION_STREAM", envString(env, "IDENTITY_STREAM", "IDENTITY")),
    revocationSubjectPrefix,
    revocationLookbackSec: envInt(
      env,
      "CUSTOMER_REVOCATION_LOOKBACK",
      envInt(env, "IDENTITY_ACCESS_TOKEN_TTL", 900, 30, 86_400),
      30,
      86_400,
    ),
    logLevel: envEnum(env, "LOG_LEVEL", LOG_LEVELS, "info"),
    maxRequestBytes: envInt(env, "CUSTOMER_MAX_REQUEST_BYTES", 64 * 1024, 1024, 16 * 1024 * 1024),
    shutdownGraceMs: envInt(env, "SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    // Last, so that a missing database URL does not hide a mistake in another variable.
    database: envDatabase(env, "CUSTOMER_DATABASE_URL", {
      cwd,
      embedded: "./.data/customer",
      dataDirVariable: "CUSTOMER_DATA_DIR",
    }),
  };
}
