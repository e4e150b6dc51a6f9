/**
 * Property-based fuzzing of every request message of both services through
 * the generated clients, over Connect (binary and JSON on HTTP/1.1, GET for
 * GetCustomer) and gRPC: arbitrary unicode, control characters, very long
 * strings, SQL-injection-shaped strings, random field masks and int64
 * versions.
 *
 * Every answer is OK or one of the codes the contract documents for the RPC
 * (never INTERNAL, UNKNOWN, UNAVAILABLE or a deadline: each call has a
 * timeout), what succeeded is stored and read back exactly as sent (trimmed
 * where the service trims), the servers keep serving, and rows nobody was
 * allowed to touch stay as they were; table counts match what succeeded.
 */
import { randomUUID } from "node:crypto";
import { create, type DescService, type MessageInitShape, toJsonString } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { Customer, CustomerSchema, PostalAddress } from "@customer-platform/gen/customer/v1/customer_pb.js";
import {
  CustomerService,
  type RegisterCustomerRequestSchema,
  UpdateCustomerRequestSchema,
} from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import fc from "fast-check";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer } from "../support/clients.js";
import { startTestIssuer, type TestIssuer } from "../support/issuer.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "../support/services.js";

const RUNS = 150;
const TIMEOUT_MS = 5_000;

// ------------------------------------------------------------------ arbitraries

const SQL_SHAPED = [
  "'; drop table customers; --",
  "Robert'); DROP TABLE customers;--",
  "' OR '1'='1",
  '" OR ""="',
  "1; SELECT pg_sleep(10); --",
  "'); delete from outbox; --",
  "$$ || (select password_hash from identities limit 1) || $$",
  "\\'; truncate customers cascade; --",
  "' UNION SELECT private_jwk FROM signing_keys --",
  "%' and 1=0 --",
  "'||pg_sleep(5)||'",
  "admin'--",
  "$1",
  "E'\\x27'",
  "';COPY customers TO PROGRAM 'id';--",
];
/** Email local parts a validator accepts that still look like SQL. */
const SQL_EMAIL_LOCALS = ["'or'1'='1'--", "o'brien", "x'||'y", "admin'--", "'%27--"];
const SPECIAL = [
  "\u0000",
  "\u0001",
  "\u0007",
  "\u001b",
  "\u007f",
  "\u0085",
  "\u00a0",
  "\u200b",
  "\u202e",
  "\u2028",
  "\ufeff",
  "\ufffd",
  "\ud800",
  "\udfff",
  "😀",
  "👩‍👩‍👧",
  "é",
  "e\u0301",
  "'",
  '"',
  ";",
  "--",
  "\\",
  "%",
  "_",
  "$",
  "\n",
  "\r",
  "\t",
  " ",
  "\u3000",
  "a",
];

const evil = fc.oneof(
  { arbitrary: fc.constantFrom(...SQL_SHAPED), weight: 3 },
  // NUL: a classic for truncating strings in C and refused by PostgreSQL text.
  { arbitrary: fc.constantFrom("\u0000", "x\u0000'; drop table customers; --"), weight: 1 },
  { arbitrary: fc.string({ unit: "binary", maxLength: 30 }), weight: 3 },
  { arbitrary: fc.string({ unit: "grapheme", maxLength: 30 }), weight: 2 },
  { arbitrary: fc.string({ unit: fc.constantFrom(...SPECIAL), maxLength: 20 }), weight: 3 },
  {
    // Long strings: past every max_len, still far below the request size limit.
    arbitrary: fc
      .tuple(fc.constantFrom(...SQL_SHAPED, "x", "é", "😀"), fc.integer({ min: 2, max: 300 }))
      .map(([s, n]) => s.repeat(n).slice(0, 2500)),
    weight: 1,
  },
);
/** Strings that look blank to someone: every kind of space, and U+FEFF, which only JavaScript trims. */
const blankish = fc.string({
  unit: fc.constantFrom(" ", "\t", "\ufeff", "\u00a0", "\u3000", "\u2028"),
  minLength: 1,
  maxLength: 4,
});
const unique = () => randomUUID().slice(0, 8);
const validEmail = fc.constant(null).map(() => `f.${unique()}@example.com`);
const sqlEmail = fc.constantFrom(...SQL_EMAIL_LOCALS).map((l) => `${l}${unique()}@example.com`);
/** Mostly a valid value, so that requests get past validation; otherwise anything. */
const mostly = <T>(valid: fc.Arbitrary<T>, other: fc.Arbitrary<T>) =>
  fc.oneof({ arbitrary: valid, weight: 4 }, { arbitrary: other, weight: 1 });
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

