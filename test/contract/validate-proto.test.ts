/**
 * third_party/proto/buf/validate/validate.proto is printed from the descriptor
 * that @bufbuild/protovalidate embeds. These tests compile the printed text with
 * the local buf and require the exact descriptor back, options included.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  clone,
  create,
  createFileRegistry,
  fromBinary,
  getExtension,
  type Registry,
  setExtension,
  toBinary,
  toJson,
} from "@bufbuild/protobuf";
import { type FileDescriptorProto, FileDescriptorProtoSchema, FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { file_buf_validate_validate, predefined } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { afterAll, describe, expect, it } from "vitest";
import { printProtoFile, printValidateProto } from "../../scripts/validate-proto.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "../..");
const buf = join(root, "node_modules/.bin/buf");
const validatePath = "buf/validate/validate.proto";
const embedded = file_buf_validate_validate.proto;

const tmpDirs: string[] = [];
afterAll(() => {
  for (const dir of tmpDirs) {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Compiles a v2 buf module made of `files` and returns every file of the set, imports included. */
function compile(files: Record<string, string>): FileDescriptorProto[] {
  const dir = mkdtempSync(join(tmpdir(), "validate-proto-"));
  tmpDirs.push(dir);
  const moduleDir = join(dir, "module");
  for (const [name, text] of Object.entries({ "buf.yaml": "version: v2\n", ...files })) {
    mkdirSync(dirname(join(moduleDir, name)), { recursive: true });
    writeFileSync(join(moduleDir, name), text);
  }
  const out = join(dir, "out.binpb");
  execFileSync(buf, ["build", moduleDir, "--as-file-descriptor-set", "-o", out], { stdio: "pipe" });
  return fromBinary(FileDescriptorSetSchema, readFileSync(out)).file;
}

function find(files: FileDescriptorProto[], name: string): FileDescriptorProto {
  const file = files.find((f) => f.name === name);
  if (file === undefined) {
    throw new Error(`${name} is not in the compiled set`);
  }
  return file;
}

// Only source_code_info is cleared: it records the printed text's positions.
// Nothing else is normalised; json_name needs none, since buf sets it on every
// field and fileDesc() restores the ones protoc-gen-es stripped.
function withoutSourceInfo(file: FileDescriptorProto): FileDescriptorProto {
  const copy = clone(FileDescriptorProtoSchema, file);
  copy.sourceCodeInfo = undefined;
  return copy;
}

function expectSameDescriptor(actual: FileDescriptorProto, expected: FileDescriptorProto, registry: Registry): void {
  const a = withoutSourceInfo(actual);
  const e = withoutSourceInfo(expected);
  // JSON with a registry spells out extension options such as [buf.validate.predefined], for a readable diff.
  expect(toJson(FileDescriptorProtoSchema, a, { registry })).toEqual(
    toJson(FileDescriptorProtoSchema, e, { registry }),
  );
  // Bytes also cover what JSON leaves out: unknown fields and the exact encoding of option values.
  const same = Buffer.from(toBinary(FileDescriptorProtoSchema, a)).equals(toBinary(FileDescriptorProtoSchema, e));
  expect(same, `${expected.name}: binary descriptors differ`).toBe(true);
}

const registry = createFileRegistry(file_buf_validate_validate.proto, (name) =>
  file_buf_validate_validate.dependencies.find((d) => d.proto.name === name),
);

describe("buf/validate/validate.proto", () => {
  it("compiles back to the descriptor embedded in @bufbuild/protovalidate", () => {
    const compiled = find(compile({ [validatePath]: printValidateProto() }), validatePath);
    expectSameDescriptor(compiled, embedded, registry);
  });

  it("carries changed custom option values through the round trip", () => {
    // Guards the comparison itself: a changed CEL expression must reach the compiled file and be told apart.
    const changed = clone(FileDescriptorProtoSchema, embedded);
    const minLen = changed.messageType.find((m) => m.name === "StringRules")?.field.find((f) => f.name === "min_len");
    if (minLen?.options === undefined) {
      throw new Error("StringRules.min_len has no options");
    }
    const rules = getExtension(minLen.options, predefined);
    const rule = rules.cel[0];
    if (rule === undefined) {
      throw new Error("StringRules.min_len has no predefined rule");
    }
    rule.expression = `(${rule.expression})`;
    setExtension(minLen.options, predefined, rules);

    const compiled = find(compile({ [validatePath]: printProtoFile(changed) }), validatePath);
    expectSameDescriptor(compiled, changed, registry);
    expect(
      Buffer.from(toBinary(FileDescriptorProtoSchema, withoutSourceInfo(compiled))).equals(
        toBinary(FileDescriptorProtoSchema, embedded),
      ),
    ).toBe(false);
  });

  it("is committed as printed", () => {
    const committed = readFileSync(join(root, "third_party/proto", validatePath), "utf8");
    expect(committed).toBe(printValidateProto());
  });
});

