/**
 * The shape of the contracts that lint alone does not pin down: one request and one response per RPC,
 * GetCustomer reachable by HTTP GET and nothing else, secrets redacted, and every element documented.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type DescField, type DescMessage, fromBinary, ScalarType } from "@bufbuild/protobuf";
import {
  type DescriptorProto,
  type EnumDescriptorProto,
  type FileDescriptorProto,
  FileDescriptorSetSchema,
  MethodOptions_IdempotencyLevel,
} from "@bufbuild/protobuf/wkt";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buf, copyWorkspace, editFile, root } from "./workspace.js";

const services = [CustomerService, AuthService, AdminService];
const methods = services.flatMap((service) => service.methods);

describe.each(services.map((service) => [service.typeName, service] as const))("%s", (_, service) => {
  const pkg = service.file.proto.package;

  it.each(service.methods.map((method) => [method.name, method] as const))(
    "%s has its own <Method>Request and <Method>Response",
    (name, method) => {
      expect([method.methodKind, method.input.typeName, method.output.typeName]).toEqual([
        "unary",
        `${pkg}.${name}Request`,
        `${pkg}.${name}Response`,
      ]);
    },
  );
});

describe("all services", () => {
  it("share no message between methods and never use google.protobuf.Empty", () => {
    const messages = methods.flatMap((method) => [method.input.typeName, method.output.typeName]);
    expect(new Set(messages).size).toBe(messages.length);
    expect(messages).not.toContain("google.protobuf.Empty");
  });

  it("mark GetCustomer, and only GetCustomer, as free of side effects", () => {
    expect(
      methods
        .filter((method) => method.idempotency !== MethodOptions_IdempotencyLevel.IDEMPOTENCY_UNKNOWN)
        .map((method) => [method.name, MethodOptions_IdempotencyLevel[method.idempotency]]),
    ).toEqual([["GetCustomer", "NO_SIDE_EFFECTS"]]);
  });
});

function stringFields(schema: DescMessage, seen = new Set<string>()): DescField[] {
  if (seen.has(schema.typeName)) {
    return [];
  }
  seen.add(schema.typeName);
  return schema.fields.flatMap((field) =>
    field.message === undefined
      ? field.scalar === ScalarType.STRING
        ? [field]
        : []
      : stringFields(field.message, seen),
  );
}

describe("debug_redact", () => {
  const fields = [
    ...new Set(methods.flatMap((method) => [...stringFields(method.input), ...stringFields(method.output)])),
  ];
  // A one-time code (recovery, sign-up, email change) is a credential too.
  // A page token (ListClients) is a position in a list, not a credential.
  const sensitive = fields.filter(
    (field) => /(^|_)(password|secret|token)$|^code$/.test(field.name) && !/(^|_)page_token$/.test(field.name),
  );
  const names = (list: DescField[]) => list.map((field) => `${field.parent.typeName}.${field.name}`);

  it("finds every credential field of the services", () => {
    expect(names(sensitive).sort()).toEqual([
      "identity.v1.AuthenticateClientRequest.client_secret",
      "identity.v1.AuthenticateCustomerRequest.password",
      "identity.v1.ChangePasswordRequest.current_password",
      "identity.v1.ChangePasswordRequest.new_password",
      "identity.v1.CompleteEmailChangeRequest.code",
      "identity.v1.CompleteRecoveryRequest.code",
      "identity.v1.CompleteRecoveryRequest.new_password",
      "identity.v1.CompleteSignUpRequest.code",
      "identity.v1.CompleteSignUpRequest.password",
      "identity.v1.CreateClientResponse.client_secret",
      "identity.v1.CreateCredentialsRequest.password",
      "identity.v1.DeleteAccountRequest.current_password",
      "identity.v1.IntrospectTokenRequest.token",
      "identity.v1.RefreshTokenRequest.refresh_token",
      "identity.v1.RevokeTokenRequest.token",
      "identity.v1.RotateClientSecretResponse.client_secret",
      "identity.v1.StartEmailChangeRequest.current_password",
      "identity.v1.TokenSet.access_token",
      "identity.v1.TokenSet.refresh_token",
    ]);
  });

  it("is set on every credential field and on nothing else", () => {
    expect(names(fields.filter((field) => field.proto.options?.debugRedact === true))).toEqual(names(sensitive));
  });
});

type Element = { path: number[]; name: string; fullName: string };

function enumElements(enumType: EnumDescriptorProto, path: number[], scope: string): Element[] {
  const fullName = `${scope}.${enumType.name}`;
  return [
    { path, name: enumType.name, fullName },
    ...enumType.value.map((value, i) => ({
      path: [...path, 2, i],
      name: value.name,
      fullName: `${fullName}.${value.name}`,
    })),
  ];
}

function messageElements(message: DescriptorProto, path: number[], scope: string): Element[] {
  const fullName = `${scope}.${message.name}`;
  const child = (kind: number, i: number, name: string) => ({
    path: [...path, kind, i],
    name,
    fullName: `${fullName}.${name}`,
  });
  // proto3 `optional` adds a synthetic oneof that has no source of its own.
  const synthetic = new Set(message.field.filter((field) => field.proto3Optional).map((field) => field.oneofIndex));
  return [
    { path, name: message.name, fullName },
    ...message.field.map((field, i) => child(2, i, field.name)),
    ...message.oneofDecl.flatMap((oneof, i) => (synthetic.has(i) ? [] : [child(8, i, oneof.name)])),
    ...message.nestedType.flatMap((nested, i) => messageElements(nested, [...path, 3, i], fullName)),
    ...message.enumType.flatMap((nested, i) => enumElements(nested, [...path, 4, i], fullName)),
  ];
}

function leadingComments(file: FileDescriptorProto): Map<string, string | undefined> {
  return new Map(
    (file.sourceCodeInfo?.location ?? []).map((location) => [location.path.join("."), location.leadingComments]),
  );
}

/** Elements of `file` whose leading comment does not start with the element's own name, by full name. */
function undocumented(file: FileDescriptorProto): string[] {
  const comments = leadingComments(file);
  const elements = [
    ...file.messageType.flatMap((message, i) => messageElements(message, [4, i], file.package)),
    ...file.enumType.flatMap((enumType, i) => enumElements(enumType, [5, i], file.package)),
    ...file.service.flatMap((service, i) => {
      const fullName = `${file.package}.${service.name}`;
      return [
        { path: [6, i], name: service.name, fullName },
        ...service.method.map((method, j) => ({
          path: [6, i, 2, j],
          name: method.name,
          fullName: `${fullName}.${method.name}`,
        })),
      ];
    }),
  ];
  return elements
    .filter(({ path, name }) => !new RegExp(`^${name}\\b`).test(comments.get(path.join("."))?.trimStart() ?? ""))
    .map(({ fullName }) => fullName);
}

