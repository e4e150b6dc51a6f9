/**
 * The authorization matrix: every CustomerService RPC and the token-protected
 * AuthService RPCs × every kind of caller, with real tokens from the identity
 * service (customers signed up by a mailed code, services made with the
 * identity CLI and signed in with AuthenticateClient). Each cell is one test,
 * run over Connect and gRPC, and asserts the exact code and message of the
 * contract; a denied cell also proves that nothing changed. Every token here
 * is for both the customer service and the identity service (its issuer), so
 * the matrix is about who calls (audiences: test/security/audience.test.ts).
 */
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, CORE_PROTOCOLS, failure, rpcError } from "../support/clients.js";
import { mailedCode } from "../support/mailbox.js";
import { type Platform, type SignedUp, startPlatform, uniqueEmail } from "../support/platform.js";

type Caller =
  | "no token"
  | "garbage token"
  | "customer self"
  | "other customer"
  | "service with scope"
  | "service without scope";
type CallOptions = { headers?: Record<string, string> };
type Expected = "OK" | { code: Code; message: string };

let platform: Platform;
let customerSql: postgres.Sql;
let identitySql: postgres.Sql;
/** Service tokens by scope. */
const services: Record<"read" | "write" | "introspect", string> = { read: "", write: "", introspect: "" };
/** For each RPC, the customer whose resource it targets ("self"), and one other customer. */
const selves: Record<string, SignedUp> = {};
let other: SignedUp;
/** A live email-change code of CompleteEmailChange's own customer, which no other caller may use. */
let pendingCode: string;

const RPCS = [
  "RegisterCustomer",
  "UpdateCustomer",
  "GetCustomer",
  "IntrospectToken",
  "ChangePassword",
  "StartEmailChange",
  "CompleteEmailChange",
] as const;
type Rpc = (typeof RPCS)[number];

beforeAll(async () => {
  platform = await startPlatform();
  customerSql = platform.customer.database.sql;
  identitySql = platform.identity.database.sql;
  const audiences = ["customer-service", platform.issuer];
  const service = (scopes: string) => platform.serviceToken(scopes, audiences.join(" "));
  services.read = await service("customer:read");
  services.write = await service("customer:write");
  services.introspect = await service("identity:introspect");
  other = await platform.newCustomer("other's own password", "other", audiences);
  for (const rpc of RPCS) {
    selves[rpc] = await platform.newCustomer(`${rpc} self password`, rpc.toLowerCase(), audiences);
  }
  const owner = self("CompleteEmailChange");
  const pending = uniqueEmail("pending");
  await platform
    .auth()
    .startEmailChange({ newEmail: pending, currentPassword: owner.password }, bearer(owner.accessToken));
  pendingCode = await mailedCode(mailbox(), pending);
});

const mailbox = () => platform.identity.env.IDENTITY_MAILBOX_DIR ?? "";

afterAll(async () => {
  await platform?.close();
});

const self = (rpc: Rpc): SignedUp => {
  const s = selves[rpc];
  if (!s) throw new Error(`no customer for ${rpc}`);
  return s;
};

/** The scope a service needs for an RPC ("with") and one that does not grant it ("without"). */
const SERVICE_SCOPES: Record<Rpc, { with: keyof typeof services; without: keyof typeof services }> = {
  RegisterCustomer: { with: "write", without: "read" },
  UpdateCustomer: { with: "write", without: "read" },
  GetCustomer: { with: "read", without: "write" },
  IntrospectToken: { with: "introspect", without: "read" },
  ChangePassword: { with: "write", without: "read" },
  // No scope lets a service change a customer's email.
  StartEmailChange: { with: "write", without: "read" },
  CompleteEmailChange: { with: "write", without: "read" },
};

function callerOptions(rpc: Rpc, caller: Caller): CallOptions {
  switch (caller) {
    case "no token":
      return {};
    case "garbage token":
      return bearer("eyJhbGciOiJFZERTQSJ9.e30.c2lnbmF0dXJl");
    case "customer self":
      return bearer(self(rpc).accessToken);
    case "other customer":
      return bearer(other.accessToken);
    case "service with scope":
      return bearer(services[SERVICE_SCOPES[rpc].with]);
    case "service without scope":
      return bearer(services[SERVICE_SCOPES[rpc].without]);
  }
}

const missing = { code: Code.Unauthenticated, message: "missing bearer token" };
const invalid = { code: Code.Unauthenticated, message: "invalid access token" };
const notYours = { code: Code.PermissionDenied, message: "a customer may only access their own profile" };
const registerDenied = { code: Code.PermissionDenied, message: "only a customer token can register a profile" };
const introspectDenied = { code: Code.PermissionDenied, message: "only a service token may introspect tokens" };
const changeDenied = { code: Code.PermissionDenied, message: "only a customer token can change a password" };
const emailDenied = { code: Code.PermissionDenied, message: "only a customer token can change an email" };

