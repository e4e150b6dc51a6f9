/**
 * pino JSON logs. Secrets never reach a log line: known secret fields are
 * redacted wherever they appear, and request bodies are never logged.
 */
import { pino } from "pino";
import type { LogLevel } from "./config.js";

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

/** A logger for one service; `destination` defaults to stdout. */
export function createLogger(opts: { name: string; level: LogLevel; destination?: pino.DestinationStream }): Logger {
  const paths = SECRET_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`, `req.headers.${k}`]);
  return pino(
    {
      name: opts.name,
      level: opts.level,
      redact: { paths, censor: "[redacted]" },
      serializers: { err: serializeErr },
      base: { service: opts.name },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination,
  );
}

/** An error as a log field: its message (no stack, no statement parameters); undefined stays undefined. */
export function errMessage(err: unknown): string | undefined {
  if (err === undefined) return undefined;
  return err instanceof Error ? withoutQueryParams(err.message, err) : String(err);
}

/** pino's error serializer, minus the statement parameters a failed query carries. */
function serializeErr(err: unknown): unknown {
  const out = pino.stdSerializers.err(err as Error);
  if (!(err instanceof Error)) return out;
  out.message = withoutQueryParams(out.message, err);
  out.stack = withoutQueryParams(out.stack, err);
  delete out.params;
  return out;
}

/**
 * text without the "\nparams: …" drizzle writes into the message of a failed
 * statement (DrizzleQueryError, also as the cause of another error): the
 * parameters are password hashes, token hashes and emails; the statement
 * text and the driver's own message are kept.
 */
function withoutQueryParams(text: string, err: Error): string {
  let e: unknown = err;
  for (let depth = 0; e instanceof Error && depth < 10; e = e.cause, depth++) {
    const params: unknown = (e as { params?: unknown }).params;
    if (Array.isArray(params)) text = text.replaceAll(`\nparams: ${params.join(",")}`, "");
  }
  return text;
}
