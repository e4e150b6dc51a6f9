/**
 * Signing-key rotation across the platform, on a clock the test moves (both
 * services take it as `now`; it stands still unless the test sets it): a
 * rotated key signs only once every copy of the JWKS cached for the
 * advertised max-age has expired, so the first token of the new key
 * verifies on the first call, in a verifier that never refetches for an
 * unknown kid as in the customer service; and the old key's tokens keep
 * verifying until they expire.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Code } from "@connectrpc/connect";
import {
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  type JSONWebKeySet,
  type JWTVerifyGetKey,
  jwtVerify,
} from "jose";
import { expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { KEY_RELOAD_MS } from "../../identity-service/src/tokens.js";
import { bearer, rpcError } from "../support/clients.js";
import { type Platform, type SignedUp, startPlatform } from "../support/platform.js";

const PASSWORD = "correct horse battery staple";

let clock = new Date();
/** The services' clock. */
const now = () => clock;
const setClock = (ms: number) => {
  clock = new Date(ms);
};

/** Starts both services on the test's clock, set to the wall clock first. */
async function platformOnClock(opts: { customerEnv?: Record<string, string> } = {}): Promise<Platform> {
  setClock(Date.now());
  return startPlatform({ now, ...opts });
}

/** `npm run identity -- keys rotate` at the test's clock: the new kid and when it starts signing, as printed. */
async function rotate(platform: Platform) {
  const out: string[] = [];
  expect(await runCli(["keys", "rotate"], platform.identity.env, (l) => out.push(l), now)).toBe(0);
  const printed = /^new signing key ([0-9a-f-]{36}): published now, signing from (\S+)$/.exec(out[0] ?? "");
  if (!printed?.[1] || !printed[2]) throw new Error(`keys rotate printed ${JSON.stringify(out)}`);
  return { kid: printed[1], at: clock.getTime(), signsFrom: new Date(printed[2]).getTime() };
}

/** `keys list` at the test's clock. */
async function listKeys(platform: Platform): Promise<string[]> {
  const out: string[] = [];
  expect(await runCli(["keys", "list"], platform.identity.env, (l) => out.push(l), now)).toBe(0);
  return out;
}

/** A customer's access token from a password sign-in now, and its kid. */
async function signIn(platform: Platform, customer: SignedUp) {
  const res = await platform.auth().authenticateCustomer({ email: customer.email, password: PASSWORD });
  const token = res.tokens?.accessToken ?? "";
  return { token, kid: decodeProtectedHeader(token).kid };
}

async function publishedKids(platform: Platform): Promise<string[]> {
  const res = await fetch(`${platform.issuer}/.well-known/jwks.json`);
  return ((await res.json()) as JSONWebKeySet).keys.map((k) => k.kid ?? "");
}

/**
 * A verifier as an API gateway or another team's service may have one:
 * jose's createLocalJWKSet over the JWKS it fetched, kept for the response's
 * max-age (less its Age) on the test's clock, never refetched for an
 * unknown kid.
 */
function cachingVerifier(platform: Platform) {
  let copy: { getKey: JWTVerifyGetKey; kids: string[]; maxAgeSec: number; expiresAt: number } | undefined;
  let fetches = 0;
  const refresh = async () => {
    const fetchedAt = clock.getTime();
    const res = await fetch(`${platform.issuer}/.well-known/jwks.json`);
    const cacheControl = res.headers.get("cache-control") ?? "";
    const maxAge = /(?:^|[\s,])max-age=(\d+)(?:$|[\s,])/.exec(cacheControl)?.[1];
    if (maxAge === undefined) throw new Error(`no max-age in cache-control "${cacheControl}"`);
    const maxAgeSec = Number(maxAge) - Number(res.headers.get("age") ?? 0);
    const jwks = (await res.json()) as JSONWebKeySet;
    fetches++;
    copy = {
      getKey: createLocalJWKSet(jwks),
      kids: jwks.keys.map((k) => k.kid ?? ""),
      maxAgeSec,
      expiresAt: fetchedAt + maxAgeSec * 1000,
    };
    return copy;
  };
  return {
    refresh,
    get fetches() {
      return fetches;
    },
    async verify(token: string) {
      const keys = copy && clock.getTime() < copy.expiresAt ? copy : await refresh();
      const { payload } = await jwtVerify(token, keys.getKey, {
        issuer: platform.issuer,
        audience: "customer-service",
        currentDate: clock,
      });
      return payload;
    },
  };
}