/** The contract's answer for each cell. */
const MATRIX: Record<Rpc, Record<Caller, Expected>> = {
  RegisterCustomer: {
    "no token": missing,
    "garbage token": invalid,
    // A retry of the customer's own registration returns the profile unchanged.
    "customer self": "OK",
    // Another customer submitting this customer's profile: its email is not theirs (their token's verified one).
    "other customer": { code: Code.InvalidArgument, message: "email: value must be the customer's verified email" },
    "service with scope": registerDenied,
    "service without scope": registerDenied,
  },
  UpdateCustomer: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": "OK",
    "other customer": notYours,
    "service with scope": "OK",
    "service without scope": { code: Code.PermissionDenied, message: 'token lacks scope "customer:write"' },
  },
  GetCustomer: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": "OK",
    "other customer": notYours,
    "service with scope": "OK",
    "service without scope": { code: Code.PermissionDenied, message: 'token lacks scope "customer:read"' },
  },
  IntrospectToken: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": introspectDenied,
    "other customer": introspectDenied,
    "service with scope": "OK",
    "service without scope": {
      code: Code.PermissionDenied,
      message: "introspection requires the scope identity:introspect",
    },
  },
  ChangePassword: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": "OK",
    // The token names the customer: another customer's token with this customer's password changes nothing.
    "other customer": { code: Code.Unauthenticated, message: "current password is wrong" },
    "service with scope": changeDenied,
    "service without scope": changeDenied,
  },
  StartEmailChange: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": "OK",
    // The token names the customer: another customer's token with this customer's password changes nothing.
    "other customer": { code: Code.Unauthenticated, message: "current password is wrong" },
    "service with scope": emailDenied,
    "service without scope": emailDenied,
  },
  CompleteEmailChange: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": "OK",
    // This customer's live code, sent with another customer's token: it looks for the caller's own code.
    "other customer": { code: Code.InvalidArgument, message: "code: invalid or expired code [code.invalid]" },
    "service with scope": emailDenied,
    "service without scope": emailDenied,
  },
};

/** Stored state a denied call must leave as it was. */
async function state(rpc: Rpc): Promise<unknown> {
  const s = self(rpc);
  return {
    customers: await customerSql`select * from customers where customer_id in (${s.customerId}, ${other.customerId})
      order by customer_id`,
    outbox: (await customerSql`select count(*)::int as n from outbox`)[0],
    identities: await identitySql`select customer_id, email, email_version, password_hash, updated_at from identities
      where customer_id in (${s.customerId}, ${other.customerId}) order by customer_id`,
    codes: await identitySql`select id, email, attempts, consumed_at from one_time_codes
      where customer_id in (${s.customerId}, ${other.customerId}) order by id`,
    refreshTokens: await identitySql`select id, revoked_at from refresh_tokens
      where customer_id in (${s.customerId}, ${other.customerId}) order by id`,
  };
}

