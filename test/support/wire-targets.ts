/**
 * The targets of the raw-wire abuse tests (test/abuse/wire-*.test.ts): both
 * services with their default limits, a registered customer and a login with
 * one failed attempt. useWireTargets() starts them for a test file and,
 * after every test, checks that both servers still serve on every protocol
 * and that no stored row of either service changed.
 */
import { randomUUID } from "node:crypto";
import { CustomerService, type GetCustomerResponse } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, afterEach, beforeAll, expect } from "vitest";
import { bearer, PROTOCOLS } from "./clients.js";
import { startTestIssuer, type TestIssuer } from "./issuer.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "./services.js";
import { field } from "./wire.js";

/** Both services' default request size limit (CUSTOMER_MAX_REQUEST_BYTES, IDENTITY_MAX_REQUEST_BYTES). */
export const LIMIT = 64 * 1024;
export const CUSTOMER = "/customer.v1.CustomerService";
export const AUTH = "/identity.v1.AuthService";
/** 0xc3 0x28: a two-byte sequence whose second byte is no continuation byte. */
export const INVALID_UTF8 = Buffer.from([0x41, 0xc3, 0x28]);

export interface WireTargets {
  /** The known customer's id, fixed before any test file code runs (test tables may use it). */
  readonly knownId: string;
  readonly issuer: TestIssuer;
  readonly customer: RunningCustomerService;
  readonly identity: RunningIdentityService;
  /** The registered customer, its token and GetCustomer's answer for it. */
  readonly known: { id: string; token: string; snapshot: GetCustomerResponse };
  /** A login whose failed attempts must not grow. */
  readonly login: { email: string; password: string };
  /** The known customer's Bearer header. */
  auth(): { authorization: string };
  /** A GetCustomerRequest for the known customer, hand-encoded. */
  getRequest(): Buffer;
  /** Every stored row of both services. */
  storedRows(): Promise<unknown>;
  /** The rows as they must stay. */
  readonly stored: unknown;
  /** Takes the rows as they are now as the ones that must stay (after a change a test made on purpose). */
  resnapshot(): Promise<void>;
}

/** Starts the targets for this test file and checks them after every test. */
export function useWireTargets(): WireTargets {
  // The known customer's id is fixed before it registers: test tables are built with it.
  const knownId = randomUUID();
  let issuer: TestIssuer;
  let customer: RunningCustomerService;
  let identity: RunningIdentityService;
  let known: WireTargets["known"];
  let login: WireTargets["login"];
  let stored: unknown;

  const storedRows = async () => {
    const c = customer.database.sql;
    const i = identity.database.sql;
    return {
      customers: await c`select * from customers order by customer_id`,
      outbox: await c`select id from outbox order by id`,
      identities: await i`select * from identities order by customer_id`,
      throttles: await i`select * from login_throttles order by key`,
      refreshTokens: await i`select * from refresh_tokens order by id`,
      revoked: await i`select * from revoked_access_tokens order by jti`,
    };
  };

  beforeAll(async () => {
    issuer = await startTestIssuer();
    customer = await startCustomerService({
      IDENTITY_ISSUER: issuer.issuer,
      IDENTITY_JWKS_URL: issuer.jwksUrl,
      LOG_LEVEL: "warn",
    });
    identity = await startIdentityService({ LOG_LEVEL: "warn" });
    const email = `known.${knownId.slice(0, 8)}@example.com`;
    // The profile's email is the verified one the token carries.
    const token = await issuer.customer(knownId, email);
    const customers = customer.clients.client(CustomerService);
    await customers.registerCustomer(
      {
        email,
        givenName: "Ada",
        familyName: "Lovelace",
        address: { addressLines: ["1 Analytical St"], locality: "London", postalCode: "N1 9GU", countryCode: "GB" },
      },
      bearer(token),
    );
    known = { id: knownId, token, snapshot: await customers.getCustomer({ customerId: knownId }, bearer(token)) };
    login = { email: `login.${knownId.slice(0, 8)}@example.com`, password: "correct horse battery staple" };
    const auth = identity.clients.client(AuthService);
    await auth.createCredentials(login);
    // One failed attempt, so that a counted attempt would show as a change.
    await auth.authenticateCustomer({ email: login.email, password: "wrong password" }).catch(() => {});
    stored = await storedRows();
  });

  afterAll(async () => {
    await customer?.close();
    await identity?.close();
    await issuer?.close();
  });

  afterEach(async () => {
    // Still serving on every protocol, and nothing stored changed.
    for (const protocol of PROTOCOLS) {
      await expect(
        customer.clients.client(CustomerService, protocol).getCustomer({ customerId: known.id }, bearer(known.token)),
        protocol,
      ).resolves.toEqual(known.snapshot);
      await expect(
        identity.clients.client(AuthService, protocol).revokeToken({ token: "nothing" }),
        protocol,
      ).resolves.toBeDefined();
    }
    // Re-snapshot first, so that a change fails only the test that made it.
    const [before, now] = [stored, await storedRows()];
    stored = now;
    expect(now).toEqual(before);
  });

  return {
    knownId,
    get issuer() {
      return issuer;
    },
    get customer() {
      return customer;
    },
    get identity() {
      return identity;
    },
    get known() {
      return known;
    },
    get login() {
      return login;
    },
    auth: () => ({ authorization: `Bearer ${known.token}` }),
    getRequest: () => field(1, knownId),
    storedRows,
    get stored() {
      return stored;
    },
    async resnapshot() {
      stored = await storedRows();
    },
  };
}
