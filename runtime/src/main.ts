/**
 * The entry point both services share: environment → configuration →
 * server, a clear message for bad configuration, and a graceful stop on
 * SIGTERM/SIGINT (a second signal exits at once).
 */
import { ConfigError, type Env } from "./config.js";
import type { Logger } from "./logger.js";

interface Startable {
  readonly logger: Logger;
  start(): Promise<void>;
  stop(): Promise<void>;
}

/** Runs a service until a signal stops it. The only place that calls process.exit. */
export function runMain<C>(
  name: string,
  envToConfig: (env: Env) => C,
  createServer: (config: C) => Promise<Startable>,
): void {
  const run = async () => {
    let config: C;
    try {
      config = envToConfig(process.env);
    } catch (err) {
      if (err instanceof ConfigError) {
        console.error(`${name}: configuration error: ${err.message}`);
        process.exit(78); // EX_CONFIG
      }
      throw err;
    }
    const server = await createServer(config);
    let signals = 0;
    const onSignal = (signal: NodeJS.Signals) => {
      if (++signals > 1) {
        server.logger.warn({ signal }, "second signal: exiting now");
        process.exit(1);
      }
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
    console.error(`${name}: failed to start:`, err);
    process.exit(1);
  });
}
