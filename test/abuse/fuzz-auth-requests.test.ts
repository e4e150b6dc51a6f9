/**
 * Property-based fuzzing of every AuthService request message through the
 * generated clients, over Connect (binary and JSON on HTTP/1.1) and gRPC:
 * arbitrary unicode, control characters, very long strings,
 * SQL-injection-shaped strings, tokens close to real ones.
 * (Sign-up and email change by a mailed code: fuzz-sign-up-requests.test.ts;
 * CustomerService: fuzz-customer-requests.test.ts.)
 *
 * Every answer is OK or one of the codes the contract documents for the RPC
 * (never INTERNAL, UNKNOWN, UNAVAILABLE or a deadline: each call has a
 * timeout), what succeeded works exactly as sent, no guess gets anyone in,
 * the server keeps serving, and the credentials and sessions nobody was
 * allowed to touch stay as they were. No answer (message, details, headers)
 * and no log line holds a password, secret or token a request carried, as
 * sent or encoded.
 *
 * The server allows FREE_ATTEMPTS failures per login, more than any property
 * makes, so guesses reach the password check instead of the throttle (each
 * property counts its outcomes to show it); one test shows the throttle
 * still engages at that limit.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import fc from "fast-check";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import {
  evil,
  expectCode,
  FUZZ_PROTOCOLS,
  type FuzzProtocol,
  opts,
  RUNS,
  run,
  SQL_EMAIL_LOCALS,
  SQL_SHAPED,
  sqlEmail,
  unique,
  validEmail,
} from "../support/fuzz.js";
import { b64url } from "../support/jwt.js";
import { createSecretScanner, findInError, type SecretScanner } from "../support/secrets.js";
import { type RunningIdentityService, startIdentityService } from "../support/services.js";

/** Failures allowed per login on the fuzzed server: more than any property makes for one login. */
const FREE_ATTEMPTS = 2 * RUNS;
/** The issuer startIdentityService configures: the audience of the identity service's own RPCs. */
const ISSUER = "https://identity.test";

/** How often each code (or "OK") answered. */
function tally(codes: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const code of codes) counts[code] = (counts[code] ?? 0) + 1;
  return counts;
}

// ------------------------------------------------------------------ identity service

