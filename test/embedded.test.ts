/**
 * The same service suite on both databases a service can run on: embedded
 * PGlite (a `pglite:<dir>` URL) and a real PostgreSQL. Both
 * services run in-process on their real servers; the customer service
 * trusts the identity service's JWKS, as under `npm start`. Happy paths,
 * constraint errors, concurrency, the outbox relay and a restart.
 */
import { randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CustomerConfig, envToConfig as customerEnvToConfig } from "../customer-service/src/config.js";
import { type CustomerServer, createCustomerServer } from "../customer-service/src/server.js";
import { type IdentityConfig, envToConfig as identityEnvToConfig } from "../identity-service/src/config.js";
import { createIdentityServer, type IdentityServer } from "../identity-service/src/server.js";
import { bearer, type Clients, createClients, rpcError } from "./support/clients.js";
import { deleteStreams, freePort, sharedNatsUrl, uniqueStreamNames } from "./support/nats.js";
import { createTestDatabase, type TestDatabase } from "./support/postgres.js";
import { captureLogs } from "./support/services.js";
import { REGISTERED, readStream } from "./support/streams.js";

const PASSWORD = "correct horse battery staple";
type Kind = "pglite" | "postgres";

/** Both services on one kind of database; restartable on the same data. */
interface Platform {
  /** Where the PGlite directories are (nothing is written there on PostgreSQL). */
  readonly dataRoot: string;
  readonly identityConfig: IdentityConfig;
  readonly customerConfig: CustomerConfig;
  identity: IdentityServer;
  customer: CustomerServer;
  idClients: Clients;
  custClients: Clients;
  start(): Promise<void>;
  stop(): Promise<void>;
  close(): Promise<void>;
}

async function createPlatform(kind: Kind): Promise<Platform> {
  const identityPort = await freePort();
  const issuer = `http://127.0.0.1:${identityPort}`;
  const idStreams = uniqueStreamNames("identity");
  const custStreams = uniqueStreamNames("customer");
  const dataRoot = mkdtempSync(join(tmpdir(), "embedded-"));
  const databases: TestDatabase[] =
    kind === "postgres" ? [await createTestDatabase("embedded_id"), await createTestDatabase("embedded_cust")] : [];
  const identityConfig = identityEnvToConfig({
    IDENTITY_PORT: String(identityPort),
    IDENTITY_ISSUER: issuer,
    IDENTITY_DATABASE_URL: databases[0]?.url ?? `pglite:${join(dataRoot, "identity")}`,
    NATS_URL: sharedNatsUrl,
    IDENTITY_STREAM: idStreams.stream,
    IDENTITY_SUBJECT_PREFIX: idStreams.subjectPrefix,
    IDENTITY_ARGON2_MEMORY_KIB: "1024",
    IDENTITY_ARGON2_ITERATIONS: "1",
    SHUTDOWN_GRACE_MS: "2000",
  });
  const customerConfig = customerEnvToConfig({
    CUSTOMER_PORT: "0",
    IDENTITY_ISSUER: issuer,
    CUSTOMER_DATABASE_URL: databases[1]?.url ?? `pglite:${join(dataRoot, "customer")}`,
    NATS_URL: sharedNatsUrl,
    CUSTOMER_STREAM: custStreams.stream,
    CUSTOMER_SUBJECT_PREFIX: custStreams.subjectPrefix,
    SHUTDOWN_GRACE_MS: "2000",
  });
  const platform: Platform = {
    dataRoot,
    identityConfig,
    customerConfig,
    identity: undefined as unknown as IdentityServer,
    customer: undefined as unknown as CustomerServer,
    idClients: undefined as unknown as Clients,
    custClients: undefined as unknown as Clients,
    async start() {
      platform.identity = await createIdentityServer(identityConfig, { logger: captureLogs("identity").logger });
      await platform.identity.start();
      platform.customer = await createCustomerServer(customerConfig, { logger: captureLogs("customer").logger });
      await platform.customer.start();
      platform.idClients = createClients(platform.identity.url);
      platform.custClients = createClients(platform.customer.url);
    },
    async stop() {
      platform.idClients?.close();
      platform.custClients?.close();
      await platform.customer?.stop();
      await platform.identity?.stop();
    },
    async close() {
      await platform.stop();
      for (const db of databases) await db.drop();
      rmSync(dataRoot, { recursive: true, force: true });
      await deleteStreams(sharedNatsUrl, idStreams.stream, custStreams.stream);
    },
  };
  await platform.start();
  return platform;
}

