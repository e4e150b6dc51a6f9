/**
 * CustomerService end to end: the real server on port 0 over PostgreSQL and
 * JetStream, called with the generated client over every protocol.
 */
import { randomUUID } from "node:crypto";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, PROTOCOLS, rpcError } from "../../test/support/clients.js";
import { customerEmail, startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";
import { sleep } from "../../test/support/timing.js";

let issuer: TestIssuer;
let svc: RunningCustomerService;
let sql: postgres.Sql;

beforeAll(async () => {
  issuer = await startTestIssuer();
  svc = await startCustomerService({ IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl });
  sql = svc.database.sql;
});

afterAll(async () => {
  await svc?.close();
  await issuer?.close();
});

// No email: the profile gets the verified one, from the access token (issuer.customer's customerEmail).
const profile = () => ({
  givenName: "Ada",
  familyName: "Lovelace",
  phoneNumber: "+4915123456789",
  address: {
    addressLines: ["1 Analytical St"],
    locality: "London",
    region: "",
    postalCode: "N1 9GU",
    countryCode: "GB",
  },
});

describe.each(PROTOCOLS)("over %s", (protocol) => {
  it("registers, reads and updates a profile", async () => {
    const client = svc.clients.client(CustomerService, protocol);
    const id = randomUUID();
    const token = await issuer.customer(id);
    const reg = await client.registerCustomer(profile(), bearer(token));
    expect(reg.customer).toMatchObject({
      customerId: id,
      email: customerEmail(id),
      givenName: "Ada",
      familyName: "Lovelace",
      phoneNumber: "+4915123456789",
      version: 1n,
    });
    expect(reg.customer?.address?.countryCode).toBe("GB");
    const got = await client.getCustomer({ customerId: id }, bearer(token));
    expect(got.customer).toEqual(reg.customer);
    const upd = await client.updateCustomer(
      {
        customer: { customerId: id, givenName: "Augusta" },
        updateMask: { paths: ["given_name"] },
        expectedVersion: 1n,
      },
      bearer(token),
    );
    expect(upd.customer?.givenName).toBe("Augusta");
    expect(upd.customer?.version).toBe(2n);
    expect(upd.customer?.familyName).toBe("Lovelace");
    const updated = upd.customer?.updateTime;
    const created = reg.customer?.createTime;
    if (!updated || !created) throw new Error("timestamps missing");
    expect(timestampDate(updated).getTime()).toBeGreaterThanOrEqual(timestampDate(created).getTime());
  });

  it("answers NOT_FOUND for an unknown customer", async () => {
    const id = randomUUID();
    await expect(
      svc.clients.client(CustomerService, protocol).getCustomer({ customerId: id }, bearer(await issuer.customer(id))),
    ).rejects.toMatchObject(rpcError("customer not found", Code.NotFound));
  });

  it("answers INVALID_ARGUMENT with violations for a bad request", async () => {
    const id = randomUUID();
    const err = await svc.clients
      .client(CustomerService, protocol)
      .registerCustomer({ ...profile(), email: "not-an-email", phoneNumber: "12" }, bearer(await issuer.customer(id)))
      .catch((e: unknown) => ConnectError.from(e));
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.InvalidArgument);
    const [violations] = (err as ConnectError).findDetails(ViolationsSchema);
    expect(violations?.violations.map((v) => [v.field?.elements.map((e) => e.fieldName).join("."), v.ruleId])).toEqual([
      ["email", "string.email"],
      ["phone_number", "string.pattern"],
    ]);
  });
});

