/**
 * Attacks on credentials and tokens against the real platform: two identity
 * instances on one user directory (the second one issuing tokens for another
 * audience) and the customer service trusting the first one's JWKS.
 *
 * - brute force: against one login, spread over many logins, split over both
 *   instances, and against ChangePassword with a stolen access token;
 * - refresh-token replay and parallel use, and the access tokens of a revoked
 *   family (rejected by the customer service too);
 * - token substitution (a token for another audience, a foreign key claiming
 *   our issuer);
 * - account enumeration by response (timing: identity-service/test/enumeration.test.ts).
 * (Forged and tampered JWTs: jwt-tampering.test.ts.)
 *
 * After every test, the log lines of all three servers and every error the
 * test's calls received (message, details, headers) are scanned for every
 * password, client secret and token sent or issued and every hash stored
 * (test/support/secrets.ts).
 */
import { sign as cryptoSign, generateKeyPairSync } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { createRemoteJWKSet, jwtVerify } from "jose";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer, CORE_PROTOCOLS, failure, outcome, rpcError } from "../support/clients.js";
import { customerClaims, expectRejectedEverywhere, jwt, readSigningKey } from "../support/jwt.js";
import { type Platform, type SignedUp, startPlatform, uniqueEmail } from "../support/platform.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { createSecretScanner } from "../support/secrets.js";
import { type RunningIdentityService, startIdentityService } from "../support/services.js";
import { field } from "../support/wire.js";

const FREE_ATTEMPTS = 3;
const THROTTLE = { IDENTITY_THROTTLE_FREE_ATTEMPTS: String(FREE_ATTEMPTS), IDENTITY_THROTTLE_BASE_DELAY_MS: "60000" };
const PASSWORD = "correct horse battery staple";
const WRONG = "Tr0ub4dor&3 guess";

let identityDb: TestDatabase;
let platform: Platform;
/** A second identity instance on the same database, issuer and keys, issuing tokens for payments-service. */
let payments: RunningIdentityService;
let identitySql: postgres.Sql;
/** A registered customer, and a service token allowed to introspect. */
let victim: SignedUp;
let introspector: string;

beforeAll(async () => {
  identityDb = await createTestDatabase("abuse_credentials");
  platform = await startPlatform({ identityDb, identityEnv: THROTTLE });
  payments = await startIdentityService(
    { ...THROTTLE, IDENTITY_ISSUER: platform.issuer, IDENTITY_AUDIENCES: "payments-service", LOG_LEVEL: "warn" },
    // One outbox, so one stream: whichever instance relays publishes where the customer service reads.
    { database: identityDb, streams: platform.identity.streams },
  );
  identitySql = identityDb.sql;
  victim = await platform.newCustomer(PASSWORD, "victim");
  introspector = await platform.serviceToken("identity:introspect", platform.issuer);
});

afterAll(async () => {
  secrets.close();
  await payments?.close();
  await platform?.close();
  await identityDb?.drop();
});

const secrets = createSecretScanner();
const allLogs = () => ({
  identity: platform.identity.logs.lines,
  payments: payments.logs.lines,
  customer: platform.customer.logs.lines,
});

afterEach(async () => {
  await secrets.addStored(identitySql);
  secrets.expectClean(allLogs());
});

/** AuthService on the first instance (a) or the second (b). */
const authA = () => platform.auth();
const authB = () => payments.clients.client(AuthService);

const count = (xs: string[], x: string) => xs.filter((y) => y === x).length;

async function throttleRow(key: string) {
  const rows = await identitySql<{ failures: number; blocked: boolean }[]>`
    select failures, blocked_until > now() as blocked from login_throttles
    where key = sha256(convert_to(${key}, 'UTF8'))`;
  return rows[0];
}

