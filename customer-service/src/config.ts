/**
 * The customer service's configuration, read from the environment once in
 * main.ts. Every value is checked; a bad one names its variable.
 */
import {
  ConfigError,
  type Env,
  envHostConfig,
  envHttpsUrl,
  envInt,
  envString,
  envSubjectPrefix,
  type HostConfig,
} from "@customer-platform/runtime/config";

/** The customer service's settings, besides what every service has (`HostConfig`). */
export interface CustomerConfig extends HostConfig {
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
  /**
   * Durable JetStream consumer on `revocationStream` (filtered to `<prefix>.customer.>`)
   * through which the profile's email follows the identity's verified email
   * (CustomerEmailVerified) and a deleted account's profile is erased (CustomerDeleted).
   */
  identityConsumer: string;
  /** The identity provider's event keys (JWKS): only its events signed with one of them count. */
  identityEventKeysUrl: string;
  shutdownGraceMs: number;
}

/** The configuration `env` describes, or a ConfigError naming the bad variable. */
export function envToConfig(env: Env, cwd: string = process.cwd()): CustomerConfig {
  const issuer = envHttpsUrl(env, "IDENTITY_ISSUER", "http://127.0.0.1:8081").replace(/\/+$/, "");
  const subjectPrefix = envSubjectPrefix(env, "CUSTOMER_SUBJECT_PREFIX", "customer");
  // Where the identity service publishes, if it is configured in the same environment.
  const revocationSubjectPrefix = envSubjectPrefix(
    env,
    "CUSTOMER_REVOCATION_SUBJECT_PREFIX",
    envSubjectPrefix(env, "IDENTITY_SUBJECT_PREFIX", "identity"),
  );
  return {
    stream: envString(env, "CUSTOMER_STREAM", "CUSTOMER"),
    subjectPrefix,
    jwksUrl: envHttpsUrl(env, "IDENTITY_JWKS_URL", `${issuer}/.well-known/jwks.json`),
    identityEventKeysUrl: envHttpsUrl(env, "IDENTITY_EVENT_KEYS_URL", `${issuer}/.well-known/event-keys.json`),
    issuer,
    audience: envString(env, "CUSTOMER_AUDIENCE", "customer-service"),
    revocationStream: envString(env, "CUSTOMER_REVOCATION_STREAM", envString(env, "IDENTITY_STREAM", "IDENTITY")),
    revocationSubjectPrefix,
    identityConsumer: envConsumerName(env, "CUSTOMER_IDENTITY_CONSUMER", "customer-service-identity"),
    revocationLookbackSec: envInt(
      env,
      "CUSTOMER_REVOCATION_LOOKBACK",
      envInt(env, "IDENTITY_ACCESS_TOKEN_TTL", 900, 30, 86_400),
      30,
      86_400,
    ),
    // Last: the database URL is read last (see envHostConfig).
    ...envHostConfig(env, "CUSTOMER", { port: 8080, cwd }),
  };
}

/** A JetStream consumer name: letters, digits, `-` and `_` (no `.`, wildcards or spaces). */
function envConsumerName(env: Env, name: string, fallback: string): string {
  const value = envString(env, name, fallback);
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(value)) {
    throw new ConfigError(`${name} must be a JetStream consumer name (letters, digits, - and _), got "${value}"`);
  }
  return value;
}
