/**
 * Revoked access tokens at the customer service, which verifies tokens
 * offline: it follows the identity service's TokensRevoked events, so a token
 * revoked by RevokeToken (itself, or its session through the refresh token)
 * or by ChangePassword is answered UNAUTHENTICATED moments later, while
 * other sessions and service tokens keep working. A customer service started
 * later catches up on revocations still in force, and revocations keep
 * arriving after NATS restarts, including those made while it was down.
 * (Refresh-token reuse: test/abuse/credentials.test.ts.)
 */
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, failure, rpcError } from "../support/clients.js";
import { type PrivateNats, startPrivateNats } from "../support/nats.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { type Platform, type SignedUp, startPlatform } from "../support/platform.js";
import { startCustomerService } from "../support/services.js";

const PASSWORD = "correct horse battery staple";
const REVOKED = rpcError("access token revoked", Code.Unauthenticated);
// How long a revocation may take to reach the customer service (it usually takes milliseconds).
const PROPAGATION = { timeout: 5_000, interval: 50 };

/** GetCustomer of c's own profile with token at the customer service of p. */
const read = (p: Platform, c: SignedUp, token: string, customers = p.customers()) =>
  customers.getCustomer({ customerId: c.customerId }, bearer(token));

/** Resolves once the customer service of p rejects token as revoked. */
const rejected = (p: Platform, c: SignedUp, token: string) =>
  expect.poll(() => failure(read(p, c, token)), PROPAGATION).toMatchObject(REVOKED);

/** Resolves once the customer service of p accepts token (e.g. after it caught up on a revocation). */
const accepted = (p: Platform, c: SignedUp, token: string) =>
  expect(read(p, c, token)).resolves.toMatchObject({ customer: { customerId: c.customerId } });

describe("on the shared NATS", () => {
  let platform: Platform;
  let introspector: string;

  beforeAll(async () => {
    platform = await startPlatform();
    introspector = await platform.serviceToken("identity:introspect", platform.issuer);
  });
  afterAll(() => platform?.close());

  const introspect = (token: string) => platform.auth().introspectToken({ token }, bearer(introspector));
  const signIn = async (c: SignedUp) =>
    (await platform.auth().authenticateCustomer({ email: c.email, password: c.password })).tokens;

  it("rejects an access token revoked with RevokeToken; the customer's other session is untouched", async () => {
    const c = await platform.newCustomer(PASSWORD, "revoke-access");
    const other = await signIn(c);
    await accepted(platform, c, c.accessToken);
    await platform.auth().revokeToken({ token: c.accessToken });
    await rejected(platform, c, c.accessToken);
    await expect(introspect(c.accessToken)).resolves.toMatchObject({ active: false });
    await accepted(platform, c, other?.accessToken ?? "");
  });

  it("rejects every access token of a session whose refresh token was revoked", async () => {
    const c = await platform.newCustomer(PASSWORD, "revoke-session");
    const rotated = await platform.auth().refreshToken({ refreshToken: c.refreshToken });
    const at2 = rotated.tokens?.accessToken ?? "";
    await accepted(platform, c, at2);
    await platform.auth().revokeToken({ token: rotated.tokens?.refreshToken ?? "" });
    for (const token of [c.accessToken, at2]) {
      await rejected(platform, c, token);
      await expect(introspect(token)).resolves.toMatchObject({ active: false });
    }
  });

  it("after ChangePassword rejects the old access tokens at both services and accepts the new one", async () => {
    // Its token is for the identity service too (ChangePassword), not only the customer service.
    const c = await platform.newCustomer(PASSWORD, "change", ["customer-service", platform.issuer]);
    const second = await signIn(c);
    const changed = await platform
      .auth()
      .changePassword({ currentPassword: PASSWORD, newPassword: `${PASSWORD} 2` }, bearer(c.accessToken));
    const fresh = changed.tokens?.accessToken ?? "";
    for (const token of [c.accessToken, second?.accessToken ?? ""]) {
      await rejected(platform, c, token);
      await expect(introspect(token)).resolves.toMatchObject({ active: false });
    }
    // The identity service itself refuses the old token too (its own RPCs check sessions).
    await expect(
      platform
        .auth()
        .changePassword({ currentPassword: `${PASSWORD} 2`, newPassword: PASSWORD }, bearer(c.accessToken)),
    ).rejects.toMatchObject(REVOKED);
    await accepted(platform, c, fresh);
    await expect(introspect(fresh)).resolves.toMatchObject({ active: true, sub: c.customerId });
  });

  it("leaves service tokens alone, and rejects one that was revoked itself", async () => {
    const c = await platform.newCustomer(PASSWORD, "svc");
    const service = await platform.serviceToken("customer:read");
    await platform.auth().revokeToken({ token: c.refreshToken });
    await platform.auth().revokeToken({ token: c.accessToken });
    await rejected(platform, c, c.accessToken);
    await accepted(platform, c, service);

    await platform.auth().revokeToken({ token: service });
    await rejected(platform, c, service);
  });

  it("a customer service started later catches up on revocations still in force", async () => {
    const c = await platform.newCustomer(PASSWORD, "late");
    const kept = await signIn(c);
    await platform.auth().revokeToken({ token: c.accessToken });
    await waitForOutboxEmpty(platform.identity.database.url);
    await using late = await startCustomerService(
      { IDENTITY_ISSUER: platform.issuer, LOG_LEVEL: "warn" },
      { identityStreams: platform.identity.streams },
    );
    const customers = late.clients.client(CustomerService);
    // Its own database has no profile: NOT_FOUND is the answer a valid token gets.
    await expect.poll(() => failure(read(platform, c, c.accessToken, customers)), PROPAGATION).toMatchObject(REVOKED);
    await expect(read(platform, c, kept?.accessToken ?? "", customers)).rejects.toMatchObject({
      code: Code.NotFound,
    });
  });
});

describe("across a NATS restart", () => {
  let nats: PrivateNats;
  let platform: Platform;

  beforeAll(async () => {
    nats = await startPrivateNats();
    platform = await startPlatform({ natsUrl: nats.url });
  });
  afterAll(async () => {
    await platform?.close();
    await nats?.stop();
  });

  it("honours revocations made before, during and after the outage", async () => {
    const before = await platform.newCustomer(PASSWORD, "before");
    const during = await platform.newCustomer(PASSWORD, "during");
    const after = await platform.newCustomer(PASSWORD, "after");
    await platform.auth().revokeToken({ token: before.accessToken });
    await rejected(platform, before, before.accessToken);

    await nats.kill();
    // The identity service holds this one in its outbox until NATS is back.
    await platform.auth().revokeToken({ token: during.accessToken });
    await accepted(platform, during, during.accessToken); // nothing can tell the customer service yet
    await nats.start();

    await expect
      .poll(() => failure(read(platform, during, during.accessToken)), { timeout: 20_000, interval: 100 })
      .toMatchObject(REVOKED);
    await platform.auth().revokeToken({ token: after.accessToken });
    await rejected(platform, after, after.accessToken);
    // What was learnt before the outage is still known.
    await expect(failure(read(platform, before, before.accessToken))).resolves.toMatchObject(REVOKED);
    expect(platform.customer.server.revocations.subscribed).toBe(true);
  }, 60_000);
});
