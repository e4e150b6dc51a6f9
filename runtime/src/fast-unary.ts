/**
 * A fast path for unary calls: gRPC over HTTP/2 (binary), Connect POST over
 * HTTP/1.1 and HTTP/2 (proto and JSON). The request body is read from Node's
 * request, decoded with connect-es's serialization, passed through the same
 * interceptors to the same `ServiceImpl` method, and answered through
 * connect-node's own response writer, so the bytes on the wire are the ones
 * connect-node sends. It skips connect-node's async-iterable pipeline and its
 * per-call AbortController aborted without a reason (a DOMException built
 * after every call).
 *
 * Everything it does not cover goes to connect-node unchanged: streaming
 * methods (reflection), gRPC-Web, gRPC with JSON, compressed requests, GET,
 * query parameters, a malformed `grpc-timeout`/`connect-timeout-ms`, content
 * types written other than exactly, paths nobody serves, services registered
 * with their own options.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { type Http2ServerRequest, type Http2ServerResponse, constants as h2constants } from "node:http2";
import type { DescMessage, DescMethodUnary, DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type ContextValues,
  createContextValues,
  type createHandlerContext,
  createServiceImplSpec,
  type Interceptor,
  type ServiceImpl,
} from "@connectrpc/connect";
import {
  type Compression,
  compressionNegotiate,
  createMethodSerializationLookup,
  encodeEnvelope,
  invokeUnaryImplementation,
  type MethodSerializationLookup,
  mergeNonProtocolHeaders,
  validateReadWriteMaxBytes,
} from "@connectrpc/connect/protocol";
import {
  codeToHttpStatus,
  errorToJsonBytes,
  parseTimeout as parseConnectTimeout,
  trailerMux,
} from "@connectrpc/connect/protocol-connect";
import { parseTimeout as parseGrpcTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import {
  type ConnectNodeAdapterOptions,
  compressionBrotli,
  compressionGzip,
  connectNodeAdapter,
  universalResponseToNodeResponse,
} from "@connectrpc/connect-node";

type NodeRequest = IncomingMessage | Http2ServerRequest;
type NodeResponse = ServerResponse | Http2ServerResponse;
type UnarySpec = Parameters<typeof invokeUnaryImplementation>[0];

/** How many calls took which path; for tests and diagnostics. */
export interface FastUnaryStats {
  /** Calls served by the fast path. */
  fast: number;
  /** Requests passed to connect-node. */
  fallback: number;
}

export interface FastUnaryAdapter {
  /** A request listener for both protocols, like `connectNodeAdapter(…)`'s. */
  handler: (req: NodeRequest, res: NodeResponse) => void;
  readonly stats: FastUnaryStats;
}

interface Method {
  spec: UnarySpec;
  serialization: MethodSerializationLookup<DescMessage, DescMessage>;
}

/** What the handler's signal is aborted with once its call is answered (one Error, built once). */
const CALL_DONE = new ConnectError("call finished", Code.Canceled);
/** …when the client went away without a reset code connect-node maps. */
const CLIENT_GONE = new ConnectError("client closed the stream", Code.Canceled);
const GRPC_CONTENT_TYPE = "application/grpc+proto";

/**
 * connectNodeAdapter with a fast path for unary calls (gRPC over h2c, Connect POST); takes
 * the same options and serves the same routes (`readMaxBytes` as it is given
 * to connect-node, default 4 GiB).
 */
