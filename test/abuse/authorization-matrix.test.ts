/**
 * The authorization matrix: every CustomerService RPC, the token-protected
 * AuthService RPCs and every AdminService RPC × every kind of caller, with real tokens from the identity
 * service (customers signed up by a mailed code, services made with the
 * identity CLI and signed in with AuthenticateClient). Each cell is one test,
 * run over Connect and gRPC, and asserts the exact code and message of the
 * contract; a denied cell also proves that nothing changed. Every token here
 * is for both the customer service and the identity service (its issuer), so
 * the matrix is about who calls (audiences: test/security/audience.test.ts).
 */
import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { decodeJwt } from "jose";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
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
const services: Record<"read" | "write" | "introspect" | "admin", string> = {
  read: "",
  write: "",
  introspect: "",
  admin: "",
};
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
  "DeleteAccount",
  "ListSessions",
  "RevokeSession",
  "RevokeAllSessions",
  "DisableIdentity",
  "EnableIdentity",
  "DeleteIdentity",
  "DisableClient",
  "EnableClient",
  "CreateClient",
  "GetClient",
  "ListClients",
  "UpdateClient",
  "RotateClientSecret",
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
  services.admin = await service("identity:admin");
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
  DeleteAccount: { with: "write", without: "read" },
  // Nor read or end a customer's sessions.
  ListSessions: { with: "write", without: "read" },
  RevokeSession: { with: "write", without: "read" },
  RevokeAllSessions: { with: "write", without: "read" },
  DisableIdentity: { with: "admin", without: "introspect" },
  EnableIdentity: { with: "admin", without: "introspect" },
  DeleteIdentity: { with: "admin", without: "introspect" },
  DisableClient: { with: "admin", without: "introspect" },
  EnableClient: { with: "admin", without: "introspect" },
  CreateClient: { with: "admin", without: "introspect" },
  GetClient: { with: "admin", without: "introspect" },
  ListClients: { with: "admin", without: "introspect" },
  UpdateClient: { with: "admin", without: "introspect" },
  RotateClientSecret: { with: "admin", without: "introspect" },
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
const deleteDenied = { code: Code.PermissionDenied, message: "only a customer token can delete an account" };
const sessionsDenied = (action: string) => ({
  code: Code.PermissionDenied,
  message: `only a customer token can ${action}`,
});
const adminOnly = { code: Code.PermissionDenied, message: "only a service token may call AdminService" };
/** An AdminService row: a service token for the identity service with identity:admin, and nobody else. */
const ADMIN_ROW: Record<Caller, Expected> = {
  "no token": missing,
  "garbage token": invalid,
  "customer self": adminOnly,
  "other customer": adminOnly,
  "service with scope": "OK",
  "service without scope": {
    code: Code.PermissionDenied,
    message: "AdminService requires the scope identity:admin",
  },
};

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
  DeleteAccount: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": "OK",
    // The token names the customer: another customer's token with this customer's password deletes nothing.
    "other customer": { code: Code.Unauthenticated, message: "current password is wrong" },
    "service with scope": deleteDenied,
    "service without scope": deleteDenied,
  },
  ListSessions: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": "OK",
    // Allowed, and about the caller only: another customer's list never holds this customer's sessions.
    "other customer": "OK",
    "service with scope": sessionsDenied("list sessions"),
    "service without scope": sessionsDenied("list sessions"),
  },
  RevokeSession: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": "OK",
    // This customer's session id with another customer's token: as if it did not exist.
    "other customer": { code: Code.NotFound, message: "session not found" },
    "service with scope": sessionsDenied("revoke a session"),
    "service without scope": sessionsDenied("revoke a session"),
  },
  RevokeAllSessions: {
    "no token": missing,
    "garbage token": invalid,
    "customer self": "OK",
    // Allowed, and about the caller only: this customer's sessions stay.
    "other customer": "OK",
    "service with scope": sessionsDenied("revoke sessions"),
    "service without scope": sessionsDenied("revoke sessions"),
  },
  DisableIdentity: ADMIN_ROW,
  EnableIdentity: ADMIN_ROW,
  DeleteIdentity: ADMIN_ROW,
  DisableClient: ADMIN_ROW,
  EnableClient: ADMIN_ROW,
  CreateClient: ADMIN_ROW,
  GetClient: ADMIN_ROW,
  ListClients: ADMIN_ROW,
  UpdateClient: ADMIN_ROW,
  RotateClientSecret: ADMIN_ROW,
};

