/**
 * The rules of a new password (NIST SP 800-63B 5.1.1.2, OWASP ASVS V2.1),
 * on the real server: normalised (NFKC) first, then not only whitespace, 8
 * to 256 code points, not the email (normalised, any case), not a common or
 * breached password. CreateCredentials and ChangePassword apply the same
 * rules; the answer is INVALID_ARGUMENT naming the field and the rule
 * (buf.validate.Violations and google.rpc.BadRequest), never the password.
 */
import { randomUUID } from "node:crypto";
import { ViolationsSchema } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, failure } from "../../test/support/clients.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { brokenPasswordRule } from "../src/passwords.js";

let svc: RunningIdentityService;

beforeAll(async () => {
  svc = await startIdentityService({});
});

afterAll(async () => {
  await svc?.close();
});

const auth = () => svc.clients.client(AuthService);
/** A customer whose tokens are for the identity service's own RPCs (audience: the issuer), as ChangePassword needs. */
const signUpForOwnApis = (address: string) =>
  auth().createCredentials({ email: address, password: PASSWORD, audience: [svc.env.IDENTITY_ISSUER ?? ""] });
const email = (label = "user") => `${label}.${randomUUID().slice(0, 8)}@example.com`;
const PASSWORD = "correct horse battery staple";

/** ASCII as its full-width forms (U+FF01–U+FF5E), which NFKC maps back. */
const toFullWidth = (s: string) => s.replace(/[!-~]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 0xfee0));

const MESSAGES = {
  "password.not_blank": "must not be only whitespace",
  "password.min_len": "must be at least 8 characters after Unicode normalization (NFKC)",
  "password.not_email": "must not be the email address",
  "password.not_common": "must not be a commonly used or breached password",
} as const;
type Rule = keyof typeof MESSAGES;

/** The error must name field and rule in its message and both details, and hold nothing of the password. */
function expectViolation(err: ConnectError | undefined, field: string, rule: Rule, password: string) {
  expect(err).toBeInstanceOf(ConnectError);
  const e = err as ConnectError;
  expect(e.code).toBe(Code.InvalidArgument);
  expect(e.rawMessage).toBe(`${field}: ${MESSAGES[rule]} [${rule}]`);
  const [violations] = e.findDetails(ViolationsSchema);
  expect(violations?.violations).toMatchObject([
    { field: { elements: [{ fieldName: field }] }, ruleId: rule, message: MESSAGES[rule] },
  ]);
  const [badRequest] = e.findDetails(BadRequestSchema);
  expect(badRequest?.fieldViolations).toMatchObject([{ field, reason: rule, description: MESSAGES[rule] }]);
  // Nothing but the fixed texts: "password" itself is also a field name, so only longer or other passwords are searched.
  if (password !== "password") {
    const everything = JSON.stringify([e.rawMessage, violations, badRequest, svc.logs.lines]);
    expect(everything).not.toContain(password);
    expect(everything).not.toContain(password.normalize("NFKC"));
  }
}

async function identitiesWith(address: string): Promise<number> {
  const [row] = await svc.database.sql<[{ n: number }]>`
    select count(*)::int as n from identities where email = ${address}`;
  return row.n;
}