export function createFastUnaryAdapter(options: ConnectNodeAdapterOptions): FastUnaryAdapter {
  const acceptCompression: Compression[] = options.acceptCompression ?? [compressionGzip, compressionBrotli];
  const limits = validateReadWriteMaxBytes(options.readMaxBytes, options.writeMaxBytes, options.compressMinBytes);
  const interceptors: Interceptor[] = options.interceptors ?? [];
  const maxTimeoutMs = options.maxTimeoutMs ?? Number.MAX_SAFE_INTEGER;
  const methods = new Map<string, Method>();
  const prefix = options.requestPathPrefix ?? "";
  const connectCovered = options.connect !== false && options.requireConnectProtocolHeader !== true;
  const covered =
    options.grpc !== false &&
    options.shutdownSignal === undefined &&
    options.requestGate === undefined &&
    options.binaryOptions === undefined;

  const record = (service: DescService, impl: Partial<ServiceImpl<DescService>>) => {
    const spec = createServiceImplSpec(service, impl);
    for (const method of service.methods) {
      const m = spec.methods[method.localName];
      if (m === undefined || m.kind !== "unary") continue;
      methods.set(`${prefix}/${service.typeName}/${method.name}`, {
        spec: m,
        serialization: createMethodSerializationLookup(
          method as DescMethodUnary,
          options.binaryOptions,
          options.jsonOptions,
          limits,
        ),
      });
    }
  };
  const fallback = connectNodeAdapter({
    ...options,
    routes(router) {
      // The routes register on connect-node's router as before; unary methods of
      // services without options of their own are recorded for the fast path.
      const recorder = {
        get handlers() {
          return router.handlers;
        },
        service(service: DescService, impl: Partial<ServiceImpl<DescService>>, opts?: object) {
          if (opts === undefined) record(service, impl);
          router.service(service, impl, opts);
          return recorder;
        },
        rpc(...args: Parameters<ConnectRouter["rpc"]>) {
          // Not covered: a method registered on its own replaces any fast one at its path.
          const method = args[0];
          methods.delete(`${prefix}/${method.parent.typeName}/${method.name}`);
          router.rpc(...args);
          return recorder;
        },
      } as unknown as ConnectRouter;
      options.routes(recorder);
    },
  });

  const stats: FastUnaryStats = { fast: 0, fallback: 0 };
  const handler = (req: NodeRequest, res: NodeResponse): void => {
    const method = covered && req.method === "POST" ? methods.get(req.url ?? "") : undefined;
    if (method !== undefined && serve(req, res, method)) {
      stats.fast++;
      return;
    }
    stats.fallback++;
    fallback(req, res);
  };

  /** Serves the call if the fast path covers it; false if it is connect-node's. */
  function serve(req: NodeRequest, res: NodeResponse, { spec, serialization }: Method): boolean {
    const h = req.headers;
    const type = h["content-type"];
    let protocol: "grpc" | "connect";
    let binary = true;
    let timeout: { timeoutMs?: number | undefined; error?: ConnectError | undefined };
    if (type === "application/grpc" || type === "application/grpc+proto") {
      const encoding = h["grpc-encoding"];
      if (req.httpVersionMajor !== 2 || (encoding !== undefined && encoding !== "identity")) return false;
      protocol = "grpc";
      timeout = parseGrpcTimeout(headerValue(h["grpc-timeout"]), maxTimeoutMs);
    } else if (type === "application/proto" || type === "application/json") {
      const encoding = h["content-encoding"];
      if (!connectCovered || (encoding !== undefined && encoding !== "identity")) return false;
      protocol = "connect";
      binary = type === "application/proto";
      timeout = parseConnectTimeout(headerValue(h["connect-timeout-ms"]), maxTimeoutMs);
    } else {
      return false;
    }
    const authority = "authority" in req ? req.authority : h.host;
    if (timeout.error !== undefined || authority === undefined) return false;

    const grpc = protocol === "grpc";
    const context = createCallContext(
      spec,
      protocol,
      timeout.timeoutMs,
      webHeaders(h),
      new URL(req.url ?? "", `http://${authority}`).toString(),
      new Headers({ "Content-Type": grpc ? GRPC_CONTENT_TYPE : binary ? "application/proto" : "application/json" }),
      grpc ? new Headers({ "Grpc-Status": "0" }) : new Headers(),
      options.contextValues ? (options.contextValues(req) as ContextValues) : createContextValues(),
    );
    const compression = compressionNegotiate(
      acceptCompression,
      null,
      headerValue(grpc ? h["grpc-accept-encoding"] : h["accept-encoding"]),
      grpc ? "Grpc-Accept-Encoding" : "Accept-Encoding",
    );
    if (grpc && compression.response) context.responseHeader.set("Grpc-Encoding", compression.response.name);

    let answered = false;
    if ("stream" in req) {
      const stream = req.stream;
      stream.once("close", () => {
        if (!answered) context.abort(resetError(stream.rstCode) ?? CLIENT_GONE);
      });
    } else {
      res.once("close", () => {
        if (!answered) context.abort(CLIENT_GONE);
      });
    }

    const respond = (status: number, header: Headers, trailer: Headers | undefined, body: Uint8Array | undefined) => {
      answered = true;
      if (req.complete && !res.headersSent && !res.writableEnded && !res.destroyed) {
        // The calls universalResponseToNodeResponse makes, without its async
        // iteration. With the request complete, what it adds is moot: the
        // HTTP/2 NO_ERROR reset is for a client still sending, the HTTP/1.1
        // drain for an unread body.
        const out = res as WritableResponse;
        out.writeHead(status, nodeHeaders(header));
        if (body !== undefined) out.write(body);
        if (trailer !== undefined) out.addTrailers(nodeHeaders(trailer));
        out.end();
        context.abort(CALL_DONE);
        return;
      }
      universalResponseToNodeResponse(
        {
          status,
          header,
          ...(trailer !== undefined && { trailer }),
          ...(body !== undefined && { body: once(body) }),
        },
        res,
      )
        // The stream was reset or answered already (the request timeout): nobody to tell.
        .catch(() => undefined)
        .finally(() => context.abort(CALL_DONE));
    };
    // As connect-es answers: gRPC with the status in trailers, Connect with an HTTP status and an error body.
    const fail = (err: unknown) => {
      if (answered) return;
      const error =
        err instanceof ConnectError
          ? err
          : new ConnectError("internal error", Code.Internal, undefined, undefined, err);
      context.abort(err);
      if (grpc) {
        setTrailerStatus(context.responseTrailer, error);
        respond(200, context.responseHeader, context.responseTrailer, undefined);
        return;
      }
      context.responseHeader.set("Content-Type", "application/json");
      if (!error.isWireError) mergeNonProtocolHeaders(context.responseHeader, error.metadata);
      // Only compression can throw here; the client then gets a reset rather than nothing.
      connectBody(codeToHttpStatus(error.code), errorToJsonBytes(error, options.jsonOptions)).catch(() =>
        res.destroy(),
      );
    };
    const connectBody = async (status: number, bytes: Uint8Array) => {
      let body = bytes;
      if (compression.response && body.byteLength >= limits.compressMinBytes) {
        body = await compression.response.compress(body);
        context.responseHeader.set("Content-Encoding", compression.response.name);
      }
      const header = trailerMux(context.responseHeader, context.responseTrailer);
      header.set("Content-Length", body.byteLength.toString(10));
      respond(status, header, undefined, body);
    };
    const succeed = async (output: unknown) => {
      try {
        const bytes = serialization.getO(binary).serialize(output as never);
        if (!grpc) {
          await connectBody(200, bytes);
          return;
        }
        const body =
          compression.response && bytes.byteLength >= limits.compressMinBytes
            ? encodeEnvelope(1, await compression.response.compress(bytes))
            : encodeEnvelope(0, bytes);
        respond(200, context.responseHeader, context.responseTrailer, body);
      } catch (err) {
        fail(err);
      }
    };

    let reader: Reader;
    try {
      reader = grpc
        ? new EnvelopeReader(limits.readMaxBytes, serialization)
        : new BodyReader(limits.readMaxBytes, headerValue(h["content-length"]), serialization.getI(binary));
    } catch (err) {
      fail(err);
      return true;
    }
    const onData = (chunk: Buffer) => {
      try {
        reader.push(chunk);
      } catch (err) {
        stop();
        fail(err);
      }
    };
    const onEnd = () => {
      stop();
      let input: unknown;
      try {
        input = reader.end();
      } catch (err) {
        fail(err);
        return;
      }
      invokeUnaryImplementation(spec, context, input as never, interceptors).then(succeed, fail);
    };
    const stop = () => {
      req.off("data", onData).off("end", onEnd);
      req.pause();
    };
    req.on("data", onData).on("end", onEnd);
    return true;
  }

  return { handler, stats };
}

