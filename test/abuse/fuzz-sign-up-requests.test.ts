/**
 * Property-based fuzzing of sign-up and email change by a mailed code
 * (StartSignUp, CompleteSignUp, StartEmailChange, CompleteEmailChange)
 * through the generated clients, over Connect (binary and JSON on HTTP/1.1)
 * and gRPC, as fuzz-auth-requests.test.ts does for the other AuthService
 * RPCs (which also checks that no answer or log line of these holds a
 * secret the request carried).
 *
 * Every answer is OK or one of the codes the contract documents for the RPC;
 * an account comes only from a code mailed to its address and signs in
 * exactly as sent; no guess changes anyone's login email; an address that
 * has an account gets no second one; the server keeps serving, and the
 * account nobody was allowed to touch stays as it was.
 */
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import fc from "fast-check";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  evil,
  expectCode,
  FUZZ_PROTOCOLS,
  type FuzzProtocol,
  opts,
  RUNS,
  run,
  SQL_SHAPED,
  sqlEmail,
  stored,
  unique,
  validEmail,
} from "../support/fuzz.js";
import { mailedCode } from "../support/mailbox.js";
import { type RunningIdentityService, startIdentityService } from "../support/services.js";

/** Failures allowed per login: more than a property makes, so guesses reach the password check. */
const FREE_ATTEMPTS = 2 * RUNS;
/** The issuer startIdentityService configures: the audience of the identity service's own RPCs. */
const ISSUER = "https://identity.test";

describe("sign-up and email change by a mailed code", () => {
  let svc: RunningIdentityService;
  let sql: postgres.Sql;
  const as = (protocol: FuzzProtocol) => svc.clients.client(AuthService, protocol);
  const mailbox = () => svc.env.IDENTITY_MAILBOX_DIR ?? "";
  /** An account whose address nobody may take and whose login nobody may change. */
  let keeper: { customerId: string; email: string; password: string };
  let snapshot: unknown;
  let createdIdentities = 0;

  const keeperRow = () => sql`select customer_id, email, email_version, email_verified_at, password_hash, status
    from identities where customer_id = ${keeper.customerId}`;

  beforeAll(async () => {
    svc = await startIdentityService({
      LOG_LEVEL: "warn",
      IDENTITY_THROTTLE_FREE_ATTEMPTS: String(FREE_ATTEMPTS),
      IDENTITY_THROTTLE_LOCK_AFTER: String(10 * FREE_ATTEMPTS),
    });
    sql = svc.database.sql;
    const email = `keeper.${unique()}@example.com`;
    const password = "keeper's password";
    // The deprecated CreateCredentials (on in the harness): polling the mailbox needs a test, not a hook.
    const res = await as("connect-http1").createCredentials({ email, password });
    keeper = { customerId: res.customerId, email, password };
    snapshot = await keeperRow();
  });

  afterAll(async () => {
    await svc?.close();
  });

  // After every test: one identity per completed sign-up, nothing else.
  afterEach(async () => {
    const [row] = await sql<{ n: number }[]>`select count(*)::int as n from identities`;
    expect(row?.n).toBe(1 + createdIdentities);
  });

  /** The server answers on every protocol; the keeper's account is as it was and signs in. */
  async function stillServingAndUntouched(): Promise<void> {
    for (const p of FUZZ_PROTOCOLS) {
      await expect(
        as(p).authenticateCustomer({ email: keeper.email, password: keeper.password }, opts()),
        p,
      ).resolves.toMatchObject({ customerId: keeper.customerId });
    }
    expect(await keeperRow()).toEqual(snapshot);
  }

  const password = fc.oneof(evil, fc.string({ minLength: 8, maxLength: 300 }), fc.constantFrom(...SQL_SHAPED));

  it("StartSignUp and CompleteSignUp: documented codes only; no account for a taken address; an accepted password signs in exactly as sent", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        fc.oneof(validEmail, sqlEmail, evil, fc.constant(keeper.email), fc.constant(keeper.email.toUpperCase())),
        password,
        async (proto, email, pw) => {
          const started = await run(as(proto).startSignUp({ email }, opts()));
          expectCode(started, ["OK", "InvalidArgument"]);
          const address = stored(email).toLowerCase();
          // A taken address gets a notice, not a code: only a guess is left to complete with.
          const mailed = started.code === "OK" && address !== keeper.email.toLowerCase();
          const code = mailed ? await mailedCode(mailbox(), address) : "12345678";
          const got = await run(as(proto).completeSignUp({ email, code, password: pw }, opts()));
          expectCode(got, mailed ? ["OK", "InvalidArgument"] : ["InvalidArgument"]);
          if (got.code !== "OK") return;
          createdIdentities++;
          const customerId = got.res?.customerId ?? "";
          const [row] = await sql`select email from identities where customer_id = ${customerId}`;
          expect(row?.email).toBe(address);
          const signIn = await as("grpc").authenticateCustomer({ email, password: pw }, opts());
          expect(signIn.customerId).toBe(customerId);
        },
      ),
      { numRuns: RUNS },
    );
    await stillServingAndUntouched();
  });

  it("StartEmailChange, CompleteEmailChange: documented codes only; the login email never changes without the mailed code", async () => {
    const victim = await as("connect-http1").createCredentials({
      email: `ec.${unique()}@example.com`,
      password: "victim's password",
      audience: [ISSUER],
    });
    createdIdentities++;
    const token = victim.tokens?.accessToken ?? "";
    const [before] = await sql`select email, email_version from identities where customer_id = ${victim.customerId}`;
    const codes: string[] = [];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        fc.oneof(validEmail, sqlEmail, evil, fc.constant(keeper.email)),
        password,
        fc.oneof(evil, fc.stringMatching(/^[0-9]{8}$/)),
        async (proto, newEmail, currentPassword, code) => {
          const started = await run(as(proto).startEmailChange({ newEmail, currentPassword }, opts(token)));
          codes.push(started.code);
          expectCode(started, ["Unauthenticated", "ResourceExhausted", "InvalidArgument"]);
          expectCode(await run(as(proto).completeEmailChange({ code }, opts(token))), ["InvalidArgument"]);
        },
      ),
      { numRuns: RUNS },
    );
    // The guesses were judged by the password check, none by the throttle.
    const unauthenticated = codes.filter((c) => c === "Unauthenticated").length;
    expect(codes.filter((c) => c === "ResourceExhausted")).toEqual([]);
    expect(unauthenticated).toBeGreaterThan(RUNS / 2);
    const [after] = await sql`select email, email_version from identities where customer_id = ${victim.customerId}`;
    expect(after).toEqual(before);
    expect(await sql`select 1 from one_time_codes where customer_id = ${victim.customerId}`).toEqual([]);
    await stillServingAndUntouched();
  });
});
