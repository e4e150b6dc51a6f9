/**
 * IntrospectToken tells only those allowed to know: a service needs the
 * scope `identity:introspect` (and a token for the identity service's
 * audience), and a refresh token is described only to the client it was
 * issued to. The attack of issue 11: a `billing:read` client learned a
 * customer's refresh token subject, scope and expiry.
 */
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, expect, it } from "vitest";
import { bearer, rpcError } from "../support/clients.js";
import { type Platform, startPlatform } from "../support/platform.js";

const PASSWORD = "correct horse battery staple";

let platform: Platform;

beforeAll(async () => {
  platform = await startPlatform();
});
afterAll(() => platform?.close());

it("is PERMISSION_DENIED to a service without identity:introspect", async () => {
  const c = await platform.signUp(PASSWORD, "introspected");
  const billing = await platform.serviceToken("billing:read", platform.issuer);
  for (const token of [c.accessToken, c.refreshToken]) {
    await expect(platform.auth().introspectToken({ token }, bearer(billing))).rejects.toMatchObject(
      rpcError("introspection requires the scope identity:introspect", Code.PermissionDenied),
    );
  }
});

it("describes an access token to a service with identity:introspect", async () => {
  const c = await platform.signUp(PASSWORD, "described");
  const introspector = await platform.serviceToken("identity:introspect", platform.issuer);
  await expect(platform.auth().introspectToken({ token: c.accessToken }, bearer(introspector))).resolves.toMatchObject({
    active: true,
    sub: c.customerId,
    clientId: "first-party",
    tokenType: "access_token",
    aud: ["customer-service"],
  });
});

it("never describes a refresh token to a client it was not issued to: inactive, nothing else", async () => {
  const c = await platform.signUp(PASSWORD, "private");
  const introspector = await platform.serviceToken("identity:introspect", platform.issuer);
  const res = await platform.auth().introspectToken({ token: c.refreshToken }, bearer(introspector));
  expect(res).toMatchObject({ active: false, sub: "", clientId: "", scope: "", exp: 0n, iat: 0n, tokenType: "" });
  expect(res.aud).toEqual([]);
  // The refresh token itself is fine: it was only not described.
  await expect(platform.auth().refreshToken({ refreshToken: c.refreshToken })).resolves.toBeDefined();
});

it("answers inactive for a token of an identity that is no longer active, and the identity service refuses it", async () => {
  const c = await platform.signUp(PASSWORD, "disabled", ["customer-service", platform.issuer]);
  const introspector = await platform.serviceToken("identity:introspect", platform.issuer);
  await expect(platform.auth().introspectToken({ token: c.accessToken }, bearer(introspector))).resolves.toMatchObject({
    active: true,
  });
  await platform.identity.database.sql`update identities set status = 'disabled' where customer_id = ${c.customerId}`;
  await expect(platform.auth().introspectToken({ token: c.accessToken }, bearer(introspector))).resolves.toMatchObject({
    active: false,
  });
  await expect(
    platform.auth().changePassword({ currentPassword: PASSWORD, newPassword: `${PASSWORD}!` }, bearer(c.accessToken)),
  ).rejects.toMatchObject(rpcError("access token revoked", Code.Unauthenticated));
});
