/**
 * Sessions end: a refresh-token family lives at most
 * IDENTITY_SESSION_MAX_LIFETIME after its sign-in, however often it is
 * refreshed (each rotation used to restart the refresh-token lifetime, so a
 * session used monthly lived forever); and a rotated token is kept until the
 * session could end, so replaying an old stolen one, many rotations later
 * and after housekeeping, still revokes the family (RFC 9700). On the
 * service's clock (deps.now), which the test moves.
 */
import { Code } from "@connectrpc/connect";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, expect, it } from "vitest";
import { envToConfig } from "../../identity-service/src/config.js";
import { identityHousekeeping } from "../../identity-service/src/housekeeping.js";
import { rpcError } from "../support/clients.js";
import { uniqueEmail } from "../support/platform.js";
import { type RunningIdentityService, startIdentityService } from "../support/services.js";

const PASSWORD = "correct horse battery staple";
const HOUR = 3_600_000;
const INVALID = rpcError("invalid refresh token", Code.Unauthenticated);

let clock = new Date();
let svc: RunningIdentityService;

beforeAll(async () => {
  svc = await startIdentityService(
    // A refresh token lives an hour; a session two.
    { IDENTITY_REFRESH_TOKEN_TTL: "3600", IDENTITY_SESSION_MAX_LIFETIME: "7200" },
    { now: () => clock },
  );
});
afterAll(() => svc?.close());

const auth = () => svc.clients.client(AuthService);
const refresh = async (token: string) =>
  (await auth().refreshToken({ refreshToken: token })).tokens?.refreshToken ?? "";

it("a replayed rotated token revokes the family many rotations later, after housekeeping", async () => {
  clock = new Date();
  const signedUp = await auth().createCredentials({ email: uniqueEmail("replay"), password: PASSWORD });
  const stolen = signedUp.tokens?.refreshToken ?? "";
  let current = stolen;
  for (let i = 0; i < 12; i++) current = await refresh(current);
  const sql = svc.database.sql;
  // The stolen token as a 30-day token issued 40 days ago would be: expired 10 days ago, its session still live.
  await sql`update refresh_tokens set created_at = now() - interval '40 days', expires_at = now() - interval '10 days',
    session_expires_at = now() + interval '1 hour' where customer_id = ${signedUp.customerId} and parent_id is null`;
  for (const task of identityHousekeeping(envToConfig(svc.env))) await sql.unsafe(task.sql);
  const [kept] = await sql`select count(*)::int as n from refresh_tokens where customer_id = ${signedUp.customerId}`;
  expect(kept?.n).toBe(13);

  await expect(auth().refreshToken({ refreshToken: stolen })).rejects.toMatchObject(INVALID);
  // The replay revoked the whole family: the thief's (or the owner's) current token is dead too.
  await expect(auth().refreshToken({ refreshToken: current })).rejects.toMatchObject(INVALID);
  const reasons = await sql`select distinct revoke_reason from refresh_tokens where customer_id = ${signedUp.customerId}
    and revoked_at is not null`;
  expect(reasons.map((r) => r.revoke_reason)).toEqual(["reuse"]);
});

it("a session refreshed often still ends IDENTITY_SESSION_MAX_LIFETIME after its sign-in", async () => {
  const start = Date.now();
  clock = new Date(start);
  const signedUp = await auth().createCredentials({ email: uniqueEmail("lifetime"), password: PASSWORD });
  let current = signedUp.tokens?.refreshToken ?? "";
  // Every 50 minutes, within the hour each refresh token lives: each rotation used to restart the hour.
  for (const minutes of [50, 100, 119]) {
    clock = new Date(start + minutes * 60_000);
    current = await refresh(current);
  }
  const [row] = await svc.database.sql`select expires_at, session_expires_at from refresh_tokens
    where customer_id = ${signedUp.customerId} and rotated_at is null`;
  expect(row?.expires_at).toEqual(new Date(start + 2 * HOUR));
  expect(row?.session_expires_at).toEqual(new Date(start + 2 * HOUR));
  clock = new Date(start + 2 * HOUR + 1_000);
  await expect(auth().refreshToken({ refreshToken: current })).rejects.toMatchObject(INVALID);
  // A new sign-in starts a new session.
  await expect(
    auth().authenticateCustomer({ email: (await emailOf(signedUp.customerId)) ?? "", password: PASSWORD }),
  ).resolves.toBeDefined();
});

async function emailOf(customerId: string): Promise<string | undefined> {
  const [row] = await svc.database.sql`select email from identities where customer_id = ${customerId}`;
  return row?.email as string | undefined;
}
