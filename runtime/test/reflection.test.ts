import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import {
  type FileDescriptorProto,
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
  file_google_protobuf_timestamp,
} from "@bufbuild/protobuf/wkt";
import { Code, type ConnectError, createClient, type ServiceImpl } from "@connectrpc/connect";
import { connectNodeAdapter, createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { Health } from "@customer-platform/gen/grpc/health/v1/health_pb.js";
import * as v1 from "@customer-platform/gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "@customer-platform/gen/grpc/reflection/v1alpha/reflection_pb.js";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConnectServer } from "../src/connect-server.js";
import { createHealth, registerHealth } from "../src/health.js";
import { type HttpServer, listen } from "../src/http-server.js";
import { registerReflection } from "../src/reflection.js";

const run = promisify(execFile);
const VALIDATE_AND_DEPS = [
  "buf/validate/validate.proto",
  "google/protobuf/descriptor.proto",
  "google/protobuf/duration.proto",
  "google/protobuf/field_mask.proto",
  "google/protobuf/timestamp.proto",
];

let server: HttpServer;
let sessions: Http2SessionManager;

beforeAll(async () => {
  server = await listen({
    host: "127.0.0.1",
    port: 0,
    logger: pino({ level: "silent" }),
    handler: connectNodeAdapter({
      routes: (router) => {
        registerReflection(router, [file_google_protobuf_timestamp]);
        registerHealth(router, createHealth());
        // Unimplemented, but served: its file pulls in buf/validate and several well-known types.
        router.service(CustomerService, {});
      },
    }),
  });
  sessions = new Http2SessionManager(server.url);
});
afterAll(async () => {
  sessions.abort();
  await server.close({ graceMs: 1_000 });
});

/** A request as both reflection versions accept it. */
type MessageRequest =
  | { case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices"; value: string }
  | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
  | { case: undefined };

/** Sends `requests` on one reflection stream; returns the responses in order. */
async function reflect(
  requests: MessageRequest[],
  service: typeof v1.ServerReflection | typeof v1alpha.ServerReflection = v1.ServerReflection,
) {
  const client = createClient(service, createGrpcTransport({ baseUrl: server.url, sessionManager: sessions }));
  async function* send() {
    for (const messageRequest of requests) yield { host: "h", messageRequest };
  }
  const responses = [];
  for await (const res of client.serverReflectionInfo(send())) responses.push(res);
  return responses;
}

/** The file names in a file descriptor response, or the error. */
function outcome(res: v1.ServerReflectionResponse | v1alpha.ServerReflectionResponse) {
  const m = res.messageResponse;
  if (m.case === "fileDescriptorResponse") {
    return m.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes).name);
  }
  if (m.case === "errorResponse") return { errorCode: m.value.errorCode, errorMessage: m.value.errorMessage };
  return m.value;
}

/** `files` ordered so that each comes after its imports; throws if an import is missing. */
function dependenciesFirst(files: FileDescriptorProto[]): FileDescriptorProto[] {
  const byName = new Map(files.map((f) => [f.name, f]));
  const ordered: FileDescriptorProto[] = [];
  const visit = (file: FileDescriptorProto) => {
    if (ordered.includes(file)) return;
    for (const name of file.dependency) {
      const dep = byName.get(name);
      if (dep === undefined) throw new Error(`${file.name} imports ${name}, which is missing`);
      visit(dep);
    }
    ordered.push(file);
  };
  files.forEach(visit);
  return ordered;
}

const SERVICES = [
  "customer.v1.CustomerService",
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
];

