/**
 * The per-login throttle remembers: failures survive 15 quiet minutes (the
 * window is a day by default, IDENTITY_THROTTLE_WINDOW_MS), so the back-off
 * keeps growing; sign-in and ChangePassword spend one counter per login; and
 * at the consecutive-failure cap (IDENTITY_THROTTLE_LOCK_AFTER, NIST SP
 * 800-63B 5.2.2) the login locks, known or unknown alike, until an operator
 * runs `identity unlock <email>`. Time passes by moving the row's timestamps
 * back, never by waiting.
 */
import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, outcome, rpcError } from "../../test/support/clients.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { runCli } from "../src/cli.js";
import { envToConfig } from "../src/config.js";
import { identityHousekeeping } from "../src/housekeeping.js";

const FREE_ATTEMPTS = 3;
const LOCK_AFTER = 6;
const PASSWORD = "correct horse battery staple";
const WRONG = "wrong password!";
const LOCKED = rpcError(
  "sign-in locked after too many failed attempts, ask an operator to unlock it",
  Code.FailedPrecondition,
);

const streams = uniqueStreamNames("identity");
let database: TestDatabase;
let sql: postgres.Sql;
/** Default window (a day). */
let remembering: RunningIdentityService;
/** A one-minute window: configurable, and then forgetting. */
let forgetful: RunningIdentityService;
/** No delays before the lock, so the cap is reached at once. */
let locking: RunningIdentityService;

beforeAll(async () => {
  database = await createTestDatabase("identity_throttle_lock");
  sql = database.sql;
  const common = { IDENTITY_THROTTLE_FREE_ATTEMPTS: String(FREE_ATTEMPTS), IDENTITY_THROTTLE_BASE_DELAY_MS: "1000" };
  // Sequentially: each runs the migrations on the shared database at start.
  remembering = await startIdentityService(common, { database, streams });
  forgetful = await startIdentityService({ ...common, IDENTITY_THROTTLE_WINDOW_MS: "60000" }, { database, streams });
  locking = await startIdentityService(
    { IDENTITY_THROTTLE_FREE_ATTEMPTS: "1000", IDENTITY_THROTTLE_LOCK_AFTER: String(LOCK_AFTER) },
    { database, streams },
  );
});

afterAll(async () => {
  for (const s of [remembering, forgetful, locking]) await s?.close();
  await database?.drop();
  await deleteStreams(sharedNatsUrl, streams.stream);
});

const email = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;
const auth = (s: RunningIdentityService) => s.clients.client(AuthService);
/** A customer whose tokens are for the identity service's own RPCs (audience: the issuer), as ChangePassword needs. */
const signUp = (s: RunningIdentityService, address: string) =>
  auth(s).createCredentials({ email: address, password: PASSWORD, audience: [s.env.IDENTITY_ISSUER ?? ""] });

const keyOf = (address: string) => sql`sha256(convert_to(${`login:${address}`}, 'UTF8'))`;

async function throttleRow(address: string) {
  const rows = await sql<{ failures: number; blocked: boolean; locked: boolean }[]>`
    select failures, coalesce(blocked_until > now(), false) as blocked, locked_at is not null as locked
    from login_throttles where key = ${keyOf(address)}`;
  return rows[0];
}

/** As if `ago` of quiet time had passed for the login: its last failure and any block are moved back. */
async function pass(address: string, ago: string) {
  await sql`
    update login_throttles set last_failure_at = last_failure_at - ${ago}::interval,
      blocked_until = blocked_until - ${ago}::interval
    where key = ${keyOf(address)}`;
}

describe("failures are remembered", () => {
  it("past 15 quiet minutes: the count goes on and the delay doubles", async () => {
    const a = auth(remembering);
    const address = email("remember");
    await signUp(remembering, address);
    for (let i = 0; i < FREE_ATTEMPTS; i++) {
      expect(await outcome(a.authenticateCustomer({ email: address, password: WRONG }))).toBe("Unauthenticated");
    }
    expect(await throttleRow(address)).toEqual({ failures: FREE_ATTEMPTS, blocked: true, locked: false });

    await pass(address, "16 minutes");
    // The block is over, the count is not: this failure is the fourth, and blocks for twice as long.
    expect(await outcome(a.authenticateCustomer({ email: address, password: WRONG }))).toBe("Unauthenticated");
    expect(await throttleRow(address)).toEqual({ failures: FREE_ATTEMPTS + 1, blocked: true, locked: false });
    expect(await outcome(a.authenticateCustomer({ email: address, password: PASSWORD }))).toBe("ResourceExhausted");
    const [block] = await sql<[{ seconds: number }]>`
      select extract(epoch from blocked_until - last_failure_at)::float8 as seconds
      from login_throttles where key = ${keyOf(address)}`;
    expect(block.seconds).toBe(2);

    // Still after 23 more hours: the window is a day.
    await pass(address, "23 hours");
    expect(await outcome(a.authenticateCustomer({ email: address, password: WRONG }))).toBe("Unauthenticated");
    expect((await throttleRow(address))?.failures).toBe(FREE_ATTEMPTS + 2);
  });

  it("until IDENTITY_THROTTLE_WINDOW_MS without a failure: then the count starts over", async () => {
    const a = auth(forgetful);
    const address = email("forget");
    await signUp(forgetful, address);
    for (let i = 0; i < FREE_ATTEMPTS; i++) {
      expect(await outcome(a.authenticateCustomer({ email: address, password: WRONG }))).toBe("Unauthenticated");
    }
    await pass(address, "2 minutes");
    expect(await outcome(a.authenticateCustomer({ email: address, password: WRONG }))).toBe("Unauthenticated");
    expect(await throttleRow(address)).toEqual({ failures: 1, blocked: false, locked: false });
  });
});

