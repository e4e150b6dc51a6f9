/**
 * Limits per client address on the identity service, and a fair share of
 * argon2 for everyone:
 * - spraying (one guess at each of many logins) from one address meets
 *   RESOURCE_EXHAUSTED with RetryInfo; another address is unaffected;
 * - sign-up (StartSignUp and CompleteSignUp) is limited per address alike;
 * - X-Forwarded-For is ignored unless the peer is a trusted proxy
 *   (IDENTITY_TRUSTED_PROXIES), and then read from the right, so a client
 *   cannot choose its address by prepending entries;
 * - the limits live in the database: two instances share them;
 * - argon2 work runs in a bounded, fair queue: while one address floods
 *   sign-ins, another address's sign-in completes before the flood drains,
 *   and the flood's excess is refused at once.
 * Addresses behind the trusted proxy are documentation ranges (RFC 5737,
 * RFC 3849): every call really comes from 127.0.0.1.
 */
import { randomUUID } from "node:crypto";
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { readMailbox } from "@customer-platform/runtime/mail";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { failure, outcome } from "../support/clients.js";
import { mailedCode } from "../support/mailbox.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../support/nats.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import { type RunningIdentityService, startIdentityService } from "../support/services.js";

const SIGN_IN_LIMIT = 5;
const SIGN_UP_LIMIT = 3;
const PASSWORD = "correct horse battery staple";
const LIMITS = {
  IDENTITY_SIGN_IN_LIMIT: String(SIGN_IN_LIMIT),
  IDENTITY_SIGN_UP_LIMIT: String(SIGN_UP_LIMIT),
  // An hour per budget: nothing refills during the test.
  IDENTITY_SIGN_IN_LIMIT_WINDOW_MS: "3600000",
  IDENTITY_SIGN_UP_LIMIT_WINDOW_MS: "3600000",
};

const streams = uniqueStreamNames("identity");
let database: TestDatabase;
/** Two instances on one database behind a trusted proxy (loopback and 10/8). */
let proxied: RunningIdentityService[] = [];
/** No trusted proxy: the socket's peer (127.0.0.1) is the client, whatever the header says. */
let direct: RunningIdentityService;

beforeAll(async () => {
  database = await createTestDatabase("identity_rate_limits");
  const env = { ...LIMITS, IDENTITY_TRUSTED_PROXIES: "127.0.0.0/8, ::1, 10.0.0.0/8" };
  // Sequentially: each runs the migrations on the shared database at start.
  proxied = [
    await startIdentityService(env, { database, streams }),
    await startIdentityService(env, { database, streams }),
  ];
  direct = await startIdentityService(LIMITS);
});

afterAll(async () => {
  for (const s of [...proxied, direct]) await s?.close();
  await database?.drop();
  await deleteStreams(sharedNatsUrl, streams.stream);
});

const auth = (s: RunningIdentityService) => s.clients.client(AuthService);
const email = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;
const from = (xff: string) => ({ headers: { "x-forwarded-for": xff } });
let nextHost = 1;
/** A fresh client address for one test (TEST-NET-3). */
const address = () => `203.0.113.${nextHost++}`;

async function expectLimited(call: Promise<unknown>) {
  const err = await failure(call);
  expect(err).toBeInstanceOf(ConnectError);
  expect(err?.code).toBe(Code.ResourceExhausted);
  expect(err?.rawMessage).toMatch(/^too many requests from this address, retry in \d+s$/);
  const [retry] = (err as ConnectError).findDetails(RetryInfoSchema);
  expect(Number(retry?.retryDelay?.seconds)).toBeGreaterThan(0);
}

