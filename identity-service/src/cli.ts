/**
 * Administration of the identity service: `npm run identity -- <command>`.
 *
 *   clients create <client-id> --scopes "customer:read customer:write" [--description "…"]
 *   clients list
 *   clients disable <client-id>
 *   clients rotate-secret <client-id>
 *   keys list
 *   keys rotate
 *
 * Uses the same configuration as the server (IDENTITY_DATABASE_URL) and
 * opens the database as the service host does, migrating it first.
 */
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { describeStartFailure } from "@customer-platform/runtime/main";
import { openServiceDatabase } from "@customer-platform/runtime/service-host";
import { eq, isNull } from "drizzle-orm";
import { envToConfig } from "./config.js";
import { identityDatabase } from "./database.js";
import { clients, signingKeys } from "./db/schema.js";
import { hashToken, KEY_ACTIVATION_DELAY_MS, newSigningKey } from "./tokens.js";

const CLIENT_ID = /^[a-z][a-z0-9._-]{2,63}$/;
const SCOPE = /^[!#-[\]-~]+$/;

/** Runs one CLI command; returns the process exit code. */
export async function runCli(argv: string[], env = process.env, out = console.log): Promise<number> {
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
        for (const k of await db.select().from(signingKeys)) {
          const state = !k.retiredAt ? "active" : k.retiredAt > new Date() ? "retiring" : "retired";
          out(`${k.kid}\t${k.alg}\t${k.createdAt.toISOString()}\t${state} ${k.retiredAt?.toISOString() ?? ""}`.trim());
        }
        return 0;
      }
      case "keys rotate": {
        // The new key is published now and signs after KEY_ACTIVATION_DELAY_MS; the old ones
        // sign until then and stay in the JWKS until their last tokens expired.
        const now = new Date();
        const key = await newSigningKey(now);
        const retireAt = new Date(now.getTime() + KEY_ACTIVATION_DELAY_MS + 60_000);
        await db.transaction(async (tx) => {
          await tx.update(signingKeys).set({ retiredAt: retireAt }).where(isNull(signingKeys.retiredAt));
          await tx.insert(signingKeys).values(key);
        });
        out(
          `new signing key ${key.kid}: published now, signing from ${new Date(now.getTime() + KEY_ACTIVATION_DELAY_MS).toISOString()}`,
        );
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
