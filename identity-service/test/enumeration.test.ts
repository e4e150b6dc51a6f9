/**
 * Account enumeration. An unknown email, a wrong password and a disabled
 * identity (to anyone without its password), with the production (OWASP)
 * argon2id parameters:
 *
 * - get the same bytes back;
 * - do the same work: the same statements, in the same order, reach
 *   PostgreSQL (counted by a proxy in front of the real database,
 *   test/support/pg-statements.ts), and argon2id verifies once, with the
 *   same parameters;
 * - take the same time: at production cost to within a quarter of a
 *   sign-in; and, with argon2id made cheap so that round trips dominate, to
 *   within half a database write measured in the same run, so that one
 *   write round trip skipped on either path fails it.
 *
 * And a hash made with older parameters is upgraded on the next successful
 * sign-in.
 */
import { randomBytes, randomUUID } from "node:crypto";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import argon2 from "argon2";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { type StatementLog, startStatementLog } from "../../test/support/pg-statements.js";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { median, medianHalfWidth, pairedDifferences } from "../../test/support/timing.js";

const OWASP_PARAMS = "$argon2id$v=19$m=19456,t=2,p=1";
const PASSWORD = "correct horse battery staple";
// Dozens of failures for one login must all reach the password check.
const THROTTLE = { IDENTITY_THROTTLE_FREE_ATTEMPTS: "1000" };

/** The server with the production parameters, its database behind a statement-counting proxy. */
let svc: RunningIdentityService;
let database: TestDatabase;
let proxy: StatementLog;
let sql: postgres.Sql;
/** A server with the tests' cheap argon2id (m=1 MiB, t=1), its database reached directly. */
let fast: RunningIdentityService;

beforeAll(async () => {
  database = await createTestDatabase("enumeration");
  const { hostname, port } = new URL(database.url);
  proxy = await startStatementLog({ host: hostname, port: Number(port) });
  svc = await startIdentityService(
    {
      ...THROTTLE,
      IDENTITY_DATABASE_URL: proxy.rewrite(database.url),
      IDENTITY_ARGON2_MEMORY_KIB: "19456",
      IDENTITY_ARGON2_ITERATIONS: "2",
    },
    { database },
  );
  sql = database.sql;
  fast = await startIdentityService(THROTTLE);
});

afterAll(async () => {
  await fast?.close();
  await svc?.close();
  await proxy?.close();
  await database?.drop();
});

const email = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;

async function signUp(): Promise<{ email: string; customerId: string }> {
  const address = email("known");
  const res = await svc.clients.client(AuthService).createCredentials({ email: address, password: PASSWORD });
  return { email: address, customerId: res.customerId };
}

async function storedHash(customerId: string): Promise<string> {
  const [row] = await sql<[{ password_hash: string }]>`
    select password_hash from identities where customer_id = ${customerId}`;
  return row.password_hash;
}

/** The parameters part of an argon2 hash: `$argon2id$v=19$m=…,t=…,p=…`. */
const paramsOf = (hash: string) => hash.split("$").slice(0, 4).join("$");

interface RawAnswer {
  status: number;
  headers: [string, string][];
  body: string;
}

/** One sign-in over Connect on HTTP/1.1 (fetch), the answer as bytes on the wire show it, minus `date`. */
async function rawSignIn(
  address: string,
  password: string,
  encoding: "json" | "proto" = "json",
  server: RunningIdentityService = svc,
): Promise<RawAnswer> {
  const body =
    encoding === "json"
      ? JSON.stringify({ email: address, password })
      : // AuthenticateCustomerRequest { email = 1; password = 2 } in protobuf binary.
        Buffer.concat([field(1, address), field(2, password)]);
  const res = await fetch(`${server.url}/identity.v1.AuthService/AuthenticateCustomer`, {
    method: "POST",
    headers: { "content-type": `application/${encoding}`, "connect-protocol-version": "1" },
    body,
  });
  return {
    status: res.status,
    headers: [...res.headers.entries()].filter(([name]) => name !== "date"),
    body: Buffer.from(await res.arrayBuffer()).toString("base64"),
  };
}

function field(num: number, value: string): Buffer {
  const bytes = Buffer.from(value, "utf8");
  if (bytes.length > 127) throw new Error("test strings stay below 128 bytes");
  return Buffer.concat([Buffer.from([(num << 3) | 2, bytes.length]), bytes]);
}

/** How long a failed sign-in took, in ms. */
async function timed(fn: () => Promise<RawAnswer>): Promise<number> {
  const start = performance.now();
  const answer = await fn();
  const ms = performance.now() - start;
  expect(answer.status).toBe(401);
  return ms;
}

