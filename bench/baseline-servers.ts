/**
 * The transport rows' baselines, one server per process (so /proc shows its
 * CPU alone), started as `bench/baseline-servers.ts <kind>` with BENCH_PORT:
 *   h2-echo         raw `node:http2` (h2c): every request answered with a fixed unary gRPC
 *                   response (200, application/grpc, one data frame, trailers grpc-status 0)
 *   h1-echo         raw `node:http` (HTTP/1.1 keep-alive): a fixed JSON body
 *   connect-health  a bare `connectNodeAdapter` on `node:http2` (h2c) serving only
 *                   `grpc.health.v1.Health/Check` (SERVING): the framework's cost alone
 * Each reads the request body to its end before answering, as a server must.
 * The bench preloads bench/probe.mjs (CPU profiles) and waits for the port.
 */
import { createServer as createHttpServer, type Server } from "node:http";
import { createServer as createHttp2Server, constants as h2 } from "node:http2";
import type { ConnectRouter, ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  HealthCheckResponse_ServingStatus,
  Health as HealthService,
} from "@customer-platform/gen/grpc/health/v1/health_pb.js";

/** HealthCheckResponse { status: SERVING } as a gRPC message frame: what Health/Check answers. */
export const GRPC_SERVING_FRAME = Buffer.from([0, 0, 0, 0, 2, 0x08, 0x01]);

/** A GetCustomer answer in Connect JSON, about the size of the real one. */
export const JSON_ECHO_BODY = Buffer.from(
  JSON.stringify({
    customer: {
      customerId: "00000000-0000-4000-8000-000000000000",
      email: "ada@bench.example.com",
      givenName: "Ada",
      familyName: "Lovelace",
      phoneNumber: "+4915112345678",
      address: {
        addressLines: ["Unter den Linden 1"],
        locality: "Berlin",
        region: "BE",
        postalCode: "10117",
        countryCode: "DE",
      },
      version: "1",
      createTime: "2026-01-01T00:00:00Z",
      updateTime: "2026-01-01T00:00:00Z",
    },
  }),
);

export type BaselineKind = "h2-echo" | "h1-echo" | "connect-health";

function h2Echo() {
  const server = createHttp2Server();
  server.on("stream", (stream) => {
    stream.on("error", () => {});
    stream.resume();
    stream.on("end", () => {
      if (stream.destroyed) return;
      stream.respond({ [h2.HTTP2_HEADER_STATUS]: 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(GRPC_SERVING_FRAME);
    });
  });
  return server;
}

function h1Echo(): Server {
  const server = createHttpServer((req, res) => {
    req.resume();
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json", "content-length": JSON_ECHO_BODY.length });
      res.end(JSON_ECHO_BODY);
    });
  });
  server.keepAliveTimeout = 60_000;
  return server;
}

function connectHealth() {
  const health: Pick<ServiceImpl<typeof HealthService>, "check"> = {
    check: () => ({ status: HealthCheckResponse_ServingStatus.SERVING }),
  };
  const routes = (router: ConnectRouter) => router.service(HealthService, health);
  return createHttp2Server(connectNodeAdapter({ routes }));
}

const kind = process.argv[2] as BaselineKind;
const servers = { "h2-echo": h2Echo, "h1-echo": h1Echo, "connect-health": connectHealth } as const;
const make = servers[kind];
if (!make) throw new Error(`bench/baseline-servers.ts: unknown kind "${kind}" (${Object.keys(servers).join(", ")})`);
const server = make();
server.listen(Number(process.env.BENCH_PORT), "127.0.0.1");
process.on("SIGTERM", () => {
  server.close();
  process.exit(0);
});
