/**
 * A service as a plain gRPC client sees it: @grpc/grpc-js with the contract
 * loaded at run time by @grpc/proto-loader (no generated code), the Bearer
 * token in metadata, and the rich error details read from
 * `grpc-status-details-bin`.
 */
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import {
  type Any,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
  file_google_protobuf_any,
} from "@bufbuild/protobuf/wkt";
import { type Code, ConnectError } from "@connectrpc/connect";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
// proto/ and third_party/proto hold our contract and buf/validate; google/protobuf/*.proto
// (imported by validate.proto) come from google-proto-files.
const GOOGLE_PROTOS = dirname(createRequire(import.meta.url).resolve("google-proto-files/package.json"));
const INCLUDE_DIRS = [join(ROOT, "proto"), join(ROOT, "third_party/proto"), GOOGLE_PROTOS];

type RawUnary = (
  req: unknown,
  metadata: grpc.Metadata,
  options: grpc.CallOptions,
  callback: (err: grpc.ServiceError | null, res?: unknown) => void,
) => void;

/** A unary method: request in, response out, failures as ConnectError whose cause is the ServiceError. */
export type Unary<Req, Res> = (req: Req, token?: string) => Promise<Res>;

export interface GrpcJsClient {
  /** What proto-loader made of the contract. */
  readonly definition: protoLoader.PackageDefinition;
  /** The method `name` (e.g. "GetCustomer") of the service. */
  unary<Req, Res>(name: string): Unary<Req, Res>;
  close(): void;
}

/**
 * Loads `file` (e.g. "customer/v1/customer_service.proto") with proto-loader
 * (keepCase, longs and enums as strings, defaults) and connects a client of
 * `service` (its full name) to 127.0.0.1:port, insecure.
 */
export async function loadGrpcJsClient(file: string, service: string, port: number): Promise<GrpcJsClient> {
  const definition = await protoLoader.load(file, {
    includeDirs: INCLUDE_DIRS,
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  // loadPackageDefinition nests constructors by package: walk the dotted name.
  const Constructor = service
    .split(".")
    .reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], grpc.loadPackageDefinition(definition));
  if (typeof Constructor !== "function") throw new Error(`${service} is not in ${file}`);
  return clientOf(definition, Constructor as grpc.ServiceClientConstructor, port);
}

function clientOf(
  definition: protoLoader.PackageDefinition,
  Constructor: grpc.ServiceClientConstructor,
  port: number,
): GrpcJsClient {
  const raw = new Constructor(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  return {
    definition,
    unary<Req, Res>(name: string): Unary<Req, Res> {
      // grpc-js names a client's methods after the rpc as written in the .proto file.
      const fn = (raw as unknown as Record<string, RawUnary>)[name];
      if (!fn) throw new Error(`no method ${name}`);
      return (req, token) =>
        new Promise<Res>((resolve, reject) => {
          const metadata = new grpc.Metadata();
          if (token) metadata.set("authorization", `Bearer ${token}`);
          fn.call(raw, req, metadata, { deadline: Date.now() + 10_000 }, (err, res) => {
            if (err)
              reject(new ConnectError(statusMessage(err), err.code as number as Code, undefined, undefined, err));
            else resolve(res as Res);
          });
        });
    },
    close: () => raw.close(),
  };
}

/**
 * The status message as sent. connect-es percent-encodes grpc-message with
 * encodeURIComponent, grpc-js decodes it with decodeURI, which leaves the
 * escapes of reserved characters ("," ":" "/" …) in place.
 */
export function statusMessage(err: grpc.ServiceError): string {
  try {
    return decodeURIComponent(err.details);
  } catch {
    return err.details;
  }
}

/** The ServiceError behind a call that must fail. */
export async function failure(call: Promise<unknown>): Promise<grpc.ServiceError> {
  const err = await call.then(
    () => {
      throw new Error("call succeeded");
    },
    (e: unknown) => e,
  );
  if (!(err instanceof ConnectError) || !err.cause) throw err;
  return err.cause as grpc.ServiceError;
}

/**
 * google.rpc.Status for protobuf-es, declared here: proto-loader's descriptors
 * cannot serve (protobufjs flattens files by package and writes relative type
 * names), and gen/ has no status.proto.
 */
const statusRegistry = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "google/rpc/status.proto",
    package: "google.rpc",
    dependency: ["google/protobuf/any.proto"],
    syntax: "proto3",
    messageType: [
      {
        name: "Status",
        field: [
          { name: "code", jsonName: "code", number: 1, type: FieldDescriptorProto_Type.INT32 },
          { name: "message", jsonName: "message", number: 2, type: FieldDescriptorProto_Type.STRING },
          {
            name: "details",
            jsonName: "details",
            number: 3,
            type: FieldDescriptorProto_Type.MESSAGE,
            label: FieldDescriptorProto_Label.REPEATED,
            typeName: ".google.protobuf.Any",
          },
        ],
      },
    ],
  }),
  (name) => (name === "google/protobuf/any.proto" ? file_google_protobuf_any : undefined),
);

/** The google.rpc.Status in the error's single `grpc-status-details-bin` trailer. */
export function richStatus(err: grpc.ServiceError): { code: number; message: string; details: Any[] } {
  const bins = err.metadata.get("grpc-status-details-bin");
  if (bins.length !== 1 || !(bins[0] instanceof Buffer)) {
    throw new Error(`expected one binary grpc-status-details-bin, got ${bins.length}`);
  }
  const schema = statusRegistry.getMessage("google.rpc.Status");
  if (!schema) throw new Error("google.rpc.Status missing");
  return fromBinary(schema, bins[0]) as unknown as { code: number; message: string; details: Any[] };
}
