/**
 * The identity service's configuration, read from the environment once in
 * main.ts. Every value is checked; a bad one names its variable.
 */
import {
  ConfigError,
  type Env,
  envBoolean,
  envHostConfig,
  envHttpsUrl,
  envInt,
  envString,
  envSubjectPrefix,
  type HostConfig,
} from "@customer-platform/runtime/config";
import { parseTrustedProxies } from "@customer-platform/runtime/interceptors";
import { envMailConfig, type MailConfig } from "@customer-platform/runtime/mail";
import type { FairQueueSettings } from "./argon2-queue.js";
import { type Argon2Params, OWASP_ARGON2 } from "./passwords.js";
import type { RateLimit } from "./rate-limit.js";
import { DEFAULT_THROTTLE, type ThrottleSettings } from "./throttle.js";

/** The identity service's settings, besides what every service has (`HostConfig`). */
export interface IdentityConfig extends HostConfig {
  stream: string;
  subjectPrefix: string;
  /** Token `iss`, and the base of the discovery document. */
  issuer: string;
  /** Audiences first-party customer tokens may ask for (RFC 8707), besides the issuer, which is always allowed. */
  audiences: string[];
  /** Audiences of a first-party customer token when the request names none. */
  defaultAudiences: string[];
  accessTokenTtlSec: number;
  refreshTokenTtlSec: number;
  /** A session (refresh-token family) ends this long after its sign-in, however often it is refreshed. */
  sessionMaxLifetimeSec: number;
  /**
   * The JWKS `cache-control: max-age` in seconds. A rotated key starts signing
   * only after it (plus key reload and a margin: see keyActivationDelayMs).
   */
  jwksMaxAgeSec: number;
  /** client_id of customer tokens issued by the first-party sign-in API. */
  firstPartyClientId: string;
  argon2: Argon2Params;
  /** The bound on concurrent argon2 work and its fair queue per client address. */
  argon2Queue: FairQueueSettings;
  throttle: ThrottleSettings;
  /** Limits per client address. */
  rateLimits: { signIn: RateLimit; signUp: RateLimit };
  /** Account recovery by a code sent by mail. */
  recovery: {
    codeTtlSec: number;
    /** StartRecovery per client address, and per email (known or not). */
    perAddress: RateLimit;
    perEmail: RateLimit;
  };
  /** Sign-up by a code sent by mail (StartSignUp, CompleteSignUp). */
  signUp: {
    codeTtlSec: number;
    /** StartSignUp per email (known or not); per client address it is rateLimits.signUp. */
    perEmail: RateLimit;
    /** Whether the deprecated CreateCredentials still works (for a migration). */
    legacyCreateCredentials: boolean;
  };
  /** Email change by a code sent to the new address. */
  emailChange: {
    codeTtlSec: number;
    /** StartEmailChange and CompleteEmailChange calls per account. */
    perAccount: RateLimit;
  };
  /** How mail is delivered: SMTP, or the dev mailbox (runtime mail/config.ts). */
  mail: MailConfig;
  /** The product's name in every mail. */
  productName: string;
  /** Proxies (addresses, CIDR ranges) whose X-Forwarded-For names the client; none: the socket's peer is the client. */
  trustedProxies: string[];
  shutdownGraceMs: number;
}

