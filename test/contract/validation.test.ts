/**
 * The protovalidate rules of every CustomerService and AuthService request: a valid sample passes, the
 * boundaries pass, and a sample that breaks one rule yields exactly that one violation.
 */
import { create, type DescMessage, type Message, type MessageInitShape } from "@bufbuild/protobuf";
import { pathToString } from "@bufbuild/protobuf/reflect";
import { createValidator } from "@bufbuild/protovalidate";
import type { PostalAddress } from "@customer-platform/gen/customer/v1/customer_pb.js";
import {
  GetCustomerRequestSchema,
  RegisterCustomerRequestSchema,
  UpdateCustomerRequestSchema,
} from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import {
  AuthenticateClientRequestSchema,
  AuthenticateCustomerRequestSchema,
  ChangePasswordRequestSchema,
  CompleteEmailChangeRequestSchema,
  CompleteSignUpRequestSchema,
  CreateCredentialsRequestSchema,
  IntrospectTokenRequestSchema,
  RefreshTokenRequestSchema,
  RevokeTokenRequestSchema,
  StartEmailChangeRequestSchema,
  StartSignUpRequestSchema,
} from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { describe, expect, it } from "vitest";

type Sample = { schema: DescMessage; message: Message };

function sampler<Desc extends DescMessage>(schema: Desc, base: MessageInitShape<Desc>) {
  return (override?: MessageInitShape<Desc>): Sample => ({ schema, message: create(schema, { ...base, ...override }) });
}

const x = (length: number) => "x".repeat(length);
// 64 + 1 + 63 + 1 + 63 + 1 characters before the last label.
const emailOfLength = (length: number) =>
  `${"a".repeat(64)}@${"b".repeat(63)}.${"c".repeat(63)}.${"d".repeat(length - 193)}`;

const customerId = "0190a5b4-6f7e-7c3a-9b1d-2e4f6a8b0c1d";
const address = (override: Partial<Omit<PostalAddress, "$typeName">> = {}) => ({
  addressLines: ["Unter den Linden 1"],
  locality: "Berlin",
  region: "Berlin",
  postalCode: "10117",
  countryCode: "DE",
  ...override,
});

const register = sampler(RegisterCustomerRequestSchema, {
  email: "ada@example.com",
  givenName: "Ada",
  familyName: "Lovelace",
});
const update = sampler(UpdateCustomerRequestSchema, {
  customer: { customerId, givenName: "Augusta Ada" },
  updateMask: { paths: ["given_name"] },
});
const get = sampler(GetCustomerRequestSchema, { customerId });
const createCredentials = sampler(CreateCredentialsRequestSchema, {
  email: "ada@example.com",
  password: "correct horse battery staple",
});
const startSignUp = sampler(StartSignUpRequestSchema, { email: "ada@example.com", locale: "de-AT" });
const completeSignUp = sampler(CompleteSignUpRequestSchema, {
  email: "ada@example.com",
  code: "01234567",
  password: "correct horse battery staple",
});
const startEmailChange = sampler(StartEmailChangeRequestSchema, {
  newEmail: "ada@example.org",
  currentPassword: "correct horse battery staple",
});
const completeEmailChange = sampler(CompleteEmailChangeRequestSchema, { code: "01234567" });
const authenticateCustomer = sampler(AuthenticateCustomerRequestSchema, {
  email: "ada@example.com",
  password: "correct horse battery staple",
});
const refreshToken = sampler(RefreshTokenRequestSchema, { refreshToken: "rt_Zm9vYmFy" });
const revokeToken = sampler(RevokeTokenRequestSchema, { token: "rt_Zm9vYmFy" });
const introspectToken = sampler(IntrospectTokenRequestSchema, { token: "rt_Zm9vYmFy" });
const changePassword = sampler(ChangePasswordRequestSchema, {
  currentPassword: "correct horse battery staple",
  newPassword: "tr0ub4dor&3 but longer",
});
const authenticateClient = sampler(AuthenticateClientRequestSchema, {
  clientId: "order-service",
  clientSecret: "cs_c2VjcmV0",
  scope: "customer:read",
});

