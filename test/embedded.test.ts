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
import { readMailbox } from "@customer-platform/runtime/mail";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type CustomerConfig, envToConfig as customerEnvToConfig } from "../customer-service/src/config.js";
import { type CustomerServer, createCustomerServer } from "../customer-service/src/server.js";
import { type IdentityConfig, envToConfig as identityEnvToConfig } from "../identity-service/src/config.js";
import { createIdentityServer, type IdentityServer } from "../identity-service/src/server.js";
import { bearer, type Clients, createClients, rpcError } from "./support/clients.js";
import { signUpByMail } from "./support/mailbox.js";
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
  /** The identity service's dev mailbox (sign-up codes). */
  readonly mailbox: string;
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
  // Not under dataRoot, which stays empty on PostgreSQL.
  const mailbox = mkdtempSync(join(tmpdir(), "embedded-mailbox-"));
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
    IDENTITY_MAILBOX_DIR: mailbox,
    // Each sign-up is two calls of the per-address budget (20 an hour by default); every test calls from 127.0.0.1.
    IDENTITY_SIGN_UP_LIMIT: "1000",
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
    mailbox,
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
      rmSync(mailbox, { recursive: true, force: true });
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
  /** Signs up as a customer does: StartSignUp, the mailed code, CompleteSignUp (the email verified). */
  const signUp = (address: string) => signUpByMail(auth(), p.mailbox, { email: address, password: PASSWORD });

  /** Signs up and registers a profile; returns the customer's id, email and token. */
  async function newCustomer() {
    const address = email();
    const { customerId, tokens } = await signUp(address);
    const token = tokens?.accessToken ?? "";
    await customers().registerCustomer({ givenName: "Ada", familyName: "Lovelace" }, bearer(token));
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
      const signedUp = await signUp(address);
      const { customerId } = signedUp;
      // The profile's email is the verified one, from the access token.
      const registered = await customers().registerCustomer(
        { givenName: "Ada", familyName: "Lovelace", phoneNumber: "+4915123456789" },
        bearer(signedUp.tokens?.accessToken ?? ""),
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
      const signedUp = await signUp(email());
      const first = signedUp.tokens?.refreshToken ?? "";
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
    it("gives no second account to an email that has one: no code is mailed, and the first password still signs in", async () => {
      const address = email();
      const first = await signUp(address);
      // Answered as for a new address, but the owner gets a notice, not a code: nothing to complete with.
      await auth().startSignUp({ email: address.toUpperCase() });
      const mails = async () => (await readMailbox(p.mailbox)).filter((m) => m.to.toLowerCase() === address);
      await expect.poll(async () => (await mails()).length).toBe(2);
      expect((await mails())[1]?.text).not.toMatch(/\b\d{8}\b/);
      await expect(
        auth().completeSignUp({ email: address.toUpperCase(), code: "12345678", password: "another passphrase" }),
      ).rejects.toMatchObject(rpcError("code: invalid or expired code [code.invalid]", Code.InvalidArgument));
      const signIn = await auth().authenticateCustomer({ email: address, password: PASSWORD });
      expect(signIn.customerId).toBe(first.customerId);
    });

    it("answers UNAUTHENTICATED for a wrong password", async () => {
      const c = await newCustomer();
      await expect(auth().authenticateCustomer({ email: c.email, password: "wrong password!" })).rejects.toMatchObject(
        rpcError("invalid email or password", Code.Unauthenticated),
      );
    });

    it("answers INVALID_ARGUMENT for a profile email other than the caller's verified one, and registers nothing", async () => {
      const a = await newCustomer();
      const b = await signUp(email());
      const token = bearer(b.tokens?.accessToken ?? "");
      await expect(
        customers().registerCustomer({ email: a.email, givenName: "Grace", familyName: "Hopper" }, token),
      ).rejects.toMatchObject(rpcError("email: value must be the customer's verified email", Code.InvalidArgument));
      await expect(customers().getCustomer({ customerId: b.customerId }, token)).rejects.toMatchObject(
        rpcError("customer not found", Code.NotFound),
      );
    });

    it("answers ALREADY_EXISTS for a different profile under the same id", async () => {
      const c = await newCustomer();
      await expect(
        customers().registerCustomer({ givenName: "Grace", familyName: "Lovelace" }, bearer(c.token)),
      ).rejects.toMatchObject(rpcError("customer already has a different profile", Code.AlreadyExists));
    });

    it("answers NOT_FOUND for a customer without a profile", async () => {
      const { customerId, tokens } = await signUp(email());
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