describe("sign-in per client address", () => {
  it("refuses spraying (one guess at each of many logins) past the limit; another address still signs in", async () => {
    const [a] = proxied;
    if (!a) throw new Error("instances expected");
    const user = email("victim");
    await auth(a).createCredentials({ email: user, password: PASSWORD }, from(address()));
    const attacker = address();
    for (let i = 0; i < SIGN_IN_LIMIT; i++) {
      expect(
        await outcome(auth(a).authenticateCustomer({ email: email("spray"), password: "Summer2024!" }, from(attacker))),
      ).toBe("Unauthenticated");
    }
    await expectLimited(
      auth(a).authenticateCustomer({ email: email("spray"), password: "Summer2024!" }, from(attacker)),
    );
    // Even the right password of a real login: the address is spent, not the login.
    await expectLimited(auth(a).authenticateCustomer({ email: user, password: PASSWORD }, from(attacker)));
    await expect(
      auth(a).authenticateCustomer({ email: user, password: PASSWORD }, from(address())),
    ).resolves.toMatchObject({ customerId: expect.any(String) });
  });

  it("is shared by two instances on one database", async () => {
    const client = address();
    const results: string[] = [];
    for (let i = 0; i < SIGN_IN_LIMIT + 3; i++) {
      const instance = proxied[i % 2];
      if (!instance) throw new Error("instances expected");
      results.push(
        await outcome(auth(instance).authenticateCustomer({ email: email("two"), password: PASSWORD }, from(client))),
      );
    }
    expect(results).toEqual([
      ...Array<string>(SIGN_IN_LIMIT).fill("Unauthenticated"),
      ...Array<string>(3).fill("ResourceExhausted"),
    ]);
  });

  it("ignores X-Forwarded-For from a peer that is not a trusted proxy", async () => {
    const a = auth(direct);
    for (let i = 0; i < SIGN_IN_LIMIT; i++) {
      // A different claimed address each time: all of them count as 127.0.0.1.
      expect(
        await outcome(a.authenticateCustomer({ email: email("direct"), password: PASSWORD }, from(address()))),
      ).toBe("Unauthenticated");
    }
    await expectLimited(a.authenticateCustomer({ email: email("direct"), password: PASSWORD }, from(address())));
    await expectLimited(a.authenticateCustomer({ email: email("direct"), password: PASSWORD }));
  });

  it("honours X-Forwarded-For from a trusted proxy, read from the right: prepended entries change nothing", async () => {
    const [a] = proxied;
    if (!a) throw new Error("instances expected");
    const client = address();
    for (let i = 0; i < SIGN_IN_LIMIT; i++) {
      // What the client sent (a spoofed entry), then what our proxies appended: the client, then a proxy of 10/8.
      const xff = `198.51.100.${i + 1}, ${client}, 10.0.0.${i + 1}`;
      expect(await outcome(auth(a).authenticateCustomer({ email: email("xff"), password: PASSWORD }, from(xff)))).toBe(
        "Unauthenticated",
      );
    }
    await expectLimited(
      auth(a).authenticateCustomer({ email: email("xff"), password: PASSWORD }, from(`192.0.2.99, ${client}`)),
    );
    // The header was honoured: the proxy's own address (127.0.0.1, no header) has its whole budget.
    expect(await outcome(auth(a).authenticateCustomer({ email: email("xff"), password: PASSWORD }))).toBe(
      "Unauthenticated",
    );
  });

  it("counts an IPv6 client by its /64", async () => {
    const [a] = proxied;
    if (!a) throw new Error("instances expected");
    const prefix = `2001:db8:${(nextHost++).toString(16)}:1`;
    for (let i = 0; i < SIGN_IN_LIMIT; i++) {
      const host = `${prefix}::${(i + 1).toString(16)}`;
      expect(await outcome(auth(a).authenticateCustomer({ email: email("v6"), password: PASSWORD }, from(host)))).toBe(
        "Unauthenticated",
      );
    }
    await expectLimited(
      auth(a).authenticateCustomer({ email: email("v6"), password: PASSWORD }, from(`${prefix}:0:0:0:ffff`)),
    );
  });
});

