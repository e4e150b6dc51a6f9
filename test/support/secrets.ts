/**
 * What must never show up in a log line, an error or an event, and the scan
 * that looks for it: the passwords, client secrets and tokens a test file's
 * clients sent or received (every call of createClients is observed), what
 * the identity database keeps secret (password hashes, refresh-token and
 * client-secret hashes, private signing keys), and any refresh token or
 * client secret the service ever issued, whether a test saw it or not
 * (recognised by its SHA-256, which the database holds); and, by their
 * shape, any argon2 hash, JWT, private JWK member ("d": …, stored or not) and
 * drizzle's list of a failed statement's parameters. Each secret is also
 * looked for in the forms a leak would take: base64, base64url, hex,
 * JSON-escaped, URL-encoded, NFKC-normalised, and bytes as pino writes a
 * Buffer.
 */
import { createHash } from "node:crypto";
import { create, createRegistry, type DescMessage, type Message, toBinary, toJsonString } from "@bufbuild/protobuf";
import { file_buf_validate_validate } from "@bufbuild/protovalidate/gen/buf/validate/validate_pb.js";
import { ConnectError, type Interceptor } from "@connectrpc/connect";
import { file_google_rpc_error_details } from "@customer-platform/gen/google/rpc/error_details_pb.js";
import type postgres from "postgres";
import { expect } from "vitest";
import { observeCalls } from "./clients.js";

/** Request and response fields that carry a secret, at any depth (`tokens.refresh_token` too). */
export const SECRET_FIELDS = [
  "password",
  "currentPassword",
  "newPassword",
  "clientSecret",
  "refreshToken",
  "accessToken",
  "token",
] as const;
/** Shorter strings would be found by chance (a password "x" is in every line). */
export const MIN_SECRET_LENGTH = 8;
// A JWT anywhere: every JWS starts with a base64url JSON header, `{"` → "eyJ".
const JWT = /eyJ[A-Za-z0-9_-]{10,}/;
// Any argon2 hash, stored or not (a new password's hash before its update commits).
const ARGON2 = /\$argon2(?:id|i|d)\$/;
// A private JWK member (EC "d"; RSA "d", "p", "q", "dp", "dq", "qi") with its value, as is or JSON-escaped,
// stored or not (a key whose insert failed is in no table).
const PRIVATE_JWK = /\\?"(?:d|p|q|dp|dq|qi)\\?"\s*:\s*\\?"[A-Za-z0-9_-]{16,}/;
// drizzle's text for a failed statement: "Failed query: …\nparams: <every parameter>".
const QUERY_PARAMS = /(?:^|\n|\\n)params: /;
// A refresh token or client secret is 32 random bytes in base64url: 43 characters.
const ISSUED_LENGTH = 43;
const BASE64URL_RUN = new RegExp(`[A-Za-z0-9_-]{${ISSUED_LENGTH},}`, "g");
/** Every detail type the services send or a client could decode. */
const DETAILS = createRegistry(file_google_rpc_error_details, file_buf_validate_validate);

/** One form a secret could leak in, e.g. `{ form: "base64", text: "…" }`. */
interface Needle {
  form: string;
  text: string;
}

interface Secret {
  /** Which secret, never the secret itself in full: "password 'Tr0ub…'". */
  label: string;
  needles: Needle[];
  bytes: Buffer;
}

export interface SecretScanner {
  /** Adds secrets (a label says what they are); strings under MIN_SECRET_LENGTH are ignored. */
  add(label: string, ...secrets: Array<string | Uint8Array>): void;
  /**
   * Adds what the identity database at sql keeps secret, and remembers the
   * hashes of every refresh token and client secret it issued; call again to
   * see rows added since.
   */
  addStored(sql: postgres.Sql): Promise<void>;
  /** The leaks in text, one description each; [] when clean. */
  find(text: string): string[];
  /** The leaks in bytes (an event payload, a detail): raw bytes too. */
  findInBytes(bytes: Uint8Array): string[];
  /** Every error the observed clients received, in order. */
  readonly errors: readonly ConnectError[];
  /** How many secrets it looks for. */
  readonly size: number;
  /**
   * Fails, naming the first leaks, if any of the log lines (by server name)
   * or any error received since the last call holds a secret.
   */
  expectClean(logs: Record<string, readonly string[]>): void;
  /** Stops observing calls. */
  close(): void;
}

