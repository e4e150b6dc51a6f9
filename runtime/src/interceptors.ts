/**
 * Interceptors every service runs: a request log line per call, database
 * outages answered UNAVAILABLE, deadlines, and protovalidate on every request
 * message. And the client address seam: the socket's peer address as a
 * context value (`peerContextValues`), and the client address behind
 * trusted proxies (`clientAddress`).
 */
import { BlockList, isIP } from "node:net";
import {
  Code,
  ConnectError,
  type ContextValues,
  createContextKey,
  createContextValues,
  type HandlerContext,
  type Interceptor,
} from "@connectrpc/connect";
import { createValidateInterceptor } from "@connectrpc/validate";
import { isConnectionError, isUnstorableTextError } from "./db.js";
import { type Logger, rpcLineWriter } from "./logger.js";

/**
 * Logs one line per call: procedure, protocol, code, duration. Never the
 * message or headers (they may hold passwords and tokens). Unexpected
 * errors are logged as loggableError (errors.ts) makes them: SQLSTATE,
 * constraint, table, statement, never its parameters or PostgreSQL's DETAIL;
 * the caller sees only `internal error` (or `database unavailable`).
 */
export function createLoggingInterceptor(logger: Logger): Interceptor {
  // The rpc line's keys are these, never a secret's: it skips pino's redaction (a walk of every
  // redacted path per line). Errors, which may carry anything, go through the redacting logger.
  const rpcLog = logger.child({}, { redact: [] });
  // The OK line, as pino would write it, without its serialisation (logger.ts).
  const okLine = rpcLineWriter(logger);
  const procedures = new WeakMap<object, string>();
  const procedureOf = (method: { parent: { typeName: string }; name: string }) => {
    let procedure = procedures.get(method);
    if (procedure === undefined) {
      procedure = `${method.parent.typeName}/${method.name}`;
      procedures.set(method, procedure);
    }
    return procedure;
  };
  return (next) => async (req) => {
    const start = performance.now();
    try {
      const res = await next(req);
      if (rpcLog.isLevelEnabled("info")) {
        const ms = round(performance.now() - start);
        const procedure = procedureOf(req.method);
        const contentType = req.header.get("content-type");
        if (okLine) okLine(procedure, contentType, ms);
        else rpcLog.info({ procedure, contentType, code: "ok", ms }, "rpc");
      }
      return res;
    } catch (err) {
      const ms = round(performance.now() - start);
      const procedure = procedureOf(req.method);
      const contentType = req.header.get("content-type");
      // An INTERNAL or UNKNOWN ConnectError (e.g. ConnectError.from a driver error) is answered like any
      // unexpected error: its message may be the driver's, which holds values.
      if (err instanceof ConnectError && err.code !== Code.Internal && err.code !== Code.Unknown) {
        rpcLog.info({ procedure, contentType, code: Code[err.code], ms, error: err.rawMessage }, "rpc");
        throw err;
      }
      if (isConnectionError(err)) {
        logger.warn({ procedure, contentType, code: "Unavailable", ms, err }, "rpc: database unavailable");
        throw new ConnectError("database unavailable", Code.Unavailable);
      }
      if (isUnstorableTextError(err)) {
        rpcLog.info({ procedure, contentType, code: "InvalidArgument", ms }, "rpc");
        throw new ConnectError("strings must not contain NUL (U+0000) characters", Code.InvalidArgument);
      }
      logger.error({ procedure, contentType, code: "Internal", ms, err }, "rpc: internal error");
      throw new ConnectError("internal error", Code.Internal);
    }
  };
}

/**
 * Answers DEADLINE_EXCEEDED as soon as the caller's deadline (`grpc-timeout`,
 * `connect-timeout-ms`) passes. connect-es only aborts the handler's signal;
 * a handler busy with work that ignores it (e.g. waiting for a row lock)
 * would otherwise answer late, with a success the caller no longer waits for.
 * The work itself is not undone: as gRPC defines, a deadline-exceeded call
 * may still have taken effect. A call without a deadline header has no
 * deadline (the servers set no maxTimeoutMs): it is passed on without
 * touching its signal, which the fast path then never has to make.
 */
