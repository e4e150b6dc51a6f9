/**
 * The contract's rules on the wire: for every RPC of both services, a request
 * that breaks its rules is answered INVALID_ARGUMENT over every protocol, with
 * exactly the violations protovalidate finds in process for the same message
 * (validation.test.ts checks each rule in process). Nothing here needs a token:
 * validation comes before authentication.
 */
import { create, type DescMessage, type DescMethod, type DescService } from "@bufbuild/protobuf";
import { pathToString } from "@bufbuild/protobuf/reflect";
import { createValidator } from "@bufbuild/protovalidate";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Clients, CONNECT_FORMS, PROTOCOLS, type Protocol } from "../support/clients.js";
import { type Platform, startPlatform } from "../support/platform.js";

const validator = createValidator();

/** The violations protovalidate reports in process, as `field.path rule_id` strings. */
function expectedViolations(schema: DescMessage, message: ReturnType<typeof create>): string[] {
  const result = validator.validate(schema, message);
  if (result.kind !== "invalid") throw new Error(`${schema.typeName}: the empty request is ${result.kind}`);
  return result.violations.map((v) => `${pathToString(v.field)} ${v.ruleId}`).sort();
}

/** The violations a ConnectError carries in its `buf.validate.Violations` detail. */
function wireViolations(err: ConnectError): string[] {
  const [details] = err.findDetails(ViolationsSchema);
  return (details?.violations ?? [])
    .map((v) => `${(v.field?.elements ?? []).map((e) => e.fieldName).join(".")} ${v.ruleId}`)
    .sort();
}

let platform: Platform;
beforeAll(async () => {
  platform = await startPlatform();
}, 60_000);
afterAll(() => platform?.close());

const cases: Array<[string, () => Clients, DescService, DescMethod]> = [
  ...CustomerService.methods.map((m) => [
    `CustomerService.${m.name}`,
    () => platform.customer.clients,
    CustomerService,
    m,
  ]),
  ...AuthService.methods.map((m) => [`AuthService.${m.name}`, () => platform.identity.clients, AuthService, m]),
  ...AdminService.methods.map((m) => [`AdminService.${m.name}`, () => platform.identity.clients, AdminService, m]),
] as Array<[string, () => Clients, DescService, DescMethod]>;

// A request without fields (ListSessions, RevokeAllSessions) has no rule to break, nor has the empty form
// of one whose fields are all optional (ListClients: its page_size bound is tested in admin-clients.test.ts).
const withRules = cases.filter(
  ([, , , method]) => validator.validate(method.input, create(method.input)).kind === "invalid",
);

it("leaves out only requests without fields, or with optional fields only", () => {
  expect(cases.filter((c) => !withRules.includes(c)).map(([name]) => name)).toEqual([
    "AuthService.ListSessions",
    "AuthService.RevokeAllSessions",
    "AdminService.ListClients",
  ]);
});

// GET is only for side-effect-free methods; the other forms serve every method.
const protocols: Protocol[] = [...PROTOCOLS, ...CONNECT_FORMS.filter((p) => p !== "connect-get")];

describe("a request that breaks the contract's rules, on the wire", () => {
  it.each(withRules)(
    "%s: INVALID_ARGUMENT with the in-process violations over every protocol",
    async (_n, clients, service, method) => {
      const request = create(method.input);
      const expected = expectedViolations(method.input, request);
      expect(expected.length).toBeGreaterThan(0);
      for (const protocol of protocols) {
        const client = clients().client(service, protocol) as unknown as Record<
          string,
          (req: unknown) => Promise<unknown>
        >;
        const call = client[method.localName];
        if (!call) throw new Error(`no client method ${method.localName}`);
        const err = await call(request).then(
          () => undefined,
          (e: unknown) => ConnectError.from(e),
        );
        expect({ protocol, code: err?.code, violations: err && wireViolations(err) }).toEqual({
          protocol,
          code: Code.InvalidArgument,
          violations: expected,
        });
      }
    },
  );
});
