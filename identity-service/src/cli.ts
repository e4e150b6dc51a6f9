/**
 * Administration of the identity service: `npm run identity -- <command>`.
 *
 *   clients create <client-id> --scopes "customer:read customer:write" [--audiences "customer-service …"]
 *                  [--default-audiences "customer-service"] [--description "…"]
 *                  [--redirect-uris "https://app.example.com/callback …"] [--post-logout-redirect-uris "…"]
 *                  [--grant-types "authorization_code refresh_token"] [--public] [--first-party]
 *                  (grant types default to client_credentials, or to authorization_code refresh_token
 *                  with --redirect-uris; a --public client has no secret and uses PKCE;
 *                  a --first-party client's customers are not asked to consent)
 *   clients update <client-id> [any option of create but --public]  (only what is given changes; audited)
 *   clients set-audiences <client-id> --audiences "…" [--default-audiences "…"]  (the same as update)
 *   clients list
 *   clients disable <client-id>        (its live tokens are revoked: TokensRevoked; audited)
 *   clients enable <client-id>         (its revoked tokens stay revoked; audited)
 *   clients rotate-secret <client-id>  (tokens issued with the old secret are revoked: TokensRevoked; audited)
 *   keys list     (each key: when it signs, or until when it stays in the JWKS)
 *   keys rotate   (published now, signing once every cached JWKS copy has expired)
 *   keys revoke <kid>  (out of the JWKS and refused at once, TokensRevoked for verifiers;
 *                       if no other key is live, a new one signs at once)
 *   unlock <email>  (forgets the failed sign-ins of a login, and its lock after too many)
 *   identities disable <customer-id>  (sign-in refused, sessions revoked: TokensRevoked, IdentityDisabled)
 *   identities enable <customer-id>   (sign-in works again: IdentityEnabled)
 *   identities delete <customer-id>   (the account erased, as AdminService.DeleteIdentity: CustomerDeleted)
 *
 * What changes an account or a client is audited (AuditRecorded,
 * actor_kind "cli", actor_id the operating-system user who ran it), as
 * AdminService's calls are.
 *
 * Audiences (RFC 8707) are resource servers' names, e.g. "customer-service",
 * or the issuer URL for the identity service's own RPCs (IntrospectToken).
 * --audiences defaults to IDENTITY_DEFAULT_AUDIENCES (the customer service),
 * --default-audiences to --audiences.
 *
 * Uses the same configuration as the server (IDENTITY_DATABASE_URL) and
 * opens the database as the service host does, migrating it first.
 */
import { userInfo } from "node:os";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { errMessage } from "@customer-platform/runtime/errors";
import { describeStartFailure } from "@customer-platform/runtime/main";
import { openServiceDatabase } from "@customer-platform/runtime/service-host";
import { desc } from "drizzle-orm";
import { type AccountChange, disableIdentity, enableIdentity } from "./accounts.js";
import {
  CLIENT_ID,
  type ClientRecord,
  ClientRegistrationError,
  createClient,
  disableClient,
  enableClient,
  listClients,
  newClientSettings,
  rotateClientSecret,
  updateClient,
} from "./clients.js";
import { envToConfig } from "./config.js";
import { identityDatabase } from "./database.js";
import { signingKeys } from "./db/schema.js";
import { eraseIdentity } from "./erase.js";
import type { AuditActor } from "./events.js";
import { identityOutbox } from "./outbox.js";
import { normalizeEmail } from "./routes/credentials.js";
import { loginThrottleKey, unlockKey } from "./throttle.js";
import {
  KEY_ACTIVATION_MARGIN_MS,
  KEY_RELOAD_MS,
  type KeyPolicy,
  keyPolicy,
  revokeSigningKey,
  rotateSigningKey,
  type ScheduledKey,
  signingSchedule,
} from "./tokens.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The CLI as an audit names it: the operating-system user who ran it. */
function cliActor(): AuditActor {
  let user: string;
  try {
    user = userInfo().username;
  } catch {
    // A uid without a passwd entry (some containers): the uid, then.
    user = `uid:${process.getuid?.() ?? "unknown"}`;
  }
  return { kind: "cli", id: user };
}