describe("brute force", () => {
  it("against one login: only the free attempts reach the password check, split over two instances on one database", async () => {
    const target = await platform.signUp(PASSWORD, "brute");
    const results = await Promise.all(
      Array.from({ length: 16 }, (_, i) =>
        outcome((i % 2 ? authA() : authB()).authenticateCustomer({ email: target.email, password: `${WRONG}${i}` })),
      ),
    );
    expect(count(results, "Unauthenticated")).toBe(FREE_ATTEMPTS);
    expect(count(results, "ResourceExhausted")).toBe(16 - FREE_ATTEMPTS);
    expect(await throttleRow(`login:${target.email}`)).toEqual({ failures: FREE_ATTEMPTS, blocked: true });
    // Blocked means blocked: the right password is not even checked, on either instance,
    // whatever case or surrounding blanks the email is sent with.
    for (const [auth, email] of [
      [authA(), target.email],
      [authB(), target.email],
      [authA(), `  ${target.email.toUpperCase()} `],
    ] as const) {
      const err = await failure(auth.authenticateCustomer({ email, password: PASSWORD }));
      expect(err).toMatchObject({
        code: Code.ResourceExhausted,
        rawMessage: expect.stringMatching(/^too many attempts, retry in \d+s$/),
      });
      const [retry] = err?.findDetails(RetryInfoSchema) ?? [];
      expect(Number(retry?.retryDelay?.seconds)).toBeGreaterThan(50);
    }
    expect(await throttleRow(`login:${target.email}`)).toEqual({ failures: FREE_ATTEMPTS, blocked: true });
  });

  it("spread over many logins: each login is throttled on its own, the others are unaffected", async () => {
    const logins = await Promise.all(Array.from({ length: 6 }, (_, i) => platform.signUp(PASSWORD, `spread${i}`)));
    const unknown = Array.from({ length: 4 }, (_, i) => uniqueEmail(`ghost${i}`));
    const emails = [...logins.map((l) => l.email), ...unknown];
    const perLogin = FREE_ATTEMPTS + 3;
    const results = await Promise.all(
      emails.flatMap((email, l) =>
        Array.from({ length: perLogin }, (_, i) =>
          outcome(((l + i) % 2 ? authA() : authB()).authenticateCustomer({ email, password: WRONG })).then(
            (r) => [email, r] as const,
          ),
        ),
      ),
    );
    for (const email of emails) {
      const mine = results.filter(([e]) => e === email).map(([, r]) => r);
      expect(count(mine, "Unauthenticated"), email).toBe(FREE_ATTEMPTS);
      expect(count(mine, "ResourceExhausted"), email).toBe(perLogin - FREE_ATTEMPTS);
    }
    // Someone else's login still works at once.
    await expect(authB().authenticateCustomer({ email: victim.email, password: PASSWORD })).resolves.toMatchObject({
      customerId: victim.customerId,
    });
  });

  // The per-address limits (loose in this harness) stop sprays: test/security/rate-limits.test.ts.
  it("the per-login throttle does not count a spray of one guess per login", async () => {
    const emails = Array.from({ length: 3 * FREE_ATTEMPTS }, (_, i) => uniqueEmail(`spray${i}`));
    const results = await Promise.all(
      emails.map((email) => outcome(authA().authenticateCustomer({ email, password: WRONG }))),
    );
    expect(results).toEqual(emails.map(() => "Unauthenticated"));
  });

  it("ChangePassword with a stolen access token: guesses of the current password are throttled per customer", async () => {
    const target = await platform.signUp(PASSWORD, "stolen");
    // A token for the identity service (its issuer), as ChangePassword needs.
    const signedIn = await authA().authenticateCustomer({
      email: target.email,
      password: PASSWORD,
      audience: [platform.issuer],
    });
    const stolen = signedIn.tokens?.accessToken ?? "";
    const guess = (auth: ReturnType<typeof authA>, currentPassword: string) =>
      auth.changePassword({ currentPassword, newPassword: "attacker's new password" }, bearer(stolen));
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) => outcome(guess(i % 2 ? authA() : authB(), `${WRONG}${i}`))),
    );
    expect(count(results, "Unauthenticated")).toBe(FREE_ATTEMPTS);
    expect(count(results, "ResourceExhausted")).toBe(10 - FREE_ATTEMPTS);
    await expect(guess(authA(), PASSWORD)).rejects.toMatchObject({ code: Code.ResourceExhausted });
    // The guesses bought nothing at sign-in either: one counter per login.
    await expect(authA().authenticateCustomer({ email: target.email, password: PASSWORD })).rejects.toMatchObject({
      code: Code.ResourceExhausted,
    });
  });
});