/**
 * A scanner that observes every call of this test file's clients (unless
 * observe is false): the secret fields of each request and response and the
 * bearer token are added, each error is kept for expectClean.
 */
export function createSecretScanner(opts: { observe?: boolean } = {}): SecretScanner {
  const secrets = new Map<string, Secret>();
  /** SHA-256 (hex) of every refresh token and client secret the database holds. */
  const issued = new Set<string>();
  const errors: ConnectError[] = [];
  let errorsChecked = 0;
  const linesChecked = new Map<string, number>();

  const add = (label: string, ...values: Array<string | Uint8Array>) => {
    for (const value of values) {
      if (typeof value === "string" ? value.length < MIN_SECRET_LENGTH : value.length < MIN_SECRET_LENGTH) continue;
      const key = typeof value === "string" ? `s:${value}` : `b:${Buffer.from(value).toString("hex")}`;
      if (secrets.has(key)) continue;
      secrets.set(key, typeof value === "string" ? stringSecret(label, value) : bytesSecret(label, value));
    }
  };

  const find = (text: string): string[] => {
    const hits: string[] = [];
    if (JWT.test(text)) hits.push(`a JWT (${JWT.exec(text)?.[0].slice(0, 16)}…)`);
    if (ARGON2.test(text)) hits.push("an argon2 hash");
    if (PRIVATE_JWK.test(text)) hits.push(`a private JWK member (${PRIVATE_JWK.exec(text)?.[0].slice(0, 8)}…)`);
    if (QUERY_PARAMS.test(text)) hits.push("a failed statement's parameters (params: …)");
    for (const secret of secrets.values()) {
      const needle = secret.needles.find((n) => text.includes(n.text));
      if (needle) hits.push(`${secret.label} (${needle.form})`);
    }
    for (const run of text.match(BASE64URL_RUN) ?? []) {
      for (let i = 0; i + ISSUED_LENGTH <= run.length; i++) {
        const candidate = run.slice(i, i + ISSUED_LENGTH);
        if (issued.has(sha256Hex(candidate)))
          hits.push(`an issued refresh token or client secret (${preview(candidate)})`);
      }
    }
    return hits;
  };

  const findInBytes = (bytes: Uint8Array): string[] => {
    const buf = Buffer.from(bytes);
    const hits = new Set([...find(buf.toString("utf8")), ...find(buf.toString("latin1"))]);
    for (const secret of secrets.values()) if (buf.includes(secret.bytes)) hits.add(`${secret.label} (raw bytes)`);
    return [...hits];
  };

  const observer: Interceptor = (next) => async (req) => {
    const authorization = req.header.get("authorization") ?? "";
    if (authorization.startsWith("Bearer ")) add("a bearer token", authorization.slice("Bearer ".length));
    if (!req.stream) collect(req.message, (field, value) => add(`request ${field}`, value));
    try {
      const res = await next(req);
      if (!res.stream) collect(res.message, (field, value) => add(`response ${field}`, value));
      return res;
    } catch (e) {
      errors.push(ConnectError.from(e));
      throw e;
    }
  };
  const stopObserving = opts.observe === false ? () => {} : observeCalls(observer);

  return {
    add,
    async addStored(sql) {
      const hashes = await sql<{ password_hash: string }[]>`select password_hash from identities`;
      for (const { password_hash } of hashes) {
        add("a stored password hash", password_hash, password_hash.slice(password_hash.lastIndexOf("$") + 1));
      }
      const digests = await sql<{ what: string; digest: Buffer }[]>`
        select 'a refresh-token hash' as what, token_hash as digest from refresh_tokens
        union all select 'a client-secret hash', secret_hash from clients`;
      for (const { what, digest } of digests) {
        add(what, digest);
        issued.add(digest.toString("hex"));
      }
      const keys = await sql<{ key: Buffer }[]>`select key from login_throttles`;
      for (const { key } of keys) add("a throttle key", key);
      const privateKeys = await sql<{ d: string }[]>`select private_jwk->>'d' as d from signing_keys`;
      for (const { d } of privateKeys) add("a private signing key", d);
    },
    find,
    findInBytes,
    errors,
    get size() {
      return secrets.size + issued.size;
    },
    expectClean(logs) {
      const leaks: string[] = [];
      for (const [server, lines] of Object.entries(logs)) {
        for (const line of lines.slice(linesChecked.get(server) ?? 0)) {
          const hits = find(line);
          if (hits.length > 0) leaks.push(`${server} log: ${hits.join(", ")} in ${line.slice(0, 300)}`);
        }
        linesChecked.set(server, lines.length);
      }
      for (const err of errors.slice(errorsChecked)) {
        const hits = findInError(err, { find, findInBytes });
        if (hits.length > 0) leaks.push(`error "${err.message.slice(0, 120)}": ${hits.join(", ")}`);
      }
      errorsChecked = errors.length;
      expect(leaks.slice(0, 5), `${leaks.length} leaks`).toEqual([]);
    },
    close: stopObserving,
  };
}

