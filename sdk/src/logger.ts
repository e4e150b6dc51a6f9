/**
 * The logging the SDK's background work needs: a pino logger fits as is,
 * so the SDK depends on no logging library.
 */

/** A structured logger, pino-compatible: fields first, then the message. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  /** A logger that adds bindings to every line. */
  child(bindings: Record<string, unknown>): Logger;
}

/** An error as a log field: its message (no stack); undefined stays undefined. */
export function errMessage(err: unknown): string | undefined {
  if (err === undefined) return undefined;
  return err instanceof Error ? err.message : String(err);
}
