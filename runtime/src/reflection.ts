/**
 * gRPC server reflection, v1 and v1alpha, so grpcurl and `buf curl` can call
 * the server without proto files.
 */
import {
  type DescEnum,
  type DescExtension,
  type DescFile,
  type DescMessage,
  type DescService,
  type FileRegistry,
  toBinary,
} from "@bufbuild/protobuf";
import {
  FileDescriptorProtoSchema,
  file_google_protobuf_any,
  file_google_protobuf_api,
  file_google_protobuf_descriptor,
  file_google_protobuf_duration,
  file_google_protobuf_empty,
  file_google_protobuf_field_mask,
  file_google_protobuf_source_context,
  file_google_protobuf_struct,
  file_google_protobuf_timestamp,
  file_google_protobuf_type,
  file_google_protobuf_wrappers,
} from "@bufbuild/protobuf/wkt";
import { file_buf_validate_validate } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import { ServerReflection as ServerReflectionV1 } from "@customer-platform/gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1alpha } from "@customer-platform/gen/grpc/reflection/v1alpha/reflection_pb.js";

/** What to expose besides the router's services: a registry, or files and services. */
export type ReflectionSource = FileRegistry | readonly (DescFile | DescService)[];

/** Files any client may ask for, whatever the services use. */
const ALWAYS = [
  file_google_protobuf_any,
  file_google_protobuf_api,
  file_google_protobuf_descriptor,
  file_google_protobuf_duration,
  file_google_protobuf_empty,
  file_google_protobuf_field_mask,
  file_google_protobuf_source_context,
  file_google_protobuf_struct,
  file_google_protobuf_timestamp,
  file_google_protobuf_type,
  file_google_protobuf_wrappers,
  file_buf_validate_validate,
];

/** The request and response shapes, identical in v1 and v1alpha. */
type MessageRequest =
  | { case: "fileByFilename" | "fileContainingSymbol" | "allExtensionNumbersOfType" | "listServices"; value: string }
  | { case: "fileContainingExtension"; value: { containingType: string; extensionNumber: number } }
  | { case: undefined; value?: undefined };
type MessageResponse =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

interface Index {
  services: string[];
  /** By path, e.g. "google/protobuf/timestamp.proto". */
  files: Map<string, DescFile>;
  /** Every fully-qualified name (types, services, methods, fields, enum values…) to its file. */
  symbols: Map<string, DescFile>;
  /** Extendee type name → field number → file declaring the extension. */
  extensions: Map<string, Map<number, DescFile>>;
}

/**
 * Registers `grpc.reflection.v1.ServerReflection` and its v1alpha twin on `router`.
 * They describe every service registered on the router (read at the first reflection
 * request, so register the others in any order), the services and files of `source`,
 * the well-known types and buf/validate/validate.proto. A file comes with its
 * transitive dependencies not yet sent on the stream, as grpc-go does.
 */
export function registerReflection(router: ConnectRouter, source: ReflectionSource = []): ConnectRouter {
  let index: Index | undefined;
  async function* serverReflectionInfo<R extends { host: string; messageRequest: MessageRequest }>(
    requests: AsyncIterable<R>,
  ) {
    index ??= buildIndex(router, source);
    const sent = new Set<string>();
    for await (const req of requests) {
      yield { validHost: req.host, originalRequest: req, messageResponse: answer(index, req.messageRequest, sent) };
    }
  }
  return router
    .service(ServerReflectionV1, { serverReflectionInfo })
    .service(ServerReflectionV1alpha, { serverReflectionInfo });
}

function answer(index: Index, req: MessageRequest, sent: Set<string>): MessageResponse {
  switch (req.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: index.services.map((name) => ({ name })) } };
    case "fileByFilename":
      return fileResponse(index.files.get(req.value), sent, `file "${req.value}" not found`);
    case "fileContainingSymbol":
      return fileResponse(index.symbols.get(req.value), sent, `symbol "${req.value}" not found`);
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = req.value;
      const file = index.extensions.get(containingType)?.get(extensionNumber);
      return fileResponse(file, sent, `extension ${extensionNumber} of "${containingType}" not found`);
    }
    case "allExtensionNumbersOfType": {
      if (!index.symbols.has(req.value)) return notFound(`type "${req.value}" not found`);
      const numbers = [...(index.extensions.get(req.value)?.keys() ?? [])].sort((a, b) => a - b);
      return { case: "allExtensionNumbersResponse", value: { baseTypeName: req.value, extensionNumber: numbers } };
    }
    case undefined:
      throw new ConnectError("invalid message_request", Code.InvalidArgument);
  }
}

