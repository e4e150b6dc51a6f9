/**
 * The platform in this process: the identity service on a reserved port, so
 * its issuer (http://127.0.0.1:<port>) is known before it listens, and the
 * customer service verifying its tokens against <issuer>/.well-known/jwks.json
 * and following its revocations (its stream), as under `npm start`. With
 * real customer and service tokens. (The services as child processes:
 * processes.ts.)
 */
import { randomUUID } from "node:crypto";
import type { Client } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer, type Protocol } from "./clients.js";
import { signUpByMail } from "./mailbox.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "./nats.js";
import { reservePort } from "./ports.js";
import { createTestDatabase, type TestDatabase } from "./postgres.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "./services.js";

export interface Platform {
  readonly issuer: string;
  /** The identity service now running (restartIdentity() replaces it). */
  readonly identity: RunningIdentityService;
  readonly customer: RunningCustomerService;
  auth(protocol?: Protocol): Client<typeof AuthService>;
  customers(protocol?: Protocol): Client<typeof CustomerService>;
  /**
   * A service client created with the identity CLI, signed in with client
   * credentials; `audiences` (RFC 8707) as `--audiences`, default the
   * customer service (IDENTITY_AUDIENCES). `platform.issuer` is the identity
   * service's own audience (IntrospectToken, with scope identity:introspect).
   */
  serviceToken(scopes: string, audiences?: string): Promise<string>;
  /**
   * Signs up with the identity service (no customer profile yet); `audience`
   * as in the request (default: the first-party default, the customer
   * service; add `issuer` for the identity service's own RPCs).
   */
  signUp(password: string, label?: string, audience?: string[]): Promise<SignedUp>;
  /** Signs up and registers the customer profile. */
  newCustomer(password: string, label?: string, audience?: string[]): Promise<SignedUp>;
  /** Stops the identity service and starts it again on the same port, database and stream. */
  restartIdentity(): Promise<void>;
  close(): Promise<void>;
}

export interface SignedUp {
  readonly customerId: string;
  readonly email: string;
  readonly password: string;
  readonly accessToken: string;
  readonly refreshToken: string;
  /** The profile registered by newCustomer (given and family name). */
  readonly profile: { email: string; givenName: string; familyName: string };
}

/** A unique address, e.g. `victim.1a2b3c4d@example.com`. */
export const uniqueEmail = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;

/** Starts both services; on failure stops what already started. */
export async function startPlatform(
  opts: {
    identityEnv?: Record<string, string>;
    customerEnv?: Record<string, string>;
    /** The identity service's database (default: a new one, dropped by close()). */
    identityDb?: TestDatabase;
    /** Both services' NATS (default: the shared server). */
    natsUrl?: string;
    /** Both services' clock (default: the wall clock). */
    now?: () => Date;
  } = {},
): Promise<Platform> {
  const closers: Array<() => Promise<unknown>> = [];
  const closeAll = async () => {
    for (const close of closers.splice(0).reverse()) await close();
  };
  try {
    const identityDb = opts.identityDb ?? (await createTestDatabase("identity"));
    if (!opts.identityDb) closers.push(() => identityDb.drop());
    const natsUrl = opts.natsUrl ?? sharedNatsUrl;
    const identityStreams = uniqueStreamNames("identity");
    if (natsUrl === sharedNatsUrl) closers.push(() => deleteStreams(natsUrl, identityStreams.stream));

    const port = await reservePort();
    closers.push(() => port.release());
    const issuer = `http://127.0.0.1:${port.port}`;
    const identityEnv = { IDENTITY_ISSUER: issuer, LOG_LEVEL: "warn", ...opts.identityEnv };
    const clock = opts.now && { now: opts.now };
    const identityOpts = { natsUrl, database: identityDb, streams: identityStreams, ...clock };
    let identity = await startIdentityService(identityEnv, { ...identityOpts, port });
    closers.push(() => identity.close());
    const customer = await startCustomerService(
      { IDENTITY_ISSUER: issuer, LOG_LEVEL: "warn", ...opts.customerEnv },
      { natsUrl, identityStreams, ...clock },
    );
    closers.push(() => customer.close());

    const auth = (protocol: Protocol = "connect-http1") => identity.clients.client(AuthService, protocol);
    const customers = (protocol: Protocol = "connect-http1") => customer.clients.client(CustomerService, protocol);
    const signUp = async (password: string, label = "c", audience: string[] = []): Promise<SignedUp> => {
      const email = uniqueEmail(label);
      // As a customer signs up: a code by mail (the harness's dev mailbox), then the password.
      const res = await signUpByMail(auth(), identity.env.IDENTITY_MAILBOX_DIR ?? "", { email, password, audience });
      return {
        customerId: res.customerId,
        email,
        password,
        accessToken: res.tokens?.accessToken ?? "",
        refreshToken: res.tokens?.refreshToken ?? "",
        profile: { email, givenName: "Ada", familyName: "Lovelace" },
      };
    };
    return {
      issuer,
      get identity() {
        return identity;
      },
      customer,
      auth,
      customers,
      async serviceToken(scopes, audiences) {
        const clientId = `svc-${randomUUID().slice(0, 8)}`;
        const out: string[] = [];
        const args = ["clients", "create", clientId, "--scopes", scopes];
        if (audiences !== undefined) args.push("--audiences", audiences);
        const code = await runCli(args, identity.env, (l) => out.push(l));
        if (code !== 0) throw new Error(`clients create exited ${code}`);
        const { client_secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
        const res = await auth().authenticateClient({ clientId, clientSecret: client_secret, scope: "" });
        return res.tokens?.accessToken ?? "";
      },
      signUp,
      async newCustomer(password, label, audience) {
        const c = await signUp(password, label, audience);
        await customers().registerCustomer(c.profile, bearer(c.accessToken));
        return c;
      },
      async restartIdentity() {
        await identity.close();
        identity = await startIdentityService({ ...identityEnv, IDENTITY_PORT: String(port.port) }, identityOpts);
      },
      close: closeAll,
    };
  } catch (err) {
    await closeAll();
    throw err;
  }
}