describe.each(["pglite", "postgres"] as const)("on %s", (kind) => {
  let p: Platform;
  let nc: NatsConnection;

  beforeAll(async () => {
    p = await createPlatform(kind);
    nc = await connect({ servers: sharedNatsUrl });
  });

  afterAll(async () => {
    await nc?.close();
    await p?.close();
  });

  const auth = () => p.idClients.client(AuthService);
  const customers = () => p.custClients.client(CustomerService);
  const email = () => `ada.${randomUUID().slice(0, 8)}@example.com`;

  /** Signs up and registers a profile; returns the customer's id, email and token. */
  async function newCustomer() {
    const address = email();
    const { customerId, tokens } = await auth().createCredentials({ email: address, password: PASSWORD });
    const token = tokens?.accessToken ?? "";
    await customers().registerCustomer({ email: address, givenName: "Ada", familyName: "Lovelace" }, bearer(token));
    return { customerId, email: address, token };
  }

  async function hasEvent(stream: string, subject: string): Promise<boolean> {
    const jsm = await jetstreamManager(nc);
    return jsm.streams.getMessage(stream, { last_by_subj: subject }).then(
      (m) => m !== null,
      () => false,
    );
  }

  it(`runs on ${kind === "pglite" ? "an embedded PGlite data directory" : "its PostgreSQL database"}`, () => {
    const { identityConfig: id, customerConfig: cust } = p;
    if (kind === "pglite") {
      expect([id.database.url, cust.database.url]).toEqual([
        `pglite:${join(p.dataRoot, "identity")}`,
        `pglite:${join(p.dataRoot, "customer")}`,
      ]);
      expect(existsSync(join(p.dataRoot, "identity", "PG_VERSION"))).toBe(true);
      expect(existsSync(join(p.dataRoot, "customer", "PG_VERSION"))).toBe(true);
    } else {
      expect(id.database.url).toMatch(/^postgres:\/\//);
      expect(cust.database.url).toMatch(/^postgres:\/\//);
      expect(readdirSync(p.dataRoot)).toEqual([]);
    }
  });

  describe("happy paths", () => {
    it("signs up, registers, signs in, reads and updates, and relays every event to JetStream", async () => {
      const address = email();
      const signUp = await auth().createCredentials({ email: address, password: PASSWORD });
      const { customerId } = signUp;
      const registered = await customers().registerCustomer(
        { email: address, givenName: "Ada", familyName: "Lovelace", phoneNumber: "+4915123456789" },
        bearer(signUp.tokens?.accessToken ?? ""),
      );
      expect(registered.customer).toMatchObject({ customerId, email: address, version: 1n });
      const signIn = await auth().authenticateCustomer({ email: address, password: PASSWORD });
      expect(signIn.customerId).toBe(customerId);
      const token = signIn.tokens?.accessToken ?? "";
      expect((await customers().getCustomer({ customerId }, bearer(token))).customer).toEqual(registered.customer);
      const updated = await customers().updateCustomer(
        {
          customer: {
            customerId,
            address: { addressLines: ["12 St James Sq"], locality: "London", countryCode: "GB" },
          },
          updateMask: { paths: ["address"] },
          expectedVersion: 1n,
        },
        bearer(token),
      );
      expect(updated.customer).toMatchObject({ version: 2n, phoneNumber: "+4915123456789" });
      expect(updated.customer?.address?.addressLines).toEqual(["12 St James Sq"]);

      // Each relay publishes its service's events (PGlite: from inside the service's process).
      const cs = p.customerConfig;
      const is = p.identityConfig;
      await expect.poll(() => hasEvent(cs.stream, `${cs.subjectPrefix}.registered.${customerId}`)).toBe(true);
      await expect.poll(() => hasEvent(cs.stream, `${cs.subjectPrefix}.updated.${customerId}`)).toBe(true);
      await expect
        .poll(() => hasEvent(is.stream, `${is.subjectPrefix}.customer.authenticated.${customerId}`))
        .toBe(true);
    });

    it("rotates refresh tokens, and only one of two parallel uses wins", async () => {
      const signUp = await auth().createCredentials({ email: email(), password: PASSWORD });
      const first = signUp.tokens?.refreshToken ?? "";
      const results = await Promise.allSettled([
        auth().refreshToken({ refreshToken: first }),
        auth().refreshToken({ refreshToken: first }),
      ]);
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      await expect(auth().refreshToken({ refreshToken: first })).rejects.toMatchObject(
        rpcError("invalid refresh token", Code.Unauthenticated),
      );
    });

    it("applies concurrent updates one after another: versions 2..N+1, each its own event, none lost", async () => {
      const N = 10;
      const c = await newCustomer();
      const results = await Promise.all(
        Array.from({ length: N }, (_, i) =>
          customers().updateCustomer(
            {
              customer: { customerId: c.customerId, familyName: `writer ${i}` },
              updateMask: { paths: ["family_name"] },
            },
            bearer(c.token),
          ),
        ),
      );
      const versions = results.map((r) => Number(r.customer?.version)).sort((a, b) => a - b);
      expect(versions).toEqual(Array.from({ length: N }, (_, i) => i + 2));
      // Each answer is that writer's own change.
      expect(results.map((r) => r.customer?.familyName)).toEqual(results.map((_, i) => `writer ${i}`));
      const got = await customers().getCustomer({ customerId: c.customerId }, bearer(c.token));
      expect(got.customer?.version).toBe(BigInt(N + 1));

      // One event per version, in version order, each carrying the change of the writer that got it.
      const eventsOf = async () =>
        (await readStream(sharedNatsUrl, p.customerConfig.stream)).filter((e) => e.customerId === c.customerId);
      await expect.poll(async () => (await eventsOf()).length, { timeout: 10_000 }).toBe(N + 1);
      const events = await eventsOf();
      expect(events.map((e) => e.version)).toEqual(Array.from({ length: N + 1 }, (_, i) => i + 1));
      expect(events.map((e) => e.type)).toEqual([REGISTERED, ...Array(N).fill(CustomerUpdatedSchema.typeName)]);
      const byVersion = new Map(results.map((r) => [Number(r.customer?.version), r.customer?.familyName]));
      for (const e of events.slice(1)) expect(e.familyName).toBe(byVersion.get(e.version));
    });
  });

  describe("constraint errors", () => {
    it("answers ALREADY_EXISTS for an email that already has credentials", async () => {
      const address = email();
      await auth().createCredentials({ email: address, password: PASSWORD });
      await expect(
        auth().createCredentials({ email: address.toUpperCase(), password: "another password" }),
      ).rejects.toMatchObject(rpcError("email already has credentials", Code.AlreadyExists));
    });

    it("answers UNAUTHENTICATED for a wrong password", async () => {
      const c = await newCustomer();
      await expect(auth().authenticateCustomer({ email: c.email, password: "wrong password!" })).rejects.toMatchObject(
        rpcError("invalid email or password", Code.Unauthenticated),
      );
    });

    it("answers ALREADY_EXISTS for a profile email taken by another customer, also in a race", async () => {
      const a = await newCustomer();
      const b = await auth().createCredentials({ email: email(), password: PASSWORD });
      await expect(
        customers().registerCustomer(
          { email: a.email, givenName: "Grace", familyName: "Hopper" },
          bearer(b.tokens?.accessToken ?? ""),
        ),
      ).rejects.toMatchObject(rpcError("email already belongs to another customer", Code.AlreadyExists));

      const shared = email();
      const racers = await Promise.all(
        [0, 1].map(() => auth().createCredentials({ email: email(), password: PASSWORD })),
      );
      const results = await Promise.allSettled(
        racers.map((r) =>
          customers().registerCustomer(
            { email: shared, givenName: "Ada", familyName: "Lovelace" },
            bearer(r.tokens?.accessToken ?? ""),
          ),
        ),
      );
      expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      expect(results.find((r) => r.status === "rejected")).toMatchObject({
        reason: rpcError("email already belongs to another customer", Code.AlreadyExists),
      });
    });

    it("answers ALREADY_EXISTS for a different profile under the same id", async () => {
      const c = await newCustomer();
      await expect(
        customers().registerCustomer({ email: c.email, givenName: "Grace", familyName: "Lovelace" }, bearer(c.token)),
      ).rejects.toMatchObject(rpcError("customer already has a different profile", Code.AlreadyExists));
    });

    it("answers NOT_FOUND for a customer without a profile", async () => {
      const { customerId, tokens } = await auth().createCredentials({ email: email(), password: PASSWORD });
      const token = tokens?.accessToken ?? "";
      await expect(customers().getCustomer({ customerId }, bearer(token))).rejects.toMatchObject(
        rpcError("customer not found", Code.NotFound),
      );
      await expect(
        customers().updateCustomer(
          { customer: { customerId, givenName: "X" }, updateMask: { paths: ["given_name"] } },
          bearer(token),
        ),
      ).rejects.toMatchObject(rpcError("customer not found", Code.NotFound));
    });

    it("answers ABORTED for a stale expected_version and changes nothing", async () => {
      const c = await newCustomer();
      const update = (familyName: string, expectedVersion: bigint) =>
        customers().updateCustomer(
          {
            customer: { customerId: c.customerId, familyName },
            updateMask: { paths: ["family_name"] },
            expectedVersion,
          },
          bearer(c.token),
        );
      await update("Byron", 1n);
      await expect(update("King", 1n)).rejects.toMatchObject(
        rpcError("customer is at version 2, not the expected 1", Code.Aborted),
      );
      const got = await customers().getCustomer({ customerId: c.customerId }, bearer(c.token));
      expect(got.customer).toMatchObject({ familyName: "Byron", version: 2n });
    });
  });

  it("keeps profiles, credentials and signing keys across a restart", async () => {
    const c = await newCustomer();
    await p.stop();
    await p.start();
    // A token issued before the restart still verifies: the signing key was kept.
    const got = await customers().getCustomer({ customerId: c.customerId }, bearer(c.token));
    expect(got.customer).toMatchObject({ customerId: c.customerId, email: c.email, version: 1n });
    const signIn = await auth().authenticateCustomer({ email: c.email, password: PASSWORD });
    expect(signIn.customerId).toBe(c.customerId);
  });
});