/** Runs one CLI command; returns the process exit code. `now` is the clock keys are stamped and scheduled with. */
export async function runCli(
  argv: string[],
  env = process.env,
  out = console.log,
  now: () => Date = () => new Date(),
): Promise<number> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      scopes: { type: "string" },
      description: { type: "string" },
      audiences: { type: "string" },
      "default-audiences": { type: "string" },
      "redirect-uris": { type: "string" },
      "post-logout-redirect-uris": { type: "string" },
      "grant-types": { type: "string" },
      public: { type: "boolean" },
      "first-party": { type: "boolean" },
    },
  });
  const [group, command, arg] = positionals;
  const config = envToConfig(env);
  const database = await openServiceDatabase(config, identityDatabase, { name: "identity-cli", max: 2 });
  try {
    const db = database.db;
    const changeContext = () => ({ db, outbox: identityOutbox(config), now: now() });
    if (group === "unlock" && command) {
      // Known or not: unknown logins lock too, and the answer must not tell which.
      const email = normalizeEmail(command);
      const found = await unlockKey(db, loginThrottleKey(email));
      out(found ? `unlocked ${email}: its failed sign-ins are forgotten` : `${email} had no failed sign-ins`);
      return 0;
    }
    switch (`${group} ${command}`) {
      case "clients create": {
        if (!arg || !CLIENT_ID.test(arg) || arg === config.firstPartyClientId) {
          throw new Error(`client id must match ${CLIENT_ID} and not be "${config.firstPartyClientId}"`);
        }
        const settings = await cliSettings(() =>
          newClientSettings(
            {
              scopes: list(values.scopes),
              ...(values.audiences !== undefined && { audiences: list(values.audiences) }),
              ...(values["default-audiences"] !== undefined && { defaultAudiences: list(values["default-audiences"]) }),
              ...(values["grant-types"] !== undefined && { grantTypes: list(values["grant-types"]) }),
              redirectUris: list(values["redirect-uris"]),
              postLogoutRedirectUris: list(values["post-logout-redirect-uris"]),
              description: values.description ?? "",
              isPublic: values.public ?? false,
              firstParty: values["first-party"] ?? false,
            },
            { audiences: config.defaultAudiences },
          ),
        );
        const created = await createClient(changeContext(), arg, settings, cliActor());
        if (created === "exists") throw new Error(`client "${arg}" exists already`);
        const c = created.client;
        out(
          JSON.stringify(
            {
              client_id: arg,
              ...(!c.isPublic && { client_secret: created.secret }),
              scopes: c.scopes,
              audiences: c.audiences,
              default_audiences: c.defaultAudiences,
              grant_types: c.grantTypes,
              ...(c.redirectUris.length > 0 && { redirect_uris: c.redirectUris }),
              ...(c.postLogoutRedirectUris.length > 0 && { post_logout_redirect_uris: c.postLogoutRedirectUris }),
              token_endpoint_auth_method: c.isPublic ? "none" : "client_secret_basic",
              first_party: c.firstParty,
            },
            null,
            2,
          ),
        );
        if (!c.isPublic) out("The secret is shown once; only its hash is stored.");
        return 0;
      }
      case "clients update":
      case "clients set-audiences": {
        // Only what is given changes; --default-audiences follows --audiences unless given.
        const change = {
          ...(values.scopes !== undefined && { scopes: list(values.scopes) }),
          ...(values.description !== undefined && { description: values.description }),
          ...(values.audiences !== undefined && { audiences: list(values.audiences) }),
          ...((values["default-audiences"] ?? values.audiences) !== undefined && {
            defaultAudiences: list(values["default-audiences"] ?? values.audiences),
          }),
          ...(values["grant-types"] !== undefined && { grantTypes: list(values["grant-types"]) }),
          ...(values["redirect-uris"] !== undefined && { redirectUris: list(values["redirect-uris"]) }),
          ...(values["post-logout-redirect-uris"] !== undefined && {
            postLogoutRedirectUris: list(values["post-logout-redirect-uris"]),
          }),
          ...(values["first-party"] !== undefined && { firstParty: values["first-party"] }),
        };
        if (Object.keys(change).length === 0) throw new Error("nothing to change: give the options to set");
        const updated = await cliSettings(() => updateClient(changeContext(), arg ?? "", change, cliActor()));
        if (updated === "not_found") throw new Error(`no client "${arg}"`);
        out(`${arg}: ${describeClient(updated)}`);
        out("Tokens and sessions issued before keep their scopes and audiences.");
        return 0;
      }
      case "clients list": {
        let after = "";
        for (;;) {
          const page = await listClients(db, 500, after);
          for (const c of page) out(`${c.clientId}\t${describeClient(c)}`);
          const last = page.at(-1);
          if (page.length < 500 || !last) return 0;
          after = last.clientId;
        }
      }
      case "clients disable":
      case "clients enable": {
        const revocation = {
          db,
          outbox: identityOutbox(config),
          accessTokenTtlSec: config.accessTokenTtlSec,
          now: now(),
        };
        const disable = command === "disable";
        const change = await (disable ? disableClient : enableClient)(revocation, arg ?? "", cliActor());
        if (change === "not_found") throw new Error(`no client "${arg}"`);
        if (change === "unchanged") out(`${arg} was ${disable ? "disabled" : "enabled"} already; nothing changed`);
        else
          out(disable ? `disabled ${arg}; its tokens are revoked` : `enabled ${arg}; its earlier tokens stay revoked`);
        return 0;
      }
      case "identities disable":
      case "identities enable":
      case "identities delete": {
        if (!arg || !UUID.test(arg)) throw new Error("customer id must be a UUID");
        const account = {
          db,
          events: identityOutbox(config),
          tokens: { accessTokenTtlSec: config.accessTokenTtlSec },
          now: now(),
        };
        const actor = cliActor();
        const change: AccountChange =
          command === "delete"
            ? await eraseIdentity(account, arg, { by: "admin", actor })
            : await (command === "disable" ? disableIdentity : enableIdentity)(account, arg, actor);
        if (change === "not_found") throw new Error(`no customer "${arg}"`);
        const done = { disable: "disabled", enable: "enabled", delete: "deleted" }[command];
        if (change === "unchanged") out(`${arg} was ${done} already; nothing changed`);
        else if (command === "disable") out(`disabled ${arg}; its sessions are revoked`);
        else if (command === "delete") out(`deleted ${arg}; its published personal data is purged from the stream`);
        else out(`enabled ${arg}; it can sign in again`);
        return 0;
      }
      case "clients rotate-secret": {
        const rotated = await rotateClientSecret(
          { ...changeContext(), accessTokenTtlSec: config.accessTokenTtlSec },
          arg ?? "",
          cliActor(),
        );
        if (rotated === "not_found") throw new Error(`no client "${arg}"`);
        if (rotated === "public") throw new Error(`${arg} is a public client: it has no secret`);
        out(JSON.stringify({ client_id: arg, client_secret: rotated.secret }, null, 2));
        out("Tokens issued with the old secret are revoked.");
        return 0;
      }
      case "keys revoke": {
        const policy = keyPolicy(config);
        const at = now();
        const revoked = await revokeSigningKey(
          db,
          identityOutbox(config),
          { policy, accessTokenTtlSec: config.accessTokenTtlSec },
          arg ?? "",
          at,
        );
        if (!revoked) throw new Error(`no live signing key "${arg}"`);
        out(`revoked signing key ${revoked.kid}: out of the JWKS and refused now; verifiers told (TokensRevoked)`);
        out(
          revoked.signer.created
            ? `new signing key ${revoked.signer.kid}: no other key was live, so it signs at once`
            : `signing with ${revoked.signer.kid}`,
        );
        const rows = await db.select().from(signingKeys).orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
        for (const line of describeKeys(rows, at, policy)) out(line);
        return 0;
      }
      case "keys list": {
        const rows = await db.select().from(signingKeys).orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
        for (const line of describeKeys(rows, now(), keyPolicy(config))) out(line);
        return 0;
      }
      case "keys rotate": {
        const policy = keyPolicy(config);
        const key = await rotateSigningKey(db, policy, now());
        out(`new signing key ${key.kid}: published now, signing from ${key.signsFrom.toISOString()}`);
        out(
          key.signsFrom > key.createdAt
            ? `(every JWKS copy cached before it was published has expired by then: max-age ${policy.jwksMaxAgeSec} s, ` +
                `key reload ${KEY_RELOAD_MS / 1000} s, margin ${KEY_ACTIVATION_MARGIN_MS / 1000} s)`
            : "(no other key is live, so it signs at once)",
        );
        const rows = await db.select().from(signingKeys).orderBy(desc(signingKeys.createdAt), desc(signingKeys.kid));
        for (const line of describeKeys(rows, key.createdAt, policy)) out(line);
        return 0;
      }
      default:
        out("usage: identity clients create <id> --scopes <scopes> [--audiences <a>] [--default-audiences <a>]");
        out("         [--redirect-uris <uris>] [--post-logout-redirect-uris <uris>] [--grant-types <g>]");
        out("         [--public] [--first-party] |");
        out("       clients update <id> [options of create but --public] | keys revoke <kid> |");
        out("       clients set-audiences <id> --audiences <a> [--default-audiences <a>] |");
        out("       clients list | clients disable <id> | clients enable <id> |");
        out("       clients rotate-secret <id> | keys list | keys rotate | unlock <email> |");
        out(
          "       identities disable <customer-id> | identities enable <customer-id> | identities delete <customer-id>",
        );
        return 2;
    }
  } finally {
    await database.close();
  }
}

