/**
 * The request side of the OAuth endpoints: a bounded
 * `application/x-www-form-urlencoded` body (RFC 6749 §3.2), its parameters
 * (each at most once, empty ones as if absent, §3.1), and how the client
 * says who it is (§2.3: HTTP Basic, or `client_id` and `client_secret` in the
 * body; a public client by `client_id` alone).
 */
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import { invalidClient, invalidRequest } from "./errors.js";

/** The largest form body accepted: far above any real request (a token is at most 8 KiB). */
export const MAX_FORM_BYTES = 16 * 1024;

/** Parameters that may be repeated: RFC 8707's `resource`. */
const REPEATABLE = new Set(["resource"]);

export type NodeRequest = IncomingMessage | Http2ServerRequest;

/** The form's parameters: `one(name)` for the single-valued, `all(name)` for `resource`. */
export interface FormParams {
  one(name: string): string | undefined;
  all(name: string): string[];
}

/**
 * Reads the body as a form. Refuses (invalid_request) another content type
 * (400), a body over MAX_FORM_BYTES (413, by its content-length before
 * reading, or as it arrives), and a parameter sent twice.
 */
export async function readForm(req: NodeRequest): Promise<FormParams> {
  const type = (req.headers["content-type"] ?? "").split(";")[0]?.trim().toLowerCase();
  if (type !== "application/x-www-form-urlencoded") {
    throw invalidRequest("the body must be application/x-www-form-urlencoded");
  }
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > MAX_FORM_BYTES) throw tooLarge();
  const body = await readBounded(req);
  const params = new URLSearchParams(body);
  const values = new Map<string, string[]>();
  for (const [name, value] of params) {
    // RFC 6749 §3.1: a parameter without a value is as if it were not sent.
    if (value === "") continue;
    const list = values.get(name) ?? [];
    list.push(value);
    values.set(name, list);
    if (list.length > 1 && !REPEATABLE.has(name)) {
      throw invalidRequest(`parameter ${safeName(name)} is repeated`);
    }
  }
  return {
    one: (name) => values.get(name)?.[0],
    all: (name) => values.get(name) ?? [],
  };
}

const tooLarge = () => invalidRequest(`the body is larger than ${MAX_FORM_BYTES} bytes`, 413);

// A parameter's name in an error, cut short and printable only (it is the client's own input).
const safeName = (name: string) => (/^[a-z_]{1,32}$/.test(name) ? name : "(a parameter)");

function readBounded(req: NodeRequest): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (err?: Error) => {
      if (done) return;
      done = true;
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      // Whatever is left is drained by node once the answer is sent.
      if (err) reject(err);
      else resolve(Buffer.concat(chunks).toString("utf8"));
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) finish(tooLarge());
      else chunks.push(chunk);
    };
    const onEnd = () => finish();
    const onError = (err: Error) => finish(err);
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
  });
}

/** Who the client says it is, and how. */
export type ClientCredentials =
  | {
      readonly method: "client_secret_basic" | "client_secret_post";
      readonly clientId: string;
      readonly secret: string;
    }
  | { readonly method: "none"; readonly clientId: string }
  | { readonly method: "anonymous" };

/**
 * The client's credentials from the Authorization header (HTTP Basic, RFC
 * 6749 §2.3.1: id and secret each form-encoded, then base64) or the body.
 * Both at once is invalid_request (§2.3: one method per request); a header
 * that is not Basic, or does not decode, is invalid_client with the Basic
 * challenge.
 */
export function clientCredentials(req: NodeRequest, form: FormParams): ClientCredentials {
  const header = req.headers.authorization;
  const bodyId = form.one("client_id");
  const bodySecret = form.one("client_secret");
  if (header !== undefined) {
    if (bodySecret !== undefined) throw invalidRequest("use one client authentication method, not two");
    const basic = parseBasic(header);
    if (!basic) throw invalidClient("the Authorization header must be HTTP Basic with client_id:client_secret", true);
    if (bodyId !== undefined && bodyId !== basic.clientId) {
      throw invalidRequest("client_id in the body is not the client of the Authorization header");
    }
    return { method: "client_secret_basic", ...basic };
  }
  if (bodySecret !== undefined) {
    if (bodyId === undefined) throw invalidClient("client_secret without client_id", false);
    return { method: "client_secret_post", clientId: bodyId, secret: bodySecret };
  }
  if (bodyId !== undefined) return { method: "none", clientId: bodyId };
  return { method: "anonymous" };
}

function parseBasic(header: string): { clientId: string; secret: string } | undefined {
  const [scheme, value, extra] = header.trim().split(/ +/);
  if (scheme?.toLowerCase() !== "basic" || !value || extra !== undefined) return undefined;
  const decoded = Buffer.from(value, "base64").toString("utf8");
  const colon = decoded.indexOf(":");
  if (colon < 0) return undefined;
  try {
    const clientId = formDecode(decoded.slice(0, colon));
    const secret = formDecode(decoded.slice(colon + 1));
    return clientId ? { clientId, secret } : undefined;
  } catch {
    return undefined; // Malformed percent-encoding.
  }
}

const formDecode = (s: string) => decodeURIComponent(s.replace(/\+/g, " "));
