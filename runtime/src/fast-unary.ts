/**
 * A fast path for unary calls: gRPC over HTTP/2 (binary), Connect POST over
 * HTTP/1.1 and HTTP/2 (proto and JSON). The request body is read from Node's
 * request (HTTP/1.1) or straight from the HTTP/2 stream, before Node's
 * compatibility layer (`streamHandler`), decoded with connect-es's
 * serialization, passed through the same interceptors to the same
 * `ServiceImpl` method, and answered with the status, headers, body and
 * trailers connect-node sends (a test compares them). It skips connect-node's
 * async-iterable pipeline, and makes per call only what someone reads (see
 * FastCallContext).
 *
 * Everything it does not cover goes to connect-node unchanged: streaming
 * methods (reflection), gRPC-Web, gRPC with JSON, compressed requests, GET,
 * query parameters, a malformed `grpc-timeout`/`connect-timeout-ms`, content
 * types written other than exactly, paths nobody serves, services registered
 * with their own options.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import {
  type Http2ServerRequest,
  type Http2ServerResponse,
  constants as h2constants,
  type IncomingHttpHeaders,
  type OutgoingHttpHeaders,
  type ServerHttp2Stream,
} from "node:http2";
import { create, type DescMessage, type DescMethod, type DescMethodUnary, type DescService } from "@bufbuild/protobuf";
import {
  Code,
  ConnectError,
  type ConnectRouter,
  type ContextValues,
  createContextValues,
  createServiceImplSpec,
  type HandlerContext,
  type Interceptor,
  type ServiceImpl,
  type UnaryRequest,
  type UnaryResponse,
} from "@connectrpc/connect";
import {
  type Compression,
  compressionNegotiate,
  createMethodSerializationLookup,
  encodeEnvelope,
  type invokeUnaryImplementation,
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
  /** …of which HTTP/2 calls served straight from their stream, before Node's compatibility layer. */
  streams: number;
  /** Requests passed to connect-node. */
  fallback: number;
}

export interface FastUnaryAdapter {
  /** A request listener for both protocols, like `connectNodeAdapter(…)`'s. */
  handler: (req: NodeRequest, res: NodeResponse) => void;
  /**
   * For http-server.ts's `streamHandler`: serves a covered HTTP/2 call
   * straight from its stream, before Node's compatibility layer; false
   * leaves the stream to `handler`.
   */
  streamHandler: (stream: ServerHttp2Stream, headers: IncomingHttpHeaders) => boolean;
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
const { NGHTTP2_NO_ERROR, NGHTTP2_INTERNAL_ERROR } = h2constants;

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

  const stats: FastUnaryStats = { fast: 0, streams: 0, fallback: 0 };
  const handler = (req: NodeRequest, res: NodeResponse): void => {
    const method = covered && req.method === "POST" ? methods.get(req.url ?? "") : undefined;
    if (method !== undefined && serve(requestExchange(req, res), method)) {
      stats.fast++;
      return;
    }
    stats.fallback++;
    fallback(req, res);
  };
  const streamHandler = (stream: ServerHttp2Stream, headers: IncomingHttpHeaders): boolean => {
    const path = headers[":path"];
    const method = covered && headers[":method"] === "POST" && path !== undefined ? methods.get(path) : undefined;
    if (method === undefined || !serve(streamExchange(stream, headers, path ?? ""), method)) return false;
    stats.fast++;
    stats.streams++;
    return true;
  };