describe("refresh-token replay", () => {
  async function familyOf(refreshToken: string) {
    return identitySql<{ revoked: boolean; reason: string | null }[]>`
      select revoked_at is not null as revoked, revoke_reason as reason from refresh_tokens
      where family_id = (select family_id from refresh_tokens where token_hash = sha256(convert_to(${refreshToken}, 'UTF8')))
      order by id`;
  }

  it("reusing a rotated refresh token revokes its whole family, on either instance; other sessions live on", async () => {
    const signIn = await authA().authenticateCustomer({ email: victim.email, password: PASSWORD });
    const other = await authA().authenticateCustomer({ email: victim.email, password: PASSWORD });
    const rt1 = signIn.tokens?.refreshToken ?? "";
    const rt2 = (await authA().refreshToken({ refreshToken: rt1 })).tokens?.refreshToken ?? "";
    const rt3 = (await authB().refreshToken({ refreshToken: rt2 })).tokens?.refreshToken ?? "";
    expect(new Set([rt1, rt2, rt3]).size).toBe(3);

    // The attacker replays the first one, on the other instance.
    await expect(authB().refreshToken({ refreshToken: rt1 })).rejects.toMatchObject(
      rpcError("invalid refresh token", Code.Unauthenticated),
    );
    // The legitimate holder's current token is dead too, and says so nowhere else.
    await expect(authA().refreshToken({ refreshToken: rt3 })).rejects.toMatchObject(
      rpcError("invalid refresh token", Code.Unauthenticated),
    );
    for (const rt of [rt1, rt2, rt3]) {
      await expect(authA().introspectToken({ token: rt }, bearer(introspector))).resolves.toMatchObject({
        active: false,
      });
    }
    expect(await familyOf(rt1)).toEqual([
      { revoked: true, reason: "reuse" },
      { revoked: true, reason: "reuse" },
      { revoked: true, reason: "reuse" },
    ]);
    // Another sign-in is another family.
    await expect(authA().refreshToken({ refreshToken: other.tokens?.refreshToken ?? "" })).resolves.toMatchObject({
      tokens: { tokenType: "Bearer" },
    });
  });

  it("parallel use of one refresh token: at most one wins, and the race revokes the family", async () => {
    const signIn = await authA().authenticateCustomer({ email: victim.email, password: PASSWORD });
    const rt = signIn.tokens?.refreshToken ?? "";
    const settled = await Promise.allSettled(
      Array.from({ length: 6 }, (_, i) => (i % 2 ? authA() : authB()).refreshToken({ refreshToken: rt })),
    );
    const won = settled.filter((s) => s.status === "fulfilled");
    expect(won.length).toBe(1);
    for (const s of settled) {
      if (s.status === "rejected") {
        expect(ConnectError.from(s.reason)).toMatchObject(rpcError("invalid refresh token", Code.Unauthenticated));
      }
    }
    const next = won[0]?.status === "fulfilled" ? (won[0].value.tokens?.refreshToken ?? "") : "";
    await expect(authA().refreshToken({ refreshToken: next })).rejects.toMatchObject({ code: Code.Unauthenticated });
    expect((await familyOf(rt)).every((r) => r.revoked)).toBe(true);
  });

  it("replay of a rotated refresh token revokes the family's access tokens too, at the customer service and at introspection", async () => {
    const signIn = await authA().authenticateCustomer({ email: victim.email, password: PASSWORD });
    const at1 = signIn.tokens?.accessToken ?? "";
    const rt1 = signIn.tokens?.refreshToken ?? "";
    const at2 = (await authA().refreshToken({ refreshToken: rt1 })).tokens?.accessToken ?? "";
    const get = (token: string) => platform.customers().getCustomer({ customerId: victim.customerId }, bearer(token));
    const introspect = (token: string) => authA().introspectToken({ token }, bearer(introspector));
    await expect(get(at2)).resolves.toMatchObject({ customer: { customerId: victim.customerId } });
    await expect(introspect(at2)).resolves.toMatchObject({ active: true });
    // Another session of the same customer, which the replay must not touch.
    const other = (await authA().authenticateCustomer({ email: victim.email, password: PASSWORD })).tokens;

    // The attacker replays the rotated token, on the other instance.
    await expect(authB().refreshToken({ refreshToken: rt1 })).rejects.toMatchObject({ code: Code.Unauthenticated });
    for (const token of [at1, at2]) {
      await expect(introspect(token)).resolves.toEqual(expect.objectContaining({ active: false, sub: "" }));
      // The customer service learns of it from the TokensRevoked event.
      await expect
        .poll(() => failure(get(token)), { timeout: 5_000, interval: 50 })
        .toMatchObject(rpcError("access token revoked", Code.Unauthenticated));
    }
    await expect(get(other?.accessToken ?? "")).resolves.toMatchObject({ customer: { customerId: victim.customerId } });
    await expect(introspect(other?.accessToken ?? "")).resolves.toMatchObject({ active: true });
  });

  it("an explicitly revoked access token is rejected by the customer service and by introspection", async () => {
    const { tokens } = await authA().authenticateCustomer({ email: victim.email, password: PASSWORD });
    const token = tokens?.accessToken ?? "";
    const get = () => platform.customers().getCustomer({ customerId: victim.customerId }, bearer(token));
    await expect(get()).resolves.toMatchObject({ customer: { customerId: victim.customerId } });
    await authB().revokeToken({ token });
    await expect(authA().introspectToken({ token }, bearer(introspector))).resolves.toEqual(
      expect.objectContaining({ active: false, sub: "" }),
    );
    await expect
      .poll(() => failure(get()), { timeout: 5_000, interval: 50 })
      .toMatchObject(rpcError("access token revoked", Code.Unauthenticated));
    // Its refresh token (the session) was not revoked: a fresh access token works.
    const fresh = await authA().refreshToken({ refreshToken: tokens?.refreshToken ?? "" });
    await expect(
      platform.customers().getCustomer({ customerId: victim.customerId }, bearer(fresh.tokens?.accessToken ?? "")),
    ).resolves.toMatchObject({ customer: { customerId: victim.customerId } });
  });
});