describe.each(PROTOCOLS)("GetCustomer reads gathered, over %s", (protocol) => {
  it("answers each of many concurrent reads with its own customer, NOT_FOUND for unknown ids", async () => {
    const client = svc.clients.client(CustomerService, protocol);
    const ids: string[] = await Promise.all(
      Array.from({ length: 5 }, async (_, i) => {
        const id = randomUUID();
        await client.registerCustomer({ ...profile(), givenName: `Reader${i}` }, bearer(await issuer.customer(id)));
        return id;
      }),
    );
    const token = await issuer.service("orders-service", "customer:read");
    // Known ids, the same ids in capitals (a UUID is case-insensitive), repeats and unknown ids, all at once.
    const asked = [...ids, ...ids.map((id) => id.toUpperCase()), randomUUID(), ids[0] ?? "", randomUUID(), ...ids];
    const answers = await Promise.allSettled(asked.map((id) => client.getCustomer({ customerId: id }, bearer(token))));
    answers.forEach((answer, i) => {
      const id = (asked[i] ?? "").toLowerCase();
      const n = ids.indexOf(id);
      if (n < 0) {
        expect(answer.status === "rejected" && ConnectError.from(answer.reason).code).toBe(Code.NotFound);
      } else {
        expect(answer.status === "fulfilled" && answer.value.customer).toMatchObject({
          customerId: id,
          givenName: `Reader${n}`,
          email: customerEmail(id),
        });
      }
    });
  });
});

describe("RegisterCustomer", () => {
  const client = () => svc.clients.client(CustomerService);

  it("returns the same customer for an identical retry, without a second event", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    const first = await client().registerCustomer(profile(), bearer(token));
    const again = await client().registerCustomer(profile(), bearer(token));
    expect(again.customer).toEqual(first.customer);
    // Naming the verified email (the deprecated field), in any case, is the same request.
    const named = await client().registerCustomer(
      { ...profile(), email: customerEmail(id).toUpperCase() },
      bearer(token),
    );
    expect(named.customer).toEqual(first.customer);
    const [{ count }] = await sql<[{ count: string }]>`select count(*) from outbox where ce_subject = ${id}`;
    expect(Number(count)).toBe(1);
  });

  it("answers ALREADY_EXISTS for a different profile under the same id", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    await client().registerCustomer(profile(), bearer(token));
    await expect(client().registerCustomer({ ...profile(), givenName: "Grace" }, bearer(token))).rejects.toMatchObject(
      rpcError("customer already has a different profile", Code.AlreadyExists),
    );
  });
});

describe("UpdateCustomer", () => {
  const client = () => svc.clients.client(CustomerService);
  const register = async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    await client().registerCustomer(profile(), bearer(token));
    return { id, token };
  };

  it("answers ABORTED for a stale expected_version and changes nothing", async () => {
    const { id, token } = await register();
    await client().updateCustomer(
      { customer: { customerId: id, familyName: "Byron" }, updateMask: { paths: ["family_name"] } },
      bearer(token),
    );
    await expect(
      client().updateCustomer(
        {
          customer: { customerId: id, familyName: "King" },
          updateMask: { paths: ["family_name"] },
          expectedVersion: 1n,
        },
        bearer(token),
      ),
    ).rejects.toMatchObject(rpcError("customer is at version 2, not the expected 1", Code.Aborted));
    const got = await client().getCustomer({ customerId: id }, bearer(token));
    expect(got.customer?.familyName).toBe("Byron");
    expect(got.customer?.version).toBe(2n);
  });

  it("changes nothing and emits nothing when the values are the same", async () => {
    const { id, token } = await register();
    const res = await client().updateCustomer(
      {
        customer: { customerId: id, givenName: "Ada", familyName: "Lovelace" },
        updateMask: { paths: ["given_name", "family_name"] },
      },
      bearer(token),
    );
    expect(res.customer?.version).toBe(1n);
    const [{ count }] = await sql<[{ count: string }]>`select count(*) from outbox where ce_subject = ${id}`;
    expect(Number(count)).toBe(1);
  });

  it("clears optional fields named in the mask and left unset", async () => {
    const { id, token } = await register();
    const res = await client().updateCustomer(
      { customer: { customerId: id }, updateMask: { paths: ["phone_number", "address"] } },
      bearer(token),
    );
    expect(res.customer?.phoneNumber).toBeUndefined();
    expect(res.customer?.address).toBeUndefined();
    expect(res.customer?.version).toBe(2n);
  });

  it("answers NOT_FOUND for a customer without a profile", async () => {
    const id = randomUUID();
    await expect(
      client().updateCustomer(
        { customer: { customerId: id, givenName: "X" }, updateMask: { paths: ["given_name"] } },
        bearer(await issuer.customer(id)),
      ),
    ).rejects.toMatchObject(rpcError("customer not found", Code.NotFound));
  });

  it("never loses a write under concurrent updates: versions 1..N+1, one event each", async () => {
    const { id, token } = await register();
    const n = 20;
    const results = await Promise.all(
      Array.from({ length: n }, (_, i) =>
        client().updateCustomer(
          { customer: { customerId: id, givenName: `Name ${i}` }, updateMask: { paths: ["given_name"] } },
          bearer(token),
        ),
      ),
    );
    const versions = results.map((r) => Number(r.customer?.version)).sort((x, y) => x - y);
    expect(versions).toEqual(Array.from({ length: n }, (_, i) => i + 2));
    const events = await sql<{ type: string }[]>`select type from outbox where ce_subject = ${id} order by id`;
    expect(events.map((e) => e.type)).toEqual([
      "customer.v1.CustomerRegistered",
      ...Array.from({ length: n }, () => "customer.v1.CustomerUpdated"),
    ]);
  });
});