  /** Serves the call if the fast path covers it; false if it is connect-node's. */
  function serve(x: Exchange, { spec, serialization }: Method): boolean {
    const h = x.headers;
    const type = h["content-type"];
    let protocol: "grpc" | "connect";
    let binary = true;
    let timeout: { timeoutMs?: number | undefined; error?: ConnectError | undefined };
    if (type === "application/grpc" || type === "application/grpc+proto") {
      const encoding = h["grpc-encoding"];
      if (!x.http2 || (encoding !== undefined && encoding !== "identity")) return false;
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
    // connect-node answers a malformed authority (or timeout) its own way.
    const origin = x.authority === undefined ? undefined : originOf(x.authority);
    if (timeout.error !== undefined || origin === undefined) return false;

    const grpc = protocol === "grpc";
    const compression = compressionNegotiate(
      acceptCompression,
      null,
      headerValue(grpc ? h["grpc-accept-encoding"] : h["accept-encoding"]),
      grpc ? "Grpc-Accept-Encoding" : "Accept-Encoding",
    );
    const initialHeader: OutHeaders = {
      "content-type": grpc ? GRPC_CONTENT_TYPE : binary ? "application/proto" : "application/json",
    };
    if (grpc && compression.response) initialHeader["grpc-encoding"] = compression.response.name;
    const context = new FastCallContext(
      spec.method,
      protocol,
      timeout.timeoutMs,
      new NodeRequestHeaders(h),
      origin + x.path,
      initialHeader,
      grpc ? GRPC_OK_TRAILER : NO_TRAILER,
      options.contextValues
        ? (options.contextValues(x.request as NodeRequest) as ContextValues)
        : createContextValues(),
    );

    let answered = false;
    x.onGone((reason) => {
      if (!answered) context.abort(reason);
    });
    const respond = (
      status: number,
      header: OutHeaders,
      trailer: OutHeaders | undefined,
      body: Uint8Array | undefined,
    ) => {
      answered = true;
      x.respond(status, header, trailer, body, () => context.abort(CALL_DONE));
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
        respond(200, nodeHeaders(context.responseHeader), nodeHeaders(context.responseTrailer), undefined);
        return;
      }
      context.responseHeader.set("Content-Type", "application/json");
      if (!error.isWireError) mergeNonProtocolHeaders(context.responseHeader, error.metadata);
      // Only compression can throw here; the client then gets a reset rather than nothing.
      connectBody(codeToHttpStatus(error.code), errorToJsonBytes(error, options.jsonOptions)).catch(() => x.destroy());
    };
    const connectBody = async (status: number, bytes: Uint8Array) => {
      let body = bytes;
      let encoding: string | undefined;
      if (compression.response && body.byteLength >= limits.compressMinBytes) {
        body = await compression.response.compress(body);
        encoding = compression.response.name;
      }
      // Connect unary sends trailers as `trailer-` headers; none made, none to send.
      const header =
        context.madeHeader() === undefined && context.madeTrailer() === undefined
          ? { ...initialHeader }
          : nodeHeaders(trailerMux(context.responseHeader, context.responseTrailer));
      if (encoding !== undefined) header["content-encoding"] = encoding;
      header["content-length"] = body.byteLength.toString(10);
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
        const header = context.madeHeader();
        const trailer = context.madeTrailer();
        respond(
          200,
          header === undefined ? initialHeader : nodeHeaders(header),
          trailer === undefined ? GRPC_OK_TRAILER : nodeHeaders(trailer),
          body,
        );
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
    const body = x.body;
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
      invokeUnary(spec, context, input, interceptors).then(succeed, fail);
    };
    const stop = () => {
      body.off("data", onData).off("end", onEnd);
      body.pause();
    };
    body.on("data", onData).on("end", onEnd);
    return true;
  }

  return { handler, streamHandler, stats };
}

/** One call as the fast path sees it: from Node's compatibility API, or straight from an HTTP/2 stream. */
interface Exchange {
  /** Request headers as Node parsed them (lower case; HTTP/2 pseudo-headers included). */
  readonly headers: IncomingHttpHeaders;
  readonly http2: boolean;
  /** The request path with its query, as sent. */
  readonly path: string;
  readonly authority: string | undefined;
  /** What `contextValues` is given. */
  readonly request: NodeRequest | StreamRequest;
  /** The request body ("data", "end"). */
  readonly body: Body;
  /** Calls back once if the client goes away (why, as connect-node says it). */
  onGone(cb: (reason: ConnectError) => void): void;
  /** Writes the whole answer; `done` once it is handed to Node (or could not be). */
  respond(
    status: number,
    header: OutHeaders,
    trailer: OutHeaders | undefined,
    body: Uint8Array | undefined,
    done: () => void,
  ): void;
  /** Resets the stream (HTTP/2) or the connection. */
  destroy(): void;
}

interface Body {
  on(event: "data", cb: (chunk: Buffer) => void): Body;
  on(event: "end", cb: () => void): Body;
  off(event: "data", cb: (chunk: Buffer) => void): Body;
  off(event: "end", cb: () => void): Body;
  pause(): unknown;
}

/**
 * What `contextValues` gets for a stream taken before Node's compatibility
 * layer: the socket (for the peer address) and the headers, not a full request.
 */
export interface StreamRequest {
  readonly socket: { readonly remoteAddress?: string | undefined } | null;
  readonly headers: IncomingHttpHeaders;
}