describe("token substitution", () => {
  it("a token for payments-service, signed with the same issuer and key, is rejected by the customer service", async () => {
    const { tokens } = await authB().authenticateCustomer({ email: victim.email, password: PASSWORD });
    const token = tokens?.accessToken ?? "";
    // The token is genuine: our issuer, our key, valid for payments-service.
    const jwks = createRemoteJWKSet(new URL(`${platform.issuer}/.well-known/jwks.json`));
    const { payload } = await jwtVerify(token, jwks, { issuer: platform.issuer, audience: "payments-service" });
    expect(payload.aud).toEqual(["payments-service"]);
    expect(payload.sub).toBe(victim.customerId);

    for (const protocol of CORE_PROTOCOLS) {
      const customers = platform.customers(protocol);
      await expect(customers.getCustomer({ customerId: victim.customerId }, bearer(token))).rejects.toMatchObject(
        rpcError("invalid access token", Code.Unauthenticated),
      );
      await expect(
        customers.updateCustomer(
          { customer: { customerId: victim.customerId, givenName: "Mallory" }, updateMask: { paths: ["given_name"] } },
          bearer(token),
        ),
      ).rejects.toMatchObject(rpcError("invalid access token", Code.Unauthenticated));
    }
    // The same customer's token for customer-service is accepted, and nothing was changed.
    const own = await authA().authenticateCustomer({ email: victim.email, password: PASSWORD });
    const got = await platform
      .customers()
      .getCustomer({ customerId: victim.customerId }, bearer(own.tokens?.accessToken ?? ""));
    expect(got.customer?.givenName).toBe(victim.profile.givenName);
  });

  it("a token from a foreign key that claims our issuer and audience is rejected by both services", async () => {
    const foreign = generateKeyPairSync("ed25519").privateKey;
    const { kid } = await readSigningKey(identitySql);
    const token = jwt({ alg: "EdDSA", typ: "at+jwt", kid }, customerClaims(platform.issuer, victim.customerId), (i) =>
      cryptoSign(null, i, foreign),
    );
    await expectRejectedEverywhere(platform, token, "invalid access token", { ...victim, introspector });
  });
});

