/**
 * CustomerService as a plain gRPC client sees it: @grpc/grpc-js with the
 * contract loaded at run time by @grpc/proto-loader (no generated code), the
 * Bearer token in metadata, and the rich error details decoded from
 * `grpc-status-details-bin`.
 */
import { randomUUID } from "node:crypto";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import {
  type Any,
  anyIs,
  anyUnpack,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
  file_google_protobuf_any,
} from "@bufbuild/protobuf/wkt";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rpcError } from "../../test/support/clients.js";
import { startTestIssuer, type TestIssuer } from "../../test/support/issuer.js";
import { type RunningCustomerService, startCustomerService } from "../../test/support/services.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
// proto/ holds the contract, third_party/proto buf/validate. validate.proto imports
// google/protobuf/{descriptor,duration,field_mask,timestamp}.proto: protobufjs (under
// proto-loader) bundles descriptor.proto as a file and the others as built-in common types.
const PROTOBUFJS = dirname(createRequire(import.meta.url).resolve("protobufjs/package.json"));
const INCLUDE_DIRS = [join(ROOT, "proto"), join(ROOT, "third_party/proto"), PROTOBUFJS];

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

type RawUnary = (
  req: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, res?: unknown) => void,
) => void;

/** A unary method: request in, response out, failures as ConnectError whose cause is the ServiceError. */
type Unary<Req> = (req: Req, token?: string) => Promise<CustomerResponse>;

let issuer: TestIssuer;
let svc: RunningCustomerService;
let definition: protoLoader.PackageDefinition;
let raw: grpc.Client;
let registerCustomer: Unary<Record<string, unknown>>;
let updateCustomer: Unary<{
  customer: Partial<Customer>;
  update_mask?: { paths: string[] };
  expected_version?: string;
}>;
let getCustomer: Unary<{ customer_id: string }>;

/**
 * google.rpc.Status for protobuf-es, declared here: proto-loader's descriptors
 * cannot serve (protobufjs flattens files by package), and gen/ has no status.proto.
 */
const statusRegistry = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "google/rpc/status.proto",
    package: "google.rpc",
    dependency: ["google/protobuf/any.proto"],
    syntax: "proto3",
    messageType: [
      {
        name: "Status",
        field: [
          { name: "code", jsonName: "code", number: 1, type: FieldDescriptorProto_Type.INT32 },
          { name: "message", jsonName: "message", number: 2, type: FieldDescriptorProto_Type.STRING },
          {
            name: "details",
            jsonName: "details",
            number: 3,
            type: FieldDescriptorProto_Type.MESSAGE,
            label: FieldDescriptorProto_Label.REPEATED,
            typeName: ".google.protobuf.Any",
          },
        ],
      },
    ],
  }),
  (name) => (name === "google/protobuf/any.proto" ? file_google_protobuf_any : undefined),
);

beforeAll(async () => {
  issuer = await startTestIssuer();
  svc = await startCustomerService({ IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl });
  definition = await protoLoader.load("customer/v1/customer_service.proto", {
    includeDirs: INCLUDE_DIRS,
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    customer: { v1: { CustomerService: grpc.ServiceClientConstructor } };
  };
  raw = new loaded.customer.v1.CustomerService(`127.0.0.1:${svc.server.port}`, grpc.credentials.createInsecure());
  registerCustomer = unary("RegisterCustomer");
  updateCustomer = unary("UpdateCustomer");
  getCustomer = unary("GetCustomer");
});

afterAll(async () => {
  raw?.close();
  await svc?.close();
  await issuer?.close();
});

function unary<Req>(method: string): Unary<Req> {
  return (req, token) =>
    new Promise<CustomerResponse>((resolve, reject) => {
      const metadata = new grpc.Metadata();
      if (token) metadata.set("authorization", `Bearer ${token}`);
      const fn = (raw as unknown as Record<string, RawUnary>)[method];
      if (!fn) throw new Error(`no method ${method}`);
      fn.call(raw, req, metadata, { deadline: Date.now() + 10_000 }, (err, res) => {
        if (err) reject(new ConnectError(statusMessage(err), err.code as number as Code, undefined, undefined, err));
        else resolve(res as CustomerResponse);
      });
    });
}

/**
 * The status message as sent. connect-es percent-encodes grpc-message with
 * encodeURIComponent, grpc-js decodes it with decodeURI, which leaves the
 * escapes of reserved characters ("," ":" …) in place.
 */
function statusMessage(err: grpc.ServiceError): string {
  try {
    return decodeURIComponent(err.details);
  } catch {
    return err.details;
  }
}

/** The ServiceError behind a failed call. */
async function failure(call: Promise<unknown>): Promise<grpc.ServiceError> {
  const err = await call.then(
    () => {
      throw new Error("call succeeded");
    },
    (e: unknown) => e,
  );
  if (!(err instanceof ConnectError) || !err.cause) throw err;
  return err.cause as grpc.ServiceError;
}

const profile = (id: string) => ({
  email: `grpcjs.${id.slice(0, 8)}@example.com`,
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
      email: `grpcjs.${id.slice(0, 8)}@example.com`,
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

    const bins = err.metadata.get("grpc-status-details-bin");
    expect(bins).toHaveLength(1);
    const [bin] = bins;
    expect(bin).toBeInstanceOf(Buffer);
    const statusSchema = statusRegistry.getMessage("google.rpc.Status");
    if (!statusSchema) throw new Error("google.rpc.Status missing");
    const status = fromBinary(statusSchema, bin as Buffer) as unknown as {
      code: number;
      message: string;
      details: Any[];
    };
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
