/**
 * CustomerService through `buf curl` with no proto files: the schema comes
 * from the server's reflection, requests are JSON, over Connect on HTTP/1.1
 * (the default) and over gRPC on HTTP/2 cleartext.
 */
import { randomUUID } from "node:crypto";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bufCurl, type CurlProtocol, CURL_PROTOCOLS as PROTOCOLS } from "../../test/support/buf-curl.js";
import { bearer } from "../../test/support/clients.js";
import { customerEmail, startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";

const SERVICE = "customer.v1.CustomerService";

let issuer: TestIssuer;
let svc: RunningCustomerService;
let customer: { id: string; token: string };

beforeAll(async () => {
  issuer = await startTestIssuer();
  svc = await startCustomerService({ IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl });
  const id = randomUUID();
  const token = await issuer.customer(id);
  await svc.clients.client(CustomerService).registerCustomer(
    {
      givenName: "Ada",
      familyName: "Lovelace",
      address: { addressLines: ["1 Analytical St"], locality: "London", postalCode: "N1 9GU", countryCode: "GB" },
    },
    bearer(token),
  );
  customer = { id, token };
});

afterAll(async () => {
  await svc?.close();
  await issuer?.close();
});

type Protocol = CurlProtocol;

const lines = (out: string) => out.split("\n").filter(Boolean);

describe("buf curl via server reflection", () => {
  it.each([
    ["connect", "grpc-v1"],
    ["grpc", "grpc-v1"],
    ["grpc", "grpc-v1alpha"],
  ] as const)("lists the services over %s (%s reflection)", async (protocol, reflection) => {
    const res = await bufCurl([...PROTOCOLS[protocol], "--reflect-protocol", reflection, "--list-services", svc.url]);
    expect(res).toMatchObject({ exitCode: 0, stderr: "" });
    expect(lines(res.stdout).sort()).toEqual([
      SERVICE,
      "grpc.health.v1.Health",
      "grpc.reflection.v1.ServerReflection",
      "grpc.reflection.v1alpha.ServerReflection",
    ]);
  });

  it.each(Object.keys(PROTOCOLS) as Protocol[])("lists the three CustomerService methods over %s", async (protocol) => {
    const res = await bufCurl([...PROTOCOLS[protocol], "--list-methods", svc.url]);
    expect(res).toMatchObject({ exitCode: 0, stderr: "" });
    const methods = lines(res.stdout);
    expect(methods.filter((l) => l.startsWith(`${SERVICE}/`))).toEqual([
      `${SERVICE}/GetCustomer`,
      `${SERVICE}/RegisterCustomer`,
      `${SERVICE}/UpdateCustomer`,
    ]);
    expect(methods).toContain("grpc.health.v1.Health/Check");
    expect(methods).toContain("grpc.reflection.v1.ServerReflection/ServerReflectionInfo");
  });

  it.each(Object.keys(PROTOCOLS) as Protocol[])(
    "calls GetCustomer over %s and prints the JSON profile",
    async (protocol) => {
      const res = await bufCurl([
        ...PROTOCOLS[protocol],
        "-H",
        `Authorization: Bearer ${customer.token}`,
        "-d",
        JSON.stringify({ customer_id: customer.id }),
        `${svc.url}/${SERVICE}/GetCustomer`,
      ]);
      expect(res).toMatchObject({ exitCode: 0, stderr: "" });
      const body = JSON.parse(res.stdout) as { customer: Record<string, unknown> };
      expect(body.customer).toEqual({
        customerId: customer.id,
        email: customerEmail(customer.id),
        givenName: "Ada",
        familyName: "Lovelace",
        address: {
          addressLines: ["1 Analytical St"],
          locality: "London",
          postalCode: "N1 9GU",
          countryCode: "GB",
        },
        // int64 as a JSON string, timestamps as RFC 3339.
        version: "1",
        createTime: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/),
        updateTime: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/),
      });
      const got = await svc.clients
        .client(CustomerService)
        .getCustomer({ customerId: customer.id }, bearer(customer.token));
      const createTime = got.customer?.createTime;
      if (!createTime) throw new Error("create_time missing");
      expect(Date.parse(body.customer.createTime as string)).toBe(
        Number(createTime.seconds) * 1000 + Math.floor(createTime.nanos / 1e6),
      );
    },
  );

  it.each(Object.keys(PROTOCOLS) as Protocol[])("exits non-zero and prints not_found over %s", async (protocol) => {
    const id = randomUUID();
    const res = await bufCurl([
      ...PROTOCOLS[protocol],
      "-H",
      `Authorization: Bearer ${await issuer.customer(id)}`,
      "-d",
      JSON.stringify({ customer_id: id }),
      `${svc.url}/${SERVICE}/GetCustomer`,
    ]);
    // buf curl exits with the code number shifted left by three bits.
    expect(res.exitCode).toBe(5 << 3);
    expect(res.stdout).toBe("");
    expect(JSON.parse(res.stderr)).toEqual({ code: "not_found", message: "customer not found" });
  });

  it.each(Object.keys(PROTOCOLS) as Protocol[])(
    "exits non-zero and prints unauthenticated over %s",
    async (protocol) => {
      const res = await bufCurl([
        ...PROTOCOLS[protocol],
        "-d",
        JSON.stringify({ customer_id: customer.id }),
        `${svc.url}/${SERVICE}/GetCustomer`,
      ]);
      expect(res.exitCode).toBe(16 << 3);
      expect(JSON.parse(res.stderr)).toEqual({ code: "unauthenticated", message: "missing bearer token" });
    },
  );

  it("updates a profile with a field mask in JSON", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    await svc.clients
      .client(CustomerService)
      .registerCustomer({ givenName: "Ada", familyName: "Lovelace" }, bearer(token));
    const res = await bufCurl([
      "-H",
      `Authorization: Bearer ${token}`,
      "-d",
      // The JSON form of a FieldMask is one string of lowerCamelCase paths.
      JSON.stringify({
        customer: { customer_id: id, family_name: "King" },
        update_mask: "familyName",
        expected_version: "1",
      }),
      `${svc.url}/${SERVICE}/UpdateCustomer`,
    ]);
    expect(res).toMatchObject({ exitCode: 0, stderr: "" });
    expect(JSON.parse(res.stdout).customer).toMatchObject({
      customerId: id,
      familyName: "King",
      givenName: "Ada",
      version: "2",
    });
  });
});