describe("sign-up per client address", () => {
  it("refuses sign-ups past the limit without storing or mailing a code; another address still signs up", async () => {
    const [a, b] = proxied;
    if (!a || !b) throw new Error("instances expected");
    const client = address();
    for (let i = 0; i < SIGN_UP_LIMIT; i++) {
      await auth(i % 2 ? a : b).startSignUp({ email: email("up") }, from(client));
    }
    const refused = email("up");
    await expectLimited(auth(a).startSignUp({ email: refused }, from(client)));
    const codes = await database.sql`select 1 from one_time_codes where email = ${refused}`;
    expect(codes).toHaveLength(0);
    // CompleteSignUp counts against the same budget: a code is no way around it.
    await expectLimited(auth(b).completeSignUp({ email: refused, code: "12345678", password: PASSWORD }, from(client)));
    // Another address signs up with the same email, start to end (two calls of its budget).
    const other = address();
    await auth(b).startSignUp({ email: refused }, from(other));
    const code = await mailedCode(b.env.IDENTITY_MAILBOX_DIR ?? "", refused);
    await expect(
      auth(a).completeSignUp({ email: refused, code, password: PASSWORD }, from(other)),
    ).resolves.toMatchObject({ customerId: expect.any(String) });
    // The refused StartSignUp mailed nothing: the code above was the only mail to the address.
    expect((await readMailbox(b.env.IDENTITY_MAILBOX_DIR ?? "")).filter((m) => m.to === refused)).toHaveLength(1);
  });
});

describe("argon2: a bounded, fair queue", () => {
  const QUEUE_PER_ADDRESS = 16;
  let fair: RunningIdentityService;

  beforeAll(async () => {
    fair = await startIdentityService({
      IDENTITY_TRUSTED_PROXIES: "127.0.0.1",
      // One argon2 at a time, each slow enough that a queue of 16 takes a while to drain.
      IDENTITY_ARGON2_CONCURRENCY: "1",
      IDENTITY_ARGON2_ITERATIONS: "50",
      IDENTITY_ARGON2_QUEUE_PER_ADDRESS: String(QUEUE_PER_ADDRESS),
    });
  });

  afterAll(async () => {
    await fair?.close();
  });

  it("serves another address's sign-in before one address's flood drains, and refuses the flood's excess at once", async () => {
    const a = auth(fair);
    const user = email("fair");
    const { customerId } = await a.createCredentials({ email: user, password: PASSWORD }, from(address()));
    const flooder = address();
    const FLOOD = QUEUE_PER_ADDRESS + 8;
    let floodDone = 0;
    let firstOverflow: () => void = () => {};
    const overflowed = new Promise<void>((resolve) => {
      firstOverflow = resolve;
    });
    const flood = Array.from({ length: FLOOD }, () =>
      outcome(a.authenticateCustomer({ email: email("flood"), password: PASSWORD }, from(flooder))).then((code) => {
        if (code === "ResourceExhausted") firstOverflow();
        else floodDone++;
        return code;
      }),
    );
    // A refusal proves the flooder's queue is full right now: the victim comes after all of it.
    await overflowed;
    const doneBefore = floodDone;
    const res = await a.authenticateCustomer({ email: user, password: PASSWORD }, from(address()));
    const doneWhenVictimDone = floodDone;
    expect(res.customerId).toBe(customerId);

    const codes = await Promise.all(flood);
    const admitted = codes.filter((c) => c === "Unauthenticated").length;
    // The queue is bounded: part of the flood was refused at once instead of queued.
    expect(codes).toContain("ResourceExhausted");
    expect(admitted + codes.filter((c) => c === "ResourceExhausted").length).toBe(FLOOD);
    // Round robin: the victim did not wait for the queued flood (a FIFO would make this equal to admitted).
    expect(doneWhenVictimDone, JSON.stringify({ doneBefore, doneWhenVictimDone, admitted })).toBeLessThan(admitted);

    // The refusal itself: RESOURCE_EXHAUSTED with RetryInfo.
    const again = await Promise.all(
      Array.from({ length: QUEUE_PER_ADDRESS + 4 }, () =>
        failure(a.authenticateCustomer({ email: email("flood"), password: PASSWORD }, from(flooder))),
      ),
    );
    const err = again.find((e) => e?.code === Code.ResourceExhausted);
    expect(err).toMatchObject({
      code: Code.ResourceExhausted,
      rawMessage: "too many password checks in progress, retry in 1s",
    });
    expect(err?.findDetails(RetryInfoSchema)[0]?.retryDelay?.seconds).toBe(1n);
  });
});