/**
 * The leaks in what a client learns from err: its message, every detail (its
 * raw bytes, and decoded to JSON when its type is known), and its headers
 * and trailers.
 */
export function findInError(err: ConnectError, scanner: Pick<SecretScanner, "find" | "findInBytes">): string[] {
  const hits = [...scanner.find(err.message), ...scanner.find(err.rawMessage)];
  for (const detail of err.details) {
    if ("desc" in detail) {
      // An error raised in this process (a router transport) still holds the message itself.
      const message = create(detail.desc, detail.value);
      hits.push(...scanner.findInBytes(toBinary(detail.desc, message)));
      hits.push(...scanner.find(toJsonString(detail.desc, message)));
    } else {
      hits.push(...scanner.find(detail.type), ...scanner.findInBytes(detail.value));
      if (detail.debug !== undefined) hits.push(...scanner.find(JSON.stringify(detail.debug)));
    }
  }
  for (const message of err.findDetails(DETAILS)) {
    const desc = DETAILS.getMessage(message.$typeName);
    if (desc) hits.push(...scanner.find(toJsonString(desc as DescMessage, message as Message)));
  }
  for (const [name, value] of err.metadata) hits.push(...scanner.find(`${name}: ${value}`));
  return [...new Set(hits)];
}

/** Calls found for every string field of message named in SECRET_FIELDS, at any depth. */
function collect(message: unknown, found: (field: string, value: string) => void, depth = 0): void {
  if (depth > 4 || message === null || typeof message !== "object") return;
  for (const [key, value] of Object.entries(message)) {
    if (typeof value === "string" && (SECRET_FIELDS as readonly string[]).includes(key)) found(key, value);
    else if (typeof value === "object") collect(value, found, depth + 1);
  }
}

function stringSecret(label: string, value: string): Secret {
  const utf8 = Buffer.from(value, "utf8");
  return {
    label: `${label} ${preview(value)}`,
    bytes: utf8,
    needles: distinct([
      { form: "as is", text: value },
      { form: "JSON-escaped", text: JSON.stringify(value).slice(1, -1) },
      { form: "NFKC", text: value.normalize("NFKC") },
      { form: "URL-encoded", text: urlEncoded(value) },
      { form: "base64", text: utf8.toString("base64").replace(/=+$/, "") },
      { form: "base64url", text: utf8.toString("base64url") },
      { form: "hex", text: utf8.toString("hex") },
    ]),
  };
}

function bytesSecret(label: string, value: Uint8Array): Secret {
  const bytes = Buffer.from(value);
  return {
    label: `${label} ${bytes.toString("hex").slice(0, 8)}…`,
    bytes,
    needles: distinct([
      { form: "hex", text: bytes.toString("hex") },
      { form: "HEX", text: bytes.toString("hex").toUpperCase() },
      { form: "base64", text: bytes.toString("base64").replace(/=+$/, "") },
      { form: "base64url", text: bytes.toString("base64url") },
      // pino writes a Buffer as {"type":"Buffer","data":[…]}.
      { form: "Buffer JSON", text: `[${[...bytes].join(",")}]` },
      // As text (drizzle puts parameters into an error's message): JSON-escaped in a log line.
      { form: "bytes as text", text: JSON.stringify(bytes.toString("utf8")).slice(1, -1) },
    ]),
  };
}

const distinct = (needles: Needle[]) =>
  needles.filter((n, i) => n.text.length >= MIN_SECRET_LENGTH && needles.findIndex((m) => m.text === n.text) === i);
// encodeURIComponent refuses a lone surrogate, which no URL could then carry anyway.
const urlEncoded = (value: string) => {
  try {
    return encodeURIComponent(value);
  } catch {
    return value;
  }
};
const sha256Hex = (text: string) => createHash("sha256").update(text, "utf8").digest("hex");
const preview = (value: string) => JSON.stringify(value.length > 6 ? `${value.slice(0, 6)}…` : value);