const validator = createValidator();

function violationsOf({ schema, message }: Sample) {
  const result = validator.validate(schema, message);
  if (result.kind === "error") {
    throw result.error;
  }
  return (result.violations ?? []).map((v) => ({ field: pathToString(v.field), ruleId: v.ruleId }));
}

describe("valid requests", () => {
  it.each<[string, Sample]>([
    ["RegisterCustomer with every field", register({ phoneNumber: "+4915123456789", address: address() })],
    ["RegisterCustomer without the optional fields", register()],
    ["RegisterCustomer given_name of 100 characters", register({ givenName: x(100) })],
    ["RegisterCustomer family_name of 100 characters", register({ familyName: x(100) })],
    ["RegisterCustomer given_name of 100 two-byte characters", register({ givenName: "é".repeat(100) })],
    ["RegisterCustomer email of 254 characters", register({ email: emailOfLength(254) })],
    ["RegisterCustomer phone with 7 digits", register({ phoneNumber: "+1234567" })],
    ["RegisterCustomer phone with 15 digits", register({ phoneNumber: "+123456789012345" })],
    [
      "RegisterCustomer address with 5 lines of 200 characters",
      register({ address: address({ addressLines: Array(5).fill(x(200)) }) }),
    ],
    [
      "RegisterCustomer address with only lines and country",
      register({ address: { addressLines: ["Main Street 1"], countryCode: "US" } }),
    ],
    [
      "RegisterCustomer address with 100-character locality and region, 20-character postal code",
      register({ address: address({ locality: x(100), region: x(100), postalCode: "A1B 2C3-".padEnd(20, "9") }) }),
    ],
    ["UpdateCustomer of given_name", update()],
    [
      "UpdateCustomer of every field",
      update({
        customer: {
          customerId,
          email: "ada@example.org",
          givenName: "Augusta Ada",
          familyName: "King",
          phoneNumber: "+4915123456789",
          address: address(),
        },
        updateMask: { paths: ["given_name", "family_name", "phone_number", "address"] },
      }),
    ],
    [
      "UpdateCustomer clearing phone_number and address",
      update({ customer: { customerId }, updateMask: { paths: ["phone_number", "address"] } }),
    ],
    ["UpdateCustomer with expected_version 1", update({ expectedVersion: 1n })],
    ["RegisterCustomer without email (the profile gets the verified one)", register({ email: "" })],
    ["GetCustomer", get()],
    ["CreateCredentials", createCredentials()],
    ["StartSignUp", startSignUp()],
    ["CompleteSignUp", completeSignUp()],
    ["StartEmailChange", startEmailChange()],
    ["CompleteEmailChange", completeEmailChange()],
    ["CreateCredentials password of 8 characters", createCredentials({ password: x(8) })],
    ["CreateCredentials password of 256 characters", createCredentials({ password: x(256) })],
    ["CreateCredentials password of 8 two-byte characters", createCredentials({ password: "ééééééé\u00e9" })],
    [
      "CreateCredentials password of 8 astral characters (16 UTF-16 units)",
      createCredentials({ password: "😀".repeat(8) }),
    ],
    ["CreateCredentials password of 256 astral characters", createCredentials({ password: "😀".repeat(256) })],
    ["AuthenticateCustomer", authenticateCustomer()],
    [
      "AuthenticateCustomer with a short password and a login that is no email address",
      authenticateCustomer({ email: "ada", password: "x" }),
    ],
    ["AuthenticateCustomer with 256-character password", authenticateCustomer({ password: x(256) })],
    ["RefreshToken", refreshToken()],
    ["RefreshToken of 512 characters", refreshToken({ refreshToken: x(512) })],
    ["RevokeToken", revokeToken()],
    ["RevokeToken of 8192 characters", revokeToken({ token: x(8192) })],
    ["IntrospectToken", introspectToken()],
    ["IntrospectToken of 8192 characters", introspectToken({ token: x(8192) })],
    ["ChangePassword", changePassword()],
    [
      "ChangePassword with a short current password and 8-character new password",
      changePassword({ currentPassword: "x", newPassword: x(8) }),
    ],
    ["ChangePassword new password of 256 characters", changePassword({ newPassword: x(256) })],
    ["AuthenticateClient", authenticateClient()],
    ["AuthenticateClient without scope", authenticateClient({ scope: "" })],
    ["AuthenticateClient with two scopes", authenticateClient({ scope: "customer:read customer:write" })],
    ["AuthenticateClient scope of 1024 characters", authenticateClient({ scope: x(1024) })],
    [
      "AuthenticateClient client_id of 128 and secret of 256 characters",
      authenticateClient({ clientId: x(128), clientSecret: x(256) }),
    ],
  ])("accepts %s", (_, sample) => {
    expect(violationsOf(sample)).toEqual([]);
  });
});

