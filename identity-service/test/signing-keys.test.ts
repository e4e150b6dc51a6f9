/**
 * Signing keys of the identity service on a clock the test moves: one
 * setting (IDENTITY_JWKS_MAX_AGE) sets the JWKS max-age and when a rotated
 * key starts signing; `keys rotate` and `keys list` say when each key signs
 * and until when it is published, and the service signs accordingly.
 */
import { randomUUID } from "node:crypto";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { ConfigError } from "@customer-platform/runtime/config";
import { decodeProtectedHeader, type JSONWebKeySet } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { runCli } from "../src/cli.js";
import { envToConfig } from "../src/config.js";
import { KEY_ACTIVATION_MARGIN_MS, KEY_RELOAD_MS } from "../src/tokens.js";

const MAX_AGE_SEC = 600;
const ENV = { IDENTITY_JWKS_MAX_AGE: String(MAX_AGE_SEC) };
// The default IDENTITY_ACCESS_TOKEN_TTL (900 s) and five minutes.
const RETIRED_KEY_GRACE_MS = (900 + 300) * 1000;
const PASSWORD = "correct horse battery staple";

let clock = new Date();
const now = () => clock;
const setClock = (ms: number) => {
  clock = new Date(ms);
};
const iso = (ms: number) => new Date(ms).toISOString();

const streams = uniqueStreamNames("identity");
let database: TestDatabase;
let svc: RunningIdentityService;
let startedAt: number;

beforeAll(async () => {
  database = await createTestDatabase("identity");
  startedAt = clock.getTime();
  svc = await startIdentityService(ENV, { database, streams, now });
});

afterAll(async () => {
  await svc?.close();
  await database?.drop();
  await deleteStreams(sharedNatsUrl, streams.stream);
});

/** Stops the service and starts it again on the same database: it loads the keys anew. */
async function restart() {
  await svc.close();
  svc = await startIdentityService(ENV, { database, streams, now });
}

async function cli(...argv: string[]): Promise<string[]> {
  const out: string[] = [];
  expect(await runCli(argv, svc.env, (l) => out.push(l), now)).toBe(0);
  return out;
}

async function jwks() {
  const res = await fetch(`${svc.url}/.well-known/jwks.json`);
  const kids = ((await res.json()) as JSONWebKeySet).keys.map((k) => k.kid);
  return { kids, cacheControl: res.headers.get("cache-control") };
}

