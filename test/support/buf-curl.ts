/** `buf curl` (the repository's buf CLI), as the README tells users to call the services. */
import { execFile } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const BUF = join(dirname(fileURLToPath(import.meta.url)), "../../node_modules/.bin/buf");

export interface CurlResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs `buf curl <args>`; resolves with its exit code and output (a non-zero exit is not a rejection). */
export function bufCurl(args: string[]): Promise<CurlResult> {
  return new Promise((resolve, reject) => {
    execFile(
      BUF,
      ["curl", ...args],
      { timeout: 20_000, env: { ...process.env, NO_COLOR: "1" } },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== "number") reject(err);
        else resolve({ exitCode: err ? Number(err.code) : 0, stdout, stderr });
      },
    );
  });
}

/** The flags per protocol: Connect over HTTP/1.1 (buf curl's default), gRPC over HTTP/2 cleartext. */
export const CURL_PROTOCOLS = {
  connect: [] as string[],
  grpc: ["--protocol", "grpc", "--http2-prior-knowledge"],
} as const;
export type CurlProtocol = keyof typeof CURL_PROTOCOLS;