function requestExchange(req: NodeRequest, res: NodeResponse): Exchange {
  const h = req.headers;
  return {
    headers: h,
    http2: req.httpVersionMajor === 2,
    path: req.url ?? "",
    authority: "authority" in req ? req.authority : h.host,
    request: req,
    body: req as Body,
    onGone(cb) {
      if ("stream" in req) {
        const stream = req.stream;
        stream.once("close", () => cb(resetError(stream.rstCode) ?? CLIENT_GONE));
      } else {
        res.once("close", () => cb(CLIENT_GONE));
      }
    },
    respond(status, header, trailer, body, done) {
      if (req.complete && !res.headersSent && !res.writableEnded && !res.destroyed) {
        // The calls universalResponseToNodeResponse makes, without its async
        // iteration. With the request complete, what it adds is moot: the
        // HTTP/2 NO_ERROR reset is for a client still sending, the HTTP/1.1
        // drain for an unread body.
        const out = res as WritableResponse;
        out.writeHead(status, header);
        if (body !== undefined) out.write(body);
        if (trailer !== undefined) out.addTrailers(trailer);
        out.end();
        done();
        return;
      }
      universalResponseToNodeResponse(
        {
          status,
          header: webHeaders(header),
          ...(trailer !== undefined && { trailer: webHeaders(trailer) }),
          ...(body !== undefined && { body: once(body) }),
        },
        res,
      )
        // The stream was reset or answered already (the request timeout): nobody to tell.
        .catch(() => undefined)
        .finally(done);
    },
    destroy: () => res.destroy(),
  };
}

/**
 * An HTTP/2 stream answered with Node's stream API: the frames the
 * compatibility layer would send (HEADERS, DATA, trailing HEADERS for gRPC;
 * a Connect answer ends with its DATA), and, as connect-node does, a
 * NO_ERROR reset after the answer when the client is still sending.
 */