let renames = 0;
/** Makes the call of one cell; checks what an allowed call must have done. */
async function call(rpc: Rpc, caller: Caller, protocol: (typeof CORE_PROTOCOLS)[number]): Promise<void> {
  const opts = callerOptions(rpc, caller);
  const s = self(rpc);
  const customers = platform.customers(protocol);
  const auth = platform.auth(protocol);
  switch (rpc) {
    case "RegisterCustomer": {
      const res = await customers.registerCustomer(s.profile, opts);
      expect(res.customer).toMatchObject({ customerId: s.customerId, ...s.profile, version: 1n });
      return;
    }
    case "UpdateCustomer": {
      const givenName = `Grace ${++renames}`;
      const res = await customers.updateCustomer(
        { customer: { customerId: s.customerId, givenName }, updateMask: { paths: ["given_name"] } },
        opts,
      );
      expect(res.customer).toMatchObject({ customerId: s.customerId, givenName });
      return;
    }
    case "GetCustomer": {
      const res = await customers.getCustomer({ customerId: s.customerId }, opts);
      expect(res.customer).toMatchObject({ customerId: s.customerId, ...s.profile });
      return;
    }
    case "IntrospectToken": {
      const res = await auth.introspectToken({ token: s.accessToken }, opts);
      expect(res).toMatchObject({ active: true, sub: s.customerId, tokenType: "access_token" });
      return;
    }
    case "ChangePassword": {
      // A successful change needs a customer whose password is still the one sent.
      const target =
        caller === "customer self"
          ? await platform.signUp("a fresh password", "change", ["customer-service", platform.issuer])
          : s;
      const res = await auth.changePassword(
        { currentPassword: target.password, newPassword: `${target.password} (new)` },
        caller === "customer self" ? bearer(target.accessToken) : opts,
      );
      expect(res.tokens?.accessToken).toBeTruthy();
      await expect(
        auth.authenticateCustomer({ email: target.email, password: `${target.password} (new)` }),
      ).resolves.toMatchObject({ customerId: target.customerId });
      return;
    }
    case "StartEmailChange": {
      const newEmail = uniqueEmail("new");
      await auth.startEmailChange({ newEmail, currentPassword: s.password }, opts);
      // Nothing changed yet: the code went to the new address.
      expect(await mailedCode(mailbox(), newEmail)).toMatch(/^\d{8}$/);
      return;
    }
    case "CompleteEmailChange": {
      // Every other caller tries this customer's pending code.
      if (caller !== "customer self") {
        await auth.completeEmailChange({ code: pendingCode }, opts);
        return;
      }
      // A customer of its own, so that the pending code stays for the denied cells.
      const target = await platform.signUp("a fresh password", "move", ["customer-service", platform.issuer]);
      const newEmail = uniqueEmail("moved");
      await auth.startEmailChange({ newEmail, currentPassword: target.password }, bearer(target.accessToken));
      const code = await mailedCode(mailbox(), newEmail);
      await expect(auth.completeEmailChange({ code }, bearer(target.accessToken))).resolves.toMatchObject({
        email: newEmail,
      });
      await expect(auth.authenticateCustomer({ email: newEmail, password: target.password })).resolves.toMatchObject({
        customerId: target.customerId,
      });
      return;
    }
  }
}

const CALLERS = Object.keys(MATRIX.GetCustomer) as Caller[];

describe.each(RPCS)("%s", (rpc) => {
  it.each(CALLERS)("%s", async (caller) => {
    const expected = MATRIX[rpc][caller];
    for (const protocol of CORE_PROTOCOLS) {
      if (expected === "OK") {
        await call(rpc, caller, protocol);
        continue;
      }
      const before = await state(rpc);
      await expect(call(rpc, caller, protocol), protocol).rejects.toMatchObject(
        rpcError(expected.message, expected.code),
      );
      expect(await state(rpc), protocol).toEqual(before);
    }
  });
});

it("covers every CustomerService RPC and exactly the AuthService RPCs that read a bearer token", async () => {
  expect(CustomerService.methods.map((m) => m.name).sort()).toEqual(
    RPCS.filter((r) => CustomerService.method[lowerFirst(r) as keyof typeof CustomerService.method]).sort(),
  );
  // Every other AuthService RPC answers a token-less call without asking for one.
  const auth = platform.auth();
  const tokenless = {
    // Deprecated (on in the harness): it still asks for no token.
    CreateCredentials: () => auth.createCredentials({ email: "", password: "" }),
    StartSignUp: () => auth.startSignUp({ email: "" }),
    CompleteSignUp: () =>
      auth.completeSignUp({ email: "nobody@example.com", code: "12345678", password: "long enough" }),
    StartEmailChange: () => auth.startEmailChange({ newEmail: "nobody@example.com", currentPassword: "x" }),
    CompleteEmailChange: () => auth.completeEmailChange({ code: "12345678" }),
    AuthenticateCustomer: () => auth.authenticateCustomer({ email: "nobody@example.com", password: "x" }),
    RefreshToken: () => auth.refreshToken({ refreshToken: "x" }),
    RevokeToken: () => auth.revokeToken({ token: "x" }),
    AuthenticateClient: () => auth.authenticateClient({ clientId: "nobody", clientSecret: "x", scope: "" }),
    IntrospectToken: () => auth.introspectToken({ token: "x" }),
    ChangePassword: () => auth.changePassword({ currentPassword: "x", newPassword: "long enough" }),
    StartRecovery: () => auth.startRecovery({ email: "nobody@example.com" }),
    CompleteRecovery: () =>
      auth.completeRecovery({ email: "nobody@example.com", code: "12345678", newPassword: "long enough" }),
  };
  expect(Object.keys(tokenless).sort()).toEqual(AuthService.methods.map((m) => m.name).sort());
  const asksForToken: string[] = [];
  for (const [name, p] of Object.entries(tokenless)) {
    const err = await failure(p());
    if (err?.code === Code.Unauthenticated && err.rawMessage === "missing bearer token") asksForToken.push(name);
  }
  expect(asksForToken.sort()).toEqual(RPCS.filter((r) => !CustomerService.methods.some((m) => m.name === r)).sort());
});

const lowerFirst = (s: string) => s.charAt(0).toLowerCase() + s.slice(1);
