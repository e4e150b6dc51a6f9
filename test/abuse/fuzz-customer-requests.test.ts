/**
 * Property-based fuzzing of every CustomerService request message through
 * the generated clients, over Connect (binary and JSON on HTTP/1.1, GET for
 * GetCustomer) and gRPC: arbitrary unicode, control characters, very long
 * strings, SQL-injection-shaped strings, random field masks and int64
 * versions. (AuthService: fuzz-auth-requests.test.ts.)
 *
 * Every answer is OK or one of the codes the contract documents for the RPC
 * (never INTERNAL, UNKNOWN, UNAVAILABLE or a deadline: each call has a
 * timeout), what succeeded is stored and read back exactly as sent (trimmed
 * where the service trims), the server keeps serving, and rows nobody was
 * allowed to touch stay as they were; table counts match what succeeded.
 * After every test, no error received and no log line holds a bearer token
 * the calls carried (test/support/secrets.ts).
 */
import { randomUUID } from "node:crypto";
import { create, type MessageInitShape, toJsonString } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import type { Customer, CustomerSchema, PostalAddress } from "@customer-platform/gen/customer/v1/customer_pb.js";
import {
  CustomerService,
  type RegisterCustomerRequestSchema,
  UpdateCustomerRequestSchema,
} from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import fc from "fast-check";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { bearer } from "../support/clients.js";
import {
  blankish,
  evil,
  expectCode,
  FUZZ_PROTOCOLS,
  type FuzzProtocol,
  mostly,
  opts,
  RUNS,
  run,
  SPECIAL,
  SQL_EMAIL_LOCALS,
  SQL_SHAPED,
  sqlEmail,
  stored,
  unique,
  validEmail,
  wf,
} from "../support/fuzz.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import { createSecretScanner } from "../support/secrets.js";
import { type RunningCustomerService, startCustomerService } from "../support/services.js";

const name = fc.oneof(evil, blankish, fc.constantFrom("Ada", "José", "李小龍", "O'Brien", "a\u0000b"));
const phone = fc.option(mostly(fc.constantFrom("+4915123456789", "+14155550100"), evil), {
  nil: undefined,
  freq: 2,
});
const address = fc.option(
  fc.record({
    addressLines: fc.oneof(
      fc.array(fc.oneof(evil, blankish, fc.constant("1 Analytical St")), { minLength: 1, maxLength: 3 }),
      fc.array(evil, { maxLength: 7 }),
    ),
    locality: fc.oneof(evil, fc.constant("London")),
    region: evil,
    postalCode: mostly(fc.constantFrom("N1 9GU", "10115", ""), evil),
    countryCode: mostly(fc.constantFrom("DE", "GB", "US"), fc.oneof(fc.constantFrom("de", "XX", ""), evil)),
  }),
  { nil: undefined, freq: 2 },
);
const int64 = fc.oneof(
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  fc.bigInt({ min: -2n, max: 12n }),
  fc.constantFrom(0n, 2n ** 63n - 1n, -(2n ** 63n)),
);
const maskPaths = mostly(
  fc.subarray(["email", "given_name", "family_name", "phone_number", "address"], { minLength: 1 }),
  fc.array(
    fc.oneof(
      fc.constantFrom("email", "given_name", "family_name", "phone_number", "address"),
      fc.constantFrom("version", "customer_id", "create_time", "address.locality", "__proto__", "constructor"),
      evil,
    ),
    { maxLength: 6 },
  ),
);
/** Names that pass validation: SQL-shaped, unicode, control characters. */
const validName = fc.oneof(
  fc.constantFrom("Ada", "José", "李小龍", "O'Brien", ...SQL_SHAPED),
  fc.string({ unit: "grapheme", minLength: 1, maxLength: 30 }).filter((x) => x.trim() !== ""),
  fc
    .string({ unit: fc.constantFrom(...SPECIAL.filter((c) => c !== "\u0000")), minLength: 1, maxLength: 20 })
    .map((x) => `${x}x`),
);

// ------------------------------------------------------------------ customer service

