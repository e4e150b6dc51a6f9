/**
 * What every service's server shares: one port for Connect, gRPC and
 * gRPC-Web (HTTP/1.1 and h2c), health, reflection (unless turned off),
 * validation, request logs, a request size limit, deadlines and limits on
 * what one client may hold open.
 */
import type { DescService } from "@bufbuild/protobuf";
import type { ConnectRouter, ServiceImpl } from "@connectrpc/connect";
import { type ConnectNodeAdapterOptions, connectNodeAdapter } from "@connectrpc/connect-node";
import { createFastUnaryAdapter, type FastUnaryStats } from "./fast-unary.js";
import {
  createHealth,
  type Health,
  healthHttpHandler,
  type NodeHandlerFn,
  registerHealth,
  ServingStatus,
  watchReadiness,
} from "./health.js";
import { type HttpLimits, type HttpServer, listen } from "./http-server.js";
import {
  createDeadlineInterceptor,
  createLoggingInterceptor,
  createValidationInterceptor,
  peerContextValues,
} from "./interceptors.js";
import type { Logger } from "./logger.js";
import { registerReflection } from "./reflection.js";

export interface ConnectServerOptions<S extends DescService> {
  host: string;
  port: number;
  logger: Logger;
  /** Reflection serves it, and the file that declares it with its dependencies. */
  service: S;
  impl: ServiceImpl<S>;
  /**
   * More services on the same port (e.g. an admin API beside the public one),
   * with the same interceptors, health (each under its name, following the
   * server's) and reflection (which lists every service served).
   */
  also?: readonly ServedService[];
  /** Largest request message in bytes; a larger one is RESOURCE_EXHAUSTED. */
  readMaxBytes: number;
  /** Connections, streams, idle and request time (default DEFAULT_HTTP_LIMITS). */
  limits?: Partial<HttpLimits>;
  /** false: no gRPC reflection; its methods answer UNIMPLEMENTED like any unknown one (default true). */
  reflection?: boolean;
  /** Plain HTTP routes before the 404 (e.g. the JWKS), tried after /healthz and /readyz. */
  http?: NodeHandlerFn;
  /** Readiness probe (e.g. the database): NOT_SERVING while it fails. */
  probe: () => Promise<unknown>;
  probeIntervalMs?: number;
  /** Pause after the probe answered `false` (not ready yet, cheap to ask again); default `probeIntervalMs`. */
  probePendingIntervalMs?: number;
  /**
   * Serve unary gRPC calls over h2c and Connect unary POSTs on the fast path
   * (fast-unary.ts), with the same handlers and interceptors and the same
   * wire output; everything else through connect-node. Default false (the
   * services turn it on from HTTP_FAST_PATH, default true).
   */
  fastPath?: boolean;
}

export interface ConnectServer {
  readonly url: string;
  readonly port: number;
  readonly health: Health;
  /** Calls served by the fast path and requests passed to connect-node (zeros when it is off). */
  readonly stats: Readonly<FastUnaryStats>;
  /** Marks NOT_SERVING, stops accepting, lets in-flight calls finish up to graceMs, closes every connection. */
  close(graceMs: number): Promise<void>;
}

/** A service and its handlers, as `served` pairs them. */
export interface ServedService {
  readonly service: DescService;
  readonly impl: ServiceImpl<DescService>;
}

/** Pairs a service with its handlers, checked against each other, for `also`. */
export function served<S extends DescService>(service: S, impl: ServiceImpl<S>): ServedService {
  return { service, impl: impl as unknown as ServiceImpl<DescService> };
}

/**
 * JSON bodies must be UTF-8 (RFC 8259). connect-es decodes them with a lenient
 * TextDecoder that turns invalid bytes into U+FFFD, which would store mangled
 * text where the binary codec rejects the same bytes; a fatal decoder answers
 * INVALID_ARGUMENT instead. (`textDecoder` is read by connect-es's JSON
 * serialization but missing from its option type.)
 */
const STRICT_JSON = { textDecoder: new TextDecoder("utf-8", { fatal: true }) } as object;

/** The answer to a path nobody serves; the end of a chain of plain HTTP routes. */
export const notFound: NodeHandlerFn = (_req, res) => {
  res.writeHead(404, { "content-type": "text/plain; charset=utf-8" });
  res.end("not found\n");
};

/** Starts serving; resolves once the port is bound. */
export async function startConnectServer<S extends DescService>(opts: ConnectServerOptions<S>): Promise<ConnectServer> {
  const services: readonly ServedService[] = [served(opts.service, opts.impl), ...(opts.also ?? [])];
  const health = createHealth({
    "": ServingStatus.NOT_SERVING,
    ...Object.fromEntries(services.map((s) => [s.service.typeName, ServingStatus.NOT_SERVING])),
  });
  const routes = (router: ConnectRouter) => {
    for (const s of services) router.service(s.service, s.impl);
    registerHealth(router, health);
    if (opts.reflection !== false) registerReflection(router);
  };
  const adapterOptions = {
    routes,
    interceptors: [createLoggingInterceptor(opts.logger), createDeadlineInterceptor(), createValidationInterceptor()],
    readMaxBytes: opts.readMaxBytes,
    jsonOptions: STRICT_JSON,
    // The peer address reaches handlers (kPeerAddress) for limits per client address.
    contextValues: peerContextValues,
    fallback: healthHttpHandler(health, opts.http ?? notFound),
  } satisfies ConnectNodeAdapterOptions;
  const fast = opts.fastPath === true ? createFastUnaryAdapter(adapterOptions) : undefined;
  const handler = fast?.handler ?? connectNodeAdapter(adapterOptions);
  const http: HttpServer = await listen({
    host: opts.host,
    port: opts.port,
    handler,
    ...(fast && { streamHandler: fast.streamHandler }),
    logger: opts.logger,
    ...(opts.limits && { limits: opts.limits }),
  });
  const stopWatching = watchReadiness(health, opts.probe, {
    intervalMs: opts.probeIntervalMs ?? 2_000,
    ...(opts.probePendingIntervalMs !== undefined && { pendingIntervalMs: opts.probePendingIntervalMs }),
    timeoutMs: 3_000,
    logger: opts.logger,
  });
  health.subscribe((service, status) => {
    if (service === "") for (const s of services) health.set(s.service.typeName, status);
  });
  return {
    url: http.url,
    port: http.port,
    health,
    stats: fast?.stats ?? { fast: 0, streams: 0, fallback: 0 },
    async close(graceMs) {
      stopWatching();
      health.shutdown();
      await http.close({ graceMs });
    },
  };
}