function notFound(errorMessage: string): MessageResponse {
  return { case: "errorResponse", value: { errorCode: Code.NotFound, errorMessage } };
}

const serialized = new WeakMap<DescFile, Uint8Array>();

/** `file` first, then its transitive dependencies not yet in `sent`. */
function fileResponse(file: DescFile | undefined, sent: Set<string>, missing: string): MessageResponse {
  if (file === undefined) return notFound(missing);
  const files = [file];
  sent.add(file.proto.name);
  for (let i = 0; i < files.length; i++) {
    for (const dep of files[i]?.dependencies ?? []) {
      if (sent.has(dep.proto.name)) continue;
      sent.add(dep.proto.name);
      files.push(dep);
    }
  }
  const fileDescriptorProto = files.map((f) => {
    let bytes = serialized.get(f);
    if (bytes === undefined) {
      bytes = toBinary(FileDescriptorProtoSchema, f.proto);
      serialized.set(f, bytes);
    }
    return bytes;
  });
  return { case: "fileDescriptorResponse", value: { fileDescriptorProto } };
}

function buildIndex(router: ConnectRouter, source: ReflectionSource): Index {
  const services = new Set<string>();
  const roots: DescFile[] = [...ALWAYS];
  for (const { service } of router.handlers) {
    services.add(service.typeName);
    roots.push(service.file);
  }
  const given = "kind" in source ? [...source.files] : source;
  for (const desc of given) {
    const servicesOf = desc.kind === "file" ? desc.services : [desc];
    for (const s of servicesOf) services.add(s.typeName);
    roots.push(desc.kind === "file" ? desc : desc.file);
  }

  const index: Index = { services: [...services].sort(), files: new Map(), symbols: new Map(), extensions: new Map() };
  const symbol = (name: string, file: DescFile) => {
    if (!index.symbols.has(name)) index.symbols.set(name, file);
  };
  const addExtension = (ext: DescExtension) => {
    symbol(ext.typeName, ext.file);
    const byNumber = index.extensions.get(ext.extendee.typeName) ?? new Map<number, DescFile>();
    byNumber.set(ext.number, ext.file);
    index.extensions.set(ext.extendee.typeName, byNumber);
  };
  const addEnum = (desc: DescEnum) => {
    symbol(desc.typeName, desc.file);
    // Enum values are scoped as siblings of their enum, as in C++.
    const scope = desc.typeName.slice(0, desc.typeName.lastIndexOf(".") + 1);
    for (const value of desc.values) symbol(scope + value.name, desc.file);
  };
  const addMessage = (desc: DescMessage) => {
    symbol(desc.typeName, desc.file);
    for (const field of desc.fields) symbol(`${desc.typeName}.${field.name}`, desc.file);
    for (const oneof of desc.oneofs) symbol(`${desc.typeName}.${oneof.name}`, desc.file);
    desc.nestedMessages.forEach(addMessage);
    desc.nestedEnums.forEach(addEnum);
    desc.nestedExtensions.forEach(addExtension);
  };
  const addFile = (file: DescFile) => {
    // file.name lacks the ".proto" suffix; clients ask by the full path.
    if (index.files.has(file.proto.name)) return;
    index.files.set(file.proto.name, file);
    file.dependencies.forEach(addFile);
    for (const service of file.services) {
      symbol(service.typeName, file);
      for (const method of service.methods) symbol(`${service.typeName}.${method.name}`, file);
    }
    file.messages.forEach(addMessage);
    file.enums.forEach(addEnum);
    file.extensions.forEach(addExtension);
  };
  roots.forEach(addFile);
  return index;
}
