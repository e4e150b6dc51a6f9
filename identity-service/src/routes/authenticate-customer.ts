import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { placeholder, placeholders } from "@customer-platform/runtime/db";
import { addressLimitKey } from "@customer-platform/runtime/interceptors";
import { EVENT_COLUMNS, type OutboxEvent } from "@customer-platform/runtime/outbox-writer";
import { eq, getTableColumns, type SQL, sql } from "drizzle-orm";
import { identities, outbox, refreshTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { AuthenticationMethod, customerAuthenticatedEvent } from "../events.js";
import { grantAudiences, newCustomerSession, sessionClient, verifiedEmail } from "../sessions.js";
import { loginThrottleKey } from "../throttle.js";
import { accountDisabled, invalidLogin, normalizeEmail } from "./credentials.js";

/**
 * AuthenticateCustomer: password sign-in. Unknown email and wrong password
 * take the same path to the same answer: one lookup, one argon2id
 * verification (against a dummy hash when there is no identity), then
 * UNAUTHENTICATED. The right password of a disabled identity is
 * FAILED_PRECONDITION ("account disabled"). A successful one is recorded in one prepared statement
 * (see prepareSignIn): one round trip, atomic without BEGIN and COMMIT.
 */
export function authenticateCustomer(
  deps: AuthServiceDeps,
): Pick<ServiceImpl<typeof AuthService>, "authenticateCustomer"> {
  const check = passwordSignIn(deps);
  const record = prepareSignIn(deps);
  return {
    async authenticateCustomer(req, ctx) {
      // Before the password is looked at: the answer depends on the request alone.
      const audiences = grantAudiences(req.audience, deps.firstPartyAudiences);
      const { identity, rehash } = await check(req.email, req.password, deps.clientAddress(ctx));
      const now = deps.now();
      const session = await newCustomerSession(deps, identity.customerId, {
        audiences,
        email: verifiedEmail(identity),
        client: sessionClient(deps, ctx),
      });
      const event = customerAuthenticatedEvent(deps.events, identity.customerId, AuthenticationMethod.PASSWORD, now);
      const written = await record.execute({
        // session.row's customerId is the identity's: the update's key.
        signedInAt: now,
        rehash: rehash ?? null,
        ...session.row,
        ...eventColumns(event),
      });
      // The identity went away since it was read (nothing was written): as if it had never been there.
      if (written.length === 0) throw invalidLogin();
      return { customerId: identity.customerId, tokens: session.tokens };
    },
  };
}

/** An identity whose password was right, and its password's new hash when the parameters got stronger. */
export interface CheckedSignIn {
  identity: typeof identities.$inferSelect;
  rehash: string | undefined;
}

/**
 * The password check of a sign-in, shared by AuthenticateCustomer and the
 * hosted sign-in page (oauth/authorize.ts): the per-address limit
 * (RESOURCE_EXHAUSTED), the per-login throttle (RESOURCE_EXHAUSTED,
 * FAILED_PRECONDITION while locked), one lookup and one argon2id
 * verification (a dummy hash for an unknown email), UNAUTHENTICATED
 * (`invalid email or password`) for either, and FAILED_PRECONDITION
 * (`account disabled`) only after the right password. Nothing is written
 * but the throttle: the caller records the sign-in.
 */
export function passwordSignIn(
  deps: Pick<AuthServiceDeps, "db" | "rateLimits" | "throttle" | "passwords">,
): (email: string, password: string, clientAddress: string) => Promise<CheckedSignIn> {
  // Built once: the SQL text is not rebuilt per call, and PostgreSQL parses and plans it once per connection.
  const byEmail = deps.db
    .select()
    .from(identities)
    .where(sql`lower(${identities.email}) = ${sql.placeholder("email")}`)
    .prepare("authenticate_customer_identity");
  return async (rawEmail, password, client) => {
    const email = normalizeEmail(rawEmail);
    // Spraying (one guess at many logins) meets the limit per address; guessing at one login, its throttle.
    await deps.rateLimits.signIn.consume(addressLimitKey(client));
    const throttleKey = loginThrottleKey(email);
    await deps.throttle.reserve(throttleKey);
    const [identity] = await byEmail.execute({ email });
    if (!identity) {
      await deps.passwords.verifyDummy(password, client);
      throw invalidLogin();
    }
    if (!(await deps.passwords.verify(identity.passwordHash, password, client))) throw invalidLogin();
    await deps.throttle.succeed(throttleKey);
    // Told only to whoever knows the password: to anyone else a suspended account answers as above.
    if (identity.status !== "active") throw accountDisabled();
    // Parameters got stronger since this hash was made: upgrade it now that we know the password.
    const rehash = deps.passwords.needsRehash(identity.passwordHash)
      ? await deps.passwords.hash(password, client)
      : undefined;
    return { identity, rehash };
  };
}

/** The refresh-token columns a new session writes (parent_id, rotated_at, revoked_at keep their defaults). */
const SESSION_KEYS = [
  "id",
  "tokenHash",
  "familyId",
  "clientId",
  "scope",
  "audiences",
  "createdAt",
  "expiresAt",
  "sessionExpiresAt",
  "userAgent",
  "ipAddress",
] as const;
const eventColumns = (event: OutboxEvent) => Object.fromEntries(EVENT_COLUMNS.map((k) => [k, event[k]]));

/** `insert into table (columns) select values from source`: each value for the column of its key. */
function insertFrom(table: typeof refreshTokens | typeof outbox, values: Record<string, SQL>, source: SQL): SQL {
  const columns: Record<string, { name: string }> = getTableColumns(table);
  const entries = Object.entries(values);
  const names = entries.map(([k]) => {
    const column = columns[k];
    if (!column) throw new Error(`${k} is not a column of the table`);
    return sql.identifier(column.name);
  });
  return sql`insert into ${table} (${sql.join(names, sql`, `)}) select ${sql.join(
    entries.map(([, v]) => v),
    sql`, `,
  )} from ${source}`;
}

/**
 * A successful sign-in's writes as one statement: the identity's
 * `last_sign_in_at` (and its upgraded hash, when there is one), the new
 * session's refresh token, the CustomerAuthenticated event, and the
 * relay's wake-up (`pg_notify`, delivered at commit). The token row and the
 * event are written for each row the update returns, so all or nothing is
 * written; one row comes back, none if the identity is gone.
 */
function prepareSignIn(deps: Pick<AuthServiceDeps, "db" | "events">) {
  const { db } = deps;
  const signedInAt = placeholder("signedInAt", identities.lastSignInAt);
  const rehash = sql`${placeholder("rehash", identities.passwordHash)}::text`;
  const signedIn = db.$with("signed_in").as(
    db
      .update(identities)
      .set({
        lastSignInAt: signedInAt,
        passwordHash: sql`coalesce(${rehash}, ${identities.passwordHash})`,
        updatedAt: sql`case when ${rehash} is null then ${identities.updatedAt} else ${signedInAt} end`,
      })
      .where(eq(identities.customerId, placeholder("customerId", identities.customerId)))
      .returning({ customerId: identities.customerId }),
  );
  const signedInRow = sql`${signedIn}`;
  const session = db.$with("session", {}).as(
    insertFrom(
      refreshTokens,
      {
        ...placeholders(refreshTokens, SESSION_KEYS),
        customerId: sql`${signedIn}.${sql.identifier(identities.customerId.name)}`,
        audiences: sql`${placeholder("audiences", refreshTokens.audiences)}::text[]`,
      },
      signedInRow,
    ),
  );
  const queued = db.$with("queued", {}).as(insertFrom(outbox, placeholders(outbox, EVENT_COLUMNS), signedInRow));
  return db
    .with(signedIn, session, queued)
    .select({ notified: sql`pg_notify(${deps.events.channel}, '')` })
    .from(signedIn)
    .prepare("authenticate_customer_write");
}
