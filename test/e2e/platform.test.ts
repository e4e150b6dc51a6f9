/**
 * The platform end to end: the real identity service (issuer
 * http://127.0.0.1:<port>) and the real customer service verifying its
 * tokens offline against the default JWKS URL, with subscribers on both
 * streams.
 */

import { fromBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { CustomerRegisteredSchema, CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { AuthenticationMethod, CustomerAuthenticatedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { CE_TYPE } from "@customer-platform/sdk/cloudevents";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, rpcError } from "../support/clients.js";
import { customerClaims, jwt, nowSec, readSigningKey } from "../support/jwt.js";
import { sharedNatsUrl } from "../support/nats.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { type Platform, startPlatform, uniqueEmail } from "../support/platform.js";
import { startIdentityService } from "../support/services.js";
import { collect, waitForStream } from "../support/streams.js";
import { sleep } from "../support/timing.js";

const PASSWORD = "correct horse battery staple";

let platform: Platform;
let issuer: string;
let nc: NatsConnection;

beforeAll(async () => {
  // No IDENTITY_JWKS_URL: the customer service derives <issuer>/.well-known/jwks.json.
  platform = await startPlatform();
  issuer = platform.issuer;
  expect(platform.identity.url).toBe(issuer);
  nc = await connect({ servers: sharedNatsUrl });
  const jsm = await jetstreamManager(nc);
  await waitForStream(jsm, platform.identity.streams.stream);
  await waitForStream(jsm, platform.customer.streams.stream);
});

afterAll(async () => {
  await nc?.close();
  await platform?.close();
});

const auth = () => platform.auth();
const customers = () => platform.customers();
const profile = (address: string) => ({ email: address, givenName: "Ada", familyName: "Lovelace" });

/** Signs up with the identity service and registers a profile with the returned token. */
async function newCustomer(label: string) {
  const c = await platform.newCustomer(PASSWORD, label);
  return { email: c.email, customerId: c.customerId, token: c.accessToken };
}

describe("customer and identity services together", () => {
  it("signs up, registers, signs in, reads and updates; subscribers see all three event types", async () => {
    // StartSignUp, the mailed code, CompleteSignUp: the email is verified and in the access token.
    const signUp = await platform.signUp(PASSWORD, "flow");
    const { customerId, email: address } = signUp;
    const { customer, identity } = platform;
    const customerEvents = await collect(
      nc,
      customer.streams.stream,
      `${customer.streams.subjectPrefix}.*.${customerId}`,
    );
    const identityEvents = await collect(
      nc,
      identity.streams.stream,
      `${identity.streams.subjectPrefix}.customer.authenticated.${customerId}`,
    );
    try {
      const registered = await customers().registerCustomer(profile(address), bearer(signUp.accessToken));
      expect(registered.customer).toMatchObject({ customerId, email: address, version: 1n });

      const signIn = await auth().authenticateCustomer({ email: address, password: PASSWORD });
      expect(signIn.customerId).toBe(customerId);
      const token = signIn.tokens?.accessToken ?? "";

      const got = await customers().getCustomer({ customerId }, bearer(token));
      expect(got.customer).toEqual(registered.customer);

      const updated = await customers().updateCustomer(
        { customer: { customerId, givenName: "Augusta" }, updateMask: { paths: ["given_name"] }, expectedVersion: 1n },
        bearer(token),
      );
      expect(updated.customer).toMatchObject({ customerId, givenName: "Augusta", familyName: "Lovelace", version: 2n });

      const [reg, upd] = await customerEvents.until(2);
      const [authn] = await identityEvents.until(1);
      if (!reg || !upd || !authn) throw new Error("events missing");
      expect(reg.subject).toBe(`${customer.streams.subjectPrefix}.registered.${customerId}`);
      expect(reg.headers?.get(CE_TYPE)).toBe("customer.v1.CustomerRegistered");
      expect(fromBinary(CustomerRegisteredSchema, reg.data).customer).toEqual(registered.customer);
      expect(upd.subject).toBe(`${customer.streams.subjectPrefix}.updated.${customerId}`);
      expect(upd.headers?.get(CE_TYPE)).toBe("customer.v1.CustomerUpdated");
      const updEvent = fromBinary(CustomerUpdatedSchema, upd.data);
      expect(updEvent.customer).toEqual(updated.customer);
      expect(updEvent.updateMask?.paths).toEqual(["given_name"]);
      expect(authn.subject).toBe(`${identity.streams.subjectPrefix}.customer.authenticated.${customerId}`);
      expect(authn.headers?.get(CE_TYPE)).toBe("identity.v1.CustomerAuthenticated");
      expect(fromBinary(CustomerAuthenticatedSchema, authn.data)).toMatchObject({
        customerId,
        method: AuthenticationMethod.PASSWORD,
      });

      // Nothing else: sign-up published no CustomerAuthenticated, and every event came once.
      await waitForOutboxEmpty(identity.database.url);
      await waitForOutboxEmpty(customer.database.url);
      await sleep(200);
      expect(customerEvents.received.length).toBe(2);
      expect(identityEvents.received.length).toBe(1);
    } finally {
      await customerEvents.stop();
      await identityEvents.stop();
    }
  });

  it("lets a customer:read service read any profile but not change it", async () => {
    const c = await newCustomer("svc");
    const token = await platform.serviceToken("customer:read");
    const got = await customers().getCustomer({ customerId: c.customerId }, bearer(token));
    expect(got.customer?.customerId).toBe(c.customerId);
    await expect(
      customers().updateCustomer(
        { customer: { customerId: c.customerId, givenName: "Mallory" }, updateMask: { paths: ["given_name"] } },
        bearer(token),
      ),
    ).rejects.toMatchObject(rpcError('token lacks scope "customer:write"', Code.PermissionDenied));
    await expect(customers().registerCustomer(profile(uniqueEmail("svc")), bearer(token))).rejects.toMatchObject(
      rpcError("only a customer token can register a profile", Code.PermissionDenied),
    );
  });

  it("keeps one customer's token away from another customer's profile", async () => {
    const alice = await newCustomer("alice");
    const bob = await newCustomer("bob");
    await expect(customers().getCustomer({ customerId: bob.customerId }, bearer(alice.token))).rejects.toMatchObject(
      rpcError("a customer may only access their own profile", Code.PermissionDenied),
    );
    await expect(
      customers().updateCustomer(
        { customer: { customerId: bob.customerId, givenName: "Mallory" }, updateMask: { paths: ["given_name"] } },
        bearer(alice.token),
      ),
    ).rejects.toMatchObject(rpcError("a customer may only access their own profile", Code.PermissionDenied));
    expect((await customers().getCustomer({ customerId: bob.customerId }, bearer(bob.token))).customer?.givenName).toBe(
      "Ada",
    );
  });

  describe("tokens the customer service must refuse", () => {
    /** A token signed with the identity service's own live key, claims as it issues them unless overridden. */
    async function forge(sub: string, claims: { aud?: string[]; exp?: number; iat?: number }): Promise<string> {
      const key = await readSigningKey(platform.identity.database.sql);
      return jwt({ alg: "EdDSA", typ: "at+jwt", kid: key.kid }, customerClaims(issuer, sub, claims), key.sign);
    }

    it("accepts the reference forgery, so the rejections below are for the claim changed", async () => {
      const c = await newCustomer("ref");
      const token = await forge(c.customerId, {});
      await expect(customers().getCustomer({ customerId: c.customerId }, bearer(token))).resolves.toMatchObject({
        customer: { customerId: c.customerId },
      });
    });

    it("rejects an expired token", async () => {
      const c = await newCustomer("expired");
      const now = nowSec();
      const token = await forge(c.customerId, { iat: now - 1000, exp: now - 60 });
      await expect(customers().getCustomer({ customerId: c.customerId }, bearer(token))).rejects.toMatchObject(
        rpcError("access token expired", Code.Unauthenticated),
      );
    });

    it("rejects a token for another audience", async () => {
      const c = await newCustomer("aud");
      const token = await forge(c.customerId, { aud: ["order-service", issuer] });
      await expect(customers().getCustomer({ customerId: c.customerId }, bearer(token))).rejects.toMatchObject(
        rpcError("invalid access token", Code.Unauthenticated),
      );
    });

    it("rejects a token from another identity instance with the same issuer but its own key", async () => {
      const c = await newCustomer("foreign");
      await using impostor = await startIdentityService({ IDENTITY_ISSUER: issuer });
      const res = await impostor.clients
        .client(AuthService)
        .createCredentials({ email: uniqueEmail("impostor"), password: PASSWORD });
      // Same issuer and audience; only the key differs. Even the victim's id as subject does not help.
      const token = res.tokens?.accessToken ?? "";
      await expect(customers().getCustomer({ customerId: res.customerId }, bearer(token))).rejects.toMatchObject(
        rpcError("invalid access token", Code.Unauthenticated),
      );
      const [h, p, s] = token.split(".");
      const claims = JSON.parse(Buffer.from(p ?? "", "base64url").toString()) as Record<string, unknown>;
      expect(claims.iss).toBe(issuer);
      const asVictim = `${h}.${Buffer.from(JSON.stringify({ ...claims, sub: c.customerId })).toString("base64url")}.${s}`;
      await expect(customers().getCustomer({ customerId: c.customerId }, bearer(asVictim))).rejects.toMatchObject(
        rpcError("invalid access token", Code.Unauthenticated),
      );
    });

    it("rejects a tampered token and an unsigned one", async () => {
      const alice = await newCustomer("tamper-a");
      const bob = await newCustomer("tamper-b");
      const [h, p, s] = alice.token.split(".");
      const claims = JSON.parse(Buffer.from(p ?? "", "base64url").toString()) as Record<string, unknown>;
      const swapped = Buffer.from(JSON.stringify({ ...claims, sub: bob.customerId })).toString("base64url");
      await expect(
        customers().getCustomer({ customerId: bob.customerId }, bearer(`${h}.${swapped}.${s}`)),
      ).rejects.toMatchObject(rpcError("invalid access token", Code.Unauthenticated));
      const none = Buffer.from(JSON.stringify({ alg: "none", typ: "at+jwt" })).toString("base64url");
      await expect(
        customers().getCustomer({ customerId: bob.customerId }, bearer(`${none}.${swapped}.`)),
      ).rejects.toMatchObject({ code: Code.Unauthenticated });
      // The untouched token still works.
      await expect(
        customers().getCustomer({ customerId: alice.customerId }, bearer(alice.token)),
      ).resolves.toBeDefined();
    });
  });
});