describe("enumeration by response", () => {
  interface RawAnswer {
    status: number;
    headers: [string, string][];
    body: string;
  }
  /** One sign-in over Connect on HTTP/1.1, as the bytes on the wire show it, minus `date`. */
  async function rawSignIn(email: string, password: string, encoding: "json" | "proto"): Promise<RawAnswer> {
    const body =
      encoding === "json" ? JSON.stringify({ email, password }) : Buffer.concat([field(1, email), field(2, password)]);
    const res = await fetch(`${platform.identity.url}/identity.v1.AuthService/AuthenticateCustomer`, {
      method: "POST",
      body,
      headers: { "content-type": `application/${encoding}` },
    });
    return {
      status: res.status,
      headers: [...res.headers.entries()].filter(([k]) => k !== "date"),
      body: await res.text(),
    };
  }

  it.each(["json", "proto"] as const)(
    "an unknown email and a wrong password get identical answers (%s), also once both are throttled",
    async (encoding) => {
      const known = await platform.signUp(PASSWORD, "enum");
      const unknown = uniqueEmail("enum-ghost");
      const first = await rawSignIn(known.email, WRONG, encoding);
      expect(first.status).toBe(401);
      expect(await rawSignIn(unknown, WRONG, encoding)).toEqual(first);
      for (let i = 1; i < FREE_ATTEMPTS; i++) {
        expect(await rawSignIn(known.email, WRONG, encoding)).toEqual(first);
        expect(await rawSignIn(unknown, WRONG, encoding)).toEqual(first);
      }
      const blocked = await rawSignIn(known.email, WRONG, encoding);
      expect(blocked.status).toBe(429);
      expect(await rawSignIn(unknown, WRONG, encoding)).toEqual(blocked);
    },
  );
});

describe("logs and errors under attack", () => {
  it("the scan after each test covers what an attack sends and gets: guesses, stolen and replayed tokens, their errors", async () => {
    const target = await platform.signUp(PASSWORD, "scanned");
    const out: string[] = [];
    const clientId = `scanned-${target.customerId.slice(-8)}`;
    expect(
      await runCli(["clients", "create", clientId, "--scopes", "customer:read"], payments.env, (l) => out.push(l)),
    ).toBe(0);
    const { client_secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
    const errorsBefore = secrets.errors.length;
    await expect(
      authA().authenticateClient({ clientId, clientSecret: `${client_secret.slice(1)}x`, scope: "" }),
    ).rejects.toMatchObject(rpcError("invalid client credentials", Code.Unauthenticated));
    const guess = `${WRONG} ${target.email}`;
    await expect(authB().authenticateCustomer({ email: target.email, password: guess })).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    const rotated = await authA().refreshToken({ refreshToken: target.refreshToken });
    await expect(authB().refreshToken({ refreshToken: target.refreshToken })).rejects.toMatchObject(
      rpcError("invalid refresh token", Code.Unauthenticated),
    );
    // A stolen access token with a tampered signature, at the customer service.
    const at = target.accessToken;
    const tampered = `${at.slice(0, -10)}${at.at(-10) === "A" ? "B" : "A"}${at.slice(-9)}`;
    await expect(
      platform.customers().getCustomer({ customerId: target.customerId }, bearer(tampered)),
    ).rejects.toMatchObject(rpcError("invalid access token", Code.Unauthenticated));
    expect(secrets.errors.length - errorsBefore).toBe(4);
    // What the calls carried is known to the scan, in every form it looks for.
    for (const secret of [
      PASSWORD,
      guess,
      target.refreshToken,
      rotated.tokens?.refreshToken ?? "",
      `${client_secret.slice(1)}x`,
      tampered,
    ]) {
      expect(secrets.find(`"x":"${secret}"`), secret).not.toEqual([]);
      expect(secrets.find(`"x":"${Buffer.from(secret).toString("base64")}"`), secret).not.toEqual([]);
    }
    await secrets.addStored(identitySql);
    const [stored] = await identitySql<[{ password_hash: string }]>`
      select password_hash from identities where customer_id = ${target.customerId}`;
    expect(secrets.find(stored.password_hash)).not.toEqual([]);
    // A client secret that no call carried is known by its stored hash.
    expect(secrets.find(`"x":"${client_secret}"`)).toEqual([
      expect.stringMatching(/^an issued refresh token or client secret/),
    ]);
  });
});