describe("invalid requests", () => {
  it.each<[string, string, string, Sample]>([
    ["RegisterCustomer malformed email", "email", "string.email", register({ email: "ada@" })],
    [
      "RegisterCustomer email with a display name",
      "email",
      "string.email",
      register({ email: "Ada <ada@example.com>" }),
    ],
    ["RegisterCustomer email of 255 characters", "email", "string.max_len", register({ email: emailOfLength(255) })],
    ["RegisterCustomer without given_name", "given_name", "required", register({ givenName: "" })],
    ["RegisterCustomer blank given_name", "given_name", "name.not_blank", register({ givenName: " \t " })],
    ["RegisterCustomer given_name of 101 characters", "given_name", "string.max_len", register({ givenName: x(101) })],
    ["RegisterCustomer without family_name", "family_name", "required", register({ familyName: "" })],
    ["RegisterCustomer blank family_name", "family_name", "name.not_blank", register({ familyName: "  " })],
    [
      "RegisterCustomer family_name of 101 characters",
      "family_name",
      "string.max_len",
      register({ familyName: x(101) }),
    ],
    ["RegisterCustomer phone without +", "phone_number", "string.pattern", register({ phoneNumber: "4915123456789" })],
    [
      "RegisterCustomer phone with leading 0",
      "phone_number",
      "string.pattern",
      register({ phoneNumber: "+04915123456789" }),
    ],
    ["RegisterCustomer phone with 6 digits", "phone_number", "string.pattern", register({ phoneNumber: "+123456" })],
    [
      "RegisterCustomer phone with 16 digits",
      "phone_number",
      "string.pattern",
      register({ phoneNumber: "+1234567890123456" }),
    ],
    [
      "RegisterCustomer phone with spaces",
      "phone_number",
      "string.pattern",
      register({ phoneNumber: "+49 151 23456789" }),
    ],
    ["RegisterCustomer phone set to empty", "phone_number", "string.pattern", register({ phoneNumber: "" })],
    [
      "RegisterCustomer address without lines",
      "address.address_lines",
      "repeated.min_items",
      register({ address: address({ addressLines: [] }) }),
    ],
    [
      "RegisterCustomer address with 6 lines",
      "address.address_lines",
      "repeated.max_items",
      register({ address: address({ addressLines: Array(6).fill("line") }) }),
    ],
    [
      "RegisterCustomer address with an empty line",
      "address.address_lines[1]",
      "address_line.not_blank",
      register({ address: address({ addressLines: ["Main Street 1", ""] }) }),
    ],
    [
      "RegisterCustomer address with a blank line",
      "address.address_lines[0]",
      "address_line.not_blank",
      register({ address: address({ addressLines: ["   ", "Main Street 1"] }) }),
    ],
    [
      "UpdateCustomer mask with a sub-path",
      "update_mask",
      "field_mask.top_level",
      update({ updateMask: { paths: ["address.locality"] } }),
    ],
    [
      "UpdateCustomer mask naming a field twice",
      "update_mask",
      "field_mask.top_level",
      update({ updateMask: { paths: ["given_name", "given_name"] } }),
    ],
    [
      "RegisterCustomer address line of 201 characters",
      "address.address_lines[0]",
      "string.max_len",
      register({ address: address({ addressLines: [x(201)] }) }),
    ],
    [
      "RegisterCustomer locality of 101 characters",
      "address.locality",
      "string.max_len",
      register({ address: address({ locality: x(101) }) }),
    ],
    [
      "RegisterCustomer region of 101 characters",
      "address.region",
      "string.max_len",
      register({ address: address({ region: x(101) }) }),
    ],
    [
      "RegisterCustomer postal_code of 21 characters",
      "address.postal_code",
      "string.max_len",
      register({ address: address({ postalCode: x(21) }) }),
    ],
    [
      "RegisterCustomer postal_code starting with a hyphen",
      "address.postal_code",
      "string.pattern",
      register({ address: address({ postalCode: "-10117" }) }),
    ],
    [
      "RegisterCustomer postal_code with a slash",
      "address.postal_code",
      "string.pattern",
      register({ address: address({ postalCode: "101/17" }) }),
    ],
    [
      "RegisterCustomer lower-case country_code",
      "address.country_code",
      "country_code.iso3166_alpha2",
      register({ address: address({ countryCode: "de" }) }),
    ],
    [
      "RegisterCustomer unassigned country_code",
      "address.country_code",
      "country_code.iso3166_alpha2",
      register({ address: address({ countryCode: "XX" }) }),
    ],
    [
      "RegisterCustomer alpha-3 country_code",
      "address.country_code",
      "country_code.iso3166_alpha2",
      register({ address: address({ countryCode: "DEU" }) }),
    ],
    [
      "RegisterCustomer address without country_code",
      "address.country_code",
      "country_code.iso3166_alpha2",
      register({ address: address({ countryCode: "" }) }),
    ],
    [
      "UpdateCustomer without customer",
      "customer",
      "required",
      sampler(UpdateCustomerRequestSchema, { updateMask: { paths: ["phone_number"] } })(),
    ],
    [
      "UpdateCustomer without customer_id",
      "customer.customer_id",
      "string.uuid_empty",
      update({ customer: { givenName: "Ada" } }),
    ],
    [
      "UpdateCustomer malformed customer_id",
      "customer.customer_id",
      "string.uuid",
      update({ customer: { customerId: "customer-1", givenName: "Ada" } }),
    ],
    [
      "UpdateCustomer without update_mask",
      "update_mask",
      "required",
      sampler(UpdateCustomerRequestSchema, { customer: { customerId, givenName: "Ada" } })(),
    ],
    ["UpdateCustomer empty update_mask", "update_mask", "field_mask.not_empty", update({ updateMask: { paths: [] } })],
    [
      "UpdateCustomer mask naming version",
      "update_mask",
      "field_mask.in",
      update({ updateMask: { paths: ["given_name", "version"] } }),
    ],
    [
      "UpdateCustomer mask naming customer_id",
      "update_mask",
      "field_mask.in",
      update({ updateMask: { paths: ["customer_id"] } }),
    ],
    [
      "UpdateCustomer mask naming update_time",
      "update_mask",
      "field_mask.in",
      update({ updateMask: { paths: ["update_time"] } }),
    ],
    [
      "UpdateCustomer mask with a JSON name",
      "update_mask",
      "field_mask.in",
      update({ updateMask: { paths: ["givenName"] } }),
    ],
    ["UpdateCustomer expected_version 0", "expected_version", "int64.gt", update({ expectedVersion: 0n })],
    ["UpdateCustomer expected_version -1", "expected_version", "int64.gt", update({ expectedVersion: -1n })],
    [
      "UpdateCustomer mask naming email (it follows the verified identity)",
      "update_mask",
      "field_mask.in",
      update({ updateMask: { paths: ["email"] } }),
    ],
    [
      "UpdateCustomer mask naming given_name without a value",
      "",
      "update_customer.given_name_required",
      update({ customer: { customerId }, updateMask: { paths: ["given_name"] } }),
    ],
    [
      "UpdateCustomer mask naming family_name without a value",
      "",
      "update_customer.family_name_required",
      update({ customer: { customerId }, updateMask: { paths: ["family_name"] } }),
    ],
    [
      "UpdateCustomer malformed email",
      "customer.email",
      "string.email",
      update({ customer: { customerId, givenName: "Ada", email: "ada" } }),
    ],
    [
      "UpdateCustomer email of 255 characters",
      "customer.email",
      "string.max_len",
      update({ customer: { customerId, givenName: "Ada", email: emailOfLength(255) } }),
    ],
    [
      "UpdateCustomer blank given_name",
      "customer.given_name",
      "name.not_blank",
      update({ customer: { customerId, givenName: " " }, updateMask: { paths: ["given_name"] } }),
    ],
    [
      "UpdateCustomer given_name of 101 characters",
      "customer.given_name",
      "string.max_len",
      update({ customer: { customerId, givenName: x(101) }, updateMask: { paths: ["given_name"] } }),
    ],
    [
      "UpdateCustomer blank family_name",
      "customer.family_name",
      "name.not_blank",
      update({ customer: { customerId, familyName: " " }, updateMask: { paths: ["family_name"] } }),
    ],
    [
      "UpdateCustomer family_name of 101 characters",
      "customer.family_name",
      "string.max_len",
      update({ customer: { customerId, familyName: x(101) }, updateMask: { paths: ["family_name"] } }),
    ],
    [
      "UpdateCustomer malformed phone_number",
      "customer.phone_number",
      "string.pattern",
      update({ customer: { customerId, phoneNumber: "0151 23456789" }, updateMask: { paths: ["phone_number"] } }),
    ],
    [
      "UpdateCustomer address with 6 lines",
      "customer.address.address_lines",
      "repeated.max_items",
      update({
        customer: { customerId, address: address({ addressLines: Array(6).fill("line") }) },
        updateMask: { paths: ["address"] },
      }),
    ],
    [
      "UpdateCustomer address with an unknown country",
      "customer.address.country_code",
      "country_code.iso3166_alpha2",
      update({ customer: { customerId, address: address({ countryCode: "ZZ" }) }, updateMask: { paths: ["address"] } }),
    ],
    ["GetCustomer without customer_id", "customer_id", "string.uuid_empty", get({ customerId: "" })],
    [
      "GetCustomer malformed customer_id",
      "customer_id",
      "string.uuid",
      get({ customerId: "0190a5b4-6f7e-7c3a-9b1d-2e4f6a8b0c1" }),
    ],
    ["CreateCredentials without email", "email", "required", createCredentials({ email: "" })],
    ["CreateCredentials malformed email", "email", "string.email", createCredentials({ email: "ada.example.com" })],
    [
      "CreateCredentials email of 255 characters",
      "email",
      "string.max_len",
      createCredentials({ email: emailOfLength(255) }),
    ],
    ["CreateCredentials without password", "password", "string.min_len", createCredentials({ password: "" })],
    ["CreateCredentials password of 7 characters", "password", "string.min_len", createCredentials({ password: x(7) })],
    [
      "CreateCredentials password of 4 astral characters (8 UTF-16 units)",
      "password",
      "string.min_len",
      createCredentials({ password: "😀".repeat(4) }),
    ],
    [
      "CreateCredentials password of 257 characters",
      "password",
      "string.max_len",
      createCredentials({ password: x(257) }),
    ],
    [
      "CreateCredentials password equal to the email but for case",
      "",
      "password.not_email",
      createCredentials({ email: "ada.lovelace@example.com", password: "Ada.Lovelace@Example.COM" }),
    ],
    ["StartSignUp malformed email", "email", "string.email", startSignUp({ email: "ada.example.com" })],
    ["StartSignUp locale that is no language tag", "locale", "string.pattern", startSignUp({ locale: "en_US" })],
    ["CompleteSignUp code of 7 digits", "code", "string.pattern", completeSignUp({ code: "0123456" })],
    ["CompleteSignUp password of 7 characters", "password", "string.min_len", completeSignUp({ password: x(7) })],
    [
      "CompleteSignUp password equal to the email but for case",
      "",
      "password.not_email",
      completeSignUp({ email: "ada.lovelace@example.com", password: "Ada.Lovelace@Example.COM" }),
    ],
    ["StartEmailChange without new_email", "new_email", "required", startEmailChange({ newEmail: "" })],
    [
      "StartEmailChange without current_password",
      "current_password",
      "required",
      startEmailChange({ currentPassword: "" }),
    ],
    ["CompleteEmailChange code with a letter", "code", "string.pattern", completeEmailChange({ code: "0123456a" })],
    ["AuthenticateCustomer without email", "email", "required", authenticateCustomer({ email: "" })],
    [
      "AuthenticateCustomer email of 255 characters",
      "email",
      "string.max_len",
      authenticateCustomer({ email: emailOfLength(255) }),
    ],
    ["AuthenticateCustomer without password", "password", "required", authenticateCustomer({ password: "" })],
    [
      "AuthenticateCustomer password of 257 characters",
      "password",
      "string.max_len",
      authenticateCustomer({ password: x(257) }),
    ],
    ["RefreshToken without token", "refresh_token", "required", refreshToken({ refreshToken: "" })],
    ["RefreshToken of 513 characters", "refresh_token", "string.max_len", refreshToken({ refreshToken: x(513) })],
    ["RevokeToken without token", "token", "required", revokeToken({ token: "" })],
    ["RevokeToken of 8193 characters", "token", "string.max_len", revokeToken({ token: x(8193) })],
    ["IntrospectToken without token", "token", "required", introspectToken({ token: "" })],
    ["IntrospectToken of 8193 characters", "token", "string.max_len", introspectToken({ token: x(8193) })],
    [
      "ChangePassword without current password",
      "current_password",
      "required",
      changePassword({ currentPassword: "" }),
    ],
    [
      "ChangePassword current password of 257 characters",
      "current_password",
      "string.max_len",
      changePassword({ currentPassword: x(257) }),
    ],
    [
      "ChangePassword new password of 7 characters",
      "new_password",
      "string.min_len",
      changePassword({ newPassword: x(7) }),
    ],
    [
      "ChangePassword new password of 257 characters",
      "new_password",
      "string.max_len",
      changePassword({ newPassword: x(257) }),
    ],
    [
      "ChangePassword new password equal to the current one",
      "",
      "new_password.changed",
      changePassword({ currentPassword: "correct horse", newPassword: "correct horse" }),
    ],
    ["AuthenticateClient without client_id", "client_id", "required", authenticateClient({ clientId: "" })],
    [
      "AuthenticateClient client_id of 129 characters",
      "client_id",
      "string.max_len",
      authenticateClient({ clientId: x(129) }),
    ],
    ["AuthenticateClient without client_secret", "client_secret", "required", authenticateClient({ clientSecret: "" })],
    [
      "AuthenticateClient client_secret of 257 characters",
      "client_secret",
      "string.max_len",
      authenticateClient({ clientSecret: x(257) }),
    ],
    ["AuthenticateClient scope of 1025 characters", "scope", "string.max_len", authenticateClient({ scope: x(1025) })],
    [
      "AuthenticateClient scopes separated by two spaces",
      "scope",
      "string.pattern",
      authenticateClient({ scope: "customer:read  customer:write" }),
    ],
    [
      "AuthenticateClient scope with a leading space",
      "scope",
      "string.pattern",
      authenticateClient({ scope: " customer:read" }),
    ],
    [
      "AuthenticateClient scope with a double quote",
      "scope",
      "string.pattern",
      authenticateClient({ scope: 'customer:"read"' }),
    ],
    [
      "AuthenticateClient scope with a backslash",
      "scope",
      "string.pattern",
      authenticateClient({ scope: "customer\\read" }),
    ],
    [
      "AuthenticateClient scope with a non-ASCII character",
      "scope",
      "string.pattern",
      authenticateClient({ scope: "kundé:read" }),
    ],
  ])("rejects %s: %s / %s", (_, field, ruleId, sample) => {
    expect(violationsOf(sample)).toEqual([{ field, ruleId }]);
  });
});
