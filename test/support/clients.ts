/**
 * Generated clients over every protocol the servers speak, closable so
 * HTTP/2 sessions do not keep a test alive.
 */
import type { DescService } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
  Http2SessionManager,
} from "@connectrpc/connect-node";

/** Each protocol and HTTP version a client may use (Connect in its binary format). */
export const PROTOCOLS = ["connect-http1", "connect-http2", "grpc", "grpc-web-http1", "grpc-web-http2"] as const;
/** Connect over HTTP/1.1 in its other forms: JSON instead of binary, and GET for side-effect-free methods. */
export const CONNECT_FORMS = ["connect-json", "connect-get"] as const;
export type Protocol = (typeof PROTOCOLS)[number] | (typeof CONNECT_FORMS)[number];
/** The two protocols tests drive every call over when all five would only repeat them: Connect and gRPC. */
export const CORE_PROTOCOLS = ["connect-http1", "grpc"] as const satisfies readonly Protocol[];
export type CoreProtocol = (typeof CORE_PROTOCOLS)[number];

export interface Clients {
  /** A client for service over protocol. */
  client<S extends DescService>(service: S, protocol?: Protocol): Client<S>;
  transport(protocol: Protocol): Transport;
  /** Closes every HTTP/2 session opened. */
  close(): void;
}

// vitest loads this module once per test file, so an observer sees that file's calls only.
const observers = new Set<Interceptor>();
// Resolved at each call, so an observer added after a client was made still sees its calls.
const observing: Interceptor = (next) => (req) => [...observers].reduceRight((n, o) => o(n), next)(req);

/**
 * Runs observer (an interceptor) around every call of every client that
 * createClients makes in this test file, e.g. to check each answer for
 * secrets; returns the function that removes it.
 */
export function observeCalls(observer: Interceptor): () => void {
  observers.add(observer);
  return () => observers.delete(observer);
}

/** Clients for the server at baseUrl. */
export function createClients(baseUrl: string): Clients {
  const common = { baseUrl, interceptors: [observing] };
  const managers: Http2SessionManager[] = [];
  const h2 = () => {
    const m = new Http2SessionManager(baseUrl);
    managers.push(m);
    return m;
  };
  const transports = new Map<Protocol, Transport>();
  const transport = (protocol: Protocol): Transport => {
    let t = transports.get(protocol);
    if (t) return t;
    switch (protocol) {
      case "connect-http1":
        t = createConnectTransport({ ...common, httpVersion: "1.1" });
        break;
      case "connect-json":
        t = createConnectTransport({ ...common, httpVersion: "1.1", useBinaryFormat: false });
        break;
      case "connect-get":
        t = createConnectTransport({ ...common, httpVersion: "1.1", useHttpGet: true });
        break;
      case "connect-http2":
        t = createConnectTransport({ ...common, httpVersion: "2", sessionManager: h2() });
        break;
      case "grpc":
        t = createGrpcTransport({ ...common, sessionManager: h2() });
        break;
      case "grpc-web-http1":
        t = createGrpcWebTransport({ ...common, httpVersion: "1.1" });
        break;
      case "grpc-web-http2":
        t = createGrpcWebTransport({ ...common, httpVersion: "2", sessionManager: h2() });
        break;
    }
    transports.set(protocol, t);
    return t;
  };
  return {
    client: (service, protocol = "connect-http1") => createClient(service, transport(protocol)),
    transport,
    close() {
      for (const m of managers) m.abort();
    },
  };
}

/** Call options with a Bearer token. */
export const bearer = (token: string) => ({ headers: { authorization: `Bearer ${token}` } });

/** Matches a ConnectError by code and message, whether it came over the wire or not. */
export const rpcError = (message: string, code: Code) => ({ code, rawMessage: message });

/** "OK" or the name of the error's code, e.g. "Unauthenticated". */
export const outcome = (call: Promise<unknown>): Promise<string> =>
  call.then(
    () => "OK",
    (e: unknown) => Code[ConnectError.from(e).code] ?? "?",
  );

/** The ConnectError a call failed with, or undefined if it succeeded (for expect.poll). */
export const failure = (call: Promise<unknown>): Promise<ConnectError | undefined> =>
  call.then(
    () => undefined,
    (e: unknown) => ConnectError.from(e),
  );