describe("CustomerService", () => {
  let issuer: TestIssuer;
  let svc: RunningCustomerService;
  let sql: postgres.Sql;
  const cs = (protocol: FuzzProtocol | "connect-get") => svc.clients.client(CustomerService, protocol);
  /** The seeded customer nobody but its owner may change, and how it was. */
  let seeded: { id: string; token: string; snapshot: Customer; row: unknown };
  /** The customer the fuzzed updates target, as last seen. */
  let target: { id: string; token: string; now: Customer; row: unknown };
  let reader: string;
  let tables: unknown;
  /**
   * Rows this test created or changed, to check the table counts after it against the counts before it
   * (per test, so one test's failure, and fast-check's replays while shrinking it, fail only that test).
   */
  let created: string[] = [];
  let realUpdates = 0;
  let countsAtStart = { customers: 0, outbox: 0 };

  const rowOf = async (id: string) => (await sql`select * from customers where customer_id = ${id}`)[0];

  beforeAll(async () => {
    issuer = await startTestIssuer();
    svc = await startCustomerService({
      IDENTITY_ISSUER: issuer.issuer,
      IDENTITY_JWKS_URL: issuer.jwksUrl,
      LOG_LEVEL: "warn",
    });
    sql = svc.database.sql;
    const register = async (label: string) => {
      const id = randomUUID();
      const email = `${label}.${unique()}@example.com`;
      // The profile's email is the verified one the token carries.
      const token = await issuer.customer(id, email);
      const res = await cs("connect-http1").registerCustomer(
        {
          email,
          givenName: "Ada",
          familyName: "Lovelace",
          phoneNumber: "+4915123456789",
          address: { addressLines: ["1 Analytical St"], locality: "London", postalCode: "N1 9GU", countryCode: "GB" },
        },
        bearer(token),
      );
      if (!res.customer) throw new Error("no customer");
      return { id, token, customer: res.customer };
    };
    const s = await register("seeded");
    seeded = { id: s.id, token: s.token, snapshot: s.customer, row: await rowOf(s.id) };
    const t = await register("target");
    target = { id: t.id, token: t.token, now: t.customer, row: await rowOf(t.id) };
    reader = await issuer.service("fuzz-reader", "customer:read");
    tables = await sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`;
  });

  afterAll(async () => {
    secrets.close();
    await svc?.close();
    await issuer?.close();
  });

  const secrets = createSecretScanner();
  beforeEach(async () => {
    created = [];
    realUpdates = 0;
    countsAtStart = await counts();
  });

  // After every test, whatever ran before it: no bearer token in logs or errors; the same tables, one
  // row per accepted registration, one event per real change (sent outbox rows are kept 7 days).
  afterEach(async () => {
    secrets.expectClean({ customer: svc.logs.lines });
    expect(
      await sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`,
    ).toEqual(tables);
    expect(await counts()).toEqual({
      customers: countsAtStart.customers + created.length,
      outbox: countsAtStart.outbox + created.length + realUpdates,
    });
  });

  /** The server still answers on every protocol, and the seeded customer is as it was. */
  async function stillServingAndUntouched(): Promise<void> {
    for (const p of [...FUZZ_PROTOCOLS, "connect-get"] as const) {
      const got = await cs(p).getCustomer({ customerId: seeded.id }, opts(seeded.token));
      expect(got.customer, p).toEqual(seeded.snapshot);
    }
    expect(await rowOf(seeded.id)).toEqual(seeded.row);
  }

  it("RegisterCustomer: documented codes only; what is accepted is stored and read back as sent, with the token's verified email", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        // The verified email the token carries.
        fc.oneof(validEmail, sqlEmail),
        // The deprecated email field: the verified one, none, or another (another customer's, hostile).
        fc.oneof(
          { arbitrary: fc.constant<"verified" | undefined>("verified"), weight: 2 },
          { arbitrary: fc.constant<"verified" | undefined>(undefined), weight: 2 },
          { arbitrary: fc.oneof(validEmail, evil, fc.constant(seeded.snapshot.email)), weight: 1 },
        ),
        fc.record({
          givenName: name,
          familyName: name,
          phoneNumber: phone,
          address,
        }),
        async (proto, verified, claim, fields) => {
          const id = randomUUID();
          const token = await issuer.customer(id, verified);
          const email = claim === "verified" ? verified : claim;
          const req = { ...fields, ...(email !== undefined && { email }) };
          const init = Object.fromEntries(Object.entries(req).filter(([, v]) => v !== undefined)) as typeof req;
          const got = await run(cs(proto).registerCustomer(init, opts(token)));
          expectCode(got, ["OK", "InvalidArgument"]);
          // An email other than the verified one is refused.
          if (email !== undefined && email !== verified) expect(got.code).toBe("InvalidArgument");
          if (got.code !== "OK") {
            expect(await rowOf(id)).toBeUndefined();
            return;
          }
          created.push(id);
          const expected = {
            customerId: id,
            email: verified,
            givenName: stored(req.givenName),
            familyName: stored(req.familyName),
            version: 1n,
          };
          expect(got.res?.customer).toMatchObject(expected);
          expectNothingBlank(got.res?.customer);
          expect(got.res?.customer?.phoneNumber).toBe(
            fields.phoneNumber === undefined ? undefined : wf(fields.phoneNumber),
          );
          expect(addressView(got.res?.customer?.address)).toEqual(sentAddress(fields.address));
          // Read back over another protocol, and straight from the table.
          const back = await cs("grpc").getCustomer({ customerId: id }, opts(token));
          expect(back.customer).toEqual(got.res?.customer);
          expect(await rowOf(id)).toMatchObject({
            email: expected.email,
            given_name: expected.givenName,
            family_name: expected.familyName,
            phone_number: fields.phoneNumber === undefined ? null : wf(fields.phoneNumber),
          });
        },
      ),
      { numRuns: RUNS },
    );
    await stillServingAndUntouched();
  });

  it("UpdateCustomer: documented codes only, random masks and int64 versions; never the email; nobody else's row changes", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS),
        fc.oneof(
          { arbitrary: fc.constant("target"), weight: 6 },
          { arbitrary: fc.constantFrom("seeded", "unknown", "upper-target"), weight: 2 },
          { arbitrary: evil, weight: 1 },
        ),
        fc.record({
          email: mostly(fc.oneof(validEmail, sqlEmail), fc.oneof(evil, fc.constantFrom("", seeded.snapshot.email))),
          givenName: mostly(validName, fc.oneof(name, fc.constant(""))),
          familyName: mostly(validName, fc.oneof(name, fc.constant(""))),
          phoneNumber: phone,
          address: fc.option(
            fc.record({
              addressLines: mostly(
                fc.array(validName, { minLength: 1, maxLength: 5 }),
                fc.array(name, { maxLength: 7 }),
              ),
              locality: mostly(
                validName.filter((x) => x.length <= 100),
                evil,
              ),
              region: mostly(fc.constantFrom("", "Greater London", ...SQL_SHAPED), evil),
              postalCode: mostly(fc.constantFrom("N1 9GU", "10115", ""), evil),
              countryCode: mostly(fc.constantFrom("DE", "GB", "US"), evil),
            }),
            { nil: undefined, freq: 2 },
          ),
          version: int64,
        }),
        maskPaths,
        fc.option(mostly(fc.bigInt({ min: 1n, max: 12n }), int64), { nil: undefined, freq: 2 }),
        async (proto, which, fields, paths, expectedVersion) => {
          const customerId =
            which === "target"
              ? target.id
              : which === "upper-target"
                ? target.id.toUpperCase()
                : which === "seeded"
                  ? seeded.id
                  : which === "unknown"
                    ? randomUUID()
                    : which;
          const { phoneNumber, address: addr, ...rest } = fields;
          const req: MessageInitShape<typeof UpdateCustomerRequestSchema> = {
            customer: {
              customerId,
              ...rest,
              ...(phoneNumber !== undefined && { phoneNumber }),
              ...(addr !== undefined && { address: addr }),
            },
            updateMask: { paths },
            ...(expectedVersion !== undefined && { expectedVersion }),
          };
          const before = target.now;
          // A FieldMask path whose lowerCamelCase does not map back cannot be written as JSON at all.
          const via = proto === "connect-json" && !jsonEncodable(req) ? "connect-http1" : proto;
          const got = await run(cs(via).updateCustomer(req, opts(target.token)));
          const allowed =
            which === "seeded" || which === "unknown"
              ? ["InvalidArgument", "PermissionDenied"]
              : ["OK", "InvalidArgument", "Aborted", "PermissionDenied", "NotFound"];
          expectCode(got, allowed);
          // The email follows the verified one: a mask naming it is refused.
          if (paths.includes("email")) expect(got.code).toBe("InvalidArgument");
          if (got.code === "Aborted") expect(expectedVersion).not.toBe(before.version);
          if (got.code !== "OK") {
            expect(await rowOf(target.id)).toEqual(target.row);
            return;
          }
          const after = got.res?.customer;
          if (!after) throw new Error("no customer in the response");
          expect(after.customerId).toBe(target.id);
          expectNothingBlank(after);
          // version in the request is output only: the stored one moves by at most one.
          expect([before.version, before.version + 1n]).toContain(after.version);
          if (after.version > before.version) realUpdates++;
          const masked = new Set(paths);
          const expectField = (path: string, now: unknown, was: unknown, sent: unknown) =>
            expect(now, path).toEqual(masked.has(path) ? sent : was);
          expect(after.email, "email").toBe(before.email);
          expectField("given_name", after.givenName, before.givenName, stored(fields.givenName));
          expectField("family_name", after.familyName, before.familyName, stored(fields.familyName));
          expectField(
            "phone_number",
            after.phoneNumber,
            before.phoneNumber,
            phoneNumber === undefined ? undefined : wf(phoneNumber),
          );
          expectField("address", addressView(after.address), addressView(before.address), sentAddress(addr));
          expect(after.createTime).toEqual(before.createTime);
          const back = await cs("grpc").getCustomer({ customerId: target.id }, opts(target.token));
          expect(back.customer).toEqual(after);
          target.now = after;
          target.row = await rowOf(target.id);
        },
      ),
      { numRuns: RUNS },
    );
    await stillServingAndUntouched();
  });

  it("GetCustomer: documented codes only, over Connect POST, GET and gRPC, as a customer or a service", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...FUZZ_PROTOCOLS, "connect-get" as const),
        fc.constantFrom("reader", "target"),
        fc.oneof(fc.constantFrom(seeded.id, target.id, seeded.id.toUpperCase()), fc.uuid().map(String), evil),
        async (proto, caller, customerId) => {
          const got = await run(
            cs(proto).getCustomer({ customerId }, opts(caller === "reader" ? reader : target.token)),
          );
          expectCode(got, ["OK", "InvalidArgument", "NotFound", "PermissionDenied"]);
          if (got.code === "OK") {
            const id = customerId.toLowerCase();
            expect([seeded.id, target.id]).toContain(id);
            expect(got.res?.customer).toEqual(id === seeded.id ? seeded.snapshot : target.now);
            if (caller === "target") expect(id).toBe(target.id);
          }
        },
      ),
      { numRuns: RUNS },
    );
    await stillServingAndUntouched();
  });

  it("SQL-injection-shaped strings in every text field are stored verbatim and nothing else happens", async () => {
    const countsBefore = await counts();
    for (const [i, s] of SQL_SHAPED.entries()) {
      const id = randomUUID();
      const email = `${SQL_EMAIL_LOCALS[i % SQL_EMAIL_LOCALS.length]}${unique()}@example.com`;
      const token = await issuer.customer(id, email);
      const proto = FUZZ_PROTOCOLS[i % FUZZ_PROTOCOLS.length] ?? "connect-http1";
      const res = await cs(proto).registerCustomer(
        {
          email,
          givenName: s,
          familyName: s,
          address: { addressLines: [s, s], locality: s, region: s, countryCode: "DE" },
        },
        opts(token),
      );
      expect(res.customer).toMatchObject({ email, givenName: s, familyName: s, version: 1n });
      expect(res.customer?.address).toMatchObject({ addressLines: [s, s], locality: s, region: s });
      expect(await rowOf(id)).toMatchObject({
        email,
        given_name: s,
        family_name: s,
        address: { addressLines: [s, s], locality: s, region: s, postalCode: "", countryCode: "DE" },
      });
      const other = SQL_SHAPED[(i + 1) % SQL_SHAPED.length] ?? "";
      const updated = await cs(proto).updateCustomer(
        { customer: { customerId: id, familyName: other }, updateMask: { paths: ["family_name"] } },
        opts(token),
      );
      expect(updated.customer).toMatchObject({ givenName: s, familyName: other, version: 2n });
      expect(await cs("grpc").getCustomer({ customerId: id }, opts(token))).toMatchObject({
        customer: updated.customer,
      });
      created.push(id);
      realUpdates++;
    }
    const n = SQL_SHAPED.length;
    expect(await counts()).toEqual({
      customers: countsBefore.customers + n,
      outbox: countsBefore.outbox + 2 * n,
    });
    await stillServingAndUntouched();
  });

  it("NUL in any text field, and names that trim to nothing, are INVALID_ARGUMENT and store nothing", async () => {
    const id = randomUUID();
    const base = { email: `nul.${unique()}@example.com`, givenName: "Ada", familyName: "Lovelace" };
    const token = await issuer.customer(id, base.email);
    const address = { addressLines: ["1 Analytical St"], locality: "London", countryCode: "GB" };
    const nul = { code: Code.InvalidArgument, rawMessage: "strings must not contain NUL (U+0000) characters" };
    const blank = (f: string) => ({ code: Code.InvalidArgument, rawMessage: `${f}: value must not be blank` });
    const countsBefore = await counts();
    type Register = MessageInitShape<typeof RegisterCustomerRequestSchema>;
    type Update = MessageInitShape<typeof CustomerSchema>;
    for (const proto of FUZZ_PROTOCOLS) {
      const registers: [Register, object][] = [
        [{ ...base, givenName: "Ada\u0000" }, nul],
        [{ ...base, familyName: "\u0000'; drop table customers; --" }, nul],
        [{ ...base, address: { ...address, addressLines: ["1 Analytical St\u0000"] } }, nul],
        [{ ...base, address: { ...address, locality: "Lon\u0000don" } }, nul],
        [{ ...base, address: { ...address, region: "\u0000" } }, nul],
        // U+FEFF is no White_Space for the contract's CEL trim, but String.prototype.trim strips it.
        [{ ...base, givenName: "\ufeff" }, blank("given_name")],
        [{ ...base, familyName: " \ufeff " }, blank("family_name")],
        [{ ...base, address: { ...address, addressLines: ["\ufeff"] } }, blank("address.address_lines")],
      ];
      for (const [req, error] of registers) {
        await expect(
          cs(proto).registerCustomer(req, opts(token)),
          `${proto} ${JSON.stringify(req)}`,
        ).rejects.toMatchObject(error);
      }
      const updates: [Update, string[], object][] = [
        [{ givenName: "Grace\u0000" }, ["given_name"], nul],
        [{ address: { ...address, locality: "\u0000" } }, ["address"], nul],
        [{ familyName: "\ufeff\ufeff" }, ["family_name"], blank("customer.family_name")],
      ];
      for (const [customer, paths, error] of updates) {
        await expect(
          cs(proto).updateCustomer(
            { customer: { customerId: target.id, ...customer }, updateMask: { paths } },
            opts(target.token),
          ),
          `${proto} ${JSON.stringify(customer)}`,
        ).rejects.toMatchObject(error);
      }
    }
    expect(await rowOf(id)).toBeUndefined();
    expect(await rowOf(target.id)).toEqual(target.row);
    expect(await counts()).toEqual(countsBefore);
    await stillServingAndUntouched();
  });

  async function counts() {
    const [row] = await sql<{ customers: number; outbox: number }[]>`
      select (select count(*)::int from customers) as customers, (select count(*)::int from outbox) as outbox`;
    return row ?? { customers: -1, outbox: -1 };
  }
});

