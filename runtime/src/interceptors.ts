/**
 * Interceptors every service runs: a request log line per call, database
 * outages answered UNAVAILABLE, deadlines, and protovalidate on every request
 * message.
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createValidateInterceptor } from "@connectrpc/validate";
import { isConnectionError, isUnstorableTextError } from "./db.js";
import type { Logger } from "./logger.js";

/**
 * Logs one line per call: procedure, protocol, code, duration. Never the
 * message or headers (they may hold passwords and tokens). Unexpected
 * errors keep their cause in the log; the caller sees only `internal error`.
 */
export function createLoggingInterceptor(logger: Logger): Interceptor {
  return (next) => async (req) => {
    const start = performance.now();
    const line = {
      procedure: `${req.method.parent.typeName}/${req.method.name}`,
      contentType: req.header.get("content-type"),
    };
    try {
      const res = await next(req);
      logger.info({ ...line, code: "ok", ms: round(performance.now() - start) }, "rpc");
      return res;
    } catch (err) {
      const ms = round(performance.now() - start);
      if (err instanceof ConnectError) {
        logger.info({ ...line, code: Code[err.code], ms, error: err.rawMessage }, "rpc");
        throw err;
      }
      if (isConnectionError(err)) {
        logger.warn({ ...line, code: "Unavailable", ms, err }, "rpc: database unavailable");
        throw new ConnectError("database unavailable", Code.Unavailable);
      }
      if (isUnstorableTextError(err)) {
        logger.info({ ...line, code: "InvalidArgument", ms }, "rpc");
        throw new ConnectError("strings must not contain NUL (U+0000) characters", Code.InvalidArgument);
      }
      logger.error({ ...line, code: "Internal", ms, err }, "rpc: internal error");
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
 * may still have taken effect.
 */
export function createDeadlineInterceptor(): Interceptor {
  return (next) => (req) =>
    new Promise((resolve, reject) => {
      const { signal } = req;
      const onAbort = () => {
        const reason: unknown = signal.reason;
        if (reason instanceof ConnectError && reason.code === Code.DeadlineExceeded) reject(reason);
      };
      if (signal.aborted) onAbort();
      signal.addEventListener("abort", onAbort, { once: true });
      next(req)
        .then(resolve, reject)
        .finally(() => signal.removeEventListener("abort", onAbort));
    });
}

/** INVALID_ARGUMENT with `buf.validate.Violations` details for any request that breaks its contract's rules. */
export function createValidationInterceptor(): Interceptor {
  return createValidateInterceptor();
}

const round = (ms: number) => Math.round(ms * 100) / 100;
