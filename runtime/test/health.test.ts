import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { connectNodeAdapter, createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { Health as HealthService } from "@customer-platform/gen/grpc/health/v1/health_pb.js";
import * as grpc from "@grpc/grpc-js";
import { service as grpcHealthDefinition } from "grpc-health-check";
import { pino } from "pino";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { adminUrl, connectSql } from "../../test/support/postgres.js";
import { sleep } from "../../test/support/timing.js";
import {
  createHealth,
  type Health,
  healthHttpHandler,
  registerHealth,
  ServingStatus,
  watchReadiness,
} from "../src/health.js";
import { type HttpServer, listen } from "../src/http-server.js";

const { SERVING, NOT_SERVING, SERVICE_UNKNOWN } = ServingStatus;
const SERVICE = "customer.v1.CustomerService";

/** Resolves once `service` has `status`. */
function statusOf(health: Health, service: string, status: ServingStatus): Promise<void> {
  return new Promise((resolve) => {
    if (health.get(service) === status) return resolve();
    const unsubscribe = health.subscribe(() => {
      if (health.get(service) !== status) return;
      unsubscribe();
      resolve();
    });
  });
}

let health: Health;
let server: HttpServer;
/** Watch calls the server is running now. */
let watchers = 0;

beforeAll(async () => {
  health = createHealth({ "": SERVING, [SERVICE]: SERVING });
  const subscribe = health.subscribe;
  health.subscribe = (listener) => {
    watchers++;
    const unsubscribe = subscribe(listener);
    return () => {
      watchers--;
      unsubscribe();
    };
  };
  server = await listen({
    host: "127.0.0.1",
    port: 0,
    logger: pino({ level: "silent" }),
    handler: connectNodeAdapter({
      routes: (router) => registerHealth(router, health),
      fallback: healthHttpHandler(health),
    }),
  });
});
afterAll(async () => {
  await server.close({ graceMs: 1_000 });
});

describe("grpc.health.v1.Health", () => {
  it("answers Check over Connect (HTTP/1.1 and HTTP/2) and gRPC, NOT_FOUND for an unknown service", async () => {
    health.set(SERVICE, NOT_SERVING);
    for (const transport of [
      createConnectTransport({ baseUrl: server.url, httpVersion: "1.1" }),
      createConnectTransport({ baseUrl: server.url, httpVersion: "2" }),
      createGrpcTransport({ baseUrl: server.url }),
    ]) {
      const client = createClient(HealthService, transport);
      expect((await client.check({ service: "" })).status).toBe(SERVING);
      expect((await client.check({ service: SERVICE })).status).toBe(NOT_SERVING);
      await expect(client.check({ service: "nope.v1.Nope" })).rejects.toMatchObject({
        code: Code.NotFound,
        rawMessage: "unknown service",
      });
    }
    health.set(SERVICE, SERVING);
  });

  it("answers List with every status", async () => {
    const client = createClient(HealthService, createGrpcTransport({ baseUrl: server.url }));
    const { statuses } = await client.list({});
    expect(Object.fromEntries(Object.entries(statuses).map(([name, s]) => [name, s.status]))).toEqual({
      "": SERVING,
      [SERVICE]: SERVING,
    });
  });

  it("streams Watch: the current status at once, then each change, SERVICE_UNKNOWN until known", async () => {
    const client = createClient(HealthService, createGrpcTransport({ baseUrl: server.url }));
    const abort = new AbortController();
    const stream = client.watch({ service: "later.v1.Later" }, { signal: abort.signal })[Symbol.asyncIterator]();
    expect((await stream.next()).value?.status).toBe(SERVICE_UNKNOWN);
    health.set("later.v1.Later", SERVING);
    expect((await stream.next()).value?.status).toBe(SERVING);
    health.set("later.v1.Later", SERVING); // no change, no message
    health.set("unrelated", NOT_SERVING);
    health.set("later.v1.Later", NOT_SERVING);
    expect((await stream.next()).value?.status).toBe(NOT_SERVING);
    expect(watchers).toBe(1);

    abort.abort();
    await expect(stream.next()).rejects.toThrow(new ConnectError("This operation was aborted", Code.Canceled));
    await vi.waitFor(() => expect(watchers).toBe(0));
  });

  it("serves a @grpc/grpc-js client (grpc-health-check's definition)", async () => {
    const Client = grpc.makeGenericClientConstructor(grpcHealthDefinition, "Health");
    const client = new Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    try {
      const check = (service: string) =>
        new Promise<unknown>((resolve, reject) =>
          client.check({ service }, (err: grpc.ServiceError | null, res: unknown) =>
            err ? reject(err) : resolve(res),
          ),
        );
      expect(await check(SERVICE)).toEqual({ status: "SERVING" });
      await expect(check("nope.v1.Nope")).rejects.toMatchObject({
        code: grpc.status.NOT_FOUND,
        details: "unknown service",
      });

      const call = client.watch({ service: SERVICE });
      const received: unknown[] = [];
      const changed = new Promise<void>((resolve) =>
        call.on("data", (res: unknown) => {
          received.push(res);
          if (received.length === 1) health.set(SERVICE, NOT_SERVING);
          if (received.length === 2) resolve();
        }),
      );
      call.on("error", () => {});
      await changed;
      call.cancel();
      expect(received).toEqual([{ status: "SERVING" }, { status: "NOT_SERVING" }]);
      await vi.waitFor(() => expect(watchers).toBe(0));
    } finally {
      health.set(SERVICE, SERVING);
      client.close();
    }
  });
});

describe("healthHttpHandler", () => {
  it("answers /healthz while alive and /readyz by the server status", async () => {
    const healthz = await fetch(`${server.url}/healthz`);
    expect([healthz.status, await healthz.text()]).toEqual([200, "ok\n"]);
    const ready = await fetch(`${server.url}/readyz`);
    expect([ready.status, await ready.json()]).toEqual([200, { status: "SERVING" }]);

    health.set("", NOT_SERVING);
    try {
      const notReady = await fetch(`${server.url}/readyz`);
      expect([notReady.status, await notReady.json()]).toEqual([503, { status: "NOT_SERVING" }]);
      expect((await fetch(`${server.url}/healthz`)).status).toBe(200);
    } finally {
      health.set("", SERVING);
    }

    expect((await fetch(`${server.url}/readyz`, { method: "POST" })).status).toBe(405);
    const missing = await fetch(`${server.url}/nope`);
    expect([missing.status, await missing.text()]).toEqual([404, "not found\n"]);
  });
});

describe("createHealth", () => {
  it("setAll changes every service; shutdown pins NOT_SERVING and ends Watch calls", async () => {
    const local = createHealth({ "": SERVING, a: SERVING });
    local.setAll(NOT_SERVING);
    expect(local.statuses()).toEqual(
      new Map([
        ["", NOT_SERVING],
        ["a", NOT_SERVING],
      ]),
    );
    local.setAll(SERVING);

    const localServer = await listen({
      host: "127.0.0.1",
      port: 0,
      logger: pino({ level: "silent" }),
      handler: connectNodeAdapter({ routes: (router) => registerHealth(router, local) }),
    });
    try {
      const client = createClient(HealthService, createGrpcTransport({ baseUrl: localServer.url }));
      const received: ServingStatus[] = [];
      for await (const res of client.watch({ service: "a" })) {
        received.push(res.status);
        if (received.length === 1) local.shutdown();
      }
      expect(received).toEqual([SERVING, NOT_SERVING]);
      local.set("a", SERVING);
      local.setAll(SERVING);
      expect(local.statuses()).toEqual(
        new Map([
          ["", NOT_SERVING],
          ["a", NOT_SERVING],
        ]),
      );
      expect(local.isShutdown()).toBe(true);
    } finally {
      await localServer.close({ graceMs: 1_000 });
    }
  });
});

describe("watchReadiness", () => {
  let sql: postgres.Sql;
  let unreachable: postgres.Sql;
  beforeAll(() => {
    sql = connectSql(adminUrl, 1);
    unreachable = postgres("postgres://postgres@127.0.0.1:1/postgres", { max: 1, connect_timeout: 1 });
  });
  afterAll(async () => {
    await Promise.all([sql.end(), unreachable.end()]);
  });

  it("follows a database probe: SERVING while `select 1` works, NOT_SERVING when it fails", async () => {
    const local = createHealth({ "": NOT_SERVING });
    let db = sql;
    const stop = watchReadiness(local, () => db`select 1`, { intervalMs: 10, timeoutMs: 2_000 });
    try {
      await statusOf(local, "", SERVING);
      db = unreachable;
      await statusOf(local, "", NOT_SERVING);
      db = sql;
      await statusOf(local, "", SERVING);
    } finally {
      stop();
    }
  });

  it("counts false, a throw and a timeout as not ready, drives the given service, and stops", async () => {
    const local = createHealth({ "": SERVING, a: SERVING });
    let answer: () => Promise<unknown> = async () => false;
    let calls = 0;
    const stop = watchReadiness(
      local,
      () => {
        calls++;
        return answer();
      },
      { intervalMs: 5, timeoutMs: 50, service: "a" },
    );
    await statusOf(local, "a", NOT_SERVING);
    answer = async () => undefined;
    await statusOf(local, "a", SERVING);
    answer = () => {
      throw new Error("down");
    };
    await statusOf(local, "a", NOT_SERVING);
    answer = async () => "fine";
    await statusOf(local, "a", SERVING);
    answer = () => new Promise(() => {});
    await statusOf(local, "a", NOT_SERVING);
    expect(local.get("")).toBe(SERVING);

    stop();
    const after = calls;
    await sleep(100);
    expect(calls).toBe(after);
  });
});
