/**
 * AuthService as a plain gRPC client sees it: @grpc/grpc-js with the proto
 * files loaded at run time by @grpc/proto-loader (no generated code), and the
 * rich error details decoded from `grpc-status-details-bin`.
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
import { Code, ConnectError } from "@connectrpc/connect";
import { RetryInfoSchema } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { rpcError } from "../../test/support/clients.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { runCli } from "../src/cli.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
// proto/ and third_party/proto hold our contract and buf/validate; google/protobuf/*.proto
// (imported by validate.proto) come from google-proto-files.
const GOOGLE_PROTOS = dirname(createRequire(import.meta.url).resolve("google-proto-files/package.json"));
const INCLUDE_DIRS = [join(ROOT, "proto"), join(ROOT, "third_party/proto"), GOOGLE_PROTOS];
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

type RawUnary = (
  req: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, res?: unknown) => void,
) => void;

/** A unary method of the dynamic client: request in, response out, failures as ConnectError (cause: the ServiceError). */
type Unary<Req, Res> = (req: Req, token?: string) => Promise<Res>;

interface AuthClient {
  createCredentials: Unary<{ email: string; password: string }, { customer_id: string; tokens: TokenSet }>;
  authenticateCustomer: Unary<{ email: string; password: string }, { customer_id: string; tokens: TokenSet }>;
  refreshToken: Unary<{ refresh_token: string }, { tokens: TokenSet }>;
  revokeToken: Unary<{ token: string }, Record<string, never>>;
  introspectToken: Unary<{ token: string }, Introspection>;
  changePassword: Unary<{ current_password: string; new_password: string }, { tokens: TokenSet }>;
  authenticateClient: Unary<{ client_id: string; client_secret: string; scope: string }, { tokens: TokenSet }>;
}

let svc: RunningIdentityService;
let definition: protoLoader.PackageDefinition;
let raw: grpc.Client;
let auth: AuthClient;

/**
 * google.rpc.Status for protobuf-es. proto-loader's own descriptors cannot
 * serve: protobufjs flattens files by package and writes relative type names.
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
  svc = await startIdentityService({ IDENTITY_THROTTLE_BASE_DELAY_MS: "60000" });
  definition = await protoLoader.load("identity/v1/auth_service.proto", {
    includeDirs: INCLUDE_DIRS,
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    identity: { v1: { AuthService: grpc.ServiceClientConstructor } };
  };
  raw = new loaded.identity.v1.AuthService(`127.0.0.1:${svc.server.port}`, grpc.credentials.createInsecure());
  auth = {
    createCredentials: unary("CreateCredentials"),
    authenticateCustomer: unary("AuthenticateCustomer"),
    refreshToken: unary("RefreshToken"),
    revokeToken: unary("RevokeToken"),
    introspectToken: unary("IntrospectToken"),
    changePassword: unary("ChangePassword"),
    authenticateClient: unary("AuthenticateClient"),
  };
});

afterAll(async () => {
  raw?.close();
  await svc?.close();
});

function unary<Req, Res>(method: string): Unary<Req, Res> {
  return (req, token) =>
    new Promise<Res>((resolve, reject) => {
      const metadata = new grpc.Metadata();
      if (token) metadata.set("authorization", `Bearer ${token}`);
      const fn = (raw as unknown as Record<string, RawUnary>)[method];
      if (!fn) throw new Error(`no method ${method}`);
      fn.call(raw, req, metadata, { deadline: Date.now() + 10_000 }, (err, res) => {
        if (err) reject(new ConnectError(statusMessage(err), err.code as number as Code, undefined, undefined, err));
        else resolve(res as Res);
      });
    });
}

/**
 * The status message as sent. connect-es percent-encodes grpc-message with
 * encodeURIComponent, grpc-js decodes it with decodeURI, which leaves the
 * escapes of reserved characters (",", ":", "/", …) in place.
 */
function statusMessage(err: grpc.ServiceError): string {
  try {
    return decodeURIComponent(err.details);
  } catch {
    return err.details;
  }
}

const email = () => `grpcjs.${randomUUID().slice(0, 8)}@example.com`;

async function signUp() {
  const address = email();
  const res = await auth.createCredentials({ email: address, password: PASSWORD });
  return { email: address, ...res };
}

/** A service client created with the CLI, signed in with client credentials over grpc-js. */
async function serviceToken(scopes: string, scope = ""): Promise<{ clientId: string; secret: string; token: string }> {
  const clientId = `svc-${randomUUID().slice(0, 8)}`;
  const out: string[] = [];
  expect(await runCli(["clients", "create", clientId, "--scopes", scopes], svc.env, (l) => out.push(l))).toBe(0);
  const { client_secret: secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
  const res = await auth.authenticateClient({ client_id: clientId, client_secret: secret, scope });
  return { clientId, secret, token: res.tokens.access_token };
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

describe("AuthService over @grpc/grpc-js with proto-loader", () => {
  it("loads the seven methods of the contract", () => {
    const service = definition["identity.v1.AuthService"] as protoLoader.ServiceDefinition;
    expect(Object.values(service).map((m) => m.path)).toEqual([
      "/identity.v1.AuthService/CreateCredentials",
      "/identity.v1.AuthService/AuthenticateCustomer",
      "/identity.v1.AuthService/RefreshToken",
      "/identity.v1.AuthService/RevokeToken",
      "/identity.v1.AuthService/IntrospectToken",
      "/identity.v1.AuthService/ChangePassword",
      "/identity.v1.AuthService/AuthenticateClient",
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
    const [bin] = err.metadata.get("grpc-status-details-bin");
    expect(bin).toBeInstanceOf(Buffer);
    const statusSchema = statusRegistry.getMessage("google.rpc.Status");
    if (!statusSchema) throw new Error("google.rpc.Status missing");
    const status = fromBinary(statusSchema, bin as Buffer) as unknown as {
      code: number;
      message: string;
      details: Any[];
    };
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
    const service = await serviceToken("customer:read");
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
    const refresh = await auth.introspectToken({ token: user.tokens.refresh_token }, service.token);
    expect(refresh).toMatchObject({ active: true, sub: user.customer_id, token_type: "refresh_token" });

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