describe("gRPC server reflection", () => {
  it("lists the router's services and finds files by symbol, name and extension, each dependency once per stream", async () => {
    const responses = await reflect([
      { case: "listServices", value: "*" },
      { case: "fileContainingSymbol", value: "grpc.health.v1.HealthCheckResponse.SERVING" },
      { case: "fileContainingSymbol", value: "grpc.health.v1.Health.Watch" },
      { case: "fileContainingSymbol", value: "buf.validate.FieldRules" },
      { case: "fileByFilename", value: "google/protobuf/timestamp.proto" },
      { case: "fileContainingSymbol", value: "google.protobuf.Timestamp.seconds" },
      {
        case: "fileContainingExtension",
        value: { containingType: "google.protobuf.FieldOptions", extensionNumber: 1160 },
      },
      { case: "allExtensionNumbersOfType", value: "google.protobuf.FieldOptions" },
      { case: "fileContainingSymbol", value: "nope.v1.Nope" },
      { case: "fileByFilename", value: "nope.proto" },
      {
        case: "fileContainingExtension",
        value: { containingType: "google.protobuf.FieldOptions", extensionNumber: 9 },
      },
      { case: "allExtensionNumbersOfType", value: "nope.v1.Nope" },
    ]);
    expect(responses.map(outcome)).toEqual([
      create(v1.ListServiceResponseSchema, { service: SERVICES.map((name) => ({ name })) }),
      ["grpc/health/v1/health.proto"],
      ["grpc/health/v1/health.proto"],
      VALIDATE_AND_DEPS,
      ["google/protobuf/timestamp.proto"],
      ["google/protobuf/timestamp.proto"],
      ["buf/validate/validate.proto"],
      create(v1.ExtensionNumberResponseSchema, {
        baseTypeName: "google.protobuf.FieldOptions",
        extensionNumber: [1159, 1160],
      }),
      { errorCode: Code.NotFound, errorMessage: 'symbol "nope.v1.Nope" not found' },
      { errorCode: Code.NotFound, errorMessage: 'file "nope.proto" not found' },
      { errorCode: Code.NotFound, errorMessage: 'extension 9 of "google.protobuf.FieldOptions" not found' },
      { errorCode: Code.NotFound, errorMessage: 'type "nope.v1.Nope" not found' },
    ]);
    expect(responses[1]?.validHost).toBe("h");
    expect(responses[1]?.originalRequest?.messageRequest).toEqual({
      case: "fileContainingSymbol",
      value: "grpc.health.v1.HealthCheckResponse.SERVING",
    });
  });

  it("speaks v1alpha too, and a new stream sends the dependencies again", async () => {
    const [res] = await reflect(
      [{ case: "fileContainingSymbol", value: "customer.v1.CustomerService" }],
      v1alpha.ServerReflection,
    );
    if (res?.messageResponse.case !== "fileDescriptorResponse")
      throw new Error(`unexpected ${res?.messageResponse.case}`);
    const files = res.messageResponse.value.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
    expect(files[0]?.name).toBe("customer/v1/customer_service.proto");
    expect(files.map((f) => f.name)).toEqual(expect.arrayContaining(VALIDATE_AND_DEPS));
    // The answer is complete: it builds a registry on its own, as a client would.
    const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: dependenciesFirst(files) }));
    expect(registry.getService("customer.v1.CustomerService")?.methods.map((m) => m.name)).toEqual(
      CustomerService.methods.map((m) => m.name),
    );
  });

  it("rejects a request without a message_request", async () => {
    await expect(reflect([{ case: undefined }])).rejects.toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: "invalid message_request",
    });
  });
});

describe("buf curl", () => {
  const buf = async (...args: string[]) => (await run("npx", ["buf", "curl", ...args], { timeout: 20_000 })).stdout;

  it.each(["grpc-v1", "grpc-v1alpha"])(
    "lists methods and calls Health/Check through %s reflection",
    async (reflectProtocol) => {
      const common = [
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect",
        "--reflect-protocol",
        reflectProtocol,
      ];
      const methods = (await buf(...common, "--list-methods", server.url)).trim().split("\n").sort();
      const expected = [CustomerService, Health, v1.ServerReflection, v1alpha.ServerReflection]
        .flatMap((s) => s.methods.map((m) => `${s.typeName}/${m.name}`))
        .sort();
      expect(methods).toEqual(expected);

      const check = await buf(...common, "-d", '{"service": ""}', `${server.url}/grpc.health.v1.Health/Check`);
      expect(JSON.parse(check)).toEqual({ status: "SERVING" });
    },
  );
});

describe("reflection turned off", () => {
  it.each([
    [true, undefined],
    [false, Code.Unimplemented],
  ])(
    "with reflection %s, both reflection versions answer %s; the service is served either way",
    async (reflection, code) => {
      const started = await startConnectServer({
        host: "127.0.0.1",
        port: 0,
        logger: pino({ level: "silent" }),
        service: CustomerService,
        // Unimplemented methods: the test only needs the service registered.
        impl: {} as ServiceImpl<typeof CustomerService>,
        readMaxBytes: 64 * 1024,
        probe: async () => {},
        reflection,
      });
      try {
        const transport = createGrpcTransport({ baseUrl: started.url });
        for (const service of [v1.ServerReflection, v1alpha.ServerReflection]) {
          const client = createClient(service, transport);
          async function* send() {
            yield { host: "h", messageRequest: { case: "listServices" as const, value: "*" } };
          }
          const listed = (async () => {
            for await (const res of client.serverReflectionInfo(send())) return res.messageResponse.case;
            return undefined;
          })();
          if (code === undefined) await expect(listed).resolves.toBe("listServicesResponse");
          else await expect(listed).rejects.toMatchObject({ code } satisfies Partial<ConnectError>);
        }
        const health = createClient(Health, transport);
        await expect(health.check({ service: "customer.v1.CustomerService" })).resolves.toBeDefined();
      } finally {
        await started.close(1_000);
      }
    },
  );
});
