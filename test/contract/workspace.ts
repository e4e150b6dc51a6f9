import { spawnSync } from "node:child_process";
import { cpSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root. */
export const root = fileURLToPath(new URL("../..", import.meta.url));
const bufBin = join(root, "node_modules/.bin/buf");

/** Copies the buf workspace (buf.yaml, proto/, third_party/proto/) into `dir`, which keeps its module paths valid. */
export function copyWorkspace(dir: string): string {
  for (const path of ["buf.yaml", "proto", "third_party/proto"]) {
    cpSync(join(root, path), join(dir, path), { recursive: true });
  }
  return dir;
}

/** Replaces exactly one occurrence of `from` in a file, so a stale edit fails loudly instead of testing nothing. */
export function editFile(path: string, from: string, to: string): void {
  const text = readFileSync(path, "utf8");
  if (text.split(from).length !== 2) {
    throw new Error(`${path} does not contain ${JSON.stringify(from)} exactly once`);
  }
  writeFileSync(path, text.replace(from, to));
}

/** Runs the repository's buf CLI synchronously. */
export function buf(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const { status, stdout, stderr } = spawnSync(bufBin, args, { encoding: "utf8" });
  return { status, stdout, stderr };
}