// ------------------------------------------------------------------ clients

type Proto = "connect" | "connect-json" | "grpc";
const PROTOS: Proto[] = ["connect", "connect-json", "grpc"];
const sessions: Http2SessionManager[] = [];

function transports(baseUrl: string): Record<Proto | "connect-get", Transport> {
  const h2 = new Http2SessionManager(baseUrl);
  sessions.push(h2);
  return {
    connect: createConnectTransport({ baseUrl, httpVersion: "1.1" }),
    "connect-json": createConnectTransport({ baseUrl, httpVersion: "1.1", useBinaryFormat: false }),
    "connect-get": createConnectTransport({ baseUrl, httpVersion: "1.1", useHttpGet: true }),
    grpc: createGrpcTransport({ baseUrl, sessionManager: h2 }),
  };
}
function clientsFor<S extends DescService>(service: S, baseUrl: string): Record<Proto | "connect-get", Client<S>> {
  const t = transports(baseUrl);
  return {
    connect: createClient(service, t.connect),
    "connect-json": createClient(service, t["connect-json"]),
    "connect-get": createClient(service, t["connect-get"]),
    grpc: createClient(service, t.grpc),
  };
}

/** The outcome of a call: "OK" and its response, or the code's name and the error. */
async function run<T>(call: Promise<T>): Promise<{ code: string; res?: T; err?: ConnectError }> {
  try {
    return { code: "OK", res: await call };
  } catch (e) {
    const err = ConnectError.from(e);
    return { code: Code[err.code] ?? String(err.code), err };
  }
}

/** Fails with the message of an unexpected code, so a counterexample shows it. */
function expectCode(got: { code: string; err?: ConnectError }, allowed: string[]): void {
  if (!allowed.includes(got.code)) {
    throw new Error(`unexpected ${got.code}: ${got.err?.rawMessage ?? ""} (allowed: ${allowed.join(", ")})`);
  }
}

/** What the client puts on the wire for a string: lone surrogates become U+FFFD. */
const wf = (s: string) =>
  s.replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, "\ufffd");
/** The stored form of a string the service trims. */
const stored = (s: string) => wf(s).trim();
const opts = (token?: string) => ({ ...(token ? bearer(token) : {}), timeoutMs: TIMEOUT_MS });

// ------------------------------------------------------------------ customer service

