/**
 * Property-based fuzzing of every AuthService request message through the
 * generated clients, over Connect (binary and JSON on HTTP/1.1) and gRPC:
 * arbitrary unicode, control characters, very long strings,
 * SQL-injection-shaped strings, tokens close to real ones.
 * (CustomerService: fuzz-customer-requests.test.ts.)
 *
 * Every answer is OK or one of the codes the contract documents for the RPC
 * (never INTERNAL, UNKNOWN, UNAVAILABLE or a deadline: each call has a
 * timeout), what succeeded works exactly as sent, no guess gets anyone in,
 * the server keeps serving, and the credentials and sessions nobody was
 * allowed to touch stay as they were.
 */
import { Code } from "@connectrpc/connect";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import fc from "fast-check";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
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
  stored,
  unique,
  validEmail,
} from "../support/fuzz.js";
import { type RunningIdentityService, startIdentityService } from "../support/services.js";

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
  let createdIdentities = 0;

  const identityState = async () => ({
    keeper: await sql`select * from identities where customer_id = ${keeper.customerId}`,
    keeperTokens:
      await sql`select id, revoked_at, rotated_at from refresh_tokens where customer_id = ${keeper.customerId}`,
    clients: await sql`select * from clients order by client_id`,
    keys: await sql`select kid, retired_at from signing_keys order by kid`,
    revoked: await sql`select count(*)::int as n from revoked_access_tokens`,
  });

  beforeAll(async () => {
    svc = await startIdentityService({ LOG_LEVEL: "warn" });
    sql = svc.database.sql;
    const out: string[] = [];
    expect(
      await runCli(["clients", "create", "fuzz-client", "--scopes", "customer:read"], svc.env, (l) => out.push(l)),
    ).toBe(0);
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

  /** The server still answers on every protocol; the keeper's credentials and sessions are intact. */
  async function stillServingAndUntouched(): Promise<void> {
    for (const p of FUZZ_PROTOCOLS) {
      await expect(as(p).introspectToken({ token: keeper.refreshToken }, opts(client.token)), p).resolves.toMatchObject(
        { active: true, sub: keeper.customerId },
      );
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

  it("CreateCredentials: documented codes only; an accepted password signs in exactly as sent", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        fc.oneof(validEmail, sqlEmail, evil, fc.constant(keeper.email), fc.constant(keeper.email.toUpperCase())),
        password,
        async (proto, email, pw) => {
          const got = await run(as(proto).createCredentials({ email, password: pw }, opts()));
          expectCode(got, ["OK", "InvalidArgument", "AlreadyExists"]);
          if (got.code !== "OK") return;
          createdIdentities++;
          const customerId = got.res?.customerId ?? "";
          const [row] = await sql`select email from identities where customer_id = ${customerId}`;
          expect(row?.email).toBe(stored(email).toLowerCase());
          const signIn = await as("grpc").authenticateCustomer({ email, password: pw }, opts());
          expect(signIn.customerId).toBe(customerId);
        },
      ),
      { numRuns: RUNS },
    );
    await stillServingAndUntouched();
  });

  it("AuthenticateCustomer: documented codes only (never OK for a guess)", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        fc.oneof(fc.constant(`victim.${unique()}@example.com`), sqlEmail, evil),
        password,
        async (proto, email, pw) => {
          const got = await run(as(proto).authenticateCustomer({ email, password: pw }, opts()));
          expectCode(got, ["Unauthenticated", "ResourceExhausted", "InvalidArgument"]);
        },
      ),
      { numRuns: RUNS },
    );
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
    });
    createdIdentities++;
    const [before] = await sql`select password_hash from identities where customer_id = ${victim.customerId}`;
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        password,
        password,
        async (proto, currentPassword, newPassword) => {
          const got = await run(
            as(proto).changePassword({ currentPassword, newPassword }, opts(victim.tokens?.accessToken ?? "")),
          );
          expectCode(got, ["Unauthenticated", "ResourceExhausted", "InvalidArgument"]);
        },
      ),
      { numRuns: RUNS },
    );
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

  it("afterwards: the same tables, one identity per accepted sign-up", async () => {
    expect(
      await sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`,
    ).toEqual(tables);
    const [row] = await sql<{ n: number }[]>`select count(*)::int as n from identities`;
    expect(row?.n).toBe(1 + createdIdentities);
  });
});
