/**
 * h2load (nghttp2's C load generator, Debian package `nghttp2-client`) as the
 * load of the transport rows: it leaves the server most of the CPU, where a
 * Node load agent would take half of it. A run is `h2load -D <s>
 * --warm-up-time <s> -c <connections> [-m <streams>] [--h1] -d <body> -H …
 * --log-file <file> <url>`; the server's CPU is read over h2load's main
 * duration (from its "started" to its "over" line), latency percentiles from
 * the per-request log. h2load reads no trailers, so a gRPC status is checked
 * with `probeRequest`, which sends the same request once with node:http2 /
 * node:http and reads the answer whole.
 */
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { request as http1Request } from "node:http";
import { connect as http2Connect } from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { type CpuWindow, startCpuWindow } from "./proc.js";
import type { LoadResult } from "./stats.js";
import { summarize } from "./stats.js";

/** The one command that installs what the bench needs from Debian (h2load among it). */
export const INSTALL_COMMAND = "scripts/install-system-packages.sh";

/** h2load's version line; throws, naming the install command, when h2load is not on the PATH. */
export function requireH2load(): string {
  try {
    return execFileSync("h2load", ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
  } catch {
    throw new Error(
      `h2load (Debian package nghttp2-client) is not installed: the bench's transport rows need it. Run ${INSTALL_COMMAND} (as root, or with sudo)`,
    );
  }
}

/** One request, sent the same way by h2load and by probeRequest. */
export interface H2Request {
  url: string;
  /** HTTP/1.1 (keep-alive, one request in flight per connection) instead of h2c. */
  h1: boolean;
  headers: Record<string, string>;
  /** The POST body. */
  body: Uint8Array;
}

export interface H2loadOptions {
  durationSec: number;
  warmupSec: number;
  /** Connections (`-c`). */
  connections: number;
  /** Streams per connection (`-m`); h2c only. */
  streams?: number;
  /** Whose CPU is read over the main duration (the server's process). */
  pid: number;
}

/** What h2load reported, and the server's CPU over its main duration. */
export interface H2loadResult {
  load: LoadResult;
  cpu: CpuWindow;
  /** h2load's own counts over the main duration (warm-up excluded). */
  counts: { total: number; succeeded: number; failed: number; errored: number; timeout: number };
  statusCodes: { "2xx": number; "3xx": number; "4xx": number; "5xx": number };
  /** Per-request log lines that were not 2xx (status -1: a failed stream). */
  badStatus: Record<string, number>;
  /** The command line, for the details. */
  args: string[];
}

/** Runs h2load once against req; throws when it exits non-zero or prints no summary. */
export async function runH2load(req: H2Request, opts: H2loadOptions): Promise<H2loadResult> {
  const dir = mkdtempSync(join(tmpdir(), "h2load-"));
  try {
    const bodyFile = join(dir, "body");
    const logFile = join(dir, "requests.log");
    writeFileSync(bodyFile, req.body);
    const args = [
      "-D",
      String(opts.durationSec),
      "--warm-up-time",
      String(opts.warmupSec),
      "-c",
      String(opts.connections),
      ...(req.h1 ? ["--h1"] : ["-m", String(opts.streams ?? 1)]),
      "-d",
      bodyFile,
      ...Object.entries(req.headers).flatMap(([k, v]) => ["-H", `${k}: ${v}`]),
      "--log-file",
      logFile,
      req.url,
    ];
    const child = spawn("h2load", args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    let endCpu: (() => CpuWindow) | undefined;
    let cpu: CpuWindow | undefined;
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      stdout += `${line}\n`;
      // One worker thread (h2load's default -t 1): these lines bound the measured window.
      if (line.startsWith("Main benchmark duration is started")) endCpu = startCpuWindow(opts.pid);
      else if (line.startsWith("Main benchmark duration is over")) cpu = endCpu?.();
    });
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once("error", reject);
      child.once("close", resolve);
    });
    if (code !== 0) throw new Error(`h2load exited with ${code}: ${stderr.trim() || stdout.trim()}`);
    if (!cpu) throw new Error(`h2load printed no measured window:\n${stdout}`);
    const num = (re: RegExp) => {
      const m = re.exec(stdout);
      if (!m) throw new Error(`h2load's summary lacks ${re}:\n${stdout}`);
      return Number(m[1]);
    };
    const counts = {
      total: num(/requests: (\d+) total/),
      succeeded: num(/(\d+) succeeded/),
      failed: num(/(\d+) failed/),
      errored: num(/(\d+) errored/),
      timeout: num(/(\d+) timeout/),
    };
    const statusCodes = {
      "2xx": num(/status codes: (\d+) 2xx/),
      "3xx": num(/(\d+) 3xx/),
      "4xx": num(/(\d+) 4xx/),
      "5xx": num(/(\d+) 5xx/),
    };
    // Per request: start (µs since the epoch), status, µs to the end of the response. Status 0: a
    // request started in the warm-up that ended in the main duration (h2load reset its stats
    // between), left out as h2load's own counts leave it out.
    const samples: number[] = [];
    const badStatus: Record<string, number> = {};
    for (const line of readFileSync(logFile, "utf8").split("\n")) {
      const [, status, us] = line.split("\t");
      if (status === undefined || status === "0") continue;
      if (status.startsWith("2")) samples.push(Number(us) / 1000);
      else badStatus[status] = (badStatus[status] ?? 0) + 1;
    }
    const bad = Object.values(badStatus).reduce((n, v) => n + v, 0);
    const errors =
      counts.failed + counts.errored + counts.timeout + statusCodes["3xx"] + statusCodes["4xx"] + statusCodes["5xx"];
    return {
      load: {
        // As h2load counts them (its printed req/s): also the few requests that straddled the
        // warm-up's end, whose status its log leaves at 0.
        ops: counts.succeeded,
        errors: Math.max(errors, bad),
        ...(errors + bad > 0 && {
          firstError: `h2load: ${counts.failed} failed, ${counts.errored} errored, ${counts.timeout} timeout, status ${JSON.stringify(statusCodes)}, log ${JSON.stringify(badStatus)}`,
        }),
        seconds: cpu.wallSec,
        rps: counts.succeeded / opts.durationSec,
        ...summarize(samples),
        concurrency: opts.connections * (req.h1 ? 1 : (opts.streams ?? 1)),
        samples,
      },
      cpu,
      counts,
      statusCodes,
      badStatus,
      args: [
        "h2load",
        ...args.map((a) =>
          a === bodyFile
            ? "<body>"
            : a.startsWith("authorization:")
              ? "authorization: Bearer …"
              : a === logFile
                ? "<log>"
                : a,
        ),
      ],
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** What a server answered to one request, read whole (trailers included). */
export interface ProbeAnswer {
  status: number;
  contentType: string;
  /** grpc-status from the trailers (or from the headers of a trailers-only answer); undefined if none. */
  grpcStatus: string | undefined;
  grpcMessage: string | undefined;
  body: Buffer;
}

/** Sends req once, as h2load sends it, with node:http2 (h2c) or node:http. */
export function probeRequest(req: H2Request): Promise<ProbeAnswer> {
  const url = new URL(req.url);
  if (req.h1) {
    return new Promise((resolve, reject) => {
      const r = http1Request(
        url,
        { method: "POST", headers: { ...req.headers, "content-length": req.body.length }, agent: false },
        (res) => {
          const chunks: Buffer[] = [];
          res.on("data", (c: Buffer) => chunks.push(c));
          res.on("end", () =>
            resolve({
              status: res.statusCode ?? 0,
              contentType: String(res.headers["content-type"] ?? ""),
              grpcStatus: undefined,
              grpcMessage: undefined,
              body: Buffer.concat(chunks),
            }),
          );
          res.on("error", reject);
        },
      );
      r.on("error", reject);
      r.end(req.body);
    });
  }
  return new Promise((resolve, reject) => {
    const session = http2Connect(url.origin);
    session.on("error", reject);
    const stream = session.request({ ":method": "POST", ":path": url.pathname + url.search, ...req.headers });
    const chunks: Buffer[] = [];
    let headers: Record<string, unknown> = {};
    let trailers: Record<string, unknown> = {};
    stream.on("response", (h) => {
      headers = h;
    });
    stream.on("trailers", (t) => {
      trailers = t;
    });
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("error", reject);
    stream.on("end", () => {
      session.close();
      const grpc = (name: string) => {
        const v = trailers[name] ?? headers[name];
        return v === undefined ? undefined : String(v);
      };
      resolve({
        status: Number(headers[":status"] ?? 0),
        contentType: String(headers["content-type"] ?? ""),
        grpcStatus: grpc("grpc-status"),
        grpcMessage: grpc("grpc-message"),
        body: Buffer.concat(chunks),
      });
    });
    stream.end(req.body);
  });
}

/** Frames a protobuf message as one uncompressed gRPC message. */
export function grpcFrame(message: Uint8Array): Buffer {
  const frame = Buffer.alloc(5 + message.length);
  frame.writeUInt32BE(message.length, 1);
  frame.set(message, 5);
  return frame;
}