/** The configuration `env` describes, or a ConfigError naming the bad variable. */
export function envToConfig(env: Env, cwd: string = process.cwd()): IdentityConfig {
  const subjectPrefix = envSubjectPrefix(env, "IDENTITY_SUBJECT_PREFIX", "identity");
  const list = (name: string, fallback: string) =>
    envString(env, name, fallback)
      .split(/[\s,]+/)
      .filter(Boolean);
  const issuer = envHttpsUrl(env, "IDENTITY_ISSUER", "http://127.0.0.1:8081").replace(/\/+$/, "");
  const audiences = list("IDENTITY_AUDIENCES", "customer-service");
  const defaultAudiences = list("IDENTITY_DEFAULT_AUDIENCES", audiences[0] ?? "");
  const unknown = defaultAudiences.filter((a) => a !== issuer && !audiences.includes(a));
  if (defaultAudiences.length === 0 || unknown.length > 0) {
    throw new ConfigError(
      `IDENTITY_DEFAULT_AUDIENCES must name one or more of IDENTITY_AUDIENCES or the issuer (not: ${unknown.join(" ")})`,
    );
  }
  const refreshTokenTtlSec = envInt(env, "IDENTITY_REFRESH_TOKEN_TTL", 30 * 86_400, 60, 365 * 86_400);
  return {
    stream: envString(env, "IDENTITY_STREAM", "IDENTITY"),
    subjectPrefix,
    issuer,
    audiences,
    defaultAudiences,
    accessTokenTtlSec: envInt(env, "IDENTITY_ACCESS_TOKEN_TTL", 900, 30, 86_400),
    refreshTokenTtlSec,
    sessionMaxLifetimeSec: envInt(
      env,
      "IDENTITY_SESSION_MAX_LIFETIME",
      Math.max(90 * 86_400, refreshTokenTtlSec),
      refreshTokenTtlSec,
      3 * 365 * 86_400,
    ),
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
      windowMs: envInt(env, "IDENTITY_THROTTLE_WINDOW_MS", DEFAULT_THROTTLE.windowMs, 1000, 366 * 86_400_000),
      lockAfter: envInt(env, "IDENTITY_THROTTLE_LOCK_AFTER", DEFAULT_THROTTLE.lockAfter, 1, 1_000_000),
    },
    argon2Queue: {
      // libuv's pool runs argon2; more at once would only queue inside it, unfairly.
      concurrency: envInt(env, "IDENTITY_ARGON2_CONCURRENCY", envInt(env, "UV_THREADPOOL_SIZE", 4, 1, 1024), 1, 1024),
      maxQueuedPerClient: envInt(env, "IDENTITY_ARGON2_QUEUE_PER_ADDRESS", 8, 1, 10_000),
      maxQueued: envInt(env, "IDENTITY_ARGON2_QUEUE_MAX", 1000, 1, 1_000_000),
    },
    rateLimits: {
      signIn: {
        points: envInt(env, "IDENTITY_SIGN_IN_LIMIT", 60, 0, 1_000_000),
        durationMs: envInt(env, "IDENTITY_SIGN_IN_LIMIT_WINDOW_MS", 10 * 60_000, 1000, 86_400_000),
      },
      signUp: {
        points: envInt(env, "IDENTITY_SIGN_UP_LIMIT", 20, 0, 1_000_000),
        durationMs: envInt(env, "IDENTITY_SIGN_UP_LIMIT_WINDOW_MS", 3_600_000, 1000, 86_400_000),
      },
    },
    recovery: {
      codeTtlSec: envInt(env, "IDENTITY_RECOVERY_CODE_TTL", 900, 60, 86_400),
      perAddress: {
        points: envInt(env, "IDENTITY_RECOVERY_LIMIT", 10, 0, 1_000_000),
        durationMs: envInt(env, "IDENTITY_RECOVERY_LIMIT_WINDOW_MS", 3_600_000, 1000, 86_400_000),
      },
      perEmail: {
        points: envInt(env, "IDENTITY_RECOVERY_EMAIL_LIMIT", 5, 0, 1_000_000),
        durationMs: envInt(env, "IDENTITY_RECOVERY_EMAIL_LIMIT_WINDOW_MS", 3_600_000, 1000, 86_400_000),
      },
    },
    signUp: {
      codeTtlSec: envInt(env, "IDENTITY_SIGN_UP_CODE_TTL", 900, 60, 86_400),
      perEmail: {
        points: envInt(env, "IDENTITY_SIGN_UP_EMAIL_LIMIT", 5, 0, 1_000_000),
        durationMs: envInt(env, "IDENTITY_SIGN_UP_EMAIL_LIMIT_WINDOW_MS", 3_600_000, 1000, 86_400_000),
      },
      legacyCreateCredentials: envBoolean(env, "IDENTITY_LEGACY_CREATE_CREDENTIALS", false),
    },
    emailChange: {
      codeTtlSec: envInt(env, "IDENTITY_EMAIL_CHANGE_CODE_TTL", 900, 60, 86_400),
      perAccount: {
        points: envInt(env, "IDENTITY_EMAIL_CHANGE_LIMIT", 10, 0, 1_000_000),
        durationMs: envInt(env, "IDENTITY_EMAIL_CHANGE_LIMIT_WINDOW_MS", 3_600_000, 1000, 86_400_000),
      },
    },
    mail: envMailConfig(env, "IDENTITY", { cwd }),
    productName: envString(env, "IDENTITY_PRODUCT_NAME", "Customer Platform"),
    trustedProxies: trustedProxies(env),
    // Last: the database URL is read last (see envHostConfig).
    ...envHostConfig(env, "IDENTITY", { port: 8081, cwd }),
  };
}

function trustedProxies(env: Env): string[] {
  const entries = (env.IDENTITY_TRUSTED_PROXIES ?? "").split(/[\s,]+/).filter(Boolean);
  try {
    parseTrustedProxies(entries);
  } catch (err) {
    throw new ConfigError(`IDENTITY_TRUSTED_PROXIES: ${(err as Error).message}`);
  }
  return entries;
}
