/**
 * The platform end to end: the real identity service (issuer
 * http://127.0.0.1:<port>) and the real customer service verifying its
 * tokens offline against the default JWKS URL, with subscribers on both
 * streams.
 */

import { randomUUID } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { CustomerRegisteredSchema, CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { AuthenticationMethod, CustomerAuthenticatedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { CE_TYPE } from "@customer-platform/sdk/cloudevents";
import { type JsMsg, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type CryptoKey, decodeProtectedHeader, importJWK, type JWK, SignJWT } from "jose";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer, type Clients, createClients, rpcError } from "../support/clients.js";
import {
  deleteStreams,
  freePort,
  type StreamNames,
  sharedNatsUrl,
  uniqueStreamNames,
  waitForStream,
} from "../support/nats.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { createTestDatabase, type TestDatabase } from "../support/postgres.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "../support/services.js";

const PASSWORD = "correct horse battery staple";

let issuer: string;
let identityEnv: Record<string, string>;
let identityDb: TestDatabase;
let identityStreams: StreamNames;
let identity: RunningIdentityService;
let customer: RunningCustomerService;
let idClients: Clients;
let custClients: Clients;
let nc: NatsConnection;
let identitySql: postgres.Sql;

/** (Re)starts the identity service on its fixed port, database and stream. */
async function startIdentity(): Promise<void> {
  identity = await startIdentityService(identityEnv, { database: identityDb, streams: identityStreams });
  idClients = createClients(identity.url);
}

async function stopIdentity(): Promise<void> {
  idClients.close();
  await identity.close();
}

beforeAll(async () => {
  const port = await freePort();
  issuer = `http://127.0.0.1:${port}`;
  identityEnv = { IDENTITY_PORT: String(port), IDENTITY_ISSUER: issuer };
  identityDb = await createTestDatabase("identity_e2e");
  identityStreams = uniqueStreamNames("identity");
  await startIdentity();
  expect(identity.url).toBe(issuer);
  // No IDENTITY_JWKS_URL: the customer service derives <issuer>/.well-known/jwks.json.
  customer = await startCustomerService({ IDENTITY_ISSUER: issuer }, { identityStreams });
  custClients = createClients(customer.url);
  nc = await connect({ servers: sharedNatsUrl });
  const jsm = await jetstreamManager(nc);
  await waitForStream(jsm, identityStreams.stream);
  await waitForStream(jsm, customer.streams.stream);
  identitySql = postgres(identityDb.url, { max: 2, onnotice: () => {} });
});

afterAll(async () => {
  custClients?.close();
  await identitySql?.end();
  await nc?.close();
  await customer?.close();
  if (identity) await stopIdentity();
  await identityDb?.drop();
  if (identityStreams) await deleteStreams(sharedNatsUrl, identityStreams.stream);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const auth = () => idClients.client(AuthService);
const customers = () => custClients.client(CustomerService);
const email = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;
const profile = (address: string) => ({ email: address, givenName: "Ada", familyName: "Lovelace" });

/** Signs up with the identity service and registers a profile with the returned token. */
async function newCustomer(label: string) {
  const address = email(label);
  const { customerId, tokens } = await auth().createCredentials({ email: address, password: PASSWORD });
  const token = tokens?.accessToken ?? "";
  await customers().registerCustomer(profile(address), bearer(token));
  return { email: address, customerId, token };
}

/** A service client made with the CLI, signed in with client credentials. */
async function serviceToken(scopes: string): Promise<string> {
  const clientId = `e2e-${randomUUID().slice(0, 8)}`;
  const out: string[] = [];
  expect(await runCli(["clients", "create", clientId, "--scopes", scopes], identity.env, (l) => out.push(l))).toBe(0);
  const { client_secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
  const res = await auth().authenticateClient({ clientId, clientSecret: client_secret, scope: "" });
  return res.tokens?.accessToken ?? "";
}

/** Collects every message on subject (filter) from the start of stream, as a subscriber would. */
async function subscribe(stream: string, subject: string) {
  const consumer = await jetstream(nc).consumers.get(stream, { filter_subjects: subject });
  const messages = await consumer.consume();
  const received: JsMsg[] = [];
  const done = (async () => {
    for await (const m of messages) received.push(m);
  })();
  return {
    received,
    async until(n: number): Promise<JsMsg[]> {
      const deadline = Date.now() + 10_000;
      while (received.length < n) {
        if (Date.now() > deadline) throw new Error(`${received.length} of ${n} events on ${subject}`);
        await sleep(20);
      }
      return received;
    },
    async stop() {
      await messages.close();
      await done;
    },
  };
}

describe("customer and identity services together", () => {
  it("signs up, registers, signs in, reads and updates; subscribers see all three event types", async () => {
    const address = email("flow");
    const signUp = await auth().createCredentials({ email: address, password: PASSWORD });
    const customerId = signUp.customerId;
    const customerEvents = await subscribe(
      customer.streams.stream,
      `${customer.streams.subjectPrefix}.*.${customerId}`,
    );
    const identityEvents = await subscribe(
      identityStreams.stream,
      `${identityStreams.subjectPrefix}.customer.authenticated.${customerId}`,
    );
    try {
      const registered = await customers().registerCustomer(profile(address), bearer(signUp.tokens?.accessToken ?? ""));
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
      expect(authn.subject).toBe(`${identityStreams.subjectPrefix}.customer.authenticated.${customerId}`);
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
    const token = await serviceToken("customer:read");
    const got = await customers().getCustomer({ customerId: c.customerId }, bearer(token));
    expect(got.customer?.customerId).toBe(c.customerId);
    await expect(
      customers().updateCustomer(
        { customer: { customerId: c.customerId, givenName: "Mallory" }, updateMask: { paths: ["given_name"] } },
        bearer(token),
      ),
    ).rejects.toMatchObject(rpcError('token lacks scope "customer:write"', Code.PermissionDenied));
    await expect(customers().registerCustomer(profile(email("svc")), bearer(token))).rejects.toMatchObject(
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
      const [row] = await identitySql<[{ kid: string; private_jwk: JWK }]>`
        select kid, private_jwk from signing_keys where retired_at is null order by created_at desc limit 1`;
      const key = (await importJWK(row.private_jwk, "EdDSA")) as CryptoKey;
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({ client_id: "first-party", scope: "openid profile customer:self" })
        .setProtectedHeader({ alg: "EdDSA", typ: "at+jwt", kid: row.kid })
        .setIssuer(issuer)
        .setAudience(claims.aud ?? ["customer-service", issuer])
        .setSubject(sub)
        .setJti(randomUUID())
        .setIssuedAt(claims.iat ?? now)
        .setExpirationTime(claims.exp ?? now + 900)
        .sign(key);
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
      const now = Math.floor(Date.now() / 1000);
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
      const impostor = await startIdentityService({ IDENTITY_ISSUER: issuer });
      const impostorClients = createClients(impostor.url);
      try {
        const res = await impostorClients
          .client(AuthService)
          .createCredentials({ email: email("impostor"), password: PASSWORD });
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
      } finally {
        impostorClients.close();
        await impostor.close();
      }
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

  it("keeps verifying across a key rotation: published first, signing later, refetched on an unknown kid", async () => {
    const c = await newCustomer("rotate");
    const before = await auth().authenticateCustomer({ email: c.email, password: PASSWORD });
    const oldToken = before.tokens?.accessToken ?? "";
    const oldKid = decodeProtectedHeader(oldToken).kid;

    const out: string[] = [];
    expect(await runCli(["keys", "rotate"], identity.env, (l) => out.push(l))).toBe(0);
    const newKid = /^new signing key ([0-9a-f-]{36})/.exec(out[0] ?? "")?.[1];
    expect(newKid).toBeDefined();
    expect(newKid).not.toBe(oldKid);

    // A restart reloads the keys: the new one is published, the old one still signs.
    await stopIdentity();
    await startIdentity();
    const jwks = (await (await fetch(`${issuer}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
    expect(jwks.keys.map((k) => k.kid).sort()).toEqual([oldKid, newKid].sort());
    const during = await auth().authenticateCustomer({ email: c.email, password: PASSWORD });
    expect(decodeProtectedHeader(during.tokens?.accessToken ?? "").kid).toBe(oldKid);

    // Let the activation delay pass (backdating the new key), restart: tokens carry the new kid.
    await identitySql`update signing_keys set created_at = created_at - interval '3 minutes' where kid = ${newKid ?? ""}`;
    await stopIdentity();
    await startIdentity();
    const after = await auth().authenticateCustomer({ email: c.email, password: PASSWORD });
    const newToken = after.tokens?.accessToken ?? "";
    expect(decodeProtectedHeader(newToken).kid).toBe(newKid);

    // The customer service has only cached the old key: an unknown kid makes it refetch the JWKS
    // (at most once per 5 s cooldown, so a fetch just before may delay it by that much).
    const deadline = Date.now() + 10_000;
    let outcome: unknown;
    for (;;) {
      outcome = await customers()
        .getCustomer({ customerId: c.customerId }, bearer(newToken))
        .catch((e: unknown) => ConnectError.from(e));
      if (!(outcome instanceof ConnectError) || Date.now() > deadline) break;
      await sleep(250);
    }
    expect(outcome).toMatchObject({ customer: { customerId: c.customerId } });
    // Tokens of the old key keep working until they expire.
    await expect(customers().getCustomer({ customerId: c.customerId }, bearer(oldToken))).resolves.toMatchObject({
      customer: { customerId: c.customerId },
    });
  });
});
