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
      base: { service: opts.name },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.destination,
  );
}

/** An error as a log field: its message (no stack); undefined stays undefined. */
export function errMessage(err: unknown): string | undefined {
  if (err === undefined) return undefined;
  return err instanceof Error ? err.message : String(err);
}
