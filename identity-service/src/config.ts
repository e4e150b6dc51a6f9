/**
 * The identity service's configuration, read from the environment once in
 * main.ts. Every value is checked; a bad one names its variable.
 */
import {
  type Env,
  envHostConfig,
  envInt,
  envString,
  envSubjectPrefix,
  envUrl,
  type HostConfig,
} from "@customer-platform/runtime/config";
import { type Argon2Params, OWASP_ARGON2 } from "./passwords.js";
import { DEFAULT_THROTTLE, type ThrottleSettings } from "./throttle.js";

/** The identity service's settings, besides what every service has (`HostConfig`). */
export interface IdentityConfig extends HostConfig {
  stream: string;
  subjectPrefix: string;
  /** Token `iss`, and the base of the discovery document. */
  issuer: string;
  /** Resource servers access tokens are for (token `aud`, besides the issuer). */
  audiences: string[];
  accessTokenTtlSec: number;
  refreshTokenTtlSec: number;
  /**
   * The JWKS `cache-control: max-age` in seconds. A rotated key starts signing
   * only after it (plus key reload and a margin: see keyActivationDelayMs).
   */
  jwksMaxAgeSec: number;
  /** client_id of customer tokens issued by the first-party sign-in API. */
  firstPartyClientId: string;
  argon2: Argon2Params;
  throttle: ThrottleSettings;
  shutdownGraceMs: number;
}

/** The configuration `env` describes, or a ConfigError naming the bad variable. */
export function envToConfig(env: Env, cwd: string = process.cwd()): IdentityConfig {
  const subjectPrefix = envSubjectPrefix(env, "IDENTITY_SUBJECT_PREFIX", "identity");
  const audiences = envString(env, "IDENTITY_AUDIENCES", "customer-service")
    .split(/[\s,]+/)
    .filter(Boolean);
  return {
    stream: envString(env, "IDENTITY_STREAM", "IDENTITY"),
    subjectPrefix,
    issuer: envUrl(env, "IDENTITY_ISSUER", ["http:", "https:"], "http://127.0.0.1:8081").replace(/\/+$/, ""),
    audiences,
    accessTokenTtlSec: envInt(env, "IDENTITY_ACCESS_TOKEN_TTL", 900, 30, 86_400),
    refreshTokenTtlSec: envInt(env, "IDENTITY_REFRESH_TOKEN_TTL", 30 * 86_400, 60, 365 * 86_400),
    jwksMaxAgeSec: envInt(env, "IDENTITY_JWKS_MAX_AGE", 300, 0, 86_400),
    firstPartyClientId: envString(env, "IDENTITY_FIRST_PARTY_CLIENT_ID", "first-party"),
    argon2: {
      memoryCost: envInt(env, "IDENTITY_ARGON2_MEMORY_KIB", OWASP_ARGON2.memoryCost, 1024, 4 * 1024 * 1024),
      timeCost: envInt(env, "IDENTITY_ARGON2_ITERATIONS", OWASP_ARGON2.timeCost, 1, 100),
      parallelism: envInt(env, "IDENTITY_ARGON2_PARALLELISM", OWASP_ARGON2.parallelism, 1, 64),
    },
    throttle: {
      freeAttempts: envInt(env, "IDENTITY_THROTTLE_FREE_ATTEMPTS", DEFAULT_THROTTLE.freeAttempts, 1, 1000),
      baseDelayMs: envInt(env, "IDENTITY_THROTTLE_BASE_DELAY_MS", DEFAULT_THROTTLE.baseDelayMs, 1, 3_600_000),
      maxDelayMs: envInt(env, "IDENTITY_THROTTLE_MAX_DELAY_MS", DEFAULT_THROTTLE.maxDelayMs, 1, 86_400_000),
      windowMs: DEFAULT_THROTTLE.windowMs,
    },
    // Last: the database URL is read last (see envHostConfig).
    ...envHostConfig(env, "IDENTITY", { port: 8081, cwd }),
  };
}
