/**
 * The identity service: AuthService over the user directory (and, on the
 * same port, AdminService for operators), the OAuth 2.0 and OpenID Connect
 * endpoints (authorization with its hosted sign-in page, token, revocation,
 * introspection, userinfo, logout), the JWKS and discovery documents, its events
 * relayed from the outbox. The host (runtime
 * service-host) assembles and runs it; this file says only what is
 * particular to it.
 */
import { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { notFound, served } from "@customer-platform/runtime/connect-server";
import { type Database, openDatabase } from "@customer-platform/runtime/db";
import { clientAddress, parseTrustedProxies } from "@customer-platform/runtime/interceptors";
import type { Logger } from "@customer-platform/runtime/logger";
import { createMailDeliverer, createMailTransport, describeMailTransport } from "@customer-platform/runtime/mail";
import {
  createService,
  type HostOverrides,
  type ServiceHost,
  type ServiceParts,
} from "@customer-platform/runtime/service-host";
import { createFairQueue } from "./argon2-queue.js";
import type { IdentityConfig } from "./config.js";
import { identityDatabase } from "./database.js";
import * as schema from "./db/schema.js";
import type { AuthServiceDeps } from "./deps.js";
import { identityHousekeeping } from "./housekeeping.js";
import { createIdentityMailRenderer } from "./mail/templates.js";
import { browserHandler } from "./oauth/browser.js";
import { oauthHandler } from "./oauth/handler.js";
import { identityOutbox } from "./outbox.js";
import { commonPasswordList, createPasswordHasher } from "./passwords.js";
import { createRateLimiter } from "./rate-limit.js";
import { createAdminService } from "./routes/admin/index.js";
import { createAuthService } from "./routes/index.js";
import { createOwnTokenAuthenticator } from "./sessions.js";
import { createThrottle } from "./throttle.js";
import { KEY_RELOAD_MS, KEYS_CHANGED_CHANNEL, keyPolicy, openKeyStore, type TokenSettings } from "./tokens.js";
import { wellKnownHandler } from "./well-known.js";

export type IdentityServer = ServiceHost;

export interface IdentityServerOptions {
  logger?: Logger;
  now?: () => Date;
  /** For tests: parts used instead of the ones built from the configuration. */
  overrides?: HostOverrides<typeof AuthService>;
}

/** The identity service from its configuration. Nothing is opened until start(). */
export async function createIdentityServer(
  config: IdentityConfig,
  opts: IdentityServerOptions = {},
): Promise<IdentityServer> {
  return createService({
    name: "identity-service",
    config,
    database: identityDatabase,
    outbox: identityOutbox(config),
    service: AuthService,
    housekeeping: identityHousekeeping(config),
    ...opts,
    async setup({ database, outbox, now, every, defer, run, logger }) {
      const tokens: TokenSettings = {
        issuer: config.issuer,
        accessTokenTtlSec: config.accessTokenTtlSec,
        refreshTokenTtlSec: config.refreshTokenTtlSec,
        sessionMaxLifetimeSec: config.sessionMaxLifetimeSec,
      };
      // The service's clock picks the signing key, so a test can move past an activation.
      const keys = await openKeyStore(database.db, { policy: keyPolicy(config), now });
      // Keys rotated by another instance or the CLI; keyActivationDelayMs counts this interval in.
      every("signing key reload", KEY_RELOAD_MS, () => keys.reload());
      // …and at once when `keys revoke` commits: a revoked key must stop signing and leave the JWKS now.
      const unlisten = await database.listen(KEYS_CHANGED_CHANNEL, () => {
        keys.reload().catch((err: unknown) => logger.warn({ err }, "signing key reload failed"));
      });
      defer("signing key notifications", unlisten);
      // Built now, not at the first sign-up, so no request waits for it.
      commonPasswordList();
      const trustedProxies = config.trustedProxies.length > 0 ? parseTrustedProxies(config.trustedProxies) : undefined;
      const deps: AuthServiceDeps = {
        db: database.db,
        passwords: await createPasswordHasher(config.argon2, createFairQueue(config.argon2Queue)),
        throttle: createThrottle(database.db, config.throttle),
        rateLimits: {
          signIn: createRateLimiter(database.db, "sign-in", config.rateLimits.signIn),
          authorize: createRateLimiter(database.db, "authorize", config.rateLimits.signIn),
          signUp: createRateLimiter(database.db, "sign-up", config.rateLimits.signUp),
          recovery: createRateLimiter(database.db, "recovery", config.recovery.perAddress),
          recoveryEmail: createRateLimiter(database.db, "recovery-email", config.recovery.perEmail),
          signUpEmail: createRateLimiter(database.db, "sign-up-email", config.signUp.perEmail),
          emailChange: createRateLimiter(database.db, "email-change", config.emailChange.perAccount),
        },
        codeTtlSec: {
          recovery: config.recovery.codeTtlSec,
          signUp: config.signUp.codeTtlSec,
          emailChange: config.emailChange.codeTtlSec,
        },
        legacyCreateCredentials: config.signUp.legacyCreateCredentials,
        clientAddress: (ctx) => clientAddress(ctx, trustedProxies),
        keys,
        tokens,
        auth: createOwnTokenAuthenticator(database.db, keys, tokens),
        events: outbox,
        firstPartyClientId: config.firstPartyClientId,
        // The identity service's own RPCs are for its issuer: a first-party app may ask for it (ChangePassword).
        firstPartyAudiences: {
          allowed: [...new Set([...config.audiences, config.issuer])],
          default: config.defaultAudiences,
        },
        now,
      };
      const impl = createAuthService(deps);
      await startMail(config, database, { defer, run, logger });
      return {
        impl,
        // On the same port, for service tokens with the scope identity:admin.
        also: [served(AdminService, createAdminService(deps))],
        // The OAuth 2.0 form endpoints (token, revocation, introspection) over the same code as the RPCs.
        // The authorization endpoint's hosted pages, userinfo and logout beside them.
        http: wellKnownHandler(
          keys,
          config,
          oauthHandler(deps, { logger }, browserHandler(deps, { logger }, notFound)),
        ),
      };
    },
    describe: (c) => ({ issuer: c.issuer, mail: describeMailTransport(c.mail.transport) }),
  });
}

/**
 * The mail deliverer (runtime mail/): sends what the handlers queued in
 * mail_outbox, over SMTP or to the dev mailbox. On PostgreSQL on a small pool
 * of its own, since its lock holds one session for good; the embedded
 * database is one session, shared.
 */
async function startMail(
  config: IdentityConfig,
  database: Database<typeof schema>,
  parts: Pick<ServiceParts<IdentityConfig, typeof schema>, "defer" | "run" | "logger">,
): Promise<void> {
  let mailDatabase = database;
  if (!database.embedded) {
    const own = await openDatabase({ ...config.database, schema, name: "identity-service-mail", max: 2 });
    parts.defer("mail database", () => own.close());
    mailDatabase = own;
  }
  const transport = config.mail.transport;
  parts.run(
    "mail deliverer",
    createMailDeliverer({
      database: mailDatabase,
      transport: createMailTransport(transport),
      render: createIdentityMailRenderer({ productName: config.productName }),
      from: config.mail.from,
      giveUpAfterMs: config.mail.giveUpAfterMs,
      logger: parts.logger.child({ component: "mail" }),
    }),
  );
  if (transport.kind === "mailbox") {
    parts.logger.warn(
      { mailbox: transport.dir },
      "no SMTP server configured (IDENTITY_SMTP_URL): mail goes to the dev mailbox; read it with npm run mailbox",
    );
  }
}