function streamExchange(stream: ServerHttp2Stream, headers: IncomingHttpHeaders, path: string): Exchange {
  return {
    headers,
    http2: true,
    path,
    authority: headers[":authority"] ?? headers.host,
    request: { socket: stream.session?.socket ?? null, headers },
    body: stream as Body,
    onGone(cb) {
      stream.once("close", () => cb(resetError(stream.rstCode) ?? CLIENT_GONE));
    },
    respond(status, header, trailer, body, done) {
      // Reset by the client, or answered already by the request timeout.
      if (stream.destroyed || stream.closed || stream.headersSent) {
        done();
        return;
      }
      const out: OutgoingHttpHeaders = { ...header, ":status": status };
      const stopClient = () => {
        if (stream.state.remoteClose === 0) stream.close(NGHTTP2_NO_ERROR);
      };
      try {
        if (trailer === undefined) {
          stream.respond(out);
          if (stream.state.remoteClose === 0) stream.once("finish", stopClient);
        } else {
          stream.respond(out, { waitForTrailers: true });
          stream.once("wantTrailers", () => {
            stream.sendTrailers(trailer);
            // Node sends the trailers on setImmediate; a reset before would drop them.
            if (stream.state.remoteClose === 0) setImmediate(stopClient);
          });
        }
        stream.end(body);
      } catch {
        // Closed between the check and the write: nobody to tell.
        stream.destroy();
      }
      done();
    },
    destroy: () => stream.close(NGHTTP2_INTERNAL_ERROR),
  };
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

/** A call's HandlerContext, and what the fast path does with it. */
interface CallContext extends HandlerContext {
  /** Aborts the signal (the first reason stays) and stops the deadline's timer. */
  abort(reason: unknown): void;
  /** The response headers, if anyone asked for them (else they are still the initial ones). */
  madeHeader(): Headers | undefined;
  /** The response trailers, likewise. */
  madeTrailer(): Headers | undefined;
}

/** A signal's reason before anyone aborted it. */
const NOT_ABORTED = Symbol("not aborted");
const noDeadline = () => undefined;

/**
 * What connect-es's createHandlerContext makes, at less cost. The
 * AbortSignal is made only when someone reads it: handlers rarely do, and
 * the deadline interceptor only for a call with a deadline, so most calls
 * build no AbortController and dispatch no abort Event. When made, it is
 * aborted with the reasons connect-es gives (DEADLINE_EXCEEDED by a timer,
 * CANCELED when the client goes away, CALL_DONE after the answer), the
 * first one kept; one controller where createHandlerContext links a second
 * for the deadline. The response headers and trailers, likewise, become
 * fetch Headers only when asked for (an answer nobody added to is sent from
 * the initial ones); the request headers are not copied again; the URL's
 * origin is parsed once per authority. A class, so a call allocates one
 * object rather than a closure per getter: `signal`, `responseHeader` and
 * `responseTrailer` live on its prototype (a spread copy of a context, which
 * nothing here makes, would not have them).
 */
class FastCallContext implements CallContext {
  readonly service: DescService;
  readonly requestMethod = "POST";
  readonly timeoutMs: () => number | undefined = noDeadline;
  #responseHeader: Headers | undefined;
  #responseTrailer: Headers | undefined;
  #controller: AbortController | undefined;
  #reason: unknown = NOT_ABORTED;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    readonly method: DescMethod,
    readonly protocolName: string,
    timeoutMs: number | undefined,
    readonly requestHeader: Headers,
    readonly url: string,
    private readonly initialHeader: Readonly<OutHeaders>,
    private readonly initialTrailer: Readonly<OutHeaders>,
    readonly values: ContextValues,
  ) {
    this.service = method.parent;
    if (timeoutMs !== undefined) {
      const deadline = Date.now() + timeoutMs;
      this.timeoutMs = () => deadline - Date.now();
      const expire = () => this.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
      if (timeoutMs <= 0) expire();
      else this.#timer = setTimeout(expire, timeoutMs);
    }
  }

  get signal(): AbortSignal {
    if (this.#controller === undefined) {
      this.#controller = new AbortController();
      if (this.#reason !== NOT_ABORTED) this.#controller.abort(this.#reason);
    }
    return this.#controller.signal;
  }

  get responseHeader(): Headers {
    this.#responseHeader ??= webHeaders(this.initialHeader);
    return this.#responseHeader;
  }

  get responseTrailer(): Headers {
    this.#responseTrailer ??= webHeaders(this.initialTrailer);
    return this.#responseTrailer;
  }

  abort(reason: unknown): void {
    clearTimeout(this.#timer);
    if (this.#reason !== NOT_ABORTED) return;
    this.#reason = reason;
    this.#controller?.abort(reason);
  }

  madeHeader(): Headers | undefined {
    return this.#responseHeader;
  }

  madeTrailer(): Headers | undefined {
    return this.#responseTrailer;
  }
}

/**
 * connect-es's invokeUnaryImplementation (the same interceptors, in the same
 * order, around the same handler; the output normalised with `create`; the
 * response headers and trailers an interceptor returns copied back), except
 * that the request's signal and the response's headers stay unmade until
 * read, and a handler whose request the interceptors passed on unchanged
 * gets the call's context itself rather than a merged copy.
 */
async function invokeUnary(
  spec: UnarySpec,
  call: CallContext,
  input: unknown,
  interceptors: readonly Interceptor[],
): Promise<unknown> {
  const method = spec.method;
  const request: UnaryRequest = {
    stream: false,
    message: input as UnaryRequest["message"],
    method,
    requestMethod: "POST",
    url: call.url,
    get signal() {
      return call.signal;
    },
    header: call.requestHeader,
    service: call.service,
    contextValues: call.values,
  };
  let response: UnaryResponse | undefined;
  const handler = async (req: UnaryRequest): Promise<UnaryResponse> => {
    // As connect-es merges them: what an interceptor changed in the request, the rest from the call.
    const context: HandlerContext =
      req === request
        ? call
        : {
            method,
            service: req.service,
            requestMethod: call.requestMethod,
            protocolName: call.protocolName,
            url: call.url,
            signal: req.signal,
            timeoutMs: call.timeoutMs,
            requestHeader: req.header,
            get responseHeader() {
              return call.responseHeader;
            },
            get responseTrailer() {
              return call.responseTrailer;
            },
            values: req.contextValues,
          };
    const output = await spec.impl(req.message as never, context);
    response = {
      stream: false,
      message: create(method.output, output as never),
      method,
      service: call.service,
      get header() {
        return call.responseHeader;
      },
      get trailer() {
        return call.responseTrailer;
      },
    };
    return response;
  };
  let next: (req: UnaryRequest) => Promise<UnaryResponse> = handler;
  for (let i = interceptors.length - 1; i >= 0; i--) {
    next = (interceptors[i] as Interceptor)(next as never) as typeof next;
  }
  const res = await next(request);
  // The handler's own answer carries the call's headers: nothing to copy (nor to make).
  if (res !== response) {
    copyHeaders(res.header, call.responseHeader);
    copyHeaders(res.trailer, call.responseTrailer);
  }
  return res.message;
}

/** As connect-es copies the response headers an interceptor returned: replaced, unless the same object. */
function copyHeaders(from: Headers, to: Headers): void {
  if (from === to) return;
  for (const key of [...to.keys()]) to.delete(key);
  for (const [key, value] of from) to.set(key, value);
}

/**
 * `http://<authority>` as the URL parser normalises it, for the few
 * authorities a server sees; undefined if it is not one. The path needs no
 * normalising: it matched a method's path exactly.
 */
const origins = new Map<string, string>();
function originOf(authority: string): string | undefined {
  let origin = origins.get(authority);
  if (origin === undefined) {
    if (!URL.canParse(`http://${authority}`)) return undefined;
    origin = new URL(`http://${authority}`).origin;
    // Clients choose the authority: a bounded map, emptied when full.
    if (origins.size >= 64) origins.clear();
    origins.set(authority, origin);
  }
  return origin;
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
  writeHead(status: number, headers: OutHeaders): unknown;
  write(chunk: Uint8Array): unknown;
  addTrailers(headers: OutHeaders): void;
  end(): unknown;
}

/** Response headers or trailers as Node takes them (lower-case names). */
type OutHeaders = Record<string, string | string[]>;

/** A gRPC success's trailers, and a Connect answer's (none): never changed, shared by every call. */
const GRPC_OK_TRAILER: Readonly<OutHeaders> = Object.freeze({ "grpc-status": "0" });
const NO_TRAILER: Readonly<OutHeaders> = Object.freeze({});

/** fetch Headers as Node's outgoing headers, as connect-node converts them (sorted, lower case). */
function nodeHeaders(header: Headers): OutHeaders {
  const o: OutHeaders = {};
  header.forEach((value, key) => {
    const existing = o[key];
    if (existing === undefined) o[key] = value;
    else if (Array.isArray(existing)) existing.push(value);
    else o[key] = [existing, value];
  });
  return o;
}

/** Node's headers as fetch Headers, as connect-node builds them (pseudo-headers left out). */
function webHeaders(nodeHeaders: Readonly<Record<string, string | string[] | undefined>>): Headers {
  const header = new Headers();
  fill(header, nodeHeaders);
  return header;
}

function fill(header: Headers, nodeHeaders: Readonly<Record<string, string | string[] | undefined>>): void {
  for (const key in nodeHeaders) {
    if (key.charCodeAt(0) === 58 /* ":" */) continue;
    const v = nodeHeaders[key];
    if (v === undefined) continue;
    if (typeof v === "string") header.append(key, v);
    else for (const e of v) header.append(key, e);
  }
}

/**
 * A call's request headers: fetch Headers filled from Node's header object
 * only when something other than get() or has() asks (few do: the
 * interceptors and handlers read a header or two), since filling them costs
 * about as much as the rest of a call's headers work. get() and has() read
 * Node's object as Headers would: names are case-insensitive, repeated
 * values joined with ", " (set-cookie aside, which a request does not
 * carry); pseudo-headers are not headers, and an invalid name throws.
 */
class NodeRequestHeaders extends Headers {
  #node: Readonly<Record<string, string | string[] | undefined>> | undefined;
  constructor(node: Readonly<Record<string, string | string[] | undefined>>) {
    super();
    this.#node = node;
  }

  // Headers' type declares its methods as properties, so they go on the prototype here.
  static {
    const base = Headers.prototype as unknown as Record<PropertyKey, (...args: unknown[]) => unknown>;
    const proto = NodeRequestHeaders.prototype as unknown as Record<PropertyKey, unknown>;
    proto.get = function (this: NodeRequestHeaders, name: string): string | null {
      const v = this.#node?.[name.toLowerCase()];
      // A miss (or a pseudo-header's name) asks the Headers, empty until filled: null, or the
      // TypeError they throw for a name that is not one.
      if (v === undefined || name.charCodeAt(0) === 58 /* ":" */) return base.get?.call(this, name) as string | null;
      return typeof v === "string" ? v : v.join(", ");
    };
    proto.has = function (this: NodeRequestHeaders, name: string): boolean {
      const v = this.#node?.[name.toLowerCase()];
      if (v === undefined || name.charCodeAt(0) === 58 /* ":" */) return base.has?.call(this, name) as boolean;
      return true;
    };
    // Everything else fills the Headers first; from then on they answer.
    for (const name of [
      "append",
      "set",
      "delete",
      "getSetCookie",
      "forEach",
      "entries",
      "keys",
      "values",
      Symbol.iterator,
    ] as const) {
      const method = base[name] as (...args: unknown[]) => unknown;
      proto[name] = function (this: NodeRequestHeaders, ...args: unknown[]): unknown {
        const node = this.#node;
        if (node !== undefined) {
          this.#node = undefined;
          fill(this, node);
        }
        return method.apply(this, args);
      };
    }
  }
}

function headerValue(v: string | string[] | undefined): string | null {
  if (v === undefined) return null;
  return typeof v === "string" ? v : v.join(", ");
}

async function* once(body: Uint8Array): AsyncIterable<Uint8Array> {
  yield body;
}
