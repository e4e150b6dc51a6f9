import * as protoLoader from "@grpc/proto-loader";
import { createRequire } from "node:module";
import { dirname } from "node:path";
const require = createRequire(import.meta.url);
const gpf = dirname(require.resolve("google-proto-files/package.json"));
process.on("warning", (w) => console.log("WARN", w.message));
const def = await protoLoader.load(["identity/v1/auth_service.proto", "google/rpc/status.proto", "google/rpc/error_details.proto"], {
  includeDirs: ["proto", "third_party/proto", gpf],
  keepCase: true, longs: String, enums: String, defaults: true,
});
console.log(Object.keys(def));