describe("printProtoFile", () => {
  // Syntax validate.proto does not use, compiled once from source and then from the printed text.
  const fixtures: Record<string, string> = {
    "fx/opts.proto": `syntax = "proto2";
package fx.opts;
import "google/protobuf/descriptor.proto";
enum Color { RED = 0; GREEN = 1; BLUE = -2; }
message Info {
  optional string note = 1;
  repeated int64 nums = 2;
  optional Info child = 3;
  map<string, int32> counts = 4;
  optional Color color = 5;
  optional bytes raw = 6;
  extensions 100 to 200;
}
extend Info { optional string tag = 100; }
extend google.protobuf.FileOptions { optional string file_tag = 50001; repeated int32 file_nums = 50002; }
extend google.protobuf.MessageOptions { optional Info msg_info = 50001; optional bool msg_flag = 50002; }
extend google.protobuf.FieldOptions {
  optional float f_float = 50001; optional bytes f_bytes = 50002; optional Color f_color = 50003;
  repeated Info f_infos = 50004; optional uint64 f_u64 = 50005; optional double f_double = 50006;
  optional Info f_info = 50007;
}
extend google.protobuf.EnumOptions { optional sint32 e_num = 50001; }
extend google.protobuf.EnumValueOptions { optional string ev = 50001; }
extend google.protobuf.ServiceOptions { optional string svc = 50001; }
extend google.protobuf.MethodOptions { optional Info meth = 50001; }
extend google.protobuf.OneofOptions { optional int32 oo = 50001; }
extend google.protobuf.ExtensionRangeOptions { optional int32 ero = 50001; }
`,
    "fx/dep.proto": `syntax = "proto3";
package fx.dep;
message Dep {
  optional string a = 1;
  string b = 2;
  oneof o { int32 c = 3; string d = 4; }
  repeated Dep deps = 5;
  map<int32, Kind> kinds = 6;
  optional Kind k = 7;
  Kind k2 = 8 [json_name = "kayTwo"];
  reserved 10 to 12, 20;
  reserved "x", "y";
}
enum Kind { KIND_UNSPECIFIED = 0; KIND_A = 1; }
service DepService {
  rpc Unary(Dep) returns (Dep);
  rpc Server(Dep) returns (stream Dep) { option deprecated = true; }
  rpc Bidi(stream Dep) returns (stream Dep) { option idempotency_level = NO_SIDE_EFFECTS; }
}
`,
    "fx/p2.proto": `syntax = "proto2";
package fx.p2;
import public "fx/dep.proto";
import "fx/opts.proto";
option java_package = "com.fx";
option optimize_for = CODE_SIZE;
option (fx.opts.file_tag) = "hello \\"world\\"\\n\\x01é\\u0085";
option (fx.opts.file_nums) = 1;
option (fx.opts.file_nums) = -2;
message Outer {
  option (fx.opts.msg_info) = {
    note: "n" nums: [1, 2] child { note: "c" [fx.opts.tag]: "t" } counts { key: "a" value: 1 } color: GREEN
    raw: "\\x85\\xc2"
  };
  option (fx.opts.msg_flag) = true;
  message First { optional int32 a = 1; }
  required string name = 1 [default = "a\\"b\\\\c\\x01\\tü", (fx.opts.f_float) = inf];
  optional bytes data = 2 [default = "\\000\\001\\377\\x85abc\\"", (fx.opts.f_bytes) = "\\x00\\xff\\x85\\"x"];
  optional Color color = 3 [default = GREEN, (fx.opts.f_color) = BLUE];
  optional float f = 4 [default = -inf, (fx.opts.f_double) = nan];
  optional double d = 5 [default = 1.5e-7, (fx.opts.f_float) = 0.1];
  optional int64 i64 = 6 [default = -9223372036854775808, (fx.opts.f_u64) = 18446744073709551615];
  optional bool b = 7 [default = true, deprecated = true];
  repeated int32 packed = 8 [packed = true, json_name = "PACKED"];
  optional group Grp = 9 { optional int32 x = 1; optional Grp2 inner = 2; message Grp2 { optional int32 y = 1; } }
  message Middle { optional fx.dep.Dep dep = 1; }
  map<string, First> firsts = 10;
  oneof choice {
    option (fx.opts.oo) = 5;
    string s = 11;
    group Og = 12 { optional int32 z = 1; }
  }
  repeated Middle middles = 13 [
    (fx.opts.f_infos) = { note: "one" }, (fx.opts.f_infos) = { note: "two" },
    (fx.opts.f_info).note = "x", (fx.opts.f_info).nums = 3
  ];
  map<int32, Color> colors = 14;
  optional string empty = 15 [default = ""];
  enum Color {
    option allow_alias = true;
    option (fx.opts.e_num) = -7;
    RED = 0; GREEN = 1 [(fx.opts.ev) = "g", deprecated = true]; VERDE = 1; BLUE = 2;
    reserved 10 to max, 5;
    reserved "BLACK";
  }
  message Last { extend Outer { optional int32 last_ext = 1000; } }
  reserved 20 to 30, 40;
  reserved 500 to 899;
  reserved "old", "older";
  extensions 100 to 199 [(fx.opts.ero) = 1];
  extensions 1000 to 1999;
  extend Outer { optional int32 nested_ext = 101; optional group NestedGrp = 102 { optional int32 q = 1; } }
}
extend Outer { repeated string top_ext = 103; optional group TopGrp = 104 { optional int32 w = 1; } }
message Color {}
message RefsColor { optional Color c = 1; optional Outer.Color oc = 2; optional fx.opts.Color fc = 3; }
service Svc {
  option (fx.opts.svc) = "s";
  rpc Do(Outer) returns (fx.dep.Dep) { option (fx.opts.meth) = { note: "m" }; }
  rpc Stream(stream fx.dep.Dep) returns (stream Outer);
}
message MS { option message_set_wire_format = true; extensions 4 to max; }
`,
    "fx/ed.proto": `edition = "2023";
package fx.ed;
import "google/protobuf/cpp_features.proto";
import "fx/opts.proto";
option features.field_presence = IMPLICIT;
option features.(pb.cpp).legacy_closed_enum = true;
enum Closed { option features.enum_type = CLOSED; C_ZERO = 0; C_ONE = 1; }
message E {
  int32 a = 1;
  int32 b = 2 [features.field_presence = EXPLICIT, default = 7];
  repeated int32 c = 3 [features.repeated_field_encoding = EXPANDED];
  message Inner { int32 x = 1; }
  Inner d = 4 [features.message_encoding = DELIMITED];
  int32 req = 5 [features.field_presence = LEGACY_REQUIRED];
  string s = 6 [features.(pb.cpp).string_type = VIEW, (fx.opts.f_info) = { note: "e" }];
  reserved gone;
  reserved 9;
}
`,
    "fx/ed24.proto": `edition = "2024";
package fx.ed24;
import option "fx/opts.proto";
export message Pub { int32 a = 1 [(fx.opts.f_u64) = 3]; reserved gone, older; }
local enum Priv { P_ZERO = 0; }
local message Hidden { Priv p = 1; }
`,
  };

  it("round-trips proto2, proto3 and editions syntax through buf", () => {
    const first = compile(fixtures);
    const resolve = (name: string) => first.find((f) => f.name === name);
    const printed = Object.fromEntries(
      Object.keys(fixtures).map((name) => [name, printProtoFile(find(first, name), { resolve })]),
    );
    const second = compile(printed);
    const fixtureRegistry = createFileRegistry(create(FileDescriptorSetSchema, { file: first }));
    for (const name of Object.keys(fixtures)) {
      expectSameDescriptor(find(second, name), find(first, name), fixtureRegistry);
    }
  });
});