interface Reader {
  push(chunk: Buffer): void;
  /** The request message, once the body has ended. */
  end(): unknown;
}

/**
 * Reads a Connect unary body as connect-es's readAllBytes does: a
 * Content-Length over readMaxBytes is RESOURCE_EXHAUSTED before anything is
 * read, a body that breaks its Content-Length INVALID_ARGUMENT.
 */
class BodyReader implements Reader {
  private readonly chunks: Buffer[] = [];
  private count = 0;
  private readonly hint: number | undefined;
  constructor(
    private readonly readMaxBytes: number,
    contentLength: string | null,
    private readonly input: { parse(data: Uint8Array): unknown },
  ) {
    const n = contentLength === null ? Number.NaN : Number.parseInt(contentLength, 10);
    this.hint = Number.isSafeInteger(n) && n >= 0 ? n : undefined;
    if (this.hint !== undefined && this.hint > readMaxBytes) {
      throw new ConnectError(
        `message size ${this.hint} is larger than configured readMaxBytes ${readMaxBytes}`,
        Code.ResourceExhausted,
      );
    }
  }

  push(chunk: Buffer): void {
    this.count += chunk.length;
    if (this.hint !== undefined) {
      if (this.count > this.hint) {
        throw new ConnectError(
          `protocol error: promised ${this.hint} bytes, received ${this.count}`,
          Code.InvalidArgument,
        );
      }
    } else if (this.count > this.readMaxBytes) {
      throw new ConnectError(
        `message size is larger than configured readMaxBytes ${this.readMaxBytes}`,
        Code.ResourceExhausted,
      );
    }
    this.chunks.push(chunk);
  }