/** A space- or comma-separated option as a list, each entry once. */
const list = (v: string | undefined) => [...new Set((v ?? "").split(/[\s,]+/).filter(Boolean))];

/** The CLI's flag for a registration field. */
const flag = (field: string) => `--${field.replaceAll("_", "-")}`;

/** Runs `f`; a registration it refuses is an error naming the CLI's flag. */
async function cliSettings<T>(f: () => T | Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (err) {
    if (err instanceof ClientRegistrationError) throw new Error(`${flag(err.field)}: ${err.reason}`);
    throw err;
  }
}

/** A client's registration on one line (never its secret). */
function describeClient(c: ClientRecord): string {
  return (
    `${c.scopes.join(" ")}\t${c.disabledAt ? "disabled" : "active"}\t${c.description}\t` +
    `audiences ${c.audiences.join(" ")} (default ${c.defaultAudiences.join(" ")})\t` +
    `grants ${c.grantTypes.join(" ")}\t${c.isPublic ? "public" : "confidential"}` +
    `${c.firstParty ? " first-party" : ""}` +
    (c.redirectUris.length > 0 ? `\tredirect ${c.redirectUris.join(" ")}` : "") +
    (c.postLogoutRedirectUris.length > 0 ? `\tpost-logout ${c.postLogoutRedirectUris.join(" ")}` : "")
  );
}