/**
 * The customer service's JWKS URL: forwards to the identity service and
 * notes each fetch (at the test's clock) and the kids it carried.
 */
async function startJwksRecorder(upstream: () => string) {
  const fetches: { at: number; kids: string[] }[] = [];
  const server = createServer((req, res) => {
    const at = clock.getTime();
    void fetch(`${upstream()}${req.url ?? "/"}`)
      .then(async (r) => {
        const body = await r.text();
        if (r.status === 200)
          fetches.push({ at, kids: (JSON.parse(body) as JSONWebKeySet).keys.map((k) => k.kid ?? "") });
        res.writeHead(r.status, {
          "content-type": r.headers.get("content-type") ?? "application/json",
          "cache-control": r.headers.get("cache-control") ?? "",
        });
        res.end(body);
      })
      .catch(() => res.writeHead(502).end());
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`,
    fetches,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

it("a verifier that keeps the JWKS for its max-age and never refetches for an unknown kid accepts the first token of a new key", async () => {
  const platform = await platformOnClock();
  try {
    const customer = await platform.signUp(PASSWORD, "rotate");
    const oldKid = decodeProtectedHeader(customer.accessToken).kid;

    // Worst cases of a copy without the new key, each kept as long as the response allows:
    // fetched just before the rotation…
    const beforeRotation = cachingVerifier(platform);
    const { maxAgeSec } = await beforeRotation.refresh();
    expect(maxAgeSec).toBe(300);
    const rotation = await rotate(platform);
    expect(rotation.kid).not.toBe(oldKid);
    // …fetched from an instance just before it reloads its keys (here none reloads until the restart)…
    setClock(rotation.at + KEY_RELOAD_MS - 1_000);
    const beforeReload = cachingVerifier(platform);
    const notReloaded = await beforeReload.refresh();
    expect(notReloaded.kids).toEqual([oldKid]);
    expect(notReloaded.maxAgeSec).toBe(maxAgeSec);
    // …and from an instance whose reloads have been failing since: it serves what it has for less long.
    setClock(rotation.at + KEY_RELOAD_MS + (maxAgeSec * 1000) / 2);
    const reloadsFailing = cachingVerifier(platform);
    const stale = await reloadsFailing.refresh();
    expect(stale.kids).toEqual([oldKid]);
    expect(stale.maxAgeSec).toBe(maxAgeSec / 2);

    await platform.restartIdentity(); // reloads: the new key is published, the old one still signs
    expect((await publishedKids(platform)).sort()).toEqual([oldKid, rotation.kid].sort());
    setClock(rotation.signsFrom - 1);
    expect((await signIn(platform, customer)).kid).toBe(oldKid);
    setClock(rotation.signsFrom);
    const first = await signIn(platform, customer);
    expect(first.kid).toBe(rotation.kid);

    // The first call with the first token of the new key succeeds in each: every copy had expired.
    for (const verifier of [beforeRotation, beforeReload, reloadsFailing]) {
      await expect(verifier.verify(first.token)).resolves.toMatchObject({ sub: customer.customerId });
      expect(verifier.fetches).toBe(2);
    }
  } finally {
    await platform.close();
  }
});

it("the customer service accepts the first token of a new key on the first call, without refetching for its kid", async () => {
  let issuer = "";
  const recorder = await startJwksRecorder(() => issuer);
  const platform = await platformOnClock({ customerEnv: { IDENTITY_JWKS_URL: recorder.url } });
  try {
    issuer = platform.issuer;
    const oldKid = (await publishedKids(platform))[0];
    const rotation = await rotate(platform);

    // The customer service's first fetch comes at the worst moment: just before the identity instance reloads.
    setClock(rotation.at + KEY_RELOAD_MS - 1_000);
    const customer = await platform.newCustomer(PASSWORD, "rotate");
    expect(recorder.fetches).toEqual([{ at: clock.getTime(), kids: [oldKid] }]);

    // Its copy has expired by the time the new key signs (max-age): any call now brings the new key.
    setClock(rotation.signsFrom - 1);
    await platform.restartIdentity(); // reloads on time, so it serves the full max-age
    const lastOld = await signIn(platform, customer);
    expect(lastOld.kid).toBe(oldKid);
    await expect(
      platform.customers().getCustomer({ customerId: customer.customerId }, bearer(lastOld.token)),
    ).resolves.toMatchObject({ customer: { customerId: customer.customerId } });
    expect(recorder.fetches).toHaveLength(2);
    expect(recorder.fetches[1]?.kids).toContain(rotation.kid);

    setClock(rotation.signsFrom);
    const first = await signIn(platform, customer);
    expect(first.kid).toBe(rotation.kid);
    await expect(
      platform.customers().getCustomer({ customerId: customer.customerId }, bearer(first.token)),
    ).resolves.toMatchObject({ customer: { customerId: customer.customerId } });
    // The key was already there: no fetch for the unknown kid.
    expect(recorder.fetches).toHaveLength(2);
  } finally {
    await platform.close();
    await recorder.close();
  }
});

it("keeps the old key's tokens verifying until they expire, and unpublishes the key only after", async () => {
  const platform = await platformOnClock();
  try {
    const customer = await platform.newCustomer(PASSWORD, "old-key");
    const oldKid = decodeProtectedHeader(customer.accessToken).kid ?? "";
    const rotation = await rotate(platform);
    await platform.restartIdentity();
    // The last token the old key signs.
    setClock(rotation.signsFrom - 1);
    const lastOld = await signIn(platform, customer);
    expect(lastOld.kid).toBe(oldKid);
    const expiresAt = (decodeJwt(lastOld.token).exp ?? 0) * 1000;
    expect(expiresAt).toBeGreaterThan(rotation.signsFrom);

    // A second before it expires, both a fresh verifier and the customer service (whose copy of
    // the JWKS has long expired) fetch a JWKS that still has the old key.
    setClock(expiresAt - 1_000);
    await platform.restartIdentity(); // reloads at this time
    await expect(cachingVerifier(platform).verify(lastOld.token)).resolves.toMatchObject({
      sub: customer.customerId,
    });
    await expect(
      platform.customers().getCustomer({ customerId: customer.customerId }, bearer(lastOld.token)),
    ).resolves.toMatchObject({ customer: { customerId: customer.customerId } });
    setClock(expiresAt + 6_000); // past the verifier's 5 s clock tolerance
    await expect(
      platform.customers().getCustomer({ customerId: customer.customerId }, bearer(lastOld.token)),
    ).rejects.toMatchObject(rpcError("access token expired", Code.Unauthenticated));

    // `keys list` says until when the old key stays published: after its last token expired.
    const line = (await listKeys(platform)).find((l) => l.startsWith(oldKid));
    const until = /\tpublished until (\S+), no longer signing$/.exec(line ?? "")?.[1];
    if (!until) throw new Error(`keys list said ${line}`);
    const unpublishedAt = new Date(until).getTime();
    expect(unpublishedAt).toBeGreaterThan(expiresAt);
    setClock(unpublishedAt - 1);
    await platform.restartIdentity();
    expect(await publishedKids(platform)).toContain(oldKid);
    setClock(unpublishedAt);
    await platform.restartIdentity();
    expect(await publishedKids(platform)).toEqual([rotation.kid]);
  } finally {
    await platform.close();
  }
});