  end(): unknown {
    if (this.hint !== undefined && this.count < this.hint) {
      throw new ConnectError(
        `protocol error: promised ${this.hint} bytes, received ${this.count}`,
        Code.InvalidArgument,
      );
    }
    const bytes = new Uint8Array(this.count);
    let offset = 0;
    for (const chunk of this.chunks) {
      bytes.set(chunk, offset);
      offset += chunk.length;
    }
    return this.input.parse(bytes);
  }
}

/**
 * Splits a request body into gRPC envelopes and parses each as it completes,
 * with connect-es's checks and messages: a length over readMaxBytes is
 * RESOURCE_EXHAUSTED as soon as its prefix arrives, a compressed envelope
 * (without grpc-encoding) INTERNAL, a cut envelope INVALID_ARGUMENT, none or
 * more than one message UNIMPLEMENTED.
 */
class EnvelopeReader implements Reader {
  private buf: Buffer | undefined;
  private readonly messages: unknown[] = [];
  constructor(
    private readonly readMaxBytes: number,
    private readonly serialization: MethodSerializationLookup<DescMessage, DescMessage>,
  ) {}

  push(chunk: Buffer): void {
    // connect-es splits a whole chunk into envelopes (checking each length)
    // before it decompresses or parses the first of them.
    let buf = this.buf === undefined ? chunk : Buffer.concat([this.buf, chunk]);
    const complete: Buffer[] = [];
    while (buf.length >= 5) {
      const length = buf.readUInt32BE(1);
      if (length > this.readMaxBytes) {
        throw new ConnectError(
          `message size ${length} is larger than configured readMaxBytes ${this.readMaxBytes}`,
          Code.ResourceExhausted,
        );
      }
      if (buf.length < 5 + length) break;
      complete.push(buf.subarray(0, 5 + length));
      buf = buf.subarray(5 + length);
    }
    this.buf = buf.length === 0 ? undefined : buf;
    for (const env of complete) {
      if ((env[0] ?? 0) & 1) {
        throw new ConnectError("received compressed envelope, but do not know how to decompress", Code.Internal);
      }
      // A copy, as connect-es makes: the message may keep references to its bytes.
      this.messages.push(this.serialization.getI(true).parse(new Uint8Array(env.subarray(5))));
      if (this.messages.length > 1) {
        throw new ConnectError("protocol error: received extra input message for unary method", Code.Unimplemented);
      }
    }
  }

  end(): unknown {
    if (this.buf !== undefined) throw new ConnectError("protocol error: incomplete envelope", Code.InvalidArgument);
    if (this.messages.length === 0) {
      throw new ConnectError("protocol error: missing input message for unary method", Code.Unimplemented);
    }
    return this.messages[0];
  }
}

type CallContext = ReturnType<typeof createHandlerContext>;

/**
 * What connect-es's createHandlerContext makes, at less cost: one
 * AbortController (createHandlerContext links a second one, for the deadline,
 * with listeners on both), aborted by a timer with the same DEADLINE_EXCEEDED
 * reason; the request headers not copied again.
 */
