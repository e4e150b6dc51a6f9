/**
 * pino JSON logs. Secrets never reach a log line: known secret fields are
 * redacted wherever they appear, request bodies are never logged, and an
 * error is logged as errors.ts's loggableError makes it (SQLSTATE,
 * constraint, table, statement without its parameters; never a driver's
 * message or PostgreSQL's DETAIL), whatever key it is logged under.
 */
import { writeSync } from "node:fs";
import { pino } from "pino";
import type { LogLevel } from "./config.js";
import { errMessage, loggableError } from "./errors.js";

export { errMessage };

export type Logger = pino.Logger;

const SECRET_KEYS = [
  "password",
  "current_password",
  "new_password",
  "currentPassword",
  "newPassword",
  "token",
  "access_token",
  "refresh_token",
  "accessToken",
  "refreshToken",
  "client_secret",
  "clientSecret",
  "authorization",
  "hash",
  "passwordHash",
  "secret",
];

/** Loggers made by createLogger: their lines' shape is known (rpcLineWriter). */
const ours = new WeakSet<Logger>();

/** A logger for one service; `destination` defaults to stdout. */
export function createLogger(opts: { name: string; level: LogLevel; destination?: pino.DestinationStream }): Logger {
  const paths = SECRET_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`, `req.headers.${k}`]);
  const logger = pino(
    {
      name: opts.name,
      level: opts.level,
      redact: { paths, censor: "[redacted]" },
      serializers: { err: serializeErr },
      hooks: { logMethod },
      base: { service: opts.name },
      timestamp: isoTime,
    },
    opts.destination ?? stdoutDestination(),
  );
  ours.add(logger);
  return logger;
}

/**
 * Writes the info line of a call that answered OK, `{"level":30,"time":…,
 * <the logger's bindings>,"procedure":…,"contentType":…,"code":"ok","ms":…,
 * "msg":"rpc"}`, byte for byte what `logger.info({ procedure, contentType,
 * code: "ok", ms }, "rpc")` writes, to the same destination, without pino's
 * per-call serialisation (its object walk was ~3 % of a small call's CPU).
 * Only for a logger createLogger made (no mixin, formatters or redaction of
 * these keys: their shape is known); undefined for any other, which then logs
 * as usual. The caller checks the level.
 */
export function rpcLineWriter(
  logger: Logger,
): ((procedure: string, contentType: string | null, ms: number) => void) | undefined {
  if (!ours.has(logger)) return undefined;
  const internals = logger as unknown as Record<symbol, unknown>;
  const stream = internals[pino.symbols.streamSym] as { write(line: string): void } | undefined;
  const bindings = internals[pino.symbols.chindingsSym];
  const time = internals[pino.symbols.timeSym];
  if (!stream || typeof bindings !== "string" || typeof time !== "function") return undefined;
  const quoted = new Map<string, string>();
  const quote = (s: string) => {
    let q = quoted.get(s);
    if (q === undefined) {
      q = JSON.stringify(s);
      // Procedures and content types are few; anything else is not kept.
      if (quoted.size < 1_000) quoted.set(s, q);
    }
    return q;
  };
  return (procedure, contentType, ms) => {
    stream.write(
      `{"level":30${(time as () => string)()}${bindings},"procedure":${quote(procedure)},"contentType":${
        contentType === null ? "null" : quote(contentType)
      },"code":"ok","ms":${ms},"msg":"rpc"}\n`,
    );
  };
}

/**
 * pino's `isoTime` (`,"time":"2026-11-30T16:00:00.000Z"`), made once per
 * millisecond: `toISOString` was 2.7 % of a small call's CPU when each of
 * the ~17 lines of a busy millisecond made its own.
 */
let isoMs = Number.NaN;
let isoField = "";
export function isoTime(): string {
  const now = Date.now();
  if (now !== isoMs) {
    isoMs = now;
    isoField = `,"time":"${new Date(now).toISOString()}"`;
  }
  return isoField;
}

/**
 * stdout, buffered, one for every logger of the process (so their lines stay
 * in order): lines are written synchronously in chunks of 4 KiB, at the
 * latest 200 ms after they were logged, and on exit (a crash included; only
 * a SIGKILL loses the last 200 ms). Written one by one, as pino's default
 * destination does (an asynchronous write per line or few lines), the writes
 * cost a tenth of a small call's CPU; in 4 KiB chunks, a fortieth.
 */
let stdout: ChunkedWriter | undefined;
function stdoutDestination(): pino.DestinationStream {
  if (stdout === undefined) {
    const destination = new ChunkedWriter(1, 4096, 200);
    process.once("exit", () => destination.flushSync());
    stdout = destination;
  }
  return stdout;
}

/**
 * A file descriptor written synchronously in chunks: lines are kept as they
 * come and joined once per chunk. (pino's `destination({ sync, minLength })`
 * does the same, but measures its pending text's UTF-8 length on every line,
 * which flattens it: a 4 KiB chunk cost ~2 KiB of copying and garbage per
 * line, 8 % of a small call's allocations.) A chunk is written when it
 * reaches `chunkBytes` (counted in UTF-16 units, which is never more than its
 * bytes), `maxDelayMs` after its first line, or on `flushSync`. A full pipe
 * (EAGAIN) is waited for, as pino's destination waits; a descriptor that
 * cannot be written (the reader gone) loses its lines, and says so once on
 * stderr, rather than failing the calls that log.
 */
class ChunkedWriter {
  private lines: string[] = [];
  private length = 0;
  private timer: NodeJS.Timeout | undefined;
  private failed = false;

  constructor(
    private readonly fd: number,
    private readonly chunkBytes: number,
    private readonly maxDelayMs: number,
  ) {}

  write(line: string): boolean {
    this.lines.push(line);
    this.length += line.length;
    if (this.length >= this.chunkBytes) this.flushSync();
    else if (this.timer === undefined) {
      this.timer = setTimeout(() => this.flushSync(), this.maxDelayMs);
      this.timer.unref();
    }
    return true;
  }

  /** Writes what is pending, now. */
  flushSync(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.lines.length === 0) return;
    const text = this.lines.length === 1 ? (this.lines[0] as string) : this.lines.join("");
    this.lines = [];
    this.length = 0;
    try {
      writeFully(this.fd, text);
    } catch (err) {
      if (!this.failed) {
        this.failed = true;
        try {
          writeSync(2, `log lines lost: cannot write to fd ${this.fd}: ${errMessage(err)}\n`);
        } catch {
          // stderr is gone too: nothing to tell.
        }
      }
    }
  }

  /** pino's `logger.flush(cb)`. */
  flush(cb?: (err?: Error) => void): void {
    this.flushSync();
    cb?.();
  }
}

const EAGAIN_WAIT = new Int32Array(new SharedArrayBuffer(4));

/** Writes all of `text` to `fd`, waiting out a full non-blocking pipe; throws any other error. */
function writeFully(fd: number, text: string): void {
  let rest: Buffer | undefined;
  for (;;) {
    try {
      if (rest === undefined) {
        // A string is written without a Buffer of ours; only a partial write needs one.
        const written = writeSync(fd, text);
        const total = Buffer.byteLength(text);
        if (written >= total) return;
        rest = Buffer.from(text).subarray(written);
      } else {
        rest = rest.subarray(writeSync(fd, rest));
        if (rest.length === 0) return;
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "EAGAIN") throw err;
      Atomics.wait(EAGAIN_WAIT, 0, 0, 10);
    }
  }
}

/**
 * Every Error in a log call, under any top-level key (or as the call's only
 * argument), becomes its {@link loggableError} form before pino sees it; a
 * call without a message takes the error's safe one, not its raw text.
 */
function logMethod(this: pino.Logger, args: unknown[], method: pino.LogFn): void {
  const [first, ...rest] = args;
  if (isError(first)) {
    const err = loggableError(first);
    method.apply(this, [{ err }, ...(rest.length > 0 ? rest : [err.message])] as Parameters<pino.LogFn>);
    return;
  }
  if (first && typeof first === "object" && !Array.isArray(first)) {
    let safe: Record<string, unknown> | undefined;
    // for…in over own keys, not Object.entries: no array per key on every log call.
    for (const key in first) {
      if (!Object.hasOwn(first, key)) continue;
      const value = (first as Record<string, unknown>)[key];
      if (isError(value)) {
        safe ??= { ...first };
        safe[key] = loggableError(value);
      }
    }
    if (safe) {
      const message =
        rest.length > 0 ? rest : [(safe.err as { message?: unknown } | undefined)?.message].filter(Boolean);
      method.apply(this, [safe, ...message] as Parameters<pino.LogFn>);
      return;
    }
  }
  method.apply(this, args as Parameters<pino.LogFn>);
}

const isError = (value: unknown): value is Error => value instanceof Error;

/** pino's `err` serializer, for an error that reaches it another way (a child logger's bindings). */
function serializeErr(err: unknown): unknown {
  return isError(err) ? loggableError(err) : err;
}
