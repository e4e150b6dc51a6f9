/**
 * Pulling a leaked signing key at once: `identity keys revoke <kid>` takes it
 * out of the JWKS (every instance reloads at the commit's notification), the
 * identity service refuses its tokens from the commit on, and a
 * TokensRevoked with its kid tells offline verifiers: the customer service
 * refuses its tokens and its SDK verifier drops the cached JWKS and fetches
 * it again, before any token of the new key shows up. With no other key
 * left, a new one signs at once. The finding of issue 11: there was no way.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Code } from "@connectrpc/connect";
import { decodeProtectedHeader, type JSONWebKeySet } from "jose";
import { afterAll, beforeAll, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer, failure } from "../support/clients.js";
import { type Platform, startPlatform } from "../support/platform.js";

const PASSWORD = "correct horse battery staple";
// How long a revocation may take to reach the customer service (it usually takes milliseconds).
const PROPAGATION = { timeout: 5_000, interval: 50 };

let platform: Platform;
/** The customer service's JWKS fetches (through a recording proxy): when, and the kids they carried. */
const fetches: { at: number; kids: string[] }[] = [];
let proxy: ReturnType<typeof createServer>;

beforeAll(async () => {
  proxy = createServer((_req, res) => {
    const at = Date.now();
    fetch(`${platform.issuer}/.well-known/jwks.json`).then(
      async (upstream) => {
        const body = await upstream.text();
        fetches.push({ at, kids: (JSON.parse(body) as JSONWebKeySet).keys.map((k) => k.kid ?? "") });
        res.writeHead(upstream.status, {
          "content-type": upstream.headers.get("content-type") ?? "application/json",
          "cache-control": upstream.headers.get("cache-control") ?? "no-store",
        });
        res.end(body);
      },
      () => res.writeHead(502).end(),
    );
  });
  await new Promise<void>((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  const jwksUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}/.well-known/jwks.json`;
  platform = await startPlatform({ customerEnv: { IDENTITY_JWKS_URL: jwksUrl } });
});
afterAll(async () => {
  await platform?.close();
  proxy?.close();
});

const kidOf = (token: string) => decodeProtectedHeader(token).kid ?? "";
const publishedKids = async () =>
  ((await (await fetch(`${platform.issuer}/.well-known/jwks.json`)).json()) as JSONWebKeySet).keys.map((k) => k.kid);

it("revokes a key: out of the JWKS, refused everywhere, a new key signs at once", async () => {
  const c = await platform.newCustomer(PASSWORD, "leaked");
  const read = (token: string) => platform.customers().getCustomer({ customerId: c.customerId }, bearer(token));
  await expect(read(c.accessToken)).resolves.toBeDefined();
  const leaked = kidOf(c.accessToken);
  const forIdentity = await platform
    .auth()
    .authenticateCustomer({ email: c.email, password: PASSWORD, audience: [platform.issuer] });
  const identityToken = forIdentity.tokens?.accessToken ?? "";
  expect(kidOf(identityToken)).toBe(leaked);
  expect(fetches.length).toBeGreaterThan(0);

  const out: string[] = [];
  const revokedAt = Date.now();
  expect(await runCli(["keys", "revoke", leaked], platform.identity.env, (l) => out.push(l))).toBe(0);
  expect(out[0]).toBe(`revoked signing key ${leaked}: out of the JWKS and refused now; verifiers told (TokensRevoked)`);
  const fresh = /^new signing key (\S+): no other key was live, so it signs at once$/.exec(out[1] ?? "")?.[1] ?? "";
  expect(fresh).not.toBe("");
  expect(out.slice(2).find((l) => l.startsWith(leaked))).toContain("revoked");

  // The identity service refuses the key's tokens from the commit on, no waiting: "access token revoked"
  // before this instance reloaded its keys, "invalid access token" after.
  const changed = platform
    .auth()
    .changePassword({ currentPassword: PASSWORD, newPassword: `${PASSWORD}!` }, bearer(identityToken));
  await expect(changed).rejects.toMatchObject({ code: Code.Unauthenticated });
  // Every instance reloads at the notification: the JWKS no longer lists the key.
  await expect.poll(publishedKids, PROPAGATION).toEqual([fresh]);
  // The customer service, whose cached JWKS still listed the key, refuses its tokens once the event arrives…
  await expect.poll(async () => (await failure(read(c.accessToken)))?.code, PROPAGATION).toBe(Code.Unauthenticated);
  // …and its verifier fetched the JWKS again, before any token of the new key was presented.
  await expect.poll(() => fetches.filter((f) => f.at >= revokedAt).at(-1)?.kids, PROPAGATION).toEqual([fresh]);

  // The new key signs at once, and its tokens work everywhere.
  const introspector = await platform.serviceToken("identity:introspect", platform.issuer);
  expect(kidOf(introspector)).toBe(fresh);
  const again = await platform.auth().authenticateCustomer({ email: c.email, password: PASSWORD });
  expect(kidOf(again.tokens?.accessToken ?? "")).toBe(fresh);
  await expect(read(again.tokens?.accessToken ?? "")).resolves.toBeDefined();
  await expect(platform.auth().introspectToken({ token: c.accessToken }, bearer(introspector))).resolves.toMatchObject({
    active: false,
  });
  await expect(
    platform.auth().introspectToken({ token: again.tokens?.accessToken ?? "" }, bearer(introspector)),
  ).resolves.toMatchObject({ active: true });
});

it("refuses an unknown or already revoked kid", async () => {
  await expect(runCli(["keys", "revoke", "no-such-kid"], platform.identity.env, () => {})).rejects.toThrow(
    'no live signing key "no-such-kid"',
  );
});
