/** A short reading of a V8 .cpuprofile: where the samples landed (self time), by area and by function. */
import { readFileSync } from "node:fs";
import { relative } from "node:path";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

/** Areas of a service's work, matched on the frame's script URL (or native function name), first match wins. */
const AREAS: Array<[area: string, pattern: RegExp]> = [
  ["idle", /^\(idle\)$/],
  ["GC", /^\(garbage collector\)$/],
  ["JWT (jose + WebCrypto)", /node_modules\/jose\/|node:internal\/crypto\//],
  ["validation (protovalidate, CEL)", /@bufbuild\/(protovalidate|cel)\/|@connectrpc\/validate\//],
  ["logging (pino)", /\/(pino|@pinojs|sonic-boom|pino-std-serializers|fast-redact)\//],
  ["SQL building (drizzle)", /drizzle-orm\//],
  ["PostgreSQL driver (postgres.js)", /node_modules\/postgres\//],
  ["NATS (outbox relay)", /@nats-io\//],
  ["RPC (connect, protobuf)", /@connectrpc\/|@bufbuild\/protobuf\//],
  ["HTTP/2, HTTP/1.1 (node)", /node:internal\/http|node:_http|node:http/],
  ["syscalls (socket and file writes)", /^(writeBuffer|writev|writeString|writeUtf8String|writeLatin1String)$/],
  ["app (runtime/, services)", /\/(runtime|customer-service|identity-service|bench)\//],
  ["node core (streams, timers, events, …)", /^node:/],
];

/** The top areas and functions by self time, as "pct  name" lines. */
export function topFunctions(path: string, root: string, limit = 20): string[] {
  const profile = JSON.parse(readFileSync(path, "utf8")) as { nodes: ProfileNode[] };
  const self = new Map<string, number>();
  const areas = new Map<string, number>();
  let total = 0;
  for (const n of profile.nodes) {
    const hits = n.hitCount ?? 0;
    if (!hits) continue;
    total += hits;
    const url = n.callFrame.url.replace(/^file:\/\//, "");
    const name = n.callFrame.functionName || "(anonymous)";
    const where = url
      ? `${url.startsWith("node:") ? url : relative(root, url)}:${n.callFrame.lineNumber + 1}`
      : "(native)";
    const key = `${name}  ${where}`;
    self.set(key, (self.get(key) ?? 0) + hits);
    const area = AREAS.find(([, re]) => re.test(url || name))?.[0] ?? "other (V8, native)";
    areas.set(area, (areas.get(area) ?? 0) + hits);
  }
  const pct = (v: number) => `${((100 * v) / total).toFixed(1).padStart(5)}%`;
  const top = (m: Map<string, number>, k: number) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, k)
      .map(([name, v]) => `${pct(v)}  ${name}`);
  return ["by area (self time):", ...top(areas, 14), "by function (self time):", ...top(self, limit)];
}