describe("unknown email versus wrong password", () => {
  it("stores new hashes with the OWASP parameters", async () => {
    const user = await signUp();
    expect(paramsOf(await storedHash(user.customerId))).toBe(OWASP_PARAMS);
  });

  it.each(["json", "proto"] as const)("gives byte-identical answers (Connect, %s)", async (encoding) => {
    const user = await signUp();
    const disabled = await signUp();
    await sql`update identities set status = 'disabled' where customer_id = ${disabled.customerId}`;

    const wrongPassword = await rawSignIn(user.email, "wrong password!", encoding);
    const unknownEmail = await rawSignIn(email("unknown"), "wrong password!", encoding);
    const disabledIdentity = await rawSignIn(disabled.email, "wrong password!", encoding);
    expect(wrongPassword.status).toBe(401);
    expect(Buffer.from(wrongPassword.body, "base64").toString()).toContain("invalid email or password");
    expect(unknownEmail).toEqual(wrongPassword);
    expect(disabledIdentity).toEqual(wrongPassword);
    // Only its password tells that the account is disabled (AdminService.DisableIdentity's contract).
    const disabledRight = await rawSignIn(disabled.email, PASSWORD, encoding);
    expect(disabledRight.status).not.toBe(401);
    expect(Buffer.from(disabledRight.body, "base64").toString()).toContain("account disabled");
    // The right password gets a different answer: the comparison above can tell answers apart.
    expect((await rawSignIn(user.email, PASSWORD, encoding)).status).toBe(200);
  });

  it("does the same work: the same statements in the same order, one argon2id verification with the same parameters", async () => {
    const user = await signUp();
    const disabled = await signUp();
    await sql`update identities set status = 'disabled' where customer_id = ${disabled.customerId}`;
    const verify = vi.spyOn(argon2, "verify");
    try {
      /**
       * What one sign-in sent to PostgreSQL and which hashes argon2id verified
       * against (their parameters). Background work (the relay's poll, key
       * reloads) can add a statement to a call's window but never take one
       * away: of five calls, the one with the fewest statements shows the
       * call's own.
       */
      const work = async (address: () => string, password: string) => {
        let least: { statements: string[]; verified: string[] } | undefined;
        for (let i = 0; i < 5; i++) {
          const from = proxy.statements.length;
          verify.mockClear();
          await rawSignIn(address(), password);
          // Not the background work on the same pool: the readiness probe's `select 1`, and the stream
          // purger, which looks for purges when the relay has published (a sign-in's event).
          const statements = proxy.statements
            .slice(from)
            .map((s) => s.text)
            .filter((text) => text !== "select 1" && !text.includes("stream_purges"));
          const verified = verify.mock.calls.map(([hash]) => paramsOf(hash));
          if (!least || statements.length < least.statements.length) least = { statements, verified };
        }
        return least;
      };
      const wrongPassword = await work(() => user.email, "wrong password!");
      expect(wrongPassword).toEqual({
        statements: [
          expect.stringMatching(/^insert into rate_limits /),
          expect.stringMatching(/^insert into login_throttles /),
          expect.stringMatching(/^select .* from "identities" where lower\("identities"\."email"\) = \$1$/),
        ],
        verified: [OWASP_PARAMS],
      });
      // A fresh unknown login each time, and the same one again and again: no difference either.
      expect(await work(() => email("unknown"), "wrong password!")).toEqual(wrongPassword);
      const ghost = email("ghost");
      expect(await work(() => ghost, "wrong password!")).toEqual(wrongPassword);
      expect(await work(() => disabled.email, "wrong password!")).toEqual(wrongPassword);
      // The statements tell paths apart: a successful sign-in does more (and verifies the same way): it
      // clears its throttle, then records the sign-in, its session and its event in one statement.
      const signedIn = await work(() => user.email, PASSWORD);
      expect(signedIn).toEqual({
        statements: [
          ...(wrongPassword?.statements ?? []),
          expect.stringMatching(/^delete from "login_throttles" /),
          expect.stringMatching(
            /^with "signed_in" as \(update "identities" set .* returning "customer_id"\), "session" as \(insert into "refresh_tokens" .*\), "queued" as \(insert into "outbox" .*\) select pg_notify\(/,
          ),
        ],
        verified: [OWASP_PARAMS],
      });
    } finally {
      verify.mockRestore();
    }
  });

  it("takes the same time at production cost: the median of 40 paired differences is under a quarter of a sign-in", async () => {
    const user = await signUp();
    const known = () => timed(() => rawSignIn(user.email, "wrong password!"));
    const unknown = () => timed(() => rawSignIn(email("unknown"), "wrong password!"));
    await pairedDifferences(3, known, unknown);
    const signIn: number[] = [];
    const diffs = await pairedDifferences(
      40,
      async () => {
        const ms = await known();
        signIn.push(ms);
        return ms;
      },
      unknown,
    );
    const d = median(diffs);
    const typical = median(signIn);
    expect(Math.abs(d), `known − unknown ${d.toFixed(1)} ms, a sign-in ${typical.toFixed(1)} ms`).toBeLessThan(
      typical / 4,
    );
    // argon2id at m=19 MiB, t=2 takes a few ms at the very least; without the dummy verification the
    // unknown path would take a fraction of a millisecond more than its two statements.
    expect(typical).toBeGreaterThan(5);
  });

  it("takes the same time to within half a database write measured in the same run (cheap argon2id: round trips dominate)", async () => {
    // Known logins, one per pair, so that both kinds start a fresh throttle counter; hashed as the server would.
    const MIN_PAIRS = 200;
    const MAX_PAIRS = 1000;
    const tag = randomUUID().slice(0, 8);
    const hash = await argon2.hash("not the guess", {
      type: argon2.argon2id,
      memoryCost: 1024,
      timeCost: 1,
      parallelism: 1,
    });
    await fast.database.sql`
      insert into identities (customer_id, email, password_hash, created_at, updated_at, password_changed_at)
      select gen_random_uuid(), 'known.' || g || '.' || ${tag} || '@example.com', ${hash}, now(), now(), now()
      from generate_series(0, ${MAX_PAIRS + 20}) g`;
    const knownEmail = (i: number) => `known.${i}.${tag}@example.com`;
    /** One write round trip: the statement the throttle sends, from this process to the same database. */
    const write = async () => {
      const start = performance.now();
      await fast.database.sql`
        insert into login_throttles as t (key, failures, last_failure_at) values (${randomBytes(32)}, 1, now())
        on conflict (key) do update set failures = t.failures + 1`;
      return performance.now() - start;
    };
    const signIn = (address: string) => timed(() => rawSignIn(address, "wrong password!", "json", fast));
    const known = (i: number) => signIn(knownEmail(i));
    const unknown = () => signIn(email("unknown"));

    for (let i = MAX_PAIRS + 1; i <= MAX_PAIRS + 20; i++) await Promise.all([known(i), unknown(), write()]);
    // Batches of 50 pairs until the median is known to a quarter of a write either way, or MAX_PAIRS.
    const diffs: number[] = [];
    const writes: number[] = [];
    while (diffs.length < MAX_PAIRS) {
      const offset = diffs.length;
      diffs.push(
        ...(await pairedDifferences(
          50,
          (i) => known(offset + i),
          unknown,
          async () => writes.push(await write()),
        )),
      );
      if (diffs.length >= MIN_PAIRS && medianHalfWidth(diffs) < median(writes) / 4) break;
    }
    const d = median(diffs);
    const roundTrip = median(writes);
    const halfWidth = medianHalfWidth(diffs);
    const summary = `${diffs.length} pairs: known − unknown ${d.toFixed(3)} ± ${halfWidth.toFixed(3)} ms, a write ${roundTrip.toFixed(3)} ms`;
    expect(halfWidth, `too noisy to tell: ${summary}`).toBeLessThan(roundTrip / 4);
    expect(Math.abs(d), summary).toBeLessThan(roundTrip / 2);
  }, 120_000);
});

describe("rehash on sign-in", () => {
  it("upgrades a hash made with older parameters after a correct password, not after a wrong one", async () => {
    const customerId = randomUUID();
    const address = email("legacy");
    const legacy = await argon2.hash(PASSWORD, {
      type: argon2.argon2id,
      memoryCost: 4096,
      timeCost: 1,
      parallelism: 1,
    });
    expect(legacy.startsWith("$argon2id$v=19$m=4096,t=1,p=1$")).toBe(true);
    await sql`
      insert into identities (customer_id, email, password_hash, created_at, updated_at, password_changed_at)
      values (${customerId}, ${address}, ${legacy}, now(), now(), now())`;

    const auth = svc.clients.client(AuthService);
    await expect(auth.authenticateCustomer({ email: address, password: "wrong password!" })).rejects.toMatchObject({
      rawMessage: "invalid email or password",
    });
    expect(await storedHash(customerId)).toBe(legacy);

    const res = await auth.authenticateCustomer({ email: address, password: PASSWORD });
    expect(res.customerId).toBe(customerId);
    const upgraded = await storedHash(customerId);
    expect(paramsOf(upgraded)).toBe(OWASP_PARAMS);
    expect(await argon2.verify(upgraded, PASSWORD)).toBe(true);

    // The new hash works, and is not redone on every sign-in.
    await auth.authenticateCustomer({ email: address, password: PASSWORD });
    expect(await storedHash(customerId)).toBe(upgraded);
  });
});
