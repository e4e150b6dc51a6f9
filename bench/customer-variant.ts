/**
 * CustomerService servers in one process, over one database, wired as
 * customer-service/src/server.ts wires them (same handlers, interceptors,
 * validation and logging; no outbox relay, as GetCustomer emits nothing):
 *   BENCH_JWKS_PORT   tokens verified against IDENTITY_JWKS_URL (the real authenticator)
 *   BENCH_FIXED_PORT  every call is a fixed service principal: no token verification
 *   BENCH_STUB_PORT   fixed principal, and GetCustomer answers a constant without the database
 * Only the bench uses the last two: they split a GetCustomer into transport,
 * database and token verification.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import { CustomerSchema } from "@customer-platform/gen/customer/v1/customer_pb.js";
import {
  CustomerService,
  file_customer_v1_customer_service,
} from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import * as schema from "../customer-service/src/db/schema.js";
import { createCustomerService } from "../customer-service/src/routes/index.js";
import { type Authenticator, createJwksAuthenticator, type Principal } from "@customer-platform/runtime/auth";
import { startConnectServer } from "@customer-platform/runtime/connect-server";
import { openDatabase } from "@customer-platform/runtime/db";
import { createLogger } from "@customer-platform/runtime/logger";

const env = (name: string) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is required`);
  return v;
};

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

const logger = createLogger({ name: "customer-service", level: (process.env.LOG_LEVEL ?? "info") as "info" });
const database = await openDatabase({ url: env("CUSTOMER_DATABASE_URL"), dataDir: "", schema });
const service = (auth: Authenticator) =>
  createCustomerService({
    db: database.db,
    auth,
    events: { source: "customer-service", subjectPrefix: "bench", notifyChannel: "customer_outbox" },
    now: () => new Date(),
  });
const fixed: Authenticator = { authenticate: async () => FIXED };
const jwks = createJwksAuthenticator({
  jwksUrl: env("IDENTITY_JWKS_URL"),
  issuer: env("IDENTITY_ISSUER"),
  audience: "customer-service",
  cooldownMs: 5_000,
});
const variants: Array<[port: string, impl: ServiceImpl<typeof CustomerService>]> = [
  [env("BENCH_JWKS_PORT"), service(jwks)],
  [env("BENCH_FIXED_PORT"), service(fixed)],
  [
    env("BENCH_STUB_PORT"),
    {
      ...service(fixed),
      async getCustomer(req) {
        return { customer: { ...STUB, customerId: req.customerId } };
      },
    },
  ],
];
const servers = await Promise.all(
  variants.map(([port, impl]) =>
    startConnectServer({
      host: "127.0.0.1",
      port: Number(port),
      logger,
      service: CustomerService,
      file: file_customer_v1_customer_service,
      impl,
      readMaxBytes: 64 * 1024,
      probe: () => database.query("select 1"),
    }),
  ),
);
const stop = async () => {
  await Promise.all(servers.map((s) => s.close(1000)));
  await database.close();
  process.exit(0);
};
process.once("SIGTERM", stop);
process.once("SIGINT", stop);
