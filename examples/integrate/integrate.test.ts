/**
 * The integration samples docs/integrate.md shows, run against the real
 * services: GetCustomer over Connect and gRPC with a client-credentials
 * token, an HTTP API that trusts our tokens with the SDK (revocations
 * included), and both ways of consuming events.
 */
import { randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { CUSTOMER_TOKEN_SCOPES, identitySubjects } from "@customer-platform/sdk";
import { type JetStreamClient, jetstream } from "@nats-io/jetstream";
import { connect, headers, type NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import type postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer } from "../../test/support/clients.js";
import { waitForOutboxEmpty } from "../../test/support/outbox.js";
import { type Platform, startPlatform } from "../../test/support/platform.js";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import type { RunningCustomerService, RunningIdentityService } from "../../test/support/services.js";
import { until } from "../../test/support/timing.js";
import { consumeCustomersPlain, consumeSignIns } from "./consume-events.js";
import { connectCustomerClient, createTokenSource, findCustomer, grpcCustomerClient } from "./customer-client.js";
import { createOrdersAuth, withPrincipal } from "./verify-token.js";

const PASSWORD = "correct horse battery staple";
let issuer: string;
let identity: RunningIdentityService;
let customer: RunningCustomerService;
let platform: Platform;
let nc: NatsConnection;
let js: JetStreamClient;

beforeAll(async () => {
  platform = await startPlatform({ identityEnv: { IDENTITY_AUDIENCES: "customer-service orders-service" } });
  ({ issuer, identity, customer } = platform);
  nc = await connect({ servers: customer.natsUrl });
  js = jetstream(nc);
});

afterAll(async () => {
  await nc?.close();
  await platform?.close();
});

/** A service client created with the CLI, as an operator would. */
async function serviceCredentials(scopes: string) {
  const clientId = `orders-${randomUUID().slice(0, 8)}`;
  const out: string[] = [];
  // Its tokens are for both resource servers here (RFC 8707 audiences; the default is the customer service only).
  const create = ["clients", "create", clientId, "--scopes", scopes, "--audiences", "customer-service orders-service"];
  expect(await runCli(create, identity.env, (l) => out.push(l))).toBe(0);
  const { client_secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
  return { identityUrl: identity.url, clientId, clientSecret: client_secret, scope: "" };
}

async function newCustomer() {
  // Signs up by the mailed code (StartSignUp, CompleteSignUp): the token carries the verified email.
  // A first-party app calling both resource servers asks for both audiences (default: the customer service).
  const {
    customerId,
    email,
    accessToken: token,
  } = await platform.signUp(PASSWORD, "ada", ["customer-service", "orders-service"]);
  // The profile takes its email from the token.
  const { customer: profile } = await customer.clients
    .client(CustomerService)
    .registerCustomer({ givenName: "Ada", familyName: "Lovelace" }, bearer(token));
  return { customerId, email, token, profile };
}

describe("calling GetCustomer from another service", () => {
  it.each([
    ["Connect", connectCustomerClient],
    ["gRPC", grpcCustomerClient],
  ])("works over %s with a cached client-credentials token", async (_name, make) => {
    const c = await newCustomer();
    const tokens = createTokenSource(await serviceCredentials("customer:read"));
    const { client, close } = make(customer.url, tokens);
    try {
      expect(await findCustomer(client, c.customerId)).toEqual(c.profile);
      expect(await findCustomer(client, randomUUID())).toBeUndefined();
      expect(await tokens()).toBe(await tokens());
    } finally {
      close();
    }
  });

  it("is denied with PERMISSION_DENIED without the customer:read scope", async () => {
    const c = await newCustomer();
    const { client, close } = connectCustomerClient(
      customer.url,
      createTokenSource(await serviceCredentials("customer:write")),
    );
    try {
      await expect(findCustomer(client, c.customerId)).rejects.toMatchObject({ code: Code.PermissionDenied });
    } finally {
      close();
    }
  });
});

describe("an HTTP API that trusts our access tokens", () => {
  let orders: Server;
  let ordersUrl: string;
  let auth: ReturnType<typeof createOrdersAuth>;

  beforeAll(async () => {
    auth = createOrdersAuth({
      issuer,
      audience: "orders-service",
      nats: nc,
      identityStream: identity.streams.stream,
      identitySubjectPrefix: identity.streams.subjectPrefix,
      logger: pino({ level: "silent" }),
    });
    auth.revocations.start();
    orders = createServer(
      withPrincipal(auth.tokens, (_req, res, p) => {
        res.setHeader("content-type", "application/json");
        res.end(JSON.stringify({ subject: p.subject, clientId: p.clientId, scopes: [...p.scopes], sid: p.sessionId }));
      }),
    );
    await new Promise<void>((resolve) => orders.listen(0, "127.0.0.1", resolve));
    ordersUrl = `http://127.0.0.1:${(orders.address() as AddressInfo).port}/orders`;
  });

  afterAll(async () => {
    orders?.closeAllConnections();
    await new Promise((resolve) => orders?.close(resolve));
    await auth?.revocations.stop();
  });

  const call = async (authorization?: string) => {
    const res = await fetch(ordersUrl, { headers: authorization ? { authorization } : {} });
    return { status: res.status, challenge: res.headers.get("www-authenticate"), body: await res.json() };
  };

  it("accepts customer and service tokens and says who they are", async () => {
    const c = await newCustomer();
    expect(await call(`Bearer ${c.token}`)).toEqual({
      status: 200,
      challenge: null,
      body: {
        subject: c.customerId,
        clientId: "first-party",
        scopes: [...CUSTOMER_TOKEN_SCOPES],
        sid: expect.any(String),
      },
    });
    const creds = await serviceCredentials("customer:read");
    expect(await call(`Bearer ${await createTokenSource(creds)()}`)).toEqual({
      status: 200,
      challenge: null,
      body: { subject: creds.clientId, clientId: creds.clientId, scopes: ["customer:read"] },
    });
  });

  it("answers 401 without a token, to a token of another issuer or audience, and to a tampered one", async () => {
    const c = await newCustomer();
    expect(await call()).toEqual({ status: 401, challenge: "Bearer", body: { error: "missing bearer token" } });
    const invalid = { status: 401, challenge: 'Bearer error="invalid_token"', body: { error: "invalid access token" } };
    const elsewhere = createOrdersAuth({
      issuer: "https://elsewhere.example",
      jwksUrl: `${issuer}/.well-known/jwks.json`,
      audience: "orders-service",
      nats: nc,
      logger: pino({ level: "silent" }),
    });
    await expect(elsewhere.tokens.verify(c.token)).rejects.toMatchObject({ reason: "invalid" });
    const billing = createOrdersAuth({ issuer, audience: "billing", nats: nc, logger: pino({ level: "silent" }) });
    await expect(billing.tokens.verify(c.token)).rejects.toMatchObject({ reason: "invalid" });
    const [h, p, s] = c.token.split(".");
    const claims = JSON.parse(Buffer.from(p ?? "", "base64url").toString());
    const forged = Buffer.from(JSON.stringify({ ...claims, sub: randomUUID() })).toString("base64url");
    expect(await call(`Bearer ${h}.${forged}.${s}`)).toEqual(invalid);
  });

  it("answers 401 moments after the identity service revoked the token", async () => {
    const c = await newCustomer();
    expect((await call(`Bearer ${c.token}`)).status).toBe(200);
    await identity.clients.client(AuthService).revokeToken({ token: c.token });
    await expect
      .poll(() => call(`Bearer ${c.token}`), { timeout: 10_000, interval: 50 })
      .toEqual({ status: 401, challenge: 'Bearer error="invalid_token"', body: { error: "access token revoked" } });
  });
});

describe("consuming events", () => {
  let db: TestDatabase;
  let sql: postgres.Sql;
  beforeAll(async () => {
    db = await createTestDatabase("integrate");
    sql = db.sql;
  });
  afterAll(async () => {
    await db?.drop();
  });

  it("counts each sign-in once with the SDK's consumeEvents, even when an event comes twice", async () => {
    const c = await newCustomer();
    const auth = identity.clients.client(AuthService);
    await auth.authenticateCustomer({ email: c.email, password: PASSWORD });
    await auth.authenticateCustomer({ email: c.email, password: PASSWORD });
    await waitForOutboxEmpty(identity.database.url);
    // Repeat the last sign-in event under a new Nats-Msg-Id, as an outage longer than the duplicate window could.
    const jsm = await js.jetstreamManager();
    const subject = identitySubjects(identity.streams.subjectPrefix).customerAuthenticated(c.customerId);
    const last = await jsm.streams.getMessage(identity.streams.stream, { last_by_subj: subject });
    if (!last) throw new Error("no sign-in event");
    const copy = headers();
    for (const key of last.header.keys()) if (key !== "Nats-Msg-Id") copy.set(key, last.header.get(key));
    const repeat = await js.publish(subject, last.data, { headers: copy, msgID: randomUUID() });
    expect(repeat.duplicate).toBe(false);

    const consumer = await consumeSignIns(sql, js, identity.streams.stream, issuer);
    try {
      await until("all three deliveries", async () => {
        const info = await jsm.consumers.info(identity.streams.stream, "orders-sign-ins");
        return info.delivered.stream_seq >= repeat.seq && info.num_ack_pending === 0;
      });
      const [row] = await sql<[{ count: number }]>`select count from sign_ins where customer_id = ${c.customerId}`;
      expect(row?.count).toBe(2);
    } finally {
      await consumer.stop();
    }
  });

  it("decodes customer events with plain JetStream", async () => {
    const seen: Array<[string, bigint]> = [];
    const stop = await consumeCustomersPlain(
      js,
      async (id, version) => {
        seen.push([id, version]);
      },
      customer.streams.stream,
      customer.streams.subjectPrefix,
    );
    try {
      const c = await newCustomer();
      await until("the registration", () => seen.some(([id]) => id === c.customerId));
      expect(seen.find(([id]) => id === c.customerId)).toEqual([c.customerId, 1n]);
    } finally {
      await stop();
    }
  });
});
