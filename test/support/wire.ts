/**
 * Bytes no generated client would send: raw HTTP/2 requests and gRPC calls,
 * gRPC length-prefixed envelopes, hand-encoded protobuf, raw HTTP/1.1 POSTs
 * and raw TCP.
 */
import http2 from "node:http2";
import net from "node:net";

export interface H2Result {
  headers: http2.IncomingHttpHeaders;
  trailers: http2.IncomingHttpHeaders;
  data: Buffer;
  /** The RST_STREAM code if the server reset the stream, else 0. */
  rstCode: number;
}

/** One raw HTTP/2 POST on its own session; resolves however the stream ends (response, reset). */
export function h2request(baseUrl: string, headers: http2.OutgoingHttpHeaders, body: Uint8Array): Promise<H2Result> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(baseUrl);
    const timer = setTimeout(() => {
      session.destroy();
      reject(new Error("no answer within 10 s"));
    }, 10_000);
    session.on("error", () => {});
    const req = session.request({ ":method": "POST", ...headers });
    const result: H2Result = { headers: {}, trailers: {}, data: Buffer.alloc(0), rstCode: 0 };
    req.on("response", (h) => {
      result.headers = h;
    });
    req.on("trailers", (t) => {
      result.trailers = t;
    });
    req.on("data", (d: Buffer) => {
      result.data = Buffer.concat([result.data, d]);
    });
    req.on("error", () => {});
    req.on("close", () => {
      clearTimeout(timer);
      result.rstCode = req.rstCode ?? 0;
      session.close();
      resolve(result);
    });
    req.end(body);
  });
}

export interface GrpcAnswer {
  httpStatus: number | undefined;
  /** grpc-status from the trailers or a trailers-only response; NaN if there is none. */
  status: number;
  message: string;
  headers: http2.IncomingHttpHeaders;
  data: Buffer;
  rstCode: number;
}

/** A gRPC call over raw HTTP/2: path is `/<service>/<method>`, body the envelopes. */
export async function grpcRaw(
  baseUrl: string,
  path: string,
  body: Uint8Array,
  extra: http2.OutgoingHttpHeaders = {},
): Promise<GrpcAnswer> {
  const res = await h2request(
    baseUrl,
    { ":path": path, "content-type": "application/grpc", te: "trailers", ...extra },
    body,
  );
  const status = res.trailers["grpc-status"] ?? res.headers["grpc-status"];
  const message = res.trailers["grpc-message"] ?? res.headers["grpc-message"];
  return {
    httpStatus: res.headers[":status"] === undefined ? undefined : Number(res.headers[":status"]),
    status: Number(status),
    message: decodeURIComponent(String(message ?? "")),
    headers: res.headers,
    data: res.data,
    rstCode: res.rstCode,
  };
}

/** A gRPC / Connect-streaming length-prefixed message; it may lie about its length or set flags. */
export function envelope(message: Uint8Array, opts: { declaredLength?: number; flags?: number } = {}): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt8(opts.flags ?? 0, 0);
  head.writeUInt32BE(opts.declaredLength ?? message.length, 1);
  return Buffer.concat([head, message]);
}

/** Hand-encoded protobuf: a varint. */
export function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}

/** Hand-encoded protobuf: a length-delimited field (string, bytes, message). */
export function field(no: number, value: Buffer | string): Buffer {
  const bytes = typeof value === "string" ? Buffer.from(value, "utf8") : value;
  return Buffer.concat([varint((no << 3) | 2), varint(bytes.length), bytes]);
}

export interface HttpAnswer {
  status: number;
  headers: Headers;
  contentType: string | null;
  text: string;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: unknown;
}

/** A raw HTTP/1.1 POST of exactly these bytes and headers. */
export async function httpPost(
  url: string,
  body: Uint8Array | string,
  headers: Record<string, string>,
): Promise<HttpAnswer> {
  const res = await fetch(url, { method: "POST", body, headers });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, contentType: res.headers.get("content-type"), text, json };
}

/**
 * Writes bytes on a raw TCP connection to 127.0.0.1:port and resolves with
 * all the server sent until it closed the connection. With halfClose the
 * writing side is ended after the bytes (the server sees the end of the
 * request); fails if the server keeps the connection open for 10 s.
 */
export function rawTcp(port: number, bytes: Buffer, opts: { halfClose?: boolean } = {}): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1");
    let received = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error("server kept the connection open"));
    }, 10_000);
    socket.on("data", (d: Buffer) => {
      received = Buffer.concat([received, d]);
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(received);
    });
    if (opts.halfClose) socket.end(bytes);
    else socket.write(bytes);
  });
}