/** Stored state a denied call must leave as it was. */
async function state(rpc: Rpc): Promise<unknown> {
  const s = self(rpc);
  return {
    customers: await customerSql`select * from customers where customer_id in (${s.customerId}, ${other.customerId})
      order by customer_id`,
    // Events about these two only: an erasure allowed in an earlier cell reaches the customer service later.
    outbox: (
      await customerSql`select count(*)::int as n from outbox
      where ce_subject in (${s.customerId}, ${other.customerId})`
    )[0],
    identities: await identitySql`select customer_id, email, email_version, password_hash, updated_at from identities
      where customer_id in (${s.customerId}, ${other.customerId}) order by customer_id`,
    codes: await identitySql`select id, email, attempts, consumed_at from one_time_codes
      where customer_id in (${s.customerId}, ${other.customerId}) order by id`,
    refreshTokens: await identitySql`select id, revoked_at from refresh_tokens
      where customer_id in (${s.customerId}, ${other.customerId}) order by id`,
    statuses: await identitySql`select customer_id, status from identities
      where customer_id in (${s.customerId}, ${other.customerId}) order by customer_id`,
    clients: await identitySql`select client_id, disabled_at, tokens_valid_after, secret_hash, description, scopes
      from clients order by client_id`,
    identityOutbox: (
      await identitySql`select count(*)::int as n from outbox
      where ce_subject in (${s.customerId}, ${other.customerId}, ${String(decodeJwt(services.read).client_id)})`
    )[0],
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
    case "DeleteAccount": {
      // Earlier cells spent the other customer's free password attempts (one counter with sign-in).
      if (caller === "other customer") await runCli(["unlock", other.email], platform.identity.env, () => {});
      // A successful deletion needs a customer of its own; the others try this customer's password.
      const target =
        caller === "customer self"
          ? await platform.signUp("a fresh password", "leave", ["customer-service", platform.issuer])
          : s;
      await auth.deleteAccount(
        { currentPassword: target.password },
        caller === "customer self" ? bearer(target.accessToken) : opts,
      );
      await expect(auth.authenticateCustomer({ email: target.email, password: target.password })).rejects.toMatchObject(
        rpcError("invalid email or password", Code.Unauthenticated),
      );
      return;
    }
    case "ListSessions": {
      const res = await auth.listSessions({}, opts);
      const sid = String(decodeJwt(s.accessToken).sid);
      if (caller === "customer self") expect(res.sessions.map((x) => x.sessionId)).toContain(sid);
      else expect(res.sessions.map((x) => x.sessionId)).not.toContain(sid);
      return;
    }
    case "RevokeSession": {
      // Self ends a session of a customer of its own, so this customer's stays for the denied cells.
      const target =
        caller === "customer self"
          ? await platform.signUp("a fresh password", "end", ["customer-service", platform.issuer])
          : s;
      await auth.revokeSession(
        { sessionId: String(decodeJwt(target.accessToken).sid) },
        caller === "customer self" ? bearer(target.accessToken) : opts,
      );
      await expect(auth.refreshToken({ refreshToken: target.refreshToken })).rejects.toMatchObject({
        code: Code.Unauthenticated,
      });
      return;
    }
    case "RevokeAllSessions": {
      if (caller !== "customer self" && caller !== "other customer") {
        await auth.revokeAllSessions({}, opts);
        return;
      }
      // Each allowed caller signs out a customer of its own; this customer's sessions must stay.
      const target = await platform.signUp("a fresh password", "out", ["customer-service", platform.issuer]);
      await auth.revokeAllSessions({}, bearer(target.accessToken));
      await expect(auth.refreshToken({ refreshToken: target.refreshToken })).rejects.toMatchObject({
        code: Code.Unauthenticated,
      });
      const mine = await auth.listSessions({}, bearer(s.accessToken));
      expect(mine.sessions.map((x) => x.sessionId)).toContain(String(decodeJwt(s.accessToken).sid));
      return;
    }
    case "DisableIdentity":
    case "EnableIdentity":
    case "DeleteIdentity": {
      // The allowed call acts on a customer of its own; the others aim at this RPC's customer.
      const target = caller === "service with scope" ? await platform.signUp("a fresh password", "admin") : s;
      const admin = platform.identity.clients.client(AdminService, protocol);
      if (rpc === "DisableIdentity") await admin.disableIdentity({ customerId: target.customerId }, opts);
      if (rpc === "DeleteIdentity") await admin.deleteIdentity({ customerId: target.customerId }, opts);
      if (rpc === "EnableIdentity") {
        if (caller === "service with scope") await admin.disableIdentity({ customerId: target.customerId }, opts);
        await admin.enableIdentity({ customerId: target.customerId }, opts);
      }
      const signIn = auth.authenticateCustomer({ email: target.email, password: target.password });
      if (rpc === "EnableIdentity") await expect(signIn).resolves.toMatchObject({ customerId: target.customerId });
      else
        await expect(signIn).rejects.toMatchObject({
          code: rpc === "DisableIdentity" ? Code.FailedPrecondition : Code.Unauthenticated,
        });
      return;
    }
    case "DisableClient":
    case "EnableClient": {
      // The allowed call acts on a client of its own; the others aim at the read service's client.
      const target =
        caller === "service with scope"
          ? String(decodeJwt(await platform.serviceToken("customer:read")).client_id)
          : String(decodeJwt(services.read).client_id);
      const admin = platform.identity.clients.client(AdminService, protocol);
      if (rpc === "DisableClient") await admin.disableClient({ clientId: target }, opts);
      else {
        if (caller === "service with scope") await admin.disableClient({ clientId: target }, opts);
        await admin.enableClient({ clientId: target }, opts);
      }
      const [row] = await identitySql`select disabled_at from clients where client_id = ${target}`;
      expect(row?.disabled_at === null).toBe(rpc === "EnableClient");
      return;
    }
    case "CreateClient":
    case "GetClient":
    case "ListClients":
    case "UpdateClient":
    case "RotateClientSecret": {
      const admin = platform.identity.clients.client(AdminService, protocol);
      // The allowed call changes a client of its own; the others aim at the read service's client.
      const target =
        caller === "service with scope"
          ? String(decodeJwt(await platform.serviceToken("customer:read")).client_id)
          : String(decodeJwt(services.read).client_id);
      if (rpc === "CreateClient") {
        const clientId = `matrix-${randomUUID().slice(0, 8)}`;
        const res = await admin.createClient({ client: { clientId, scopes: ["customer:read"] } }, opts);
        expect(res.client?.clientId).toBe(clientId);
      } else if (rpc === "GetClient") {
        expect((await admin.getClient({ clientId: target }, opts)).client?.clientId).toBe(target);
      } else if (rpc === "ListClients") {
        expect((await admin.listClients({ pageSize: 500 }, opts)).clients.map((c) => c.clientId)).toContain(target);
      } else if (rpc === "UpdateClient") {
        const res = await admin.updateClient(
          { client: { clientId: target, description: "renamed" }, updateMask: { paths: ["description"] } },
          opts,
        );
        expect(res.client?.description).toBe("renamed");
      } else {
        expect((await admin.rotateClientSecret({ clientId: target }, opts)).clientSecret).not.toBe("");
      }
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

it("covers every CustomerService and AdminService RPC and exactly the AuthService RPCs that read a bearer token", async () => {
  expect(CustomerService.methods.map((m) => m.name).sort()).toEqual(
    RPCS.filter((r) => CustomerService.method[lowerFirst(r) as keyof typeof CustomerService.method]).sort(),
  );
  expect(AdminService.methods.map((m) => m.name).sort()).toEqual(
    RPCS.filter((r) => AdminService.method[lowerFirst(r) as keyof typeof AdminService.method]).sort(),
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
    DeleteAccount: () => auth.deleteAccount({ currentPassword: "x" }),
    ListSessions: () => auth.listSessions({}),
    RevokeSession: () => auth.revokeSession({ sessionId: "0190a5b4-6f7e-7c3a-9b1d-2e4f6a8b0c1d" }),
    RevokeAllSessions: () => auth.revokeAllSessions({}),
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
  expect(asksForToken.sort()).toEqual(RPCS.filter((r) => AuthService.methods.some((m) => m.name === r)).sort());
});

const lowerFirst = (s: string) => s.charAt(0).toLowerCase() + s.slice(1);
