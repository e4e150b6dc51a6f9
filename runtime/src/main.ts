/**
 * The entry point both services share: environment → configuration →
 * server, one clear line for a bad configuration or a start-up failure the
 * operator can fix, and a graceful stop on SIGTERM/SIGINT (a second signal
 * exits at once).
 */
import { ConfigError, type Env } from "./config.js";
import { describeError } from "./errors.js";
import { EXIT_CONFIG } from "./exit-codes.js";
import type { Logger } from "./logger.js";

// EX_CONFIG (sysexits.h), with the other exit codes in exit-codes.ts.
export { EXIT_CONFIG };

/**
 * A failure to start that the operator can fix (database unreachable,
 * missing, refused credentials, …): runMain prints only its message, one
 * line that names the variable and what to do, and exits with exitCode
 * instead of printing a stack trace.
 */
export class StartupError extends Error {
  override name = "StartupError";
  /** The process exit code runMain uses (documented per error in the README). */
  readonly exitCode: number;

  constructor(message: string, exitCode: number, options?: ErrorOptions) {
    super(message, options);
    this.exitCode = exitCode;
  }
}

/** What runMain runs: a service host, or anything with its lifecycle. */
export interface Startable {
  readonly logger: Logger;
  start(): Promise<void>;
  /** Graceful; also ends a start() still under way. */
  stop(): Promise<void>;
}

/**
 * The exit code and the one line (no stack trace) for a failure the operator
 * can fix, or undefined for anything else. For every process entry point
 * (services, CLI, `npm start`), so each says the same about the same failure.
 */
export function describeStartFailure(err: unknown): { exitCode: number; message: string } | undefined {
  if (err instanceof ConfigError) return { exitCode: EXIT_CONFIG, message: `configuration error: ${err.message}` };
  if (err instanceof StartupError) return { exitCode: err.exitCode, message: err.message };
  return undefined;
}

/**
 * Runs a service until a signal stops it: SIGTERM or SIGINT stops it
 * gracefully and exits 0 (1 if stopping failed), also while it is still
 * starting. An unexpected failure to start, and an uncaught exception or
 * rejection, print one secret-free description (errors.ts describeError)
 * and exit 1. The only place that calls process.exit.
 */
export function runMain<C>(
  name: string,
  envToConfig: (env: Env) => C,
  createServer: (config: C) => Promise<Startable> | Startable,
): void {
  let stopping = false;
  // Node's own report of an uncaught error would print it whole (util.inspect): see above.
  process.on("uncaughtException", (err, origin) => {
    console.error(
      `${name}: ${origin === "unhandledRejection" ? "unhandled rejection" : "uncaught exception"}: ${describeError(err)}`,
    );
    process.exit(1);
  });
  const run = async () => {
    const server = await createServer(envToConfig(process.env));
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      if (++signals > 1) {
        server.logger.warn({ signal }, "second signal: exiting now");
        process.exit(1);
      }
      stopping = true;
      server.logger.info({ signal }, "shutting down");
      server.stop().then(
        () => process.exit(0),
        (err: unknown) => {
          server.logger.error({ err }, "shutdown failed");
          process.exit(1);
        },
      );
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
    await server.start();
  };
  run().catch((err: unknown) => {
    // A start ended by a signal: the stop under way exits.
    if (stopping) return;
    const known = describeStartFailure(err);
    if (known) {
      console.error(`${name}: ${known.message}`);
      process.exit(known.exitCode);
    }
    // Not console.error(err): util.inspect prints every property, a driver error's parameters and DETAIL too.
    console.error(`${name}: failed to start: ${describeError(err)}`);
    process.exit(1);
  });
}
