/**
 * Administration of the identity service: `npm run identity -- <command>`.
 *
 *   clients create <client-id> --scopes "customer:read customer:write" [--description "…"]
 *   clients list
 *   clients disable <client-id>
 *   clients rotate-secret <client-id>
 *   keys list     (each key: when it signs, or until when it stays in the JWKS)
 *   keys rotate   (published now, signing once every cached JWKS copy has expired)
 *
 * Uses the same configuration as the server (IDENTITY_DATABASE_URL) and
 * opens the database as the service host does, migrating it first.
 */
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { describeStartFailure } from "@customer-platform/runtime/main";
import { openServiceDatabase } from "@customer-platform/runtime/service-host";
import { desc, eq } from "drizzle-orm";
import { envToConfig } from "./config.js";
import { identityDatabase } from "./database.js";
import { clients, signingKeys } from "./db/schema.js";
import {
  hashToken,
  KEY_ACTIVATION_MARGIN_MS,
  KEY_RELOAD_MS,
  type KeyPolicy,
  keyPolicy,
  rotateSigningKey,
  type ScheduledKey,
  signingSchedule,
} from "./tokens.js";

const CLIENT_ID = /^[a-z][a-z0-9._-]{2,63}$/;
const SCOPE = /^[!#-[\]-~]+$/;

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
    options: { scopes: { type: "string" }, description: { type: "string" } },
  });
  const [group, command, arg] = positionals;
  const config = envToConfig(env);
  const database = await openServiceDatabase(config, identityDatabase, { name: "identity-cli", max: 2 });
  try {
    const db = database.db;
    const newSecret = () => randomBytes(32).toString("base64url");
    switch (`${group} ${command}`) {
      case "clients create": {
        if (!arg || !CLIENT_ID.test(arg) || arg === config.firstPartyClientId) {
          throw new Error(`client id must match ${CLIENT_ID} and not be "${config.firstPartyClientId}"`);
        }
        const scopes = (values.scopes ?? "").split(/[\s,]+/).filter(Boolean);
        if (scopes.length === 0 || !scopes.every((s) => SCOPE.test(s))) {
          throw new Error('--scopes is required, e.g. --scopes "customer:read"');
        }
        const secret = newSecret();
        await db.insert(clients).values({
          clientId: arg,
          secretHash: hashToken(secret),
          scopes,
          description: values.description ?? "",
          createdAt: new Date(),
        });
        out(JSON.stringify({ client_id: arg, client_secret: secret, scopes }, null, 2));
        out("The secret is shown once; only its hash is stored.");
        return 0;
      }
      case "clients list": {
        const rows = await db.select({ c: clients }).from(clients);
        for (const { c } of rows) {
          out(`${c.clientId}\t${c.scopes.join(" ")}\t${c.disabledAt ? "disabled" : "active"}\t${c.description}`);
        }
        return 0;
      }
      case "clients disable": {
        const r = await db
          .update(clients)
          .set({ disabledAt: new Date() })
          .where(eq(clients.clientId, arg ?? ""))
          .returning();
        if (r.length === 0) throw new Error(`no client "${arg}"`);
        out(`disabled ${arg}`);
        return 0;
      }
      case "clients rotate-secret": {
        const secret = newSecret();
        const r = await db
          .update(clients)
          .set({ secretHash: hashToken(secret) })
          .where(eq(clients.clientId, arg ?? ""))
          .returning();
        if (r.length === 0) throw new Error(`no client "${arg}"`);
        out(JSON.stringify({ client_id: arg, client_secret: secret }, null, 2));
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
        out("usage: identity clients create <id> --scopes <scopes> | clients list | clients disable <id> |");
        out("       clients rotate-secret <id> | keys list | keys rotate");
        return 2;
    }
  } finally {
    await database.close();
  }
}

/**
 * One line per key, newest first: kid, algorithm, when it was created, and
 * when it signs or until when it stays in the JWKS.
 */
function describeKeys(keys: readonly (ScheduledKey & { alg: string })[], now: Date, policy: KeyPolicy): string[] {
  const schedule = signingSchedule(keys, now, policy);
  const state = (k: ScheduledKey) => {
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
    (err: Error) => {
      console.error(`error: ${err.message}`);
      // A bad configuration, or a database that cannot be used (e.g. held by a running service).
      process.exit(describeStartFailure(err)?.exitCode ?? 1);
    },
  );
}
