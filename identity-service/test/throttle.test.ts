/**
 * Sign-in throttling across instances: the counters live in the shared
 * database, so parallel attempts spread over two identity servers for one
 * login still let exactly IDENTITY_THROTTLE_FREE_ATTEMPTS reach the password
 * check; each login has its own counter; after the delay the right password
 * works and clears the counter.
 */
import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { outcome, rpcError } from "../../test/support/clients.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { sleep } from "../../test/support/timing.js";

const FREE_ATTEMPTS = 3;
const SHORT_DELAY_MS = 500;
const PASSWORD = "correct horse battery staple";
const WRONG = "wrong password!";

const streams = uniqueStreamNames("identity");
let database: TestDatabase;
/** Two instances with a long delay, so no block runs out during a test. */
let slow: RunningIdentityService[] = [];
/** Two instances with a short delay, for the recovery test. */
let fast: RunningIdentityService[] = [];
let sql: postgres.Sql;

beforeAll(async () => {
  database = await createTestDatabase("identity_throttle");
  const start = (delayMs: number) =>
    startIdentityService(
      {
        IDENTITY_THROTTLE_FREE_ATTEMPTS: String(FREE_ATTEMPTS),
        IDENTITY_THROTTLE_BASE_DELAY_MS: String(delayMs),
      },
      { database, streams },
    );
  // Sequentially: each runs the migrations on the shared database at start.
  slow = [await start(60_000), await start(60_000)];
  fast = [await start(SHORT_DELAY_MS), await start(SHORT_DELAY_MS)];
  sql = database.sql;
});

afterAll(async () => {
  for (const s of [...slow, ...fast]) await s.close();
  await database?.drop();
  await deleteStreams(sharedNatsUrl, streams.stream);
});

/** An AuthService client per instance. */
function authOf(instances: RunningIdentityService[]) {
  return instances.map((s) => s.clients.client(AuthService));
}

const email = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;

const count = (xs: string[], x: string) => xs.filter((y) => y === x).length;

async function throttleRow(address: string) {
  const rows = await sql<{ failures: number; blocked: boolean }[]>`
    select failures, blocked_until > now() as blocked from login_throttles
    where key = sha256(convert_to(${`login:${address}`}, 'UTF8'))`;
  return rows[0];
}

describe("throttling shared by instances", () => {
  it.each(["an existing", "an unknown"])(
    "lets exactly the free attempts through for %s login under parallel attempts on two instances",
    async (kind) => {
      const [a, b] = authOf(slow);
      if (!a || !b) throw new Error("two instances expected");
      const address = email("parallel");
      if (kind === "an existing") await a.createCredentials({ email: address, password: PASSWORD });
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          outcome((i % 2 ? a : b).authenticateCustomer({ email: address, password: WRONG })),
        ),
      );
      expect(count(results, "Unauthenticated")).toBe(FREE_ATTEMPTS);
      expect(count(results, "ResourceExhausted")).toBe(20 - FREE_ATTEMPTS);
      // Blocked attempts are not counted: the database holds the free attempts and a running block.
      expect(await throttleRow(address)).toEqual({ failures: FREE_ATTEMPTS, blocked: true });
      // Whichever instance is asked, the login stays blocked, even for the right password.
      for (const auth of [a, b]) {
        const err = await auth
          .authenticateCustomer({ email: address, password: PASSWORD })
          .catch((e: unknown) => ConnectError.from(e));
        expect(err).toMatchObject({ code: Code.ResourceExhausted });
        const [retry] = (err as ConnectError).findDetails(RetryInfoSchema);
        expect(Number(retry?.retryDelay?.seconds)).toBeGreaterThan(50);
      }
    },
  );

  it("throttles per login: each of many logins gets its own free attempts", async () => {
    const [a, b] = authOf(slow);
    if (!a || !b) throw new Error("two instances expected");
    const logins = Array.from({ length: 8 }, () => email("spray"));
    for (const address of logins.slice(0, 4)) await a.createCredentials({ email: address, password: PASSWORD });
    const perLogin = FREE_ATTEMPTS + 2;
    const results = await Promise.all(
      logins.flatMap((address, l) =>
        Array.from({ length: perLogin }, (_, i) =>
          outcome(((l + i) % 2 ? a : b).authenticateCustomer({ email: address, password: WRONG })).then(
            (r) => [address, r] as const,
          ),
        ),
      ),
    );
    for (const address of logins) {
      const mine = results.filter(([x]) => x === address).map(([, r]) => r);
      expect(mine.sort()).toEqual([
        ...Array<string>(perLogin - FREE_ATTEMPTS).fill("ResourceExhausted"),
        ...Array<string>(FREE_ATTEMPTS).fill("Unauthenticated"),
      ]);
    }
    // A login nobody tried is not affected.
    const fresh = email("fresh");
    await a.createCredentials({ email: fresh, password: PASSWORD });
    await expect(b.authenticateCustomer({ email: fresh, password: PASSWORD })).resolves.toMatchObject({
      customerId: expect.any(String),
    });
  });

  it("accepts the right password after the delay and clears the counter", async () => {
    const [a, b] = authOf(fast);
    if (!a || !b) throw new Error("two instances expected");
    const address = email("recover");
    const { customerId } = await a.createCredentials({ email: address, password: PASSWORD });
    for (let i = 0; i < FREE_ATTEMPTS; i++) {
      await expect((i % 2 ? a : b).authenticateCustomer({ email: address, password: WRONG })).rejects.toMatchObject(
        rpcError("invalid email or password", Code.Unauthenticated),
      );
    }
    const blockedAt = Date.now();
    await expect(a.authenticateCustomer({ email: address, password: PASSWORD })).rejects.toMatchObject(
      rpcError("too many attempts, retry in 1s", Code.ResourceExhausted),
    );
    expect(await throttleRow(address)).toEqual({ failures: FREE_ATTEMPTS, blocked: true });

    await sleep(Math.max(0, blockedAt + SHORT_DELAY_MS + 100 - Date.now()));
    const res = await b.authenticateCustomer({ email: address, password: PASSWORD });
    expect(res.customerId).toBe(customerId);
    expect(await throttleRow(address)).toBeUndefined();

    // A cleared counter: the free attempts are there again, then the block.
    for (let i = 0; i < FREE_ATTEMPTS; i++) {
      await expect(a.authenticateCustomer({ email: address, password: WRONG })).rejects.toMatchObject(
        rpcError("invalid email or password", Code.Unauthenticated),
      );
    }
    await expect(b.authenticateCustomer({ email: address, password: WRONG })).rejects.toMatchObject({
      code: Code.ResourceExhausted,
    });
  });
});