/** The files of the `proto` module of the workspace in `dir`, with source info. */
function compileContracts(dir: string, out: string): FileDescriptorProto[] {
  const { status, stderr } = buf(["build", join(dir, "proto"), "--exclude-imports", "-o", out]);
  expect(stderr).toBe("");
  expect(status).toBe(0);
  return fromBinary(FileDescriptorSetSchema, readFileSync(out)).file;
}

describe("comments", () => {
  let tmp: string;
  let files: FileDescriptorProto[];
  beforeAll(() => {
    tmp = mkdtempSync(join(tmpdir(), "contract-shape-"));
    files = compileContracts(root, join(tmp, "contracts.binpb"));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it("start with the name of the element they describe, everywhere in proto/", () => {
    expect(files.map((file) => file.name).sort()).toEqual([
      "customer/v1/customer.proto",
      "customer/v1/customer_service.proto",
      "customer/v1/events.proto",
      "identity/v1/admin_service.proto",
      "identity/v1/auth_service.proto",
      "identity/v1/events.proto",
    ]);
    expect(files.flatMap(undocumented)).toEqual([]);
  });

  it("of every RPC say which codes it returns", () => {
    const rpcs = files.flatMap((file) =>
      file.service.flatMap((service, i) =>
        service.method.map((method, j) => [
          `${file.package}.${service.name}.${method.name}`,
          /\bReturns [A-Z_]+/.test(leadingComments(file).get(`6.${i}.2.${j}`) ?? ""),
        ]),
      ),
    );
    expect(rpcs.sort()).toEqual(methods.map((method) => [`${method.parent.typeName}.${method.name}`, true]).sort());
  });

  it("are found missing when removed, misnamed or detached", () => {
    const dir = copyWorkspace(join(tmp, "edited"));
    editFile(
      join(dir, "proto/customer/v1/customer.proto"),
      "  // email is the customer's verified login email, as the identity service\n",
      "",
    );
    editFile(
      join(dir, "proto/customer/v1/customer_service.proto"),
      "  // GetCustomer returns a customer's profile.",
      "  // Returns a customer's profile.",
    );
    editFile(
      join(dir, "proto/identity/v1/events.proto"),
      "(AuthenticateCustomer).\n  AUTHENTICATION_METHOD_PASSWORD = 1;",
      "(AuthenticateCustomer).\n\n  AUTHENTICATION_METHOD_PASSWORD = 1;",
    );
    const files = compileContracts(dir, join(tmp, "edited.binpb"));
    expect(files.flatMap(undocumented)).toEqual([
      "customer.v1.Customer.email",
      "customer.v1.CustomerService.GetCustomer",
      "identity.v1.AuthenticationMethod.AUTHENTICATION_METHOD_PASSWORD",
    ]);
  });
});