describe("signing keys", () => {
  it("serves the JWKS and the discovery document with IDENTITY_JWKS_MAX_AGE as max-age", async () => {
    expect((await jwks()).cacheControl).toBe(`public, max-age=${MAX_AGE_SEC}`);
    const disco = await fetch(`${svc.url}/.well-known/openid-configuration`);
    expect(disco.headers.get("cache-control")).toBe(`public, max-age=${MAX_AGE_SEC}`);
    expect(() => envToConfig({ ...svc.env, IDENTITY_JWKS_MAX_AGE: "-1" })).toThrow(
      new ConfigError("IDENTITY_JWKS_MAX_AGE must be between 0 and 86400, got -1"),
    );
  });

  it("rotated twice in a row: says when each key starts signing, publishes all, signs with each from then", async () => {
    const email = `keys.${randomUUID().slice(0, 8)}@example.com`;
    const auth = () => svc.clients.client(AuthService);
    const signUp = await auth().createCredentials({ email, password: PASSWORD });
    const kid0 = decodeProtectedHeader(signUp.tokens?.accessToken ?? "").kid ?? "";
    const signingKid = async () => {
      const res = await auth().authenticateCustomer({ email, password: PASSWORD });
      return decodeProtectedHeader(res.tokens?.accessToken ?? "").kid;
    };
    // Max-age, then the reload interval of the other instances, then a margin.
    const delayMs = MAX_AGE_SEC * 1000 + KEY_RELOAD_MS + KEY_ACTIVATION_MARGIN_MS;

    const rotated1 = clock.getTime();
    const out1 = await cli("keys", "rotate");
    const kid1 = /^new signing key ([0-9a-f-]{36}): /.exec(out1[0] ?? "")?.[1] ?? "";
    const signs1 = rotated1 + delayMs;
    expect(out1).toEqual([
      `new signing key ${kid1}: published now, signing from ${iso(signs1)}`,
      `(every JWKS copy cached before it was published has expired by then: max-age ${MAX_AGE_SEC} s, key reload 60 s, margin 60 s)`,
      `${kid1}\tEdDSA\tcreated ${iso(rotated1)}\tsigns from ${iso(signs1)}`,
      `${kid0}\tEdDSA\tcreated ${iso(startedAt)}\tsigning until ${iso(signs1)}`,
    ]);

    setClock(rotated1 + 10_000);
    const rotated2 = clock.getTime();
    const out2 = await cli("keys", "rotate");
    const kid2 = /^new signing key ([0-9a-f-]{36}): /.exec(out2[0] ?? "")?.[1] ?? "";
    const signs2 = rotated2 + delayMs;
    expect(out2).toEqual([
      `new signing key ${kid2}: published now, signing from ${iso(signs2)}`,
      out1[1],
      `${kid2}\tEdDSA\tcreated ${iso(rotated2)}\tsigns from ${iso(signs2)}`,
      `${kid1}\tEdDSA\tcreated ${iso(rotated1)}\tsigns from ${iso(signs1)} until ${iso(signs2)}`,
      `${kid0}\tEdDSA\tcreated ${iso(startedAt)}\tsigning until ${iso(signs1)}`,
    ]);

    // Until it reloads, this instance publishes and signs with what it had.
    expect((await jwks()).kids).toEqual([kid0]);
    await restart();
    const published = await jwks();
    expect(published.kids).toEqual([kid2, kid1, kid0]);
    // The rule: a copy cached for the advertised max-age just before a rotation has expired when the key signs.
    const maxAge = Number(/max-age=(\d+)/.exec(published.cacheControl ?? "")?.[1]);
    expect(signs1 - rotated1).toBeGreaterThan(maxAge * 1000 + KEY_RELOAD_MS);

    expect(await signingKid()).toBe(kid0);
    setClock(signs1 - 1);
    expect(await signingKid()).toBe(kid0);
    setClock(signs1);
    expect(await signingKid()).toBe(kid1);
    setClock(signs2 - 1);
    expect(await signingKid()).toBe(kid1);
    setClock(signs2);
    expect(await signingKid()).toBe(kid2);

    // Each rotation retires the keys then in use a margin after the new one starts signing.
    const unpublished0 = signs1 + KEY_ACTIVATION_MARGIN_MS + RETIRED_KEY_GRACE_MS;
    const unpublished1 = signs2 + KEY_ACTIVATION_MARGIN_MS + RETIRED_KEY_GRACE_MS;
    expect(await cli("keys", "list")).toEqual([
      `${kid2}\tEdDSA\tcreated ${iso(rotated2)}\tsigning`,
      `${kid1}\tEdDSA\tcreated ${iso(rotated1)}\tpublished until ${iso(unpublished1)}, no longer signing`,
      `${kid0}\tEdDSA\tcreated ${iso(startedAt)}\tpublished until ${iso(unpublished0)}, no longer signing`,
    ]);
    setClock(unpublished0);
    expect((await cli("keys", "list"))[2]).toBe(
      `${kid0}\tEdDSA\tcreated ${iso(startedAt)}\tretired, unpublished since ${iso(unpublished0)}`,
    );
    await restart();
    expect((await jwks()).kids).toEqual([kid2, kid1]);
  });

  it("on a database without keys, the rotated key is the only one and signs at once", async () => {
    await using empty = await createTestDatabase("identity-empty");
    const out: string[] = [];
    const env = { ...svc.env, IDENTITY_DATABASE_URL: empty.url };
    expect(await runCli(["keys", "rotate"], env, (l) => out.push(l), now)).toBe(0);
    const kid = /^new signing key ([0-9a-f-]{36}): /.exec(out[0] ?? "")?.[1] ?? "";
    expect(out).toEqual([
      `new signing key ${kid}: published now, signing from ${iso(clock.getTime())}`,
      "(no other key is live, so it signs at once)",
      `${kid}\tEdDSA\tcreated ${iso(clock.getTime())}\tsigning`,
    ]);
  });
});
