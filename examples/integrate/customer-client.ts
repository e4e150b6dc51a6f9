/**
 * Calling GetCustomer from another service: a client-credentials token from
 * the identity service (AuthenticateClient), kept until shortly before it
 * expires, sent as a Bearer token by an interceptor on a generated client.
 * The same client code runs over the Connect protocol or gRPC: only the
 * transport differs. See docs/integrate.md.
 */
import { type Client, Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type { Customer } from "@customer-platform/gen/customer/v1/customer_pb.js";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";

/** Your service's credentials, from `npm run identity -- clients create <id> --scopes "customer:read"`. */
export interface ClientCredentials {
  /** The identity service, e.g. http://127.0.0.1:8081 */
  identityUrl: string;
  clientId: string;
  clientSecret: string;
  /** Space-separated; empty for every scope the client was granted. */
  scope: string;
}

/** Returns a valid access token, asking the identity service again a minute before the last one expires. */
export function createTokenSource(creds: ClientCredentials): () => Promise<string> {
  const auth = createClient(AuthService, createConnectTransport({ baseUrl: creds.identityUrl, httpVersion: "1.1" }));
  let cached: { token: string; renewAt: number } | undefined;
  let pending: Promise<string> | undefined;
  return async () => {
    if (cached && Date.now() < cached.renewAt) return cached.token;
    pending ??= auth
      .authenticateClient({ clientId: creds.clientId, clientSecret: creds.clientSecret, scope: creds.scope })
      .then(({ tokens }) => {
        const token = tokens?.accessToken ?? "";
        cached = { token, renewAt: Date.now() + Math.max(0, (tokens?.expiresIn ?? 0) - 60) * 1000 };
        return token;
      })
      .finally(() => {
        pending = undefined;
      });
    return pending;
  };
}

/** Adds `Authorization: Bearer <token>` to every call. */
export function bearerAuth(token: () => Promise<string>): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${await token()}`);
    return next(req);
  };
}

/** A CustomerService client and the HTTP/2 session it holds. */
export interface CustomerClient {
  readonly client: Client<typeof CustomerService>;
  /** Closes the HTTP/2 connection (a long-running service keeps it). */
  close(): void;
}

/** CustomerService over the Connect protocol (HTTP/2 here; `httpVersion: "1.1"` works as well). */
export function connectCustomerClient(baseUrl: string, token: () => Promise<string>): CustomerClient {
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport = createConnectTransport({
    baseUrl,
    httpVersion: "2",
    sessionManager,
    interceptors: [bearerAuth(token)],
  });
  return { client: createClient(CustomerService, transport), close: () => sessionManager.abort() };
}

/** CustomerService over gRPC (HTTP/2 cleartext to an http:// URL, TLS to https://). */
export function grpcCustomerClient(baseUrl: string, token: () => Promise<string>): CustomerClient {
  const sessionManager = new Http2SessionManager(baseUrl);
  const transport = createGrpcTransport({ baseUrl, sessionManager, interceptors: [bearerAuth(token)] });
  return { client: createClient(CustomerService, transport), close: () => sessionManager.abort() };
}

/**
 * A customer's profile, or undefined if there is none. Other failures
 * (UNAUTHENTICATED, PERMISSION_DENIED without `customer:read`, UNAVAILABLE)
 * are thrown as ConnectError.
 */
export async function findCustomer(
  customers: Client<typeof CustomerService>,
  customerId: string,
): Promise<Customer | undefined> {
  try {
    const { customer } = await customers.getCustomer({ customerId }, { timeoutMs: 2_000 });
    return customer;
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.NotFound) return undefined;
    throw err;
  }
}