describe("CustomerService", () => {
  let issuer: TestIssuer;
  let svc: RunningCustomerService;
  let sql: postgres.Sql;
  let cs: Record<Proto | "connect-get", Client<typeof CustomerService>>;
  /** The seeded customer nobody but its owner may change, and how it was. */
  let seeded: { id: string; token: string; snapshot: Customer; row: unknown };
  /** The customer the fuzzed updates target, as last seen. */
  let target: { id: string; token: string; now: Customer; row: unknown };
  let reader: string;
  let tables: unknown;
  /** Rows the properties created or changed, to check the table counts at the end. */
  const created: string[] = [];
  let realUpdates = 0;

  const rowOf = async (id: string) => (await sql`select * from customers where customer_id = ${id}`)[0];

  beforeAll(async () => {
    issuer = await startTestIssuer();
    svc = await startCustomerService({
      IDENTITY_ISSUER: issuer.issuer,
      IDENTITY_JWKS_URL: issuer.jwksUrl,
      LOG_LEVEL: "warn",
    });
    sql = postgres(svc.database.url, { max: 2, onnotice: () => {} });
    cs = clientsFor(CustomerService, svc.url);
    const register = async (label: string) => {
      const id = randomUUID();
      const token = await issuer.customer(id);
      const res = await cs.connect.registerCustomer(
        {
          email: `${label}.${unique()}@example.com`,
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
    for (const s of sessions.splice(0)) s.abort();
    await sql?.end();
    await svc?.close();
    await issuer?.close();
  });

  /** The server still answers on every protocol, and the seeded customer is as it was. */
  async function stillServingAndUntouched(): Promise<void> {
    for (const p of [...PROTOS, "connect-get"] as const) {
      const got = await cs[p].getCustomer({ customerId: seeded.id }, opts(seeded.token));
      expect(got.customer, p).toEqual(seeded.snapshot);
    }
    expect(await rowOf(seeded.id)).toEqual(seeded.row);
  }

  it("RegisterCustomer: documented codes only; what is accepted is stored and read back as sent", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...PROTOS),
        fc.record({
          email: mostly(fc.oneof(validEmail, sqlEmail), fc.oneof(evil, fc.constant(seeded.snapshot.email))),
          givenName: name,
          familyName: name,
          phoneNumber: phone,
          address,
        }),
        async (proto, req) => {
          const id = randomUUID();
          const token = await issuer.customer(id);
          const init = Object.fromEntries(Object.entries(req).filter(([, v]) => v !== undefined)) as typeof req;
          const got = await run(cs[proto].registerCustomer(init, opts(token)));
          expectCode(got, ["OK", "InvalidArgument", "AlreadyExists"]);
          if (got.code !== "OK") {
            expect(await rowOf(id)).toBeUndefined();
            return;
          }
          created.push(id);
          const expected = {
            customerId: id,
            email: stored(req.email),
            givenName: stored(req.givenName),
            familyName: stored(req.familyName),
            version: 1n,
          };
          expect(got.res?.customer).toMatchObject(expected);
          expectNothingBlank(got.res?.customer);
          expect(got.res?.customer?.phoneNumber).toBe(req.phoneNumber === undefined ? undefined : wf(req.phoneNumber));
          expect(addressView(got.res?.customer?.address)).toEqual(sentAddress(req.address));
          // Read back over another protocol, and straight from the table.
          const back = await cs.grpc.getCustomer({ customerId: id }, opts(token));
          expect(back.customer).toEqual(got.res?.customer);
          expect(await rowOf(id)).toMatchObject({
            email: expected.email,
            given_name: expected.givenName,
            family_name: expected.familyName,
            phone_number: req.phoneNumber === undefined ? null : wf(req.phoneNumber),
          });
        },
      ),
      { numRuns: RUNS },
    );
    await stillServingAndUntouched();
  });

  it("UpdateCustomer: documented codes only, random masks and int64 versions; nobody else's row changes", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...PROTOS),
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
          const via = proto === "connect-json" && !jsonEncodable(req) ? "connect" : proto;
          const got = await run(cs[via].updateCustomer(req, opts(target.token)));
          const allowed =
            which === "seeded" || which === "unknown"
              ? ["InvalidArgument", "PermissionDenied"]
              : ["OK", "InvalidArgument", "Aborted", "AlreadyExists", "PermissionDenied", "NotFound"];
          expectCode(got, allowed);
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
          expectField("email", after.email, before.email, stored(fields.email));
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
          const back = await cs.grpc.getCustomer({ customerId: target.id }, opts(target.token));
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
        fc.constantFrom(...PROTOS, "connect-get" as const),
        fc.constantFrom("reader", "target"),
        fc.oneof(fc.constantFrom(seeded.id, target.id, seeded.id.toUpperCase()), fc.uuid().map(String), evil),
        async (proto, caller, customerId) => {
          const got = await run(
            cs[proto].getCustomer({ customerId }, opts(caller === "reader" ? reader : target.token)),
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
      const token = await issuer.customer(id);
      const email = `${SQL_EMAIL_LOCALS[i % SQL_EMAIL_LOCALS.length]}${unique()}@example.com`;
      const proto = PROTOS[i % PROTOS.length] ?? "connect";
      const res = await cs[proto].registerCustomer(
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
      const updated = await cs[proto].updateCustomer(
        { customer: { customerId: id, familyName: other }, updateMask: { paths: ["family_name"] } },
        opts(token),
      );
      expect(updated.customer).toMatchObject({ givenName: s, familyName: other, version: 2n });
      expect(await cs.grpc.getCustomer({ customerId: id }, opts(token))).toMatchObject({ customer: updated.customer });
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
    const token = await issuer.customer(id);
    const base = { email: `nul.${unique()}@example.com`, givenName: "Ada", familyName: "Lovelace" };
    const address = { addressLines: ["1 Analytical St"], locality: "London", countryCode: "GB" };
    const nul = { code: Code.InvalidArgument, rawMessage: "strings must not contain NUL (U+0000) characters" };
    const blank = (f: string) => ({ code: Code.InvalidArgument, rawMessage: `${f}: value must not be blank` });
    const countsBefore = await counts();
    type Register = MessageInitShape<typeof RegisterCustomerRequestSchema>;
    type Update = MessageInitShape<typeof CustomerSchema>;
    for (const proto of PROTOS) {
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
          cs[proto].registerCustomer(req, opts(token)),
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
          cs[proto].updateCustomer(
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

  it("afterwards: the same tables, one row per accepted registration, one event per real change", async () => {
    expect(
      await sql`select table_name from information_schema.tables where table_schema = 'public' order by 1`,
    ).toEqual(tables);
    const all = 2 + created.length;
    // The outbox relay deletes nothing within the run (sent rows are kept for 7 days).
    expect(await counts()).toEqual({ customers: all, outbox: all + realUpdates });
  });
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

// ------------------------------------------------------------------ identity service

describe("AuthService", () => {
  let svc: RunningIdentityService;
  let sql: postgres.Sql;
  let as: Record<Proto | "connect-get", Client<typeof AuthService>>;
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
    sql = postgres(svc.database.url, { max: 2, onnotice: () => {} });
    as = clientsFor(AuthService, svc.url);
    const out: string[] = [];
    expect(
      await runCli(["clients", "create", "fuzz-client", "--scopes", "customer:read"], svc.env, (l) => out.push(l)),
    ).toBe(0);
    const secret = (JSON.parse(out[0] ?? "{}") as { client_secret: string }).client_secret;
    const auth = await as.connect.authenticateClient({ clientId: "fuzz-client", clientSecret: secret, scope: "" });
    client = { id: "fuzz-client", secret, token: auth.tokens?.accessToken ?? "" };
    const email = `keeper.${unique()}@example.com`;
    const password = "keeper's password";
    const res = await as.connect.createCredentials({ email, password });
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
    await sql?.end();
    await svc?.close();
  });

  /** The server still answers on every protocol; the keeper's credentials and sessions are intact. */
  async function stillServingAndUntouched(): Promise<void> {
    for (const p of PROTOS) {
      await expect(as[p].introspectToken({ token: keeper.refreshToken }, opts(client.token)), p).resolves.toMatchObject(
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
        fc.constantFrom(...PROTOS),
        fc.oneof(validEmail, sqlEmail, evil, fc.constant(keeper.email), fc.constant(keeper.email.toUpperCase())),
        password,
        async (proto, email, pw) => {
          const got = await run(as[proto].createCredentials({ email, password: pw }, opts()));
          expectCode(got, ["OK", "InvalidArgument", "AlreadyExists"]);
          if (got.code !== "OK") return;
          createdIdentities++;
          const customerId = got.res?.customerId ?? "";
          const [row] = await sql`select email from identities where customer_id = ${customerId}`;
          expect(row?.email).toBe(stored(email).toLowerCase());
          const signIn = await as.grpc.authenticateCustomer({ email, password: pw }, opts());
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
        fc.constantFrom(...PROTOS),
        fc.oneof(fc.constant(`victim.${unique()}@example.com`), sqlEmail, evil),
        password,
        async (proto, email, pw) => {
          const got = await run(as[proto].authenticateCustomer({ email, password: pw }, opts()));
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
        fc.constantFrom(...PROTOS),
        fc.constantFrom("refresh", "revoke", "introspect"),
        tokenLike,
        async (proto, rpc, token) => {
          if (rpc === "refresh") {
            expectCode(await run(as[proto].refreshToken({ refreshToken: token }, opts())), [
              "Unauthenticated",
              "InvalidArgument",
            ]);
          } else if (rpc === "revoke") {
            expectCode(await run(as[proto].revokeToken({ token }, opts())), ["OK", "InvalidArgument"]);
          } else {
            const got = await run(as[proto].introspectToken({ token }, opts(client.token)));
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
    const victim = await as.connect.createCredentials({
      email: `cp.${unique()}@example.com`,
      password: "victim's password",
    });
    createdIdentities++;
    const [before] = await sql`select password_hash from identities where customer_id = ${victim.customerId}`;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...PROTOS), password, password, async (proto, currentPassword, newPassword) => {
        const got = await run(
          as[proto].changePassword({ currentPassword, newPassword }, opts(victim.tokens?.accessToken ?? "")),
        );
        expectCode(got, ["Unauthenticated", "ResourceExhausted", "InvalidArgument"]);
      }),
      { numRuns: RUNS },
    );
    const [after] = await sql`select password_hash from identities where customer_id = ${victim.customerId}`;
    expect(after).toEqual(before);
    await stillServingAndUntouched();
  });

  it("AuthenticateClient: documented codes only; no token without the secret", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...PROTOS),
        fc.oneof(fc.constant(client.id), fc.constantFrom(...SQL_SHAPED), evil),
        fc.oneof(evil, fc.constant(flip(client.secret, 3))),
        fc.oneof(evil, fc.constantFrom("", "customer:read", "customer:read customer:write", "admin", "customer:*")),
        async (proto, clientId, clientSecret, scope) => {
          const got = await run(as[proto].authenticateClient({ clientId, clientSecret, scope }, opts()));
          expectCode(got, ["Unauthenticated", "PermissionDenied", "InvalidArgument"]);
        },
      ),
      { numRuns: RUNS },
    );
    await stillServingAndUntouched();
  });

  it("NUL in a login or a client id is INVALID_ARGUMENT", async () => {
    const nul = { code: Code.InvalidArgument, rawMessage: "strings must not contain NUL (U+0000) characters" };
    for (const proto of PROTOS) {
      await expect(
        as[proto].authenticateCustomer({ email: `${keeper.email}\u0000`, password: keeper.password }, opts()),
      ).rejects.toMatchObject(nul);
      await expect(
        as[proto].authenticateClient(
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
      const proto = PROTOS[i % PROTOS.length] ?? "connect";
      const res = await as[proto].createCredentials({ email, password: pw }, opts());
      createdIdentities++;
      expect((await sql`select email from identities where customer_id = ${res.customerId}`)[0]?.email).toBe(email);
      await expect(as[proto].authenticateCustomer({ email, password: pw }, opts())).resolves.toMatchObject({
        customerId: res.customerId,
      });
      // The classic tautologies as password or as login get nobody in.
      await expect(as[proto].authenticateCustomer({ email, password: "' OR '1'='1" }, opts())).rejects.toMatchObject({
        code: Code.Unauthenticated,
      });
      await expect(
        as[proto].authenticateCustomer({ email: `${email}' OR '1'='1`, password: pw }, opts()),
      ).rejects.toMatchObject({ code: Code.Unauthenticated });
      await expect(
        as[proto].authenticateClient({ clientId: `${client.id}' OR '1'='1`, clientSecret: s, scope: "" }, opts()),
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