describe("AuthService", () => {
  let svc: RunningIdentityService;
  let sql: postgres.Sql;
  const as = (protocol: FuzzProtocol) => svc.clients.client(AuthService, protocol);
  let client: { id: string; secret: string; token: string };
  /** A customer whose sessions and password must survive everything. */
  let keeper: { customerId: string; email: string; password: string; refreshToken: string; accessToken: string };
  let snapshot: unknown;
  let tables: unknown;
  /** Identities this test created (per test: one failing test, and its shrinking replays, fail only itself). */
  let createdIdentities = 0;
  let identitiesAtStart = 0;
  const identityCount = async () => (await sql<{ n: number }[]>`select count(*)::int as n from identities`)[0]?.n;

  const identityState = async () => ({
    keeper: await sql`select * from identities where customer_id = ${keeper.customerId}`,
    keeperTokens:
      await sql`select id, revoked_at, rotated_at from refresh_tokens where customer_id = ${keeper.customerId}`,
    clients: await sql`select * from clients order by client_id`,
    keys: await sql`select kid, retired_at from signing_keys order by kid`,
    revoked: await sql`select count(*)::int as n from revoked_access_tokens`,
  });

  beforeAll(async () => {
    svc = await startIdentityService({
      LOG_LEVEL: "warn",
      IDENTITY_THROTTLE_FREE_ATTEMPTS: String(FREE_ATTEMPTS),
      // No lock (NIST's 100 consecutive failures) before the free attempts run out: guesses must reach the password.
      IDENTITY_THROTTLE_LOCK_AFTER: String(10 * FREE_ATTEMPTS),
      // A block that outlasts the file, so the throttle test's counts do not depend on its speed.
      IDENTITY_THROTTLE_BASE_DELAY_MS: "600000",
    });
    sql = svc.database.sql;
    const out: string[] = [];
    // It introspects: a token for the identity service (its issuer) with identity:introspect.
    const create = ["clients", "create", "fuzz-client", "--scopes", "customer:read identity:introspect"];
    expect(await runCli([...create, "--audiences", ISSUER], svc.env, (l) => out.push(l))).toBe(0);
    const secret = (JSON.parse(out[0] ?? "{}") as { client_secret: string }).client_secret;
    const auth = await as("connect-http1").authenticateClient({
      clientId: "fuzz-client",
      clientSecret: secret,
      scope: "",
    });
    client = { id: "fuzz-client", secret, token: auth.tokens?.accessToken ?? "" };
    const email = `keeper.${unique()}@example.com`;
    const password = "keeper's password";
    const res = await as("connect-http1").createCredentials({ email, password });
    keeper = {
      customerId: res.customerId,
      email,
      password,
      refreshToken: res.tokens?.refreshToken ?? "",
      accessToken: res.tokens?.accessToken ?? "",
    };
    snapshot = await identityState();
    tables = await sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`;
  });

  afterAll(async () => {
    await svc?.close();
  });

  beforeEach(async () => {
    createdIdentities = 0;
    identitiesAtStart = (await identityCount()) ?? -1;
  });

  // After every test, whatever ran before it: the same tables, one identity per accepted sign-up.
  afterEach(async () => {
    expect(
      await sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`,
    ).toEqual(tables);
    expect(await identityCount()).toBe(identitiesAtStart + createdIdentities);
  });

  /**
   * The server still answers on every protocol; the keeper's credentials and sessions are intact
   * (its access token's session unrevoked; its refresh token rows in the snapshot: a refresh token
   * is described only to the client it was issued to).
   */
  async function stillServingAndUntouched(): Promise<void> {
    for (const p of FUZZ_PROTOCOLS) {
      await expect(as(p).introspectToken({ token: keeper.accessToken }, opts(client.token)), p).resolves.toMatchObject({
        active: true,
        sub: keeper.customerId,
      });
    }
    expect(await identityState()).toEqual(snapshot);
  }

  /** Tokens close to real ones: a flipped character, a JWT shape, random base64url. */
  const tokenLike = fc.oneof(
    evil,
    fc.nat().map((n) => flip(keeper.refreshToken, n)),
    fc.nat().map((n) => flip(keeper.accessToken, n)),
    fc.nat().map((n) => flip(client.token, n)),
    fc.base64String({ maxLength: 64 }).map((s) => s.replace(/\+/g, "-").replace(/\//g, "_").replace(/=/g, "")),
    fc.tuple(evil, evil, evil).map((p) => p.map((x) => Buffer.from(x).toString("base64url")).join(".")),
  );
  const flip = (s: string, n: number) => {
    const i = n % s.length;
    return `${s.slice(0, i)}${s[i] === "A" ? "B" : "A"}${s.slice(i + 1)}`;
  };
  const password = fc.oneof(evil, fc.string({ minLength: 8, maxLength: 300 }), fc.constantFrom(...SQL_SHAPED));

  it("AuthenticateCustomer: documented codes only (never OK for a guess); guesses reach the password check", async () => {
    const codes: string[] = [];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        fc.oneof(fc.constant(`victim.${unique()}@example.com`), sqlEmail, evil),
        password,
        async (proto, email, pw) => {
          const got = await run(as(proto).authenticateCustomer({ email, password: pw }, opts()));
          codes.push(got.code);
          expectCode(got, ["Unauthenticated", "ResourceExhausted", "InvalidArgument"]);
        },
      ),
      { numRuns: RUNS },
    );
    // The throttle answered none of them; most were judged by the password check.
    const counts = tally(codes);
    expect(counts.ResourceExhausted ?? 0, JSON.stringify(counts)).toBe(0);
    expect(counts.Unauthenticated ?? 0, JSON.stringify(counts)).toBeGreaterThan(RUNS / 2);
    await stillServingAndUntouched();
  });

  it("RefreshToken, RevokeToken, IntrospectToken: documented codes only; no guessed token is active", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        fc.constantFrom("refresh", "revoke", "introspect"),
        tokenLike,
        async (proto, rpc, token) => {
          if (rpc === "refresh") {
            expectCode(await run(as(proto).refreshToken({ refreshToken: token }, opts())), [
              "Unauthenticated",
              "InvalidArgument",
            ]);
          } else if (rpc === "revoke") {
            expectCode(await run(as(proto).revokeToken({ token }, opts())), ["OK", "InvalidArgument"]);
          } else {
            const got = await run(as(proto).introspectToken({ token }, opts(client.token)));
            expectCode(got, ["OK", "InvalidArgument"]);
            if (got.res) expect(got.res.active).toBe(false);
          }
        },
      ),
      { numRuns: 2 * RUNS },
    );
    await stillServingAndUntouched();
  });

  it("ChangePassword: documented codes only; the password never changes without the current one", async () => {
    const victim = await as("connect-http1").createCredentials({
      email: `cp.${unique()}@example.com`,
      password: "victim's password",
      audience: [ISSUER],
    });
    createdIdentities++;
    const [before] = await sql`select password_hash from identities where customer_id = ${victim.customerId}`;
    const codes: string[] = [];
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        password,
        password,
        async (proto, currentPassword, newPassword) => {
          const got = await run(
            as(proto).changePassword({ currentPassword, newPassword }, opts(victim.tokens?.accessToken ?? "")),
          );
          codes.push(got.code);
          expectCode(got, ["Unauthenticated", "ResourceExhausted", "InvalidArgument"]);
        },
      ),
      { numRuns: RUNS },
    );
    // All of them against one customer's counter, none answered by the throttle.
    const counts = tally(codes);
    expect(counts.ResourceExhausted ?? 0, JSON.stringify(counts)).toBe(0);
    expect(counts.Unauthenticated ?? 0, JSON.stringify(counts)).toBeGreaterThan(RUNS / 2);
    const [after] = await sql`select password_hash from identities where customer_id = ${victim.customerId}`;
    expect(after).toEqual(before);
    await stillServingAndUntouched();
  });

  it("AuthenticateClient: documented codes only; no token without the secret", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        fc.oneof(fc.constant(client.id), fc.constantFrom(...SQL_SHAPED), evil),
        fc.oneof(evil, fc.constant(flip(client.secret, 3))),
        fc.oneof(evil, fc.constantFrom("", "customer:read", "customer:read customer:write", "admin", "customer:*")),
        async (proto, clientId, clientSecret, scope) => {
          const got = await run(as(proto).authenticateClient({ clientId, clientSecret, scope }, opts()));
          expectCode(got, ["Unauthenticated", "PermissionDenied", "InvalidArgument"]);
        },
      ),
      { numRuns: RUNS },
    );
    await stillServingAndUntouched();
  });

  it("the throttle still engages on this server: after FREE_ATTEMPTS failures of one login, and of one customer's password", async () => {
    const email = `throttled.${unique()}@example.com`;
    const customer = await as("connect-http1").createCredentials({
      email,
      password: "the right password",
      audience: [ISSUER],
    });
    createdIdentities++;
    const token = customer.tokens?.accessToken ?? "";
    const attempts = FREE_ATTEMPTS + 2;
    const guesses: Array<(i: number) => Promise<unknown>> = [
      (i: number) => as("connect-http1").authenticateCustomer({ email, password: `wrong password ${i}` }, opts()),
      (i: number) =>
        as("grpc").changePassword({ currentPassword: `wrong password ${i}`, newPassword: "new password" }, opts(token)),
    ];
    // One counter per login: ChangePassword finds it spent by the sign-in guesses.
    const expected = [{ Unauthenticated: FREE_ATTEMPTS, ResourceExhausted: 2 }, { ResourceExhausted: attempts }];
    for (const [g, guess] of guesses.entries()) {
      const codes: string[] = [];
      // In parallel batches: the reservation is atomic, so exactly FREE_ATTEMPTS reach the password check.
      for (let i = 0; i < attempts; i += 50) {
        const batch = Array.from({ length: Math.min(50, attempts - i) }, (_, j) => run(guess(i + j)));
        codes.push(...(await Promise.all(batch)).map((r) => r.code));
      }
      expect(tally(codes)).toEqual(expected[g]);
    }
    await stillServingAndUntouched();
  });

  describe("secrets in answers and logs", () => {
    /** A value no answer may hold: a random marker, alone, in hostile text, too long, or shaped as a token. */
    const secretValue = fc
      .tuple(
        fc.uint8Array({ minLength: 9, maxLength: 9 }).map((b) => `Zq${Buffer.from(b).toString("hex")}`),
        fc.constantFrom("plain", "wrapped", "too long", "refresh token", "JWT"),
        evil,
        evil,
      )
      .map(([marker, shape, before, after]) => {
        const value = {
          plain: marker,
          wrapped: `${before}${marker}${after}`,
          // Past every max_len: answered by the validator, which must not quote it either.
          "too long": marker.repeat(20),
          "refresh token": marker.padEnd(43, "_"),
          JWT: [b64url({ alg: "EdDSA", typ: "at+jwt", kid: marker }), b64url({ sub: marker }), b64url(marker)].join(
            ".",
          ),
        }[shape];
        return { marker, value };
      });
    /** Only what an HTTP header can carry: the shapes without hostile text. */
    const headerValue = secretValue.filter(({ value }) => /^[\x21-\x7e]+$/.test(value));
    type Secret = { marker: string; value: string };
    const bearerOf = fc.oneof(
      fc.constant<"none" | "customer" | "service">("none"),
      fc.constant<"none" | "customer" | "service">("customer"),
      fc.constant<"none" | "customer" | "service">("service"),
      headerValue,
    );
    /** One request to any RPC (built once the keeper and the client exist). */
    const requests = () =>
      fc.oneof(
        fc.record({
          rpc: fc.constant("CreateCredentials" as const),
          email: fc.oneof(validEmail, evil),
          password: secretValue,
        }),
        fc.record({
          rpc: fc.constant("CompleteSignUp" as const),
          email: fc.oneof(validEmail, evil),
          code: secretValue,
          password: secretValue,
        }),
        fc.record({
          rpc: fc.constant("StartEmailChange" as const),
          newEmail: fc.oneof(validEmail, evil),
          currentPassword: secretValue,
          bearer: bearerOf,
        }),
        fc.record({ rpc: fc.constant("CompleteEmailChange" as const), code: secretValue, bearer: bearerOf }),
        fc.record({
          rpc: fc.constant("AuthenticateCustomer" as const),
          email: fc.oneof(fc.constant(keeper.email), validEmail, evil),
          password: secretValue,
        }),
        fc.record({ rpc: fc.constant("RefreshToken" as const), refreshToken: secretValue }),
        fc.record({ rpc: fc.constant("RevokeToken" as const), token: secretValue, bearer: bearerOf }),
        fc.record({ rpc: fc.constant("IntrospectToken" as const), token: secretValue, bearer: bearerOf }),
        fc.record({
          rpc: fc.constant("ChangePassword" as const),
          currentPassword: secretValue,
          newPassword: secretValue,
          bearer: bearerOf,
        }),
        fc.record({
          rpc: fc.constant("AuthenticateClient" as const),
          clientId: fc.oneof(fc.constant(client.id), evil),
          clientSecret: secretValue,
          scope: fc.oneof(evil, fc.constantFrom("", "customer:read")),
        }),
      );
    type Request = ReturnType<typeof requests> extends fc.Arbitrary<infer R> ? R : never;

    /** The call r describes, with the documented codes; every secret it carries. */
    function send(proto: FuzzProtocol, r: Request): { call: Promise<unknown>; allowed: string[]; secrets: Secret[] } {
      const auth = as(proto);
      const withBearer = (b: "none" | "customer" | "service" | Secret) =>
        opts(
          b === "none" ? undefined : b === "customer" ? keeper.accessToken : b === "service" ? client.token : b.value,
        );
      const bearerSecrets = (b: "none" | "customer" | "service" | Secret) => (typeof b === "object" ? [b] : []);
      switch (r.rpc) {
        case "CreateCredentials":
          return {
            call: auth.createCredentials({ email: r.email, password: r.password.value }, opts()),
            allowed: ["OK", "InvalidArgument", "AlreadyExists"],
            secrets: [r.password],
          };
        case "CompleteSignUp":
          // No code was sent to these addresses: a wrong code, or a malformed request.
          return {
            call: auth.completeSignUp({ email: r.email, code: r.code.value, password: r.password.value }, opts()),
            allowed: ["InvalidArgument"],
            secrets: [r.code, r.password],
          };
        case "StartEmailChange":
          // The keeper's token is for the customer service, not this one: no bearer gets past authentication.
          return {
            call: auth.startEmailChange(
              { newEmail: r.newEmail, currentPassword: r.currentPassword.value },
              withBearer(r.bearer),
            ),
            allowed: ["Unauthenticated", "PermissionDenied", "InvalidArgument"],
            secrets: [r.currentPassword, ...bearerSecrets(r.bearer)],
          };
        case "CompleteEmailChange":
          return {
            call: auth.completeEmailChange({ code: r.code.value }, withBearer(r.bearer)),
            allowed: ["Unauthenticated", "PermissionDenied", "InvalidArgument"],
            secrets: [r.code, ...bearerSecrets(r.bearer)],
          };
        case "AuthenticateCustomer":
          return {
            call: auth.authenticateCustomer({ email: r.email, password: r.password.value }, opts()),
            allowed: ["Unauthenticated", "InvalidArgument"],
            secrets: [r.password],
          };
        case "RefreshToken":
          return {
            call: auth.refreshToken({ refreshToken: r.refreshToken.value }, opts()),
            allowed: ["Unauthenticated", "InvalidArgument"],
            secrets: [r.refreshToken],
          };
        case "RevokeToken":
          return {
            call: auth.revokeToken({ token: r.token.value }, withBearer(r.bearer)),
            allowed: ["OK", "InvalidArgument", "Unauthenticated"],
            secrets: [r.token, ...bearerSecrets(r.bearer)],
          };
        case "IntrospectToken":
          return {
            call: auth.introspectToken({ token: r.token.value }, withBearer(r.bearer)),
            allowed: ["OK", "InvalidArgument", "Unauthenticated", "PermissionDenied"],
            secrets: [r.token, ...bearerSecrets(r.bearer)],
          };
        case "ChangePassword":
          return {
            call: auth.changePassword(
              { currentPassword: r.currentPassword.value, newPassword: r.newPassword.value },
              withBearer(r.bearer),
            ),
            allowed: ["Unauthenticated", "PermissionDenied", "InvalidArgument"],
            secrets: [r.currentPassword, r.newPassword, ...bearerSecrets(r.bearer)],
          };
        case "AuthenticateClient":
          return {
            call: auth.authenticateClient(
              { clientId: r.clientId, clientSecret: r.clientSecret.value, scope: r.scope },
              opts(),
            ),
            allowed: ["Unauthenticated", "InvalidArgument"],
            secrets: [r.clientSecret],
          };
      }
    }

    /** A scanner for the secrets of one request (each value and its marker); also adds them to all. */
    function scannerFor(secrets: Secret[], all?: SecretScanner): SecretScanner {
      const scanner = createSecretScanner({ observe: false });
      for (const { value, marker } of secrets) {
        scanner.add("a secret the request carried", value, marker);
        all?.add("a secret a request carried", value, marker);
      }
      return scanner;
    }

    it("the check finds a secret in a message, in a detail (also base64 in a detail), in a header", () => {
      const secret = { marker: "Zq0123456789abcdef01", value: "pw Zq0123456789abcdef01 !" };
      const scanner = scannerFor([secret]);
      const detail = (metadata: Record<string, string>) => [
        { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason: "X", metadata }) },
      ];
      for (const err of [
        new ConnectError(`bad password ${secret.value}`, Code.InvalidArgument),
        new ConnectError("bad", Code.InvalidArgument, undefined, detail({ v: secret.marker })),
        new ConnectError(
          "bad",
          Code.InvalidArgument,
          undefined,
          detail({ v: Buffer.from(secret.value).toString("base64") }),
        ),
        new ConnectError("bad", Code.InvalidArgument, { "x-echo": JSON.stringify(secret.value) }),
      ]) {
        expect(findInError(err, scanner), err.message).not.toEqual([]);
      }
      expect(findInError(new ConnectError("invalid email or password", Code.Unauthenticated), scanner)).toEqual([]);
    });

    it("no answer of any RPC holds a password, secret or token the request carried (message, details, headers), as sent or encoded", async () => {
      const codes: string[] = [];
      const all = createSecretScanner({ observe: false });
      await fc.assert(
        fc.asyncProperty(fc.constantFrom(...FUZZ_PROTOCOLS), requests(), async (proto, r) => {
          const { call, allowed, secrets } = send(proto, r);
          const got = await run(call);
          codes.push(`${r.rpc} ${got.code}`);
          if (got.code === "OK" && r.rpc === "CreateCredentials") createdIdentities++;
          expectCode(got, allowed);
          const scanner = scannerFor(secrets, all);
          if (got.err) {
            expect(findInError(got.err, scanner), got.err.message).toEqual([]);
          } else {
            // The tokens a sign-up returns are the server's own, not the request's.
            const answer = JSON.stringify(got.res, (key, v) =>
              key === "tokens" ? undefined : typeof v === "bigint" ? String(v) : v,
            );
            expect(scanner.find(answer), answer).toEqual([]);
          }
        }),
        { numRuns: 3 * RUNS },
      );
      // Every RPC was called, and most calls got past validation to a handler.
      const rpcs = new Set(codes.map((c) => c.split(" ")[0]));
      expect(rpcs.size, [...rpcs].join(", ")).toBe(10);
      expect(codes.filter((c) => !c.endsWith("InvalidArgument")).length).toBeGreaterThan(RUNS);
      // Nor did any log line, nor does any hold a secret the database stores.
      expect(all.size).toBeGreaterThan(3 * RUNS);
      await all.addStored(sql);
      all.expectClean({ identity: svc.logs.lines });
      await stillServingAndUntouched();
    });
  });

  it("a password in a body that is not valid JSON: INVALID_ARGUMENT, quoted back to the sender only when unquoted (ten characters) or a number, never logged", async () => {
    const marker = `Zq${unique()}${unique()}`;
    const post = async (body: string) => {
      const res = await fetch(`${svc.url}/identity.v1.AuthService/AuthenticateCustomer`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body,
      });
      return { status: res.status, ...((await res.json()) as { code: string; message: string }) };
    };
    const email = `"email":"${keeper.email}"`;
    // Cut off, of another type, as a key: the parser's message quotes none of it.
    for (const body of [
      `{${email},"password":"${marker}"`,
      `{${email},"password":"${marker}",}`,
      `{${email},"password":["${marker}"]}`,
      `{${email},"password":{"${marker}":1}}`,
    ]) {
      const answer = await post(body);
      expect(answer, body).toMatchObject({ status: 400, code: "invalid_argument" });
      expect(answer.message, body).not.toContain(marker.slice(0, 6));
    }
    // Not quoted: JSON.parse's message quotes the ten characters around the fault (not promised otherwise).
    const unquoted = await post(`{${email},"password":${marker}}`);
    expect(unquoted).toMatchObject({ status: 400, code: "invalid_argument" });
    expect(unquoted.message).toContain(marker.slice(0, 6));
    expect(unquoted.message).not.toContain(marker);
    // A number where the password string belongs is quoted whole (protobuf-es's message; not promised otherwise).
    const digits = String(Date.now()).padEnd(16, "7");
    const number = await post(`{${email},"password":${digits}}`);
    expect(number).toMatchObject({
      status: 400,
      code: "invalid_argument",
      message: `cannot decode field identity.v1.AuthenticateCustomerRequest.password from JSON: expected string, got ${digits}`,
    });
    for (const secret of [marker.slice(0, 6), digits]) {
      expect(svc.logs.lines.filter((l) => l.includes(secret))).toEqual([]);
    }
  });

  it("NUL in a login or a client id is INVALID_ARGUMENT", async () => {
    const nul = { code: Code.InvalidArgument, rawMessage: "strings must not contain NUL (U+0000) characters" };
    for (const proto of FUZZ_PROTOCOLS) {
      await expect(
        as(proto).authenticateCustomer({ email: `${keeper.email}\u0000`, password: keeper.password }, opts()),
      ).rejects.toMatchObject(nul);
      await expect(
        as(proto).authenticateClient(
          { clientId: `${client.id}\u0000`, clientSecret: client.secret, scope: "" },
          opts(),
        ),
      ).rejects.toMatchObject(nul);
    }
    await stillServingAndUntouched();
  });

  it("SQL-injection-shaped logins: stored verbatim, sign in only with exactly that password", async () => {
    for (const [i, s] of SQL_SHAPED.entries()) {
      const email = `${SQL_EMAIL_LOCALS[i % SQL_EMAIL_LOCALS.length]}${unique()}@example.com`;
      const pw = `${s}!${i}`.padEnd(8, "#");
      const proto = FUZZ_PROTOCOLS[i % FUZZ_PROTOCOLS.length] ?? "connect-http1";
      const res = await as(proto).createCredentials({ email, password: pw }, opts());
      createdIdentities++;
      expect((await sql`select email from identities where customer_id = ${res.customerId}`)[0]?.email).toBe(email);
      await expect(as(proto).authenticateCustomer({ email, password: pw }, opts())).resolves.toMatchObject({
        customerId: res.customerId,
      });
      // The classic tautologies as password or as login get nobody in.
      await expect(as(proto).authenticateCustomer({ email, password: "' OR '1'='1" }, opts())).rejects.toMatchObject({
        code: Code.Unauthenticated,
      });
      await expect(
        as(proto).authenticateCustomer({ email: `${email}' OR '1'='1`, password: pw }, opts()),
      ).rejects.toMatchObject({ code: Code.Unauthenticated });
      await expect(
        as(proto).authenticateClient({ clientId: `${client.id}' OR '1'='1`, clientSecret: s, scope: "" }, opts()),
      ).rejects.toMatchObject({ code: Code.Unauthenticated });
    }
    await stillServingAndUntouched();
  });
});
