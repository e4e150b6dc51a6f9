/**
 * Audience-restricted tokens (RFC 8707 resource indicators, as the `audience`
 * field of the sign-in RPCs and AuthenticateClient): a token names only the
 * resource servers it was asked for and the client may have, so a token sent
 * to one resource server cannot be replayed at another. The attack of issue
 * 11: a customer token checked by an "orders-service" verifier, then replayed
 * at the customer service's RegisterCustomer, was accepted (200).
 */
import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { createTokenVerifier } from "@customer-platform/sdk/tokens";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer, rpcError } from "../support/clients.js";
import { mailedCode } from "../support/mailbox.js";
import { type Platform, startPlatform, uniqueEmail } from "../support/platform.js";

const PASSWORD = "correct horse battery staple";
const INVALID = rpcError("invalid access token", Code.Unauthenticated);

let platform: Platform;

beforeAll(async () => {
  // The first-party apps may ask for the orders service too; by default they get the customer service.
  platform = await startPlatform({ identityEnv: { IDENTITY_AUDIENCES: "customer-service orders-service" } });
});
afterAll(() => platform?.close());

const aud = (token: string | undefined) => {
  const a = decodeJwt(token ?? "").aud;
  return typeof a === "string" ? [a] : a;
};

/** The orders service's verifier, as another team would build it with the SDK. */
const ordersVerifier = () =>
  createTokenVerifier({
    jwksUrl: `${platform.issuer}/.well-known/jwks.json`,
    issuer: platform.issuer,
    audience: "orders-service",
  });

describe("a token for one resource server", () => {
  it("asked for the orders service is accepted there and refused at the customer service", async () => {
    // Signed up by the mailed code: the token carries a verified email, so only its audience can refuse it.
    const signedUp = await platform.signUp(PASSWORD, "orders", ["orders-service"]);
    const token = signedUp.accessToken;
    expect(aud(token)).toEqual(["orders-service"]);
    await expect(ordersVerifier().verify(token)).resolves.toMatchObject({ subject: signedUp.customerId });
    // The replay of issue 11: RegisterCustomer with the orders service's token.
    await expect(
      platform.customers().registerCustomer({ givenName: "Ada", familyName: "Lovelace" }, bearer(token)),
    ).rejects.toMatchObject(INVALID);
  });

  it("a service's token for the orders service is refused at the customer service", async () => {
    const c = await platform.newCustomer(PASSWORD, "svc-orders");
    const token = await platform.serviceToken("customer:read", "orders-service");
    expect(aud(token)).toEqual(["orders-service"]);
    await expect(platform.customers().getCustomer({ customerId: c.customerId }, bearer(token))).rejects.toMatchObject(
      INVALID,
    );
  });

  it("a first-party customer token names the customer service only, at sign-up, sign-in and refresh", async () => {
    const c = await platform.newCustomer(PASSWORD, "default");
    expect(aud(c.accessToken)).toEqual(["customer-service"]);
    const signedIn = await platform.auth().authenticateCustomer({ email: c.email, password: PASSWORD });
    expect(aud(signedIn.tokens?.accessToken)).toEqual(["customer-service"]);
    const refreshed = await platform.auth().refreshToken({ refreshToken: c.refreshToken });
    expect(aud(refreshed.tokens?.accessToken)).toEqual(["customer-service"]);
    // …so the orders service refuses it.
    await expect(ordersVerifier().verify(c.accessToken)).rejects.toMatchObject({ reason: "invalid" });
  });
});

describe("the identity service's own RPCs", () => {
  it("refuse a customer-service token and accept one for the identity service (its issuer)", async () => {
    const c = await platform.newCustomer(PASSWORD, "own-rpc");
    await expect(
      platform.auth().changePassword({ currentPassword: PASSWORD, newPassword: `${PASSWORD}!` }, bearer(c.accessToken)),
    ).rejects.toMatchObject(INVALID);
    const both = await platform.auth().authenticateCustomer({
      email: c.email,
      password: PASSWORD,
      audience: ["customer-service", platform.issuer],
    });
    expect(aud(both.tokens?.accessToken)).toEqual(["customer-service", platform.issuer]);
    await expect(
      platform
        .auth()
        .changePassword(
          { currentPassword: PASSWORD, newPassword: `${PASSWORD}!` },
          bearer(both.tokens?.accessToken ?? ""),
        ),
    ).resolves.toBeDefined();
  });

  it("IntrospectToken refuses a service token for the customer service", async () => {
    const forCustomers = await platform.serviceToken("customer:read identity:introspect");
    await expect(platform.auth().introspectToken({ token: forCustomers }, bearer(forCustomers))).rejects.toMatchObject(
      INVALID,
    );
    const forIdentity = await platform.serviceToken("identity:introspect", platform.issuer);
    await expect(platform.auth().introspectToken({ token: forCustomers }, bearer(forIdentity))).resolves.toMatchObject({
      active: true,
      aud: ["customer-service"],
    });
  });
});