describe("authorization", () => {
  const client = () => svc.clients.client(CustomerService, "grpc");
  let owner: { id: string; token: string };

  beforeAll(async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    await svc.clients.client(CustomerService).registerCustomer(profile(), bearer(token));
    owner = { id, token };
  });

  const unauthenticated = async (headers: Record<string, string>, message: string) =>
    expect(client().getCustomer({ customerId: owner.id }, { headers })).rejects.toMatchObject(
      rpcError(message, Code.Unauthenticated),
    );

  it("rejects a call without a token", () => unauthenticated({}, "missing bearer token"));
  it("rejects a malformed authorization header", () =>
    unauthenticated({ authorization: "Basic Zm9vOmJhcg==" }, "malformed authorization header"));
  it("rejects an expired token", async () =>
    unauthenticated(bearer(await issuer.issue({ sub: owner.id, expiresIn: -60 })).headers, "access token expired"));
  it("rejects a token from another issuer", async () =>
    unauthenticated(
      bearer(await issuer.issue({ sub: owner.id, iss: "https://evil.example" })).headers,
      "invalid access token",
    ));
  it("rejects a token for another audience", async () =>
    unauthenticated(
      bearer(await issuer.issue({ sub: owner.id, aud: "payments-service" })).headers,
      "invalid access token",
    ));
  it("rejects a token that is not an access token (typ)", async () =>
    unauthenticated(bearer(await issuer.issue({ sub: owner.id, typ: "JWT" })).headers, "invalid access token"));
  it("rejects a token not yet valid", async () =>
    unauthenticated(bearer(await issuer.issue({ sub: owner.id, notBefore: 600 })).headers, "invalid access token"));
  it("rejects a token signed by another key", async () => {
    const other = await startTestIssuer();
    try {
      const forged = await other.issue({ sub: owner.id, iss: issuer.issuer, kid: "unknown-kid" });
      await unauthenticated(bearer(forged).headers, "invalid access token");
    } finally {
      await other.close();
    }
  });
  it("rejects alg none", async () => {
    const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const now = Math.floor(Date.now() / 1000);
    const unsigned = `${enc({ alg: "none", typ: "at+jwt" })}.${enc({
      iss: issuer.issuer,
      aud: issuer.audience,
      sub: owner.id,
      client_id: "first-party",
      scope: "",
      jti: randomUUID(),
      iat: now,
      exp: now + 600,
    })}.`;
    await unauthenticated({ authorization: `Bearer ${unsigned}` }, "invalid access token");
  });
  it("rejects a tampered token", async () => {
    const token = await issuer.customer(randomUUID());
    const [h, , s] = token.split(".");
    const payload = Buffer.from(JSON.stringify({ sub: owner.id })).toString("base64url");
    await unauthenticated({ authorization: `Bearer ${h}.${payload}.${s}` }, "invalid access token");
  });
  it("denies another customer's token", async () => {
    await expect(
      client().getCustomer({ customerId: owner.id }, bearer(await issuer.customer(randomUUID()))),
    ).rejects.toMatchObject(rpcError("a customer may only access their own profile", Code.PermissionDenied));
  });
  it("lets a service with customer:read read, not write", async () => {
    const token = await issuer.service("orders-service", "customer:read");
    const got = await client().getCustomer({ customerId: owner.id }, bearer(token));
    expect(got.customer?.customerId).toBe(owner.id);
    await expect(
      client().updateCustomer(
        { customer: { customerId: owner.id, givenName: "X" }, updateMask: { paths: ["given_name"] } },
        bearer(token),
      ),
    ).rejects.toMatchObject(rpcError('token lacks scope "customer:write"', Code.PermissionDenied));
  });
  it("lets a service with customer:write update", async () => {
    const token = await issuer.service("support-tool", "customer:write");
    const res = await client().updateCustomer(
      { customer: { customerId: owner.id, familyName: "King" }, updateMask: { paths: ["family_name"] } },
      bearer(token),
    );
    expect(res.customer?.familyName).toBe("King");
  });
  it("shows a service with customer:write alone only what it set: a no-op update reads nothing", async () => {
    const writeOnly = await issuer.service("support-tool", "customer:write");
    const noOp = { customer: { customerId: owner.id, familyName: "King" }, updateMask: { paths: ["family_name"] } };
    // The family name is already King (the test above): nothing changes, and nothing else is shown.
    const res = await client().updateCustomer(noOp, bearer(writeOnly));
    expect(res.customer).toMatchObject({ customerId: owner.id, familyName: "King", version: 2n });
    expect(res.customer?.updateTime).toBeDefined();
    expect(res.customer).toMatchObject({ email: "", givenName: "" });
    expect(res.customer?.phoneNumber).toBeUndefined();
    expect(res.customer?.address).toBeUndefined();
    // With customer:read as well, the whole profile, as for the customer.
    const readWrite = await issuer.service("support-tool", "customer:read customer:write");
    const whole = await client().updateCustomer(noOp, bearer(readWrite));
    expect(whole.customer).toMatchObject({ customerId: owner.id, givenName: "Ada", phoneNumber: "+4915123456789" });
    expect(whole.customer?.email).toBe(customerEmail(owner.id));
  });
  it("denies a service without scopes", async () => {
    await expect(
      client().getCustomer({ customerId: owner.id }, bearer(await issuer.service("reviews", ""))),
    ).rejects.toMatchObject(rpcError('token lacks scope "customer:read"', Code.PermissionDenied));
  });
  it("denies RegisterCustomer to a service token", async () => {
    await expect(
      client().registerCustomer(profile(), bearer(await issuer.service("orders-service", "customer:write"))),
    ).rejects.toMatchObject(rpcError("only a customer token can register a profile", Code.PermissionDenied));
  });
  it("picks up a rotated signing key (refetches the JWKS on an unknown kid)", async () => {
    await issuer.rotate();
    await sleep(5_100); // past the verifier's refetch cooldown
    const got = await client().getCustomer({ customerId: owner.id }, bearer(await issuer.customer(owner.id)));
    expect(got.customer?.customerId).toBe(owner.id);
  });
});

describe("logs", () => {
  it("has a request line per call and never a token", async () => {
    const lines = svc.logs.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    const rpc = lines.filter((l) => l.msg === "rpc");
    expect(rpc.length).toBeGreaterThan(10);
    expect(rpc[0]).toMatchObject({
      procedure: expect.stringMatching(/^customer\.v1\.CustomerService\//),
      code: expect.any(String),
      ms: expect.any(Number),
    });
    expect(svc.logs.lines.join("\n")).not.toMatch(/eyJ[A-Za-z0-9_-]{10,}\./);
  });
});