export function createDeadlineInterceptor(): Interceptor {
  return (next) => (req) => {
    if (!req.header.has("grpc-timeout") && !req.header.has("connect-timeout-ms")) return next(req);
    return new Promise((resolve, reject) => {
      const { signal } = req;
      const onAbort = () => {
        const reason: unknown = signal.reason;
        if (reason instanceof ConnectError && reason.code === Code.DeadlineExceeded) reject(reason);
      };
      if (signal.aborted) onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      next(req).then(
        (res) => {
          signal.removeEventListener("abort", onAbort);
          resolve(res);
        },
        (err: unknown) => {
          signal.removeEventListener("abort", onAbort);
          reject(err);
        },
      );
    });
  };
}

/** INVALID_ARGUMENT with `buf.validate.Violations` details for any request that breaks its contract's rules. */
export function createValidationInterceptor(): Interceptor {
  return createValidateInterceptor();
}

/** The TCP peer address of the call (the socket's remote address), set by `peerContextValues`; "" when unknown. */
export const kPeerAddress = createContextKey<string>("", { description: "peer address" });

/** Context values of a request: its socket's peer address. Passed as connectNodeAdapter's `contextValues`. */
export function peerContextValues(req: { socket: { remoteAddress?: string | undefined } | null }): ContextValues {
  return createContextValues().set(kPeerAddress, plainAddress(req.socket?.remoteAddress ?? ""));
}

/**
 * Proxies whose `X-Forwarded-For` is believed: addresses and CIDR ranges
 * ("10.0.0.0/8", "::1", "fd00::/8"). Throws on an entry that is neither.
 */
export function parseTrustedProxies(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [address = "", prefix, extra] = entry.split("/");
    const family = isIP(address);
    const bits = prefix === undefined ? undefined : Number(prefix);
    const max = family === 4 ? 32 : 128;
    if (
      family === 0 ||
      extra !== undefined ||
      (bits !== undefined && !(Number.isInteger(bits) && bits >= 0 && bits <= max))
    ) {
      throw new Error(`"${entry}" is not an IP address or CIDR range`);
    }
    const type = family === 4 ? "ipv4" : "ipv6";
    if (bits === undefined) list.addAddress(address, type);
    else list.addSubnet(address, bits, type);
  }
  return list;
}

/**
 * The client's address: the peer, or, when the peer is a trusted proxy, the
 * nearest address in `X-Forwarded-For` (read right to left) that is not a
 * trusted proxy. Without trusted proxies the header is ignored, so a client
 * cannot choose its own address. "" when the transport has no peer (e.g. an
 * in-memory router transport).
 */
export function clientAddress(ctx: Pick<HandlerContext, "values" | "requestHeader">, trusted?: BlockList): string {
  let address = ctx.values.get(kPeerAddress);
  if (!trusted || !isTrusted(trusted, address)) return address;
  const hops = (ctx.requestHeader.get("x-forwarded-for") ?? "")
    .split(",")
    .map((hop) => plainAddress(hop.trim()))
    .reverse();
  for (const hop of hops) {
    if (isIP(hop) === 0) break; // A malformed entry: believe nothing further left of it.
    address = hop;
    if (!isTrusted(trusted, hop)) break;
  }
  return address;
}

/**
 * The part of an address a limit should count: IPv6 by /64 (one subscriber's
 * usual allocation, which an attacker can walk through freely), IPv4 whole.
 */
export function addressLimitKey(address: string): string {
  if (isIP(address) !== 6) return address;
  const [head = "", tail = ""] = address.split("::");
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const groups = address.includes("::")
    ? [...left, ...Array<string>(8 - left.length - right.length).fill("0"), ...right]
    : left;
  return `${groups
    .slice(0, 4)
    .map((g) => Number.parseInt(g, 16).toString(16))
    .join(":")}::/64`;
}

function isTrusted(list: BlockList, address: string): boolean {
  const family = isIP(address);
  return family !== 0 && list.check(address, family === 4 ? "ipv4" : "ipv6");
}

// "::ffff:192.0.2.1" (IPv4 on a dual-stack socket) → "192.0.2.1"; "[::1]" → "::1".
function plainAddress(address: string): string {
  // The usual case (a plain address) without a regular expression: this runs for every request.
  if (!address.startsWith("[") && !address.startsWith("::")) return address;
  const a = address.replace(/^\[(.*)\]$/, "$1");
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a);
  return mapped?.[1] ?? a;
}

const round = (ms: number) => Math.round(ms * 100) / 100;
