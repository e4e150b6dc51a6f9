/**
 * What the abuse tests share: the real platform (identity service on a fixed
 * port as the issuer, the customer service trusting its JWKS), real service
 * and customer tokens, call outcomes as code names, and raw HTTP/2 and
 * protobuf encoding for bytes no generated client would send.
 */
import { randomUUID } from "node:crypto";
import http2 from "node:http2";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer, createClients, type Protocol } from "../support/clients.js";
import { freePort } from "../support/nats.js";
import type { TestDatabase } from "../support/postgres.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "../support/services.js";

/** The protocols the abuse tests drive generated clients over: Connect (HTTP/1.1) and gRPC. */
export const CLIENT_PROTOCOLS = ["connect-http1", "grpc"] as const satisfies readonly Protocol[];

export interface Platform {
  readonly issuer: string;
  readonly identity: RunningIdentityService;
  readonly customer: RunningCustomerService;
  auth(protocol?: Protocol): Client<typeof AuthService>;
  customers(protocol?: Protocol): Client<typeof CustomerService>;
  /** A service client created with the identity CLI, signed in with client credentials. */
  serviceToken(scopes: string): Promise<string>;
  /** Signs up with the identity service (no customer profile yet). */
  signUp(password: string, label?: string): Promise<SignedUp>;
  /** Signs up and registers the customer profile. */
  newCustomer(password: string, label?: string): Promise<SignedUp>;
  close(): Promise<void>;
}

export interface SignedUp {
  readonly customerId: string;
  readonly email: string;
  readonly password: string;
  readonly accessToken: string;
  readonly refreshToken: string;
  /** The profile registered by newCustomer (given and family name). */
  readonly profile: { email: string; givenName: string; familyName: string };
}

/**
 * Starts the identity service on a free fixed port, so its issuer
 * (http://127.0.0.1:<port>) is known before it listens, and the customer
 * service verifying its tokens against <issuer>/.well-known/jwks.json and
 * following its revocations (its stream).
 */
export async function startPlatform(
  opts: {
    identityEnv?: Record<string, string>;
    customerEnv?: Record<string, string>;
    identityDb?: TestDatabase;
    /** Both services' NATS (default: the shared server). */
    natsUrl?: string;
  } = {},
): Promise<Platform> {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const nats = opts.natsUrl ? { natsUrl: opts.natsUrl } : {};
  const identity = await startIdentityService(
    { IDENTITY_PORT: String(port), IDENTITY_ISSUER: issuer, LOG_LEVEL: "warn", ...opts.identityEnv },
    { ...nats, ...(opts.identityDb && { database: opts.identityDb }) },
  );
  let customer: RunningCustomerService;
  try {
    customer = await startCustomerService(
      { IDENTITY_ISSUER: issuer, LOG_LEVEL: "warn", ...opts.customerEnv },
      { ...nats, identityStreams: identity.streams },
    );
  } catch (err) {
    await identity.close();
    throw err;
  }
  const idClients = createClients(identity.url);
  const custClients = createClients(customer.url);
  const auth = (protocol: Protocol = "connect-http1") => idClients.client(AuthService, protocol);
  const customers = (protocol: Protocol = "connect-http1") => custClients.client(CustomerService, protocol);

  const signUp = async (password: string, label = "c"): Promise<SignedUp> => {
    const email = uniqueEmail(label);
    const res = await auth().createCredentials({ email, password });
    return {
      customerId: res.customerId,
      email,
      password,
      accessToken: res.tokens?.accessToken ?? "",
      refreshToken: res.tokens?.refreshToken ?? "",
      profile: { email, givenName: "Ada", familyName: "Lovelace" },
    };
  };
  return {
    issuer,
    identity,
    customer,
    auth,
    customers,
    async serviceToken(scopes) {
      const clientId = `svc-${randomUUID().slice(0, 8)}`;
      const out: string[] = [];
      const code = await runCli(["clients", "create", clientId, "--scopes", scopes], identity.env, (l) => out.push(l));
      if (code !== 0) throw new Error(`clients create exited ${code}`);
      const { client_secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
      const res = await auth().authenticateClient({ clientId, clientSecret: client_secret, scope: "" });
      return res.tokens?.accessToken ?? "";
    },
    signUp,
    async newCustomer(password, label) {
      const c = await signUp(password, label);
      await customers().registerCustomer(c.profile, bearer(c.accessToken));
      return c;
    },
    async close() {
      idClients.close();
      custClients.close();
      await customer.close();
      await identity.close();
    },
  };
}

export const uniqueEmail = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;

/** "OK" or the name of the error's code, e.g. "Unauthenticated". */
export const outcome = (call: Promise<unknown>): Promise<string> =>
  call.then(
    () => "OK",
    (e: unknown) => Code[ConnectError.from(e).code] ?? "?",
  );

/** The error a call failed with, or undefined if it succeeded. */
export const failure = (call: Promise<unknown>): Promise<ConnectError | undefined> =>
  call.then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );

export interface H2Result {
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  data: Buffer;
  /** The RST_STREAM code if the server reset the stream, else 0. */
  rstCode: number;
}

/** One raw HTTP/2 request on its own session; resolves however the stream ends (response, reset). */
export function h2request(baseUrl: string, headers: http2.OutgoingHttpHeaders, body: Uint8Array): Promise<H2Result> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(baseUrl);
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error("no answer within 10 s"));
    }, 10_000);
    session.on("error", () => {});
    const req = session.request({ ":method": "POST", ...headers });
    const result: H2Result = { headers: {}, trailers: {}, data: Buffer.alloc(0), rstCode: 0 };
    req.on("response", (h) => {
      result.headers = h;
    });
    req.on("trailers", (t) => {
      result.trailers = t;
    });
    req.on("data", (d: Buffer) => {
      result.data = Buffer.concat([result.data, d]);
    });
    req.on("error", () => {});
    req.on("close", () => {
      clearTimeout(timer);
      result.rstCode = req.rstCode ?? 0;
      session.close();
      resolve(result);
    });
    req.end(body);
  });
}

export interface GrpcAnswer {
  httpStatus: number | undefined;
  /** grpc-status from the trailers or a trailers-only response; NaN if there is none. */
  status: number;
  message: string;
  headers: http2.IncomingHttpHeaders;
  data: Buffer;
  rstCode: number;
}

/** A gRPC call over raw HTTP/2. */
export async function grpcRaw(
  baseUrl: string,
  path: string,
  body: Uint8Array,
  extra: http2.OutgoingHttpHeaders = {},
): Promise<GrpcAnswer> {
  const res = await h2request(
    baseUrl,
    { ":path": path, "content-type": "application/grpc", te: "trailers", ...extra },
    body,
  );
  const status = res.trailers["grpc-status"] ?? res.headers["grpc-status"];
  const message = res.trailers["grpc-message"] ?? res.headers["grpc-message"];
  return {
    httpStatus: res.headers[":status"] === undefined ? undefined : Number(res.headers[":status"]),
    status: Number(status),
    message: decodeURIComponent(String(message ?? "")),
    headers: res.headers,
    data: res.data,
    rstCode: res.rstCode,
  };
}

/** A gRPC / Connect-streaming length-prefixed message. */
export function envelope(message: Uint8Array, opts: { declaredLength?: number; flags?: number } = {}): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(opts.flags ?? 0, 0);
  head.writeUInt32BE(opts.declaredLength ?? message.length, 1);
  return Buffer.concat([head, message]);
}

/** Hand-encoded protobuf: a varint. */
export function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

/** Hand-encoded protobuf: a length-delimited field (string, bytes, message). */
export function field(no: number, value: Buffer | string): Buffer {
  const bytes = typeof value === "string" ? Buffer.from(value, "utf8") : value;
  return Buffer.concat([varint((no << 3) | 2), varint(bytes.length), bytes]);
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
