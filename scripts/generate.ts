/**
 * `npm run generate`: refreshes third_party/proto from the npm packages that
 * ship those files, then runs `buf generate` into gen/.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { printValidateProto } from "./validate-proto.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const thirdParty = join(root, "third_party/proto");

// grpc-health-check ships health.proto as health/v1/; it is filed under its
// canonical path so reflection clients see grpc/health/v1/health.proto.
const copies: Array<[pkgFile: string, target: string]> = [
  ["grpc-health-check/proto/health/v1/health.proto", "grpc/health/v1/health.proto"],
  ["@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto", "grpc/reflection/v1/reflection.proto"],
  ["@grpc/reflection/build/proto/grpc/reflection/v1alpha/reflection.proto", "grpc/reflection/v1alpha/reflection.proto"],
  // google.rpc.RetryInfo and friends: error details every gRPC client knows.
  ["google-proto-files/google/rpc/error_details.proto", "google/rpc/error_details.proto"],
];
for (const [pkgFile, target] of copies) {
  const dest = join(thirdParty, target);
  mkdirSync(dirname(dest), { recursive: true });
  copyFileSync(join(root, "node_modules", pkgFile), dest);
}

const validateProto = join(thirdParty, "buf/validate/validate.proto");
mkdirSync(dirname(validateProto), { recursive: true });
writeFileSync(validateProto, printValidateProto());

for (const dir of ["customer", "identity", "grpc", "google"]) {
  rmSync(join(root, "gen", dir), { recursive: true, force: true });
}
execFileSync("buf", ["generate"], { cwd: root, stdio: "inherit" });
