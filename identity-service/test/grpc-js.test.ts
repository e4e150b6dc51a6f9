/**
 * AuthService as a plain gRPC client sees it: @grpc/grpc-js with the proto
 * files loaded at run time by @grpc/proto-loader (no generated code), and the
 * rich error details decoded from `grpc-status-details-bin`.
 */
import { randomUUID } from "node:crypto";
import { anyIs, anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { RetryInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import { AdminService } from "@customer-platform/gen/identity/v1/admin_service_pb.js";
import * as grpc from "@grpc/grpc-js";
import type * as protoLoader from "@grpc/proto-loader";
import { decodeJwt } from "jose";
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
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { runCli } from "../src/cli.js";

const PASSWORD = "correct horse battery staple";

interface TokenSet {
  access_token: string;
  token_type: string;
  expires_in: number;
  refresh_token: string;
  scope: string;
}
interface Introspection {
  active: boolean;
  sub: string;
  client_id: string;
  scope: string;
  exp: string;
  iat: string;
  token_type: string;
}

interface AuthClient {
  createCredentials: Unary<
    { email: string; password: string; audience?: string[] },
    { customer_id: string; tokens: TokenSet }
  >;
  authenticateCustomer: Unary<{ email: string; password: string }, { customer_id: string; tokens: TokenSet }>;
  refreshToken: Unary<{ refresh_token: string }, { tokens: TokenSet }>;
  revokeToken: Unary<{ token: string }, Record<string, never>>;
  introspectToken: Unary<{ token: string }, Introspection>;
  changePassword: Unary<{ current_password: string; new_password: string }, { tokens: TokenSet }>;
  authenticateClient: Unary<{ client_id: string; client_secret: string; scope: string }, { tokens: TokenSet }>;
}

let svc: RunningIdentityService;
let client: GrpcJsClient;
let definition: protoLoader.PackageDefinition;
let auth: AuthClient;

beforeAll(async () => {
  svc = await startIdentityService({ IDENTITY_THROTTLE_BASE_DELAY_MS: "60000" });
  client = await loadGrpcJsClient("identity/v1/auth_service.proto", "identity.v1.AuthService", svc.server.port);
  definition = client.definition;
  auth = {
    createCredentials: client.unary("CreateCredentials"),
    authenticateCustomer: client.unary("AuthenticateCustomer"),
    refreshToken: client.unary("RefreshToken"),
    revokeToken: client.unary("RevokeToken"),
    introspectToken: client.unary("IntrospectToken"),
    changePassword: client.unary("ChangePassword"),
    authenticateClient: client.unary("AuthenticateClient"),
  };
});

afterAll(async () => {
  client?.close();
  await svc?.close();
});

const email = () => `grpcjs.${randomUUID().slice(0, 8)}@example.com`;

/** The identity service's own audience (its issuer): these tokens are used at its RPCs. */
const ISSUER = "https://identity.test";

async function signUp() {
  const address = email();
  const res = await auth.createCredentials({ email: address, password: PASSWORD, audience: [ISSUER] });
  return { email: address, ...res };
}

/** A service client created with the CLI, signed in with client credentials over grpc-js. */
async function serviceToken(scopes: string, scope = ""): Promise<{ clientId: string; secret: string; token: string }> {
  const clientId = `svc-${randomUUID().slice(0, 8)}`;
  const out: string[] = [];
  const create = ["clients", "create", clientId, "--scopes", scopes, "--audiences", ISSUER];
  expect(await runCli(create, svc.env, (l) => out.push(l))).toBe(0);
  const { client_secret: secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
  const res = await auth.authenticateClient({ client_id: clientId, client_secret: secret, scope });
  return { clientId, secret, token: res.tokens.access_token };
}

describe("AuthService over @grpc/grpc-js with proto-loader", () => {
  it("loads every method of the contract", () => {
    const service = definition["identity.v1.AuthService"] as protoLoader.ServiceDefinition;
    expect(Object.values(service).map((m) => m.path)).toEqual([
      "/identity.v1.AuthService/CreateCredentials",
      "/identity.v1.AuthService/AuthenticateCustomer",
      "/identity.v1.AuthService/RefreshToken",
      "/identity.v1.AuthService/RevokeToken",
      "/identity.v1.AuthService/IntrospectToken",
      "/identity.v1.AuthService/ChangePassword",
      "/identity.v1.AuthService/AuthenticateClient",
      "/identity.v1.AuthService/StartRecovery",
      "/identity.v1.AuthService/CompleteRecovery",
      "/identity.v1.AuthService/StartSignUp",
      "/identity.v1.AuthService/CompleteSignUp",
      "/identity.v1.AuthService/StartEmailChange",
      "/identity.v1.AuthService/CompleteEmailChange",
      "/identity.v1.AuthService/ListSessions",
      "/identity.v1.AuthService/RevokeSession",
      "/identity.v1.AuthService/RevokeAllSessions",
      "/identity.v1.AuthService/DeleteAccount",
    ]);
  });

  it("CreateCredentials returns a customer id and tokens, then ALREADY_EXISTS for the same email", async () => {
    const user = await signUp();
    expect(user.customer_id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(user.tokens).toMatchObject({ token_type: "Bearer", expires_in: 900, scope: "openid profile customer:self" });
    expect(decodeJwt(user.tokens.access_token).sub).toBe(user.customer_id);
    expect(user.tokens.refresh_token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    await expect(
      auth.createCredentials({ email: user.email.toUpperCase(), password: "another password" }),
    ).rejects.toMatchObject(rpcError("email already has credentials", Code.AlreadyExists));
    const err = await failure(auth.createCredentials({ email: user.email, password: "another password" }));
    expect(err.code).toBe(grpc.status.ALREADY_EXISTS);
  });

  it("CreateCredentials answers INVALID_ARGUMENT for a short password and a password equal to the email", async () => {
    const err = await failure(auth.createCredentials({ email: email(), password: "1234567" }));
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(statusMessage(err)).toBe("password: must be at least 8 characters [string.min_len]");
    const address = email();
    await expect(auth.createCredentials({ email: address, password: address })).rejects.toMatchObject(
      rpcError("password must not be the email address [password.not_email]", Code.InvalidArgument),
    );
  });

  it("AuthenticateCustomer signs in, and answers UNAUTHENTICATED for a wrong password and an unknown email", async () => {
    const user = await signUp();
    const res = await auth.authenticateCustomer({ email: user.email, password: PASSWORD });
    expect(res.customer_id).toBe(user.customer_id);
    expect(decodeJwt(res.tokens.access_token)).toMatchObject({ sub: user.customer_id, client_id: "first-party" });
    await expect(auth.authenticateCustomer({ email: user.email, password: "wrong password" })).rejects.toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );
    await expect(auth.authenticateCustomer({ email: email(), password: PASSWORD })).rejects.toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );
    await expect(auth.authenticateCustomer({ email: user.email, password: "" })).rejects.toMatchObject({
      code: Code.InvalidArgument,
    });
  });

  it("AuthenticateCustomer answers RESOURCE_EXHAUSTED with a RetryInfo in grpc-status-details-bin", async () => {
    const user = await signUp();
    for (let i = 0; i < 5; i++) {
      await expect(auth.authenticateCustomer({ email: user.email, password: "wrong password" })).rejects.toMatchObject(
        rpcError("invalid email or password", Code.Unauthenticated),
      );
    }
    // Blocked now, even with the right password.
    const err = await failure(auth.authenticateCustomer({ email: user.email, password: PASSWORD }));
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    // 60 s from the fifth failure, rounded up to whole seconds when the sixth attempt is answered.
    const message = statusMessage(err);
    expect(message).toMatch(/^too many attempts, retry in (59|60)s$/);
    const seconds = BigInt(/(\d+)s$/.exec(message)?.[1] ?? "0");
    const status = richStatus(err);
    expect(status.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(status.message).toBe(message);
    expect(status.details.map((d) => d.typeUrl)).toEqual(["type.googleapis.com/google.rpc.RetryInfo"]);
    const detail = status.details[0];
    if (!detail || !anyIs(detail, RetryInfoSchema)) throw new Error("no RetryInfo detail");
    const retry = anyUnpack(detail, RetryInfoSchema);
    expect(retry).toMatchObject({ $typeName: "google.rpc.RetryInfo", retryDelay: { seconds, nanos: 0 } });
  });

  it("RefreshToken rotates, and a reused token is UNAUTHENTICATED", async () => {
    const user = await signUp();
    const next = await auth.refreshToken({ refresh_token: user.tokens.refresh_token });
    expect(next.tokens.refresh_token).not.toBe(user.tokens.refresh_token);
    expect(decodeJwt(next.tokens.access_token).sub).toBe(user.customer_id);
    await expect(auth.refreshToken({ refresh_token: user.tokens.refresh_token })).rejects.toMatchObject(
      rpcError("invalid refresh token", Code.Unauthenticated),
    );
    await expect(auth.refreshToken({ refresh_token: next.tokens.refresh_token })).rejects.toMatchObject(
      rpcError("invalid refresh token", Code.Unauthenticated),
    );
    await expect(auth.refreshToken({ refresh_token: "" })).rejects.toMatchObject({ code: Code.InvalidArgument });
  });

  it("IntrospectToken describes tokens to a service, RevokeToken makes them inactive", async () => {
    const service = await serviceToken("customer:read identity:introspect");
    const user = await signUp();
    const access = await auth.introspectToken({ token: user.tokens.access_token }, service.token);
    expect(access).toMatchObject({
      active: true,
      sub: user.customer_id,
      client_id: "first-party",
      scope: "openid profile customer:self",
      token_type: "access_token",
    });
    expect(Number(access.exp) - Number(access.iat)).toBe(900);
    // A refresh token is described only to the client it was issued to (first-party), never to a service.
    const refresh = await auth.introspectToken({ token: user.tokens.refresh_token }, service.token);
    expect(refresh).toMatchObject({ active: false, sub: "" });

    await expect(auth.revokeToken({ token: user.tokens.access_token })).resolves.toEqual({});
    await expect(auth.revokeToken({ token: user.tokens.refresh_token })).resolves.toEqual({});
    expect(await auth.introspectToken({ token: user.tokens.access_token }, service.token)).toMatchObject({
      active: false,
      sub: "",
      exp: "0",
    });
    expect((await auth.introspectToken({ token: user.tokens.refresh_token }, service.token)).active).toBe(false);
  });

  it("IntrospectToken is UNAUTHENTICATED without a token and PERMISSION_DENIED for a customer", async () => {
    const user = await signUp();
    await expect(auth.introspectToken({ token: user.tokens.access_token })).rejects.toMatchObject(
      rpcError("missing bearer token", Code.Unauthenticated),
    );
    await expect(
      auth.introspectToken({ token: user.tokens.access_token }, user.tokens.access_token),
    ).rejects.toMatchObject(rpcError("only a service token may introspect tokens", Code.PermissionDenied));
    await expect(
      auth.introspectToken({ token: user.tokens.access_token }, `${user.tokens.access_token}x`),
    ).rejects.toMatchObject(rpcError("invalid access token", Code.Unauthenticated));
  });

  it("ChangePassword needs the current password and revokes the old refresh tokens", async () => {
    const user = await signUp();
    const token = user.tokens.access_token;
    await expect(
      auth.changePassword({ current_password: "wrong password", new_password: "brand new password" }, token),
    ).rejects.toMatchObject(rpcError("current password is wrong", Code.Unauthenticated));
    await expect(
      auth.changePassword({ current_password: PASSWORD, new_password: "short" }, token),
    ).rejects.toMatchObject({ code: Code.InvalidArgument });
    await expect(
      auth.changePassword({ current_password: PASSWORD, new_password: "brand new password" }),
    ).rejects.toMatchObject(rpcError("missing bearer token", Code.Unauthenticated));
    const service = await serviceToken("customer:read");
    await expect(
      auth.changePassword({ current_password: PASSWORD, new_password: "brand new password" }, service.token),
    ).rejects.toMatchObject(rpcError("only a customer token can change a password", Code.PermissionDenied));

    const res = await auth.changePassword({ current_password: PASSWORD, new_password: "brand new password" }, token);
    expect(res.tokens.refresh_token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    await expect(auth.refreshToken({ refresh_token: user.tokens.refresh_token })).rejects.toMatchObject(
      rpcError("invalid refresh token", Code.Unauthenticated),
    );
    await expect(auth.authenticateCustomer({ email: user.email, password: PASSWORD })).rejects.toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );
    const again = await auth.authenticateCustomer({ email: user.email, password: "brand new password" });
    expect(again.customer_id).toBe(user.customer_id);
  });

  it("AuthenticateClient grants allowed scopes only", async () => {
    const service = await serviceToken("customer:read customer:write", "customer:read");
    expect(decodeJwt(service.token)).toMatchObject({
      sub: service.clientId,
      client_id: service.clientId,
      scope: "customer:read",
    });
    const all = await auth.authenticateClient({
      client_id: service.clientId,
      client_secret: service.secret,
      scope: "",
    });
    expect(all.tokens).toMatchObject({
      token_type: "Bearer",
      refresh_token: "",
      scope: "customer:read customer:write",
    });
    await expect(
      auth.authenticateClient({ client_id: service.clientId, client_secret: service.secret, scope: "admin" }),
    ).rejects.toMatchObject(rpcError("scope not allowed for this client: admin", Code.PermissionDenied));
    await expect(
      auth.authenticateClient({ client_id: service.clientId, client_secret: "wrong", scope: "" }),
    ).rejects.toMatchObject(rpcError("invalid client credentials", Code.Unauthenticated));
    const err = await failure(
      auth.authenticateClient({ client_id: service.clientId, client_secret: service.secret, scope: "bad  scope" }),
    );
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
  });
});

describe("AdminService over @grpc/grpc-js with proto-loader", () => {
  it("suspends and restores an account on the same port, for a token with identity:admin", async () => {
    const adminGrpc = await loadGrpcJsClient(
      "identity/v1/admin_service.proto",
      "identity.v1.AdminService",
      svc.server.port,
    );
    try {
      const service = adminGrpc.definition["identity.v1.AdminService"] as protoLoader.ServiceDefinition;
      // proto-loader reads the .proto as the generated code does: every method, in order.
      expect(Object.values(service).map((m) => m.path)).toEqual(
        AdminService.methods.map((m) => `/identity.v1.AdminService/${m.name}`),
      );
      const disable: Unary<{ customer_id: string }, Record<string, never>> = adminGrpc.unary("DisableIdentity");
      const enable: Unary<{ customer_id: string }, Record<string, never>> = adminGrpc.unary("EnableIdentity");
      const admin = await serviceToken("identity:admin");
      const user = await signUp();
      await expect(disable({ customer_id: user.customer_id }, admin.token)).resolves.toEqual({});
      const refused = await failure(auth.authenticateCustomer({ email: user.email, password: PASSWORD }));
      expect(refused.code).toBe(grpc.status.FAILED_PRECONDITION);
      expect(statusMessage(refused)).toBe("account disabled");
      await expect(enable({ customer_id: user.customer_id }, admin.token)).resolves.toEqual({});
      await expect(auth.authenticateCustomer({ email: user.email, password: PASSWORD })).resolves.toMatchObject({
        customer_id: user.customer_id,
      });
      const unknown = await failure(disable({ customer_id: randomUUID() }, admin.token));
      expect(unknown.code).toBe(grpc.status.NOT_FOUND);
      // A customer's token (the suspension ended the sessions of `user`: another customer's).
      const other = await signUp();
      const denied = await failure(disable({ customer_id: user.customer_id }, other.tokens.access_token));
      expect(denied.code).toBe(grpc.status.PERMISSION_DENIED);
    } finally {
      adminGrpc.close();
    }
  });
});