describe("an audience the client may not have", () => {
  it("is PERMISSION_DENIED at sign-up and sign-in, before any password work", async () => {
    const denied = rpcError("audience not allowed for this client: payments-service", Code.PermissionDenied);
    const email = uniqueEmail("deny");
    await platform.auth().startSignUp({ email });
    const code = await mailedCode(platform.identity.env.IDENTITY_MAILBOX_DIR ?? "", email);
    await expect(
      platform.auth().completeSignUp({ email, code, password: PASSWORD, audience: ["payments-service"] }),
    ).rejects.toMatchObject(denied);
    // Refused before the code was looked at: it still completes the sign-up.
    await expect(platform.auth().completeSignUp({ email, code, password: PASSWORD })).resolves.toMatchObject({
      customerId: expect.any(String),
    });
    const c = await platform.signUp(PASSWORD, "deny-in");
    await expect(
      platform.auth().authenticateCustomer({
        email: c.email,
        password: PASSWORD,
        audience: ["customer-service", "payments-service"],
      }),
    ).rejects.toMatchObject(denied);
  });

  it("is PERMISSION_DENIED for a service asking beyond its client's audiences", async () => {
    const { clientId, secret } = await createClient("customer:read", "customer-service");
    await expect(
      platform.auth().authenticateClient({ clientId, clientSecret: secret, scope: "", audience: [platform.issuer] }),
    ).rejects.toMatchObject(
      rpcError(`audience not allowed for this client: ${platform.issuer}`, Code.PermissionDenied),
    );
  });

  it("is INVALID_ARGUMENT when malformed (empty, with a space, too long)", async () => {
    for (const audience of [[""], ["customer service"], ["a".repeat(257)], ["customer-service", "customer-service"]]) {
      await expect(
        platform.auth().authenticateCustomer({ email: uniqueEmail("bad"), password: PASSWORD, audience }),
      ).rejects.toMatchObject({ code: Code.InvalidArgument });
    }
  });

  it("a refresh may narrow to some of the session's audiences, never widen, and keeps them all", async () => {
    const both = ["customer-service", "orders-service"];
    const signedUp = await platform.signUp(PASSWORD, "narrow", both);
    expect(aud(signedUp.accessToken)).toEqual(both);
    const narrowed = await platform
      .auth()
      .refreshToken({ refreshToken: signedUp.refreshToken, audience: ["orders-service"] });
    expect(aud(narrowed.tokens?.accessToken)).toEqual(["orders-service"]);
    // The next refresh, asking for nothing, gets the session's audiences back.
    const again = await platform.auth().refreshToken({ refreshToken: narrowed.tokens?.refreshToken ?? "" });
    expect(aud(again.tokens?.accessToken)).toEqual(both);
    // Widening to the identity service, which the sign-in did not ask for, is refused and consumes nothing.
    await expect(
      platform.auth().refreshToken({ refreshToken: again.tokens?.refreshToken ?? "", audience: [platform.issuer] }),
    ).rejects.toMatchObject(
      rpcError(`audience not allowed for this session: ${platform.issuer}`, Code.PermissionDenied),
    );
    await expect(
      platform.auth().refreshToken({ refreshToken: again.tokens?.refreshToken ?? "" }),
    ).resolves.toBeDefined();
  });
});

/** A client made with the CLI: its id and secret. */
async function createClient(scopes: string, audiences: string) {
  const clientId = `aud-${randomUUID().slice(0, 8)}`;
  const out: string[] = [];
  const args = ["clients", "create", clientId, "--scopes", scopes, "--audiences", audiences];
  expect(await runCli(args, platform.identity.env, (l) => out.push(l))).toBe(0);
  const { client_secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
  return { clientId, secret: client_secret };
}
