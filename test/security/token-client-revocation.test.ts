/**
 * Disabling a client or rotating its secret ends its live tokens: the
 * identity service refuses them at once (IntrospectToken says inactive), and
 * a TokensRevoked with the client's id and a cut-off, written to the outbox
 * in the same transaction, makes the customer service refuse them too. The
 * finding of issue 11: both left the client's tokens valid everywhere.
 */
import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer, failure, rpcError } from "../support/clients.js";
import { type Platform, type SignedUp, startPlatform } from "../support/platform.js";

const PASSWORD = "correct horse battery staple";
const REVOKED = rpcError("access token revoked", Code.Unauthenticated);
// How long a revocation may take to reach the customer service (it usually takes milliseconds).
const PROPAGATION = { timeout: 5_000, interval: 50 };

let platform: Platform;
let customer: SignedUp;
let introspector: string;

beforeAll(async () => {
  platform = await startPlatform();
  customer = await platform.newCustomer(PASSWORD, "client-revocation");
  introspector = await platform.serviceToken("identity:introspect", platform.issuer);
});
afterAll(() => platform?.close());

const cli = async (...args: string[]) => {
  const out: string[] = [];
  expect(await runCli(args, platform.identity.env, (l) => out.push(l))).toBe(0);
  return out;
};

/** A client made with the CLI, and a token for the customer service signed in with it. */
async function client() {
  const clientId = `svc-${randomUUID().slice(0, 8)}`;
  const { client_secret } = JSON.parse(
    (await cli("clients", "create", clientId, "--scopes", "customer:read"))[0] ?? "{}",
  ) as {
    client_secret: string;
  };
  return { clientId, secret: client_secret, token: await signIn(clientId, client_secret) };
}

async function signIn(clientId: string, clientSecret: string) {
  const res = await platform.auth().authenticateClient({ clientId, clientSecret, scope: "" });
  return res.tokens?.accessToken ?? "";
}

const read = (token: string) => platform.customers().getCustomer({ customerId: customer.customerId }, bearer(token));
const introspect = (token: string) => platform.auth().introspectToken({ token }, bearer(introspector));

it("disabling a client revokes its live tokens at the customer service and in introspection", async () => {
  const svc = await client();
  await expect(read(svc.token)).resolves.toBeDefined();
  await expect(introspect(svc.token)).resolves.toMatchObject({ active: true });
  await cli("clients", "disable", svc.clientId);
  // The identity service knows at once; the customer service from the event.
  await expect(introspect(svc.token)).resolves.toMatchObject({ active: false, sub: "" });
  await expect.poll(() => failure(read(svc.token)), PROPAGATION).toMatchObject(REVOKED);
  await expect(signIn(svc.clientId, svc.secret)).rejects.toMatchObject(
    rpcError("client disabled", Code.FailedPrecondition),
  );
});

it("rotating a secret revokes the tokens issued before; one from the new secret works at once", async () => {
  const svc = await client();
  await expect(read(svc.token)).resolves.toBeDefined();
  const out = await cli("clients", "rotate-secret", svc.clientId);
  const { client_secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
  // Within the same second as the rotation, too: the new token's iat is not before the cut-off.
  const fresh = await signIn(svc.clientId, client_secret);
  await expect(introspect(svc.token)).resolves.toMatchObject({ active: false });
  await expect(introspect(fresh)).resolves.toMatchObject({ active: true, sub: svc.clientId });
  await expect.poll(() => failure(read(svc.token)), PROPAGATION).toMatchObject(REVOKED);
  await expect(read(fresh)).resolves.toBeDefined();
  await expect(signIn(svc.clientId, svc.secret)).rejects.toMatchObject({ code: Code.Unauthenticated });
});