/**
 * One line per key, newest first: kid, algorithm, when it was created, and
 * when it signs or until when it stays in the JWKS.
 */
function describeKeys(
  keys: readonly (ScheduledKey & { alg: string; revokedAt: Date | null })[],
  now: Date,
  policy: KeyPolicy,
): string[] {
  const schedule = signingSchedule(
    keys.filter((k) => !k.revokedAt),
    now,
    policy,
  );
  const state = (k: ScheduledKey & { revokedAt: Date | null }) => {
    if (k.revokedAt) return `revoked ${k.revokedAt.toISOString()}, unpublished, its tokens refused`;
    const span = schedule.get(k.kid);
    if (span) {
      const until = span.until ? ` until ${span.until.toISOString()}` : "";
      return span.from <= now ? `signing${until}` : `signs from ${span.from.toISOString()}${until}`;
    }
    if (!k.retiredAt) return "published, no longer signing";
    const unpublishedAt = new Date(k.retiredAt.getTime() + policy.retiredKeyGraceMs);
    return unpublishedAt > now
      ? `published until ${unpublishedAt.toISOString()}, no longer signing`
      : `retired, unpublished since ${unpublishedAt.toISOString()}`;
  };
  return keys.map((k) => `${k.kid}\t${k.alg}\tcreated ${k.createdAt.toISOString()}\t${state(k)}`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  runCli(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      // A bad configuration, or a database that cannot be used (e.g. held by a running service).
      const known = describeStartFailure(err);
      // errMessage, not err.message: a failed statement's message carries its parameters (a private JWK).
      console.error(`error: ${known && err instanceof Error ? err.message : errMessage(err)}`);
      process.exit(known?.exitCode ?? 1);
    },
  );
}
