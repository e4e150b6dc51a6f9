/**
 * CustomerService as a plain gRPC client sees it: @grpc/grpc-js with the
 * contract loaded at run time by @grpc/proto-loader (no generated code), the
 * Bearer token in metadata, and the rich error details decoded from
 * `grpc-status-details-bin`.
 */
import { randomUUID } from "node:crypto";
import { anyIs, anyUnpack } from "@bufbuild/protobuf/wkt";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import type * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rpcError } from "../../test/support/clients.js";
import {
  failure,
  type GrpcJsClient,
  loadGrpcJsClient,
  richStatus,
  statusMessage,
  type Unary,
} from "../../test/support/grpc-js.js";
import { customerEmail, startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";

/** proto-loader's plain-object shapes (keepCase, longs and enums as strings). */
interface Timestamp {
  seconds: string;
  nanos: number;
}
interface PostalAddress {
  address_lines: string[];
  locality: string;
  region: string;
  postal_code: string;
  country_code: string;
}
interface Customer {
  customer_id: string;
  email: string;
  given_name: string;
  family_name: string;
  phone_number?: string;
  address?: PostalAddress | null;
  version: string;
  create_time: Timestamp | null;
  update_time: Timestamp | null;
}
interface CustomerResponse {
  customer: Customer;
}

let issuer: TestIssuer;
let svc: RunningCustomerService;
let client: GrpcJsClient;
let definition: protoLoader.PackageDefinition;
let registerCustomer: Unary<Record<string, unknown>, CustomerResponse>;
let updateCustomer: Unary<
  { customer: Partial<Customer>; update_mask?: { paths: string[] }; expected_version?: string },
  CustomerResponse
>;
let getCustomer: Unary<{ customer_id: string }, CustomerResponse>;

beforeAll(async () => {
  issuer = await startTestIssuer();
  svc = await startCustomerService({ IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl });
  client = await loadGrpcJsClient("customer/v1/customer_service.proto", "customer.v1.CustomerService", svc.server.port);
  definition = client.definition;
  registerCustomer = client.unary("RegisterCustomer");
  updateCustomer = client.unary("UpdateCustomer");
  getCustomer = client.unary("GetCustomer");
});

afterAll(async () => {
  client?.close();
  await svc?.close();
  await issuer?.close();
});

// The deprecated email field, set to the verified email the token carries.
const profile = (id: string) => ({
  email: customerEmail(id),
  given_name: "Ada",
  family_name: "Lovelace",
  phone_number: "+4915123456789",
  address: {
    address_lines: ["1 Analytical St"],
    locality: "London",
    region: "",
    postal_code: "N1 9GU",
    country_code: "GB",
  },
});

async function register(): Promise<{ id: string; token: string; customer: Customer }> {
  const id = randomUUID();
  const token = await issuer.customer(id);
  const { customer } = await registerCustomer(profile(id), token);
  return { id, token, customer };
}

describe("CustomerService over @grpc/grpc-js with proto-loader", () => {
  it("loads the three methods of the contract", () => {
    const service = definition["customer.v1.CustomerService"] as protoLoader.ServiceDefinition;
    expect(Object.values(service).map((m) => m.path)).toEqual([
      "/customer.v1.CustomerService/RegisterCustomer",
      "/customer.v1.CustomerService/UpdateCustomer",
      "/customer.v1.CustomerService/GetCustomer",
    ]);
  });

  it("RegisterCustomer, GetCustomer and UpdateCustomer with update_mask and expected_version", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    const before = Math.floor(Date.now() / 1000);
    const reg = await registerCustomer(profile(id), token);
    expect(reg.customer).toMatchObject({
      customer_id: id,
      email: customerEmail(id),
      given_name: "Ada",
      family_name: "Lovelace",
      phone_number: "+4915123456789",
      address: {
        address_lines: ["1 Analytical St"],
        locality: "London",
        region: "",
        postal_code: "N1 9GU",
        country_code: "GB",
      },
      version: "1",
    });
    const created = Number(reg.customer.create_time?.seconds);
    expect(created).toBeGreaterThanOrEqual(before - 1);
    expect(created).toBeLessThanOrEqual(Math.ceil(Date.now() / 1000));
    expect(reg.customer.update_time).toEqual(reg.customer.create_time);

    const got = await getCustomer({ customer_id: id }, token);
    expect(got.customer).toEqual(reg.customer);

    const upd = await updateCustomer(
      {
        customer: { customer_id: id, given_name: "Augusta", family_name: "ignored, not in the mask" },
        update_mask: { paths: ["given_name"] },
        expected_version: "1",
      },
      token,
    );
    expect(upd.customer).toMatchObject({
      customer_id: id,
      given_name: "Augusta",
      family_name: "Lovelace",
      phone_number: "+4915123456789",
      version: "2",
      create_time: reg.customer.create_time,
    });
    expect(await getCustomer({ customer_id: id }, token)).toEqual(upd);
  });

  it("clears an optional field named in the mask and left unset", async () => {
    const { id, token } = await register();
    const upd = await updateCustomer(
      { customer: { customer_id: id }, update_mask: { paths: ["phone_number"] }, expected_version: "1" },
      token,
    );
    expect(upd.customer.version).toBe("2");
    expect(upd.customer.phone_number).toBeUndefined();
    expect(upd.customer.address?.locality).toBe("London");
  });

  it("answers NOT_FOUND for a customer without a profile", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    const err = await failure(getCustomer({ customer_id: id }, token));
    expect(err.code).toBe(grpc.status.NOT_FOUND);
    expect(err.details).toBe("customer not found");
    await expect(
      updateCustomer({ customer: { customer_id: id, given_name: "X" }, update_mask: { paths: ["given_name"] } }, token),
    ).rejects.toMatchObject(rpcError("customer not found", Code.NotFound));
  });

  it("answers ABORTED for a stale expected_version and changes nothing", async () => {
    const { id, token } = await register();
    await updateCustomer(
      { customer: { customer_id: id, family_name: "Byron" }, update_mask: { paths: ["family_name"] } },
      token,
    );
    const stale = updateCustomer(
      {
        customer: { customer_id: id, family_name: "King" },
        update_mask: { paths: ["family_name"] },
        expected_version: "1",
      },
      token,
    );
    const err = await failure(stale);
    expect(err.code).toBe(grpc.status.ABORTED);
    expect(statusMessage(err)).toBe("customer is at version 2, not the expected 1");
    const got = await getCustomer({ customer_id: id }, token);
    expect(got.customer).toMatchObject({ family_name: "Byron", version: "2" });
  });

  it("answers UNAUTHENTICATED without a token or with a bad one", async () => {
    const { id } = await register();
    const err = await failure(getCustomer({ customer_id: id }));
    expect(err.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(err.details).toBe("missing bearer token");
    await expect(
      getCustomer({ customer_id: id }, await issuer.issue({ sub: id, expiresIn: -60 })),
    ).rejects.toMatchObject(rpcError("access token expired", Code.Unauthenticated));
    await expect(registerCustomer(profile(randomUUID()))).rejects.toMatchObject(
      rpcError("missing bearer token", Code.Unauthenticated),
    );
  });

  it("answers PERMISSION_DENIED for another customer's token and a service without the scope", async () => {
    const { id } = await register();
    const err = await failure(getCustomer({ customer_id: id }, await issuer.customer(randomUUID())));
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(err.details).toBe("a customer may only access their own profile");
    const reader = await issuer.service("orders-service", "customer:read");
    expect((await getCustomer({ customer_id: id }, reader)).customer.customer_id).toBe(id);
    await expect(
      updateCustomer(
        { customer: { customer_id: id, given_name: "X" }, update_mask: { paths: ["given_name"] } },
        reader,
      ),
    ).rejects.toMatchObject(rpcError('token lacks scope "customer:write"', Code.PermissionDenied));
  });

  it("answers INVALID_ARGUMENT with a google.rpc.Status carrying buf.validate.Violations", async () => {
    const id = randomUUID();
    const token = await issuer.customer(id);
    const err = await failure(registerCustomer({ ...profile(id), email: "not-an-email", phone_number: "12" }, token));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);

    const status = richStatus(err);
    expect(status.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(status.message).toBe(statusMessage(err));
    expect(status.details.map((d) => d.typeUrl)).toEqual(["type.googleapis.com/buf.validate.Violations"]);
    const [detail] = status.details;
    if (!detail || !anyIs(detail, ViolationsSchema)) throw new Error("no buf.validate.Violations detail");
    const violations = anyUnpack(detail, ViolationsSchema);
    if (!violations) throw new Error("buf.validate.Violations did not decode");
    expect(violations.violations.map((v) => [v.field?.elements.map((e) => e.fieldName).join("."), v.ruleId])).toEqual([
      ["email", "string.email"],
      ["phone_number", "string.pattern"],
    ]);
    // Nothing was stored.
    await expect(getCustomer({ customer_id: id }, token)).rejects.toMatchObject({ code: Code.NotFound });
  });

  it("answers INVALID_ARGUMENT for a bad update mask and a malformed customer id", async () => {
    const { id, token } = await register();
    const err = await failure(
      updateCustomer({ customer: { customer_id: id, version: "7" }, update_mask: { paths: ["version"] } }, token),
    );
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(statusMessage(err)).toMatch(/^update_mask: /);
    const bad = await failure(getCustomer({ customer_id: "not-a-uuid" }, await issuer.service("svc", "customer:read")));
    expect(bad.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(statusMessage(bad)).toMatch(/^customer_id: .*\[string\.uuid\]$/);
    expect((await getCustomer({ customer_id: id }, token)).customer.version).toBe("1");
  });
});
