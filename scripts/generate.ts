/**
 * `npm run generate`: refreshes third_party/proto from the npm packages that
 * ship those files, then runs `buf generate` into gen/.
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { printValidateProto } from "./validate-proto.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const thirdParty = join(root, "third_party/proto");
const require = createRequire(import.meta.url);

// grpc-health-check ships health.proto as health/v1/; it is filed under its
// canonical path so reflection clients see grpc/health/v1/health.proto.
const copies: Array<[pkgFile: string, target: string]> = [
  ["grpc-health-check/proto/health/v1/health.proto", "grpc/health/v1/health.proto"],
  ["@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto", "grpc/reflection/v1/reflection.proto"],
  ["@grpc/reflection/build/proto/grpc/reflection/v1alpha/reflection.proto", "grpc/reflection/v1alpha/reflection.proto"],
];
for (const [pkgFile, target] of copies) {
  const [scope, name] = pkgFile.startsWith("@") ? pkgFile.split("/") : [pkgFile.split("/")[0]];
  const pkgName = name ? `${scope}/${name}` : (scope as string);
  const pkgDir = dirname(require.resolve(`${pkgName}/package.json`));
  const dest = join(thirdParty, target);
  mkdirSync(dirname(dest), { recursive: true });
  copyFileSync(join(pkgDir, pkgFile.slice(pkgName.length + 1)), dest);
}

const validateProto = join(thirdParty, "buf/validate/validate.proto");
mkdirSync(dirname(validateProto), { recursive: true });
writeFileSync(validateProto, printValidateProto());

for (const dir of ["customer", "identity", "grpc"]) {
  rmSync(join(root, "gen", dir), { recursive: true, force: true });
}
execFileSync("buf", ["generate"], { cwd: root, stdio: "inherit" });