describe("CreateCredentials refuses what the contract's first pass lets through", () => {
  it.each<[string, string, Rule]>([
    ["password", "password", "password.not_common"],
    ["12345678", "12345678", "password.not_common"],
    ["qwertyuiop", "qwertyuiop", "password.not_common"],
    ["eight spaces", " ".repeat(8), "password.not_blank"],
    ["eight ideographic spaces", "\u3000".repeat(8), "password.not_blank"],
    ["a common password in other case", "QwertyUIOP", "password.not_common"],
    ["a common password with surrounding spaces", "  iloveyou  ", "password.not_common"],
    ["a common password typed in full-width forms", "ｐａｓｓｗｏｒｄ１", "password.not_common"],
  ])("%s", async (_, password, rule) => {
    const address = email();
    const err = await failure(auth().createCredentials({ email: address, password }));
    expectViolation(err, "password", rule, password);
    expect(await identitiesWith(address)).toBe(0);
  });

  it("a full-width copy of the email (NFKC makes it the email)", async () => {
    const address = email("ada");
    const fullWidth = toFullWidth(address);
    expect(fullWidth).not.toBe(address);
    expect(fullWidth.normalize("NFKC")).toBe(address);
    const err = await failure(auth().createCredentials({ email: address, password: fullWidth.toUpperCase() }));
    expectViolation(err, "password", "password.not_email", fullWidth);
    expect(await identitiesWith(address)).toBe(0);
  });

  it.each([
    ["e + combining acute accent, 4 times", "e\u0301".repeat(4)],
    ["half-width katakana + half-width voiced mark, 4 times", "\uff76\uff9e".repeat(4)],
  ])("8 code points that NFKC makes 4 characters: %s", async (_, password) => {
    expect([...password]).toHaveLength(8);
    expect([...password.normalize("NFKC")]).toHaveLength(4);
    const address = email();
    const err = await failure(auth().createCredentials({ email: address, password }));
    expectViolation(err, "password", "password.min_len", password);
    expect(await identitiesWith(address)).toBe(0);
  });

  it("accepts 8 code points after NFKC, and signs in with the password typed either way", async () => {
    const address = email();
    const decomposed = "ne\u0301e\u0301-pe\u0301e\u0301!";
    expect([...decomposed.normalize("NFKC")]).toHaveLength(8);
    const { customerId } = await auth().createCredentials({ email: address, password: decomposed });
    const precomposed = decomposed.normalize("NFC");
    expect(precomposed).not.toBe(decomposed);
    await expect(auth().authenticateCustomer({ email: address, password: precomposed })).resolves.toMatchObject({
      customerId,
    });
  });

  it("accepts an uncommon passphrase", async () => {
    await expect(auth().createCredentials({ email: email(), password: PASSWORD })).resolves.toMatchObject({
      customerId: expect.any(String),
    });
  });
});

describe("ChangePassword applies the same rules to new_password", () => {
  it.each<[string, (address: string) => string, Rule]>([
    ["password", () => "password", "password.not_common"],
    ["12345678", () => "12345678", "password.not_common"],
    ["qwertyuiop", () => "qwertyuiop", "password.not_common"],
    ["eight spaces", () => " ".repeat(8), "password.not_blank"],
    ["combining characters", () => "e\u0301".repeat(4), "password.min_len"],
    ["the email in full-width forms", toFullWidth, "password.not_email"],
  ])("%s", async (_, newPasswordOf, rule) => {
    const address = email("change");
    const user = await signUpForOwnApis(address);
    const newPassword = newPasswordOf(address);
    const err = await failure(
      auth().changePassword({ currentPassword: PASSWORD, newPassword }, bearer(user.tokens?.accessToken ?? "")),
    );
    expectViolation(err, "new_password", rule, newPassword);
    // Nothing changed: the old password still signs in, the refused one does not.
    await expect(auth().authenticateCustomer({ email: address, password: PASSWORD })).resolves.toMatchObject({
      customerId: user.customerId,
    });
  });

  it("accepts an uncommon new password", async () => {
    const address = email("change");
    const user = await signUpForOwnApis(address);
    await auth().changePassword(
      { currentPassword: PASSWORD, newPassword: "a much better passphrase" },
      bearer(user.tokens?.accessToken ?? ""),
    );
    await expect(
      auth().authenticateCustomer({ email: address, password: "a much better passphrase" }),
    ).resolves.toMatchObject({ customerId: user.customerId });
  });
});

describe("the list", () => {
  it("holds the common passwords of 8 code points or more, compared in lower case", () => {
    for (const p of ["password", "12345678", "qwertyuiop", "iloveyou", "PASSWORD1", "Trustno1"]) {
      expect(brokenPasswordRule(p, "someone@example.com"), p).toBe("password.not_common");
    }
    expect(brokenPasswordRule(PASSWORD, "someone@example.com")).toBeUndefined();
  });
});