function createCallContext(
  spec: UnarySpec,
  protocolName: string,
  timeoutMs: number | undefined,
  requestHeader: Headers,
  url: string,
  responseHeader: Headers,
  responseTrailer: Headers,
  values: ContextValues,
): CallContext {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let remaining: () => number | undefined = () => undefined;
  if (timeoutMs !== undefined) {
    const deadline = Date.now() + timeoutMs;
    remaining = () => deadline - Date.now();
    const expire = () => controller.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
    if (timeoutMs <= 0) expire();
    else timer = setTimeout(expire, timeoutMs);
  }
  return {
    method: spec.method,
    service: spec.method.parent,
    requestMethod: "POST",
    protocolName,
    url,
    values,
    signal: controller.signal,
    timeoutMs: remaining,
    requestHeader,
    responseHeader,
    responseTrailer,
    abort(reason?: unknown) {
      clearTimeout(timer);
      controller.abort(reason);
    },
  };
}

/** connect-node's mapping of an HTTP/2 reset code to the reason a handler's signal is aborted with. */
function resetError(rstCode: number | undefined): ConnectError | undefined {
  const name = rstCode === undefined ? undefined : H2_RESET_CODES[rstCode];
  if (rstCode === undefined || name === undefined) return undefined;
  return new ConnectError(`http/2 stream closed with error code ${name[0]} (0x${rstCode.toString(16)})`, name[1]);
}

const H2_RESET_CODES: Record<number, [string, Code]> = {
  [h2constants.NGHTTP2_PROTOCOL_ERROR]: ["PROTOCOL_ERROR", Code.Internal],
  [h2constants.NGHTTP2_INTERNAL_ERROR]: ["INTERNAL_ERROR", Code.Internal],
  [h2constants.NGHTTP2_FLOW_CONTROL_ERROR]: ["FLOW_CONTROL_ERROR", Code.Internal],
  [h2constants.NGHTTP2_SETTINGS_TIMEOUT]: ["SETTINGS_TIMEOUT", Code.Internal],
  [h2constants.NGHTTP2_FRAME_SIZE_ERROR]: ["FRAME_SIZE_ERROR", Code.Internal],
  [h2constants.NGHTTP2_COMPRESSION_ERROR]: ["COMPRESSION_ERROR", Code.Internal],
  [h2constants.NGHTTP2_CONNECT_ERROR]: ["CONNECT_ERROR", Code.Internal],
  [h2constants.NGHTTP2_REFUSED_STREAM]: ["REFUSED_STREAM", Code.Unavailable],
  [h2constants.NGHTTP2_CANCEL]: ["CANCEL", Code.Canceled],
  [h2constants.NGHTTP2_ENHANCE_YOUR_CALM]: ["ENHANCE_YOUR_CALM", Code.ResourceExhausted],
  [h2constants.NGHTTP2_INADEQUATE_SECURITY]: ["INADEQUATE_SECURITY", Code.PermissionDenied],
  [h2constants.NGHTTP2_HTTP_1_1_REQUIRED]: ["HTTP_1_1_REQUIRED", Code.PermissionDenied],
};

/** What both protocols' responses share, as the answer is written. */
interface WritableResponse {
  writeHead(status: number, headers: Record<string, string | string[]>): unknown;
  write(chunk: Uint8Array): unknown;
  addTrailers(headers: Record<string, string | string[]>): void;
  end(): unknown;
}

/** fetch Headers as Node's outgoing headers, as connect-node converts them (sorted, lower case). */
function nodeHeaders(header: Headers): Record<string, string | string[]> {
  const o: Record<string, string | string[]> = {};
  header.forEach((value, key) => {
    const existing = o[key];
    if (existing === undefined) o[key] = value;
    else if (Array.isArray(existing)) existing.push(value);
    else o[key] = [existing, value];
  });
  return o;
}

/** Node's request headers as fetch Headers, as connect-node builds them (pseudo-headers left out). */
function webHeaders(nodeHeaders: NodeRequest["headers"]): Headers {
  const header = new Headers();
  for (const key in nodeHeaders) {
    if (key.charCodeAt(0) === 58 /* ":" */) continue;
    const v = nodeHeaders[key];
    if (v === undefined) continue;
    if (typeof v === "string") header.append(key, v);
    else for (const e of v) header.append(key, e);
  }
  return header;
}

function headerValue(v: string | string[] | undefined): string | null {
  if (v === undefined) return null;
  return typeof v === "string" ? v : v.join(", ");
}

async function* once(body: Uint8Array): AsyncIterable<Uint8Array> {
  yield body;
}