/** The contract's not_blank rules hold for what is stored. */
function expectNothingBlank(c: Customer | undefined): void {
  expect(c?.givenName, "given_name").not.toBe("");
  expect(c?.familyName, "family_name").not.toBe("");
  expect(c?.address?.addressLines ?? [], "address_lines").not.toContain("");
}

const jsonEncodable = (req: MessageInitShape<typeof UpdateCustomerRequestSchema>) => {
  try {
    toJsonString(UpdateCustomerRequestSchema, create(UpdateCustomerRequestSchema, req));
    return true;
  } catch {
    return false;
  }
};

type AddressInput = {
  addressLines: string[];
  locality: string;
  region: string;
  postalCode: string;
  countryCode: string;
};
/** An address's fields as plain data. */
const addressView = (a: PostalAddress | undefined) =>
  a && {
    addressLines: a.addressLines,
    locality: a.locality,
    region: a.region,
    postalCode: a.postalCode,
    countryCode: a.countryCode,
  };
/** The address the service stores for the one sent: trimmed, except the country code. */
const sentAddress = (a: AddressInput | undefined) =>
  a && {
    addressLines: a.addressLines.map(stored),
    locality: stored(a.locality),
    region: stored(a.region),
    postalCode: stored(a.postalCode),
    countryCode: wf(a.countryCode),
  };