describe("one counter per login", () => {
  it("is shared by sign-in and ChangePassword, whichever guesses", async () => {
    const a = auth(remembering);
    const address = email("shared");
    const user = await signUp(remembering, address);
    const token = bearer(user.tokens?.accessToken ?? "");
    expect(await outcome(a.authenticateCustomer({ email: address, password: WRONG }))).toBe("Unauthenticated");
    await expect(
      a.changePassword({ currentPassword: WRONG, newPassword: "a brand new passphrase" }, token),
    ).rejects.toMatchObject(rpcError("current password is wrong", Code.Unauthenticated));
    expect(await outcome(a.authenticateCustomer({ email: address, password: WRONG }))).toBe("Unauthenticated");
    expect(await throttleRow(address)).toEqual({ failures: FREE_ATTEMPTS, blocked: true, locked: false });
    // Both ways in are now blocked, even with the right password.
    expect(
      await outcome(a.changePassword({ currentPassword: PASSWORD, newPassword: "a brand new passphrase" }, token)),
    ).toBe("ResourceExhausted");
    expect(await outcome(a.authenticateCustomer({ email: address, password: PASSWORD }))).toBe("ResourceExhausted");
  });
});

describe("the consecutive-failure cap", () => {
  it.each(["an existing", "an unknown"])("locks %s login alike, past any window, until unlocked", async (kind) => {
    const a = auth(locking);
    const address = email("lock");
    if (kind === "an existing") await signUp(locking, address);
    for (let i = 0; i < LOCK_AFTER; i++) {
      expect(await outcome(a.authenticateCustomer({ email: address, password: WRONG }))).toBe("Unauthenticated");
    }
    expect(await throttleRow(address)).toMatchObject({ failures: LOCK_AFTER, locked: true });
    // The right password no longer helps; the answer is the same for a login that does not exist.
    await expect(a.authenticateCustomer({ email: address, password: PASSWORD })).rejects.toMatchObject(LOCKED);
    await expect(a.authenticateCustomer({ email: address, password: WRONG })).rejects.toMatchObject(LOCKED);
    expect((await throttleRow(address))?.failures).toBe(LOCK_AFTER);

    // Neither time nor housekeeping lifts it.
    await pass(address, "400 days");
    const config = envToConfig(locking.env);
    for (const task of identityHousekeeping(config)) await sql.unsafe(task.sql);
    await expect(a.authenticateCustomer({ email: address, password: PASSWORD })).rejects.toMatchObject(LOCKED);

    const out: string[] = [];
    expect(await runCli(["unlock", address.toUpperCase()], locking.env, (l) => out.push(l))).toBe(0);
    expect(out).toEqual([`unlocked ${address}: its failed sign-ins are forgotten`]);
    expect(await throttleRow(address)).toBeUndefined();
    expect(await outcome(a.authenticateCustomer({ email: address, password: PASSWORD }))).toBe(
      kind === "an existing" ? "OK" : "Unauthenticated",
    );
  });

  it("locks ChangePassword too (one counter), and a success on the last allowed attempt clears it", async () => {
    const a = auth(locking);
    const address = email("lock-change");
    const user = await signUp(locking, address);
    const token = bearer(user.tokens?.accessToken ?? "");
    for (let i = 0; i < LOCK_AFTER - 1; i++) {
      expect(await outcome(a.authenticateCustomer({ email: address, password: WRONG }))).toBe("Unauthenticated");
    }
    // The cap-th attempt still reaches the password: right, it clears the counter.
    expect(await outcome(a.authenticateCustomer({ email: address, password: PASSWORD }))).toBe("OK");
    expect(await throttleRow(address)).toBeUndefined();
    for (let i = 0; i < LOCK_AFTER; i++) {
      expect(
        await outcome(a.changePassword({ currentPassword: WRONG, newPassword: "a brand new passphrase" }, token)),
      ).toBe("Unauthenticated");
    }
    await expect(
      a.changePassword({ currentPassword: PASSWORD, newPassword: "a brand new passphrase" }, token),
    ).rejects.toMatchObject(LOCKED);
    await expect(a.authenticateCustomer({ email: address, password: PASSWORD })).rejects.toMatchObject(LOCKED);
  });

  it("unlock of a login without failures says so", async () => {
    const out: string[] = [];
    const address = email("never");
    expect(await runCli(["unlock", address], locking.env, (l) => out.push(l))).toBe(0);
    expect(out).toEqual([`${address} had no failed sign-ins`]);
  });
});
