/**
 * CustomerService servers in one process, over one database, each the
 * customer service as createCustomerServer assembles it (same handlers,
 * interceptors, validation and logging) with the host's overrides, and no
 * outbox relay (the bench's customer service relays that database):
 *   BENCH_JWKS_PORT   tokens verified against IDENTITY_JWKS_URL (the real authenticator)
 *   BENCH_FIXED_PORT  every call is a fixed service principal: no token verification
 *   BENCH_STUB_PORT   fixed principal, and GetCustomer answers a constant without the database
 * Only the bench uses the last two: they split a GetCustomer into transport,
 * database and token verification. Configured otherwise as the customer
 * service is (CUSTOMER_DATABASE_URL, IDENTITY_ISSUER, …).
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { CustomerSchema } from "@customer-platform/gen/customer/v1/customer_pb.js";
import type { Authenticator, Principal } from "@customer-platform/runtime/auth";
import { ConfigError, type Env } from "@customer-platform/runtime/config";
import { createLogger } from "@customer-platform/runtime/logger";
import { runMain } from "@customer-platform/runtime/main";
import { envToConfig } from "../customer-service/src/config.js";
import { type CustomerServerOptions, createCustomerServer } from "../customer-service/src/server.js";

const FIXED: Principal = {
  kind: "service",
  subject: "bench",
  clientId: "bench",
  scopes: new Set(["customer:read", "customer:write"]),
  tokenId: "bench",
  expiresAt: new Date(Date.now() + 86_400_000),
  issuedAt: new Date(),
};

const STUB = create(CustomerSchema, {
  email: "ada@example.com",
  givenName: "Ada",
  familyName: "Lovelace",
  phoneNumber: "+4915112345678",
  address: {
    addressLines: ["Unter den Linden 1"],
    locality: "Berlin",
    region: "BE",
    postalCode: "10117",
    countryCode: "DE",
  },
  version: 1n,
  createTime: timestampFromDate(new Date()),
  updateTime: timestampFromDate(new Date()),
});

const fixed: Authenticator = { authenticate: async () => FIXED };

const VARIANTS: Array<[portVariable: string, overrides: NonNullable<CustomerServerOptions["overrides"]>]> = [
  ["BENCH_JWKS_PORT", { relay: false }],
  ["BENCH_FIXED_PORT", { relay: false, auth: fixed }],
  [
    "BENCH_STUB_PORT",
    {
      relay: false,
      auth: fixed,
      impl: (impl) => ({
        ...impl,
        async getCustomer(req) {
          return { customer: { ...STUB, customerId: req.customerId } };
        },
      }),
    },
  ],
];

/** The variants' configurations: the customer service's, on each variant's port. */
function envToConfigs(env: Env) {
  return VARIANTS.map(([portVariable, overrides]) => {
    const port = env[portVariable];
    if (!port) throw new ConfigError(`${portVariable} is required`);
    return { config: envToConfig({ ...env, CUSTOMER_HOST: "127.0.0.1", CUSTOMER_PORT: port }), overrides };
  });
}

runMain("customer-service-variants", envToConfigs, async (variants) => {
  const logger = createLogger({ name: "customer-service", level: variants[0]?.config.logLevel ?? "info" });
  const servers = await Promise.all(
    variants.map(({ config, overrides }) => createCustomerServer(config, { logger, overrides })),
  );
  const stop = async () => {
    await Promise.all(servers.map((s) => s.stop()));
  };
  return {
    logger,
    async start() {
      try {
        await Promise.all(servers.map((s) => s.start()));
      } catch (err) {
        await stop();
        throw err;
      }
    },
    stop,
  };
});
