/**
 * Account enumeration, with the production (OWASP) argon2id parameters: an
 * unknown email, a wrong password and a disabled identity get the same bytes
 * back in the same time; and a hash made with older parameters is upgraded
 * on the next successful sign-in.
 */
import { randomUUID } from "node:crypto";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import argon2 from "argon2";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";

const OWASP_PREFIX = "$argon2id$v=19$m=19456,t=2,p=1$";
const PASSWORD = "correct horse battery staple";

let svc: RunningIdentityService;
let sql: postgres.Sql;

beforeAll(async () => {
  svc = await startIdentityService({
    IDENTITY_ARGON2_MEMORY_KIB: "19456",
    IDENTITY_ARGON2_ITERATIONS: "2",
    // Dozens of failures for one login must all reach the password check.
    IDENTITY_THROTTLE_FREE_ATTEMPTS: "1000",
  });
  sql = svc.database.sql;
});

afterAll(async () => {
  await svc?.close();
});

const email = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;

async function signUp(): Promise<{ email: string; customerId: string }> {
  const address = email("known");
  const res = await svc.clients.client(AuthService).createCredentials({ email: address, password: PASSWORD });
  return { email: address, customerId: res.customerId };
}

async function storedHash(customerId: string): Promise<string> {
  const [row] = await sql<[{ password_hash: string }]>`
    select password_hash from identities where customer_id = ${customerId}`;
  return row.password_hash;
}

interface RawAnswer {
  status: number;
  headers: [string, string][];
  body: string;
}

/** One sign-in over Connect on HTTP/1.1 (fetch), the answer as bytes on the wire show it, minus `date`. */
async function rawSignIn(address: string, password: string, encoding: "json" | "proto" = "json"): Promise<RawAnswer> {
  const body =
    encoding === "json"
      ? JSON.stringify({ email: address, password })
      : // AuthenticateCustomerRequest { email = 1; password = 2 } in protobuf binary.
        Buffer.concat([field(1, address), field(2, password)]);
  const res = await fetch(`${svc.url}/identity.v1.AuthService/AuthenticateCustomer`, {
    method: "POST",
    headers: { "content-type": `application/${encoding}`, "connect-protocol-version": "1" },
    body,
  });
  return {
    status: res.status,
    headers: [...res.headers.entries()].filter(([name]) => name !== "date"),
    body: Buffer.from(await res.arrayBuffer()).toString("base64"),
  };
}

function field(num: number, value: string): Buffer {
  const bytes = Buffer.from(value, "utf8");
  if (bytes.length > 127) throw new Error("test strings stay below 128 bytes");
  return Buffer.concat([Buffer.from([(num << 3) | 2, bytes.length]), bytes]);
}

async function timed(fn: () => Promise<RawAnswer>): Promise<number> {
  const start = performance.now();
  const answer = await fn();
  const ms = performance.now() - start;
  expect(answer.status).toBe(401);
  return ms;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
};

describe("unknown email versus wrong password", () => {
  it("stores new hashes with the OWASP parameters", async () => {
    const user = await signUp();
    expect(await storedHash(user.customerId)).toMatch(new RegExp(`^${OWASP_PREFIX.replace(/\$/g, "\\$")}`));
  });

  it.each(["json", "proto"] as const)("gives byte-identical answers (Connect, %s)", async (encoding) => {
    const user = await signUp();
    const disabled = await signUp();
    await sql`update identities set status = 'disabled' where customer_id = ${disabled.customerId}`;

    const wrongPassword = await rawSignIn(user.email, "wrong password!", encoding);
    const unknownEmail = await rawSignIn(email("unknown"), "wrong password!", encoding);
    const disabledIdentity = await rawSignIn(disabled.email, PASSWORD, encoding);
    expect(wrongPassword.status).toBe(401);
    expect(Buffer.from(wrongPassword.body, "base64").toString()).toContain("invalid email or password");
    expect(unknownEmail).toEqual(wrongPassword);
    expect(disabledIdentity).toEqual(wrongPassword);
    // The right password gets a different answer: the comparison above can tell answers apart.
    expect((await rawSignIn(user.email, PASSWORD, encoding)).status).toBe(200);
  });

  it("takes the same time: medians of 30 interleaved tries each are within tolerance", async () => {
    const user = await signUp();
    const known = () => rawSignIn(user.email, "wrong password!");
    const unknown = () => rawSignIn(email("unknown"), "wrong password!");
    for (let i = 0; i < 3; i++) {
      await timed(known);
      await timed(unknown);
    }
    const knownMs: number[] = [];
    const unknownMs: number[] = [];
    for (let i = 0; i < 30; i++) {
      // Alternate which kind goes first, so drift and warm-up favour neither.
      if (i % 2 === 0) {
        knownMs.push(await timed(known));
        unknownMs.push(await timed(unknown));
      } else {
        unknownMs.push(await timed(unknown));
        knownMs.push(await timed(known));
      }
    }
    const k = median(knownMs);
    const u = median(unknownMs);
    const tolerance = Math.max(0.25 * Math.max(k, u), 15);
    expect(Math.abs(k - u), `known ${k.toFixed(1)} ms, unknown ${u.toFixed(1)} ms`).toBeLessThan(tolerance);
    // Both paths really ran argon2id at m=19 MiB, t=2 (a few ms at the very least); without the
    // dummy verification the unknown path would be an order of magnitude faster than this.
    expect(u).toBeGreaterThan(5);
  });
});

describe("rehash on sign-in", () => {
  it("upgrades a hash made with older parameters after a correct password, not after a wrong one", async () => {
    const customerId = randomUUID();
    const address = email("legacy");
    const legacy = await argon2.hash(PASSWORD, {
      type: argon2.argon2id,
      memoryCost: 4096,
      timeCost: 1,
      parallelism: 1,
    });
    expect(legacy.startsWith("$argon2id$v=19$m=4096,t=1,p=1$")).toBe(true);
    await sql`
      insert into identities (customer_id, email, password_hash, created_at, updated_at, password_changed_at)
      values (${customerId}, ${address}, ${legacy}, now(), now(), now())`;

    const auth = svc.clients.client(AuthService);
    await expect(auth.authenticateCustomer({ email: address, password: "wrong password!" })).rejects.toMatchObject({
      rawMessage: "invalid email or password",
    });
    expect(await storedHash(customerId)).toBe(legacy);

    const res = await auth.authenticateCustomer({ email: address, password: PASSWORD });
    expect(res.customerId).toBe(customerId);
    const upgraded = await storedHash(customerId);
    expect(upgraded.startsWith(OWASP_PREFIX)).toBe(true);
    expect(await argon2.verify(upgraded, PASSWORD)).toBe(true);

    // The new hash works, and is not redone on every sign-in.
    await auth.authenticateCustomer({ email: address, password: PASSWORD });
    expect(await storedHash(customerId)).toBe(upgraded);
  });
});
