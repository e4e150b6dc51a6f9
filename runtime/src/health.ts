/**
 * Serving status per service, exposed as `grpc.health.v1.Health` and as the
 * plain HTTP probes `/healthz` and `/readyz`.
 */
import { Code, ConnectError, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import type { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  Health as HealthService,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "@customer-platform/gen/grpc/health/v1/health_pb.js";
import type { Logger } from "./logger.js";

export { ServingStatus };

/** A request listener for node:http and node:http2, as `connectNodeAdapter` returns. */
export type NodeHandlerFn = ReturnType<typeof connectNodeAdapter>;

/** Serving status per service name; "" is the whole server. */
export interface Health {
  /** The status of `service`, or undefined if it was never set. */
  get(service: string): ServingStatus | undefined;
  set(service: string, status: ServingStatus): void;
  /** Sets every known service. */
  setAll(status: ServingStatus): void;
  /** Marks every service NOT_SERVING for good: later `set` and `setAll` are ignored, Watch calls end. */
  shutdown(): void;
  isShutdown(): boolean;
  /** A snapshot of all statuses. */
  statuses(): Map<string, ServingStatus>;
  /** Calls `listener` after every change (and once more on shutdown); returns the function that unsubscribes it. */
  subscribe(listener: (service: string, status: ServingStatus) => void): () => void;
}

/** Starts with `initial`, by default `{ "": SERVING }` as grpc-go does. */
export function createHealth(initial: Readonly<Record<string, ServingStatus>> = { "": ServingStatus.SERVING }): Health {
  const statuses = new Map(Object.entries(initial));
  const listeners = new Set<(service: string, status: ServingStatus) => void>();
  let down = false;
  const update = (service: string, status: ServingStatus) => {
    if (statuses.get(service) === status) return;
    statuses.set(service, status);
    for (const listener of listeners) listener(service, status);
  };
  return {
    get: (service) => statuses.get(service),
    set(service, status) {
      if (!down) update(service, status);
    },
    setAll(status) {
      if (!down) for (const service of [...statuses.keys()]) update(service, status);
    },
    shutdown() {
      if (down) return;
      for (const service of [...statuses.keys()]) update(service, ServingStatus.NOT_SERVING);
      down = true;
      // Wakes every Watch call, even one on a service that was NOT_SERVING already, so it ends.
      for (const listener of listeners) listener("", ServingStatus.NOT_SERVING);
    },
    isShutdown: () => down,
    statuses: () => new Map(statuses),
    subscribe(listener) {
      listeners.add(listener);
      return () => {
        listeners.delete(listener);
      };
    },
  };
}

/** `grpc.health.v1.Health` over `health`. */
export function createHealthService(health: Health): ServiceImpl<typeof HealthService> {
  return {
    check({ service }) {
      const status = health.get(service);
      if (status === undefined) throw new ConnectError("unknown service", Code.NotFound);
      return { status };
    },
    async *watch({ service }, ctx) {
      let wake = () => {};
      const unsubscribe = health.subscribe(() => wake());
      const onAbort = () => wake();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        let last: ServingStatus | undefined;
        while (!ctx.signal.aborted) {
          // Armed before reading, so a change made while we are suspended in yield is not missed.
          const changed = new Promise<void>((resolve) => {
            wake = resolve;
          });
          const status = health.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
          if (status !== last) {
            last = status;
            yield { status };
          }
          // Ending the call lets a graceful close finish; the client retries and finds the server gone.
          if (health.isShutdown()) return;
          await changed;
        }
      } finally {
        unsubscribe();
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },
    list() {
      const statuses: Record<string, { status: ServingStatus }> = {};
      for (const [service, status] of health.statuses()) statuses[service] = { status };
      return { statuses };
    },
  };
}

/** Registers `grpc.health.v1.Health` (Check, Watch, List) on `router`. */
export function registerHealth(router: ConnectRouter, health: Health): ConnectRouter {
  return router.service(HealthService, createHealthService(health));
}

/**
 * Plain HTTP probes: `GET /healthz` (liveness: 200 "ok" while the process serves) and
 * `GET /readyz` (200 while "" is SERVING, else 503; JSON `{"status":"SERVING"}`).
 * Other paths go to `next`, 404 by default. Fits `connectNodeAdapter({ fallback })`.
 */
export function healthHttpHandler(health: Health, next?: NodeHandlerFn): NodeHandlerFn {
  return (req, res) => {
    const path = req.url?.split("?")[0];
    if (path !== "/healthz" && path !== "/readyz") {
      if (next) return next(req, res);
      res.writeHead(404, { "content-type": "text/plain; charset=utf-8" });
      res.end("not found\n");
      return;
    }
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" });
      res.end();
      return;
    }
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain; charset=utf-8", "cache-control": "no-store" });
      res.end("ok\n");
      return;
    }
    const status = health.get("") ?? ServingStatus.SERVICE_UNKNOWN;
    res.writeHead(status === ServingStatus.SERVING ? 200 : 503, {
      "content-type": "application/json",
      "cache-control": "no-store",
    });
    res.end(JSON.stringify({ status: ServingStatus[status] }));
  };
}

export interface ReadinessOptions {
  /** Pause between the end of one probe and the start of the next. */
  intervalMs: number;
  /**
   * Pause after a probe that answered `false` (not ready yet, e.g. still
   * catching up, and cheap to ask again), so readiness follows soon after;
   * default `intervalMs`. A probe that rejects waits `intervalMs`.
   */
  pendingIntervalMs?: number;
  /** A probe still running after this long counts as failed (default: `intervalMs`). */
  timeoutMs?: number;
  /** The service whose status the probe drives (default "": the whole server). */
  service?: string;
  logger?: Logger;
}

/**
 * Runs `probe` (e.g. ``() => sql`select 1` ``) now and then every `intervalMs`:
 * SERVING when it resolves (to anything but `false`), NOT_SERVING when it rejects,
 * returns `false` or times out. Returns the function that stops it.
 */
export function watchReadiness(health: Health, probe: () => Promise<unknown>, opts: ReadinessOptions): () => void {
  const service = opts.service ?? "";
  const timeoutMs = opts.timeoutMs ?? opts.intervalMs;
  let stopped = false;
  let next: NodeJS.Timeout | undefined;
  const run = async () => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`readiness probe timed out after ${timeoutMs} ms`)), timeoutMs);
    });
    let ok: boolean;
    let error: unknown;
    let pending = false;
    try {
      ok = (await Promise.race([Promise.resolve().then(probe), timeout])) !== false;
      pending = !ok;
    } catch (err) {
      ok = false;
      error = err;
    } finally {
      clearTimeout(timer);
    }
    if (stopped) return;
    const status = ok ? ServingStatus.SERVING : ServingStatus.NOT_SERVING;
    if (health.get(service) !== status && !health.isShutdown()) {
      // Not `service`: that key names the process on every log line (logger.ts).
      if (ok) opts.logger?.info({ healthService: service }, "ready");
      else opts.logger?.warn({ healthService: service, err: error }, "not ready");
    }
    health.set(service, status);
    next = setTimeout(run, pending ? (opts.pendingIntervalMs ?? opts.intervalMs) : opts.intervalMs).unref();
  };
  void run();
  return () => {
    stopped = true;
    clearTimeout(next);
  };
}
