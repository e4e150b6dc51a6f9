/**
 * What RefreshToken costs in round trips, read off the wire by a proxy
 * between the service and PostgreSQL (test/support/pg-statements.ts): a
 * rotation is one statement, a conditional `UPDATE … RETURNING` (the token
 * is rotated only if it is still live and its identity active) with the
 * successor's `INSERT` as a CTE of it; no transaction, no select-then-update.
 * A rotated token presented again still revokes its family.
 */

import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { type StatementLog, startStatementLog } from "../../test/support/pg-statements.js";
import { connectSql, createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";

let svc: RunningIdentityService;
let database: TestDatabase;
let proxy: StatementLog;

beforeAll(async () => {
  database = await createTestDatabase("refresh_statements");
  const { hostname, port } = new URL(database.url);
  proxy = await startStatementLog({ host: hostname, port: Number(port) });
  svc = await startIdentityService({ IDENTITY_DATABASE_URL: proxy.rewrite(database.url) }, { database });
});

afterAll(async () => {
  await svc?.close();
  await proxy?.close();
  await database?.drop();
});

const auth = () => svc.clients.client(AuthService);

/**
 * The statements a call sent to PostgreSQL (on the connection that first
 * touched `refresh_tokens`: the outbox relay's polling goes on beside),
 * their text lower-cased.
 */
async function statementsOf(call: () => Promise<unknown>): Promise<string[]> {
  const from = proxy.statements.length;
  await call();
  const sent = proxy.statements.slice(from);
  const connection = sent.find((s) => s.text.includes("refresh_tokens"))?.connection;
  return sent.filter((s) => s.connection === connection).map((s) => s.text.toLowerCase());
}

describe("RefreshToken round trips", () => {
  it("rotates with one statement: UPDATE … RETURNING and the successor's INSERT as CTEs", async () => {
    const res = await auth().createCredentials({
      email: `refresh.${randomUUID().slice(0, 8)}@example.com`,
      password: "correct horse battery staple",
    });
    const first = res.tokens?.refreshToken ?? "";
    let second = "";
    const statements = await statementsOf(async () => {
      second = (await auth().refreshToken({ refreshToken: first })).tokens?.refreshToken ?? "";
    });
    expect(statements).toHaveLength(1);
    expect(statements[0]).toMatch(/^with "rotated" as \(update "refresh_tokens" set "rotated_at" = .* returning /);
    expect(statements[0]).toMatch(/"successor" as \(insert into "refresh_tokens" /);

    // Reuse detection still works on this path: the first token again revokes the family.
    await expect(auth().refreshToken({ refreshToken: first })).rejects.toMatchObject({
      code: Code.Unauthenticated,
      rawMessage: "invalid refresh token",
    });
    await expect(auth().refreshToken({ refreshToken: second })).rejects.toMatchObject({
      code: Code.Unauthenticated,
      rawMessage: "invalid refresh token",
    });
  });

  it("continues a session from before audiences (none stored) with the first-party default, in the same statement", async () => {
    const sql = connectSql(database.url, 1);
    onTestFinished(() => sql.end());
    const res = await auth().createCredentials({
      email: `legacy.${randomUUID().slice(0, 8)}@example.com`,
      password: "correct horse battery staple",
    });
    await sql`update refresh_tokens set audiences = '{}' where customer_id = ${res.customerId}`;
    // Asking for an audience outside the default is refused, and the token stays unrotated.
    await expect(
      auth().refreshToken({ refreshToken: res.tokens?.refreshToken ?? "", audience: ["orders-service"] }),
    ).rejects.toMatchObject({ code: Code.PermissionDenied });
    const statements = await statementsOf(async () => {
      const next = await auth().refreshToken({ refreshToken: res.tokens?.refreshToken ?? "" });
      expect(decodeJwt(next.tokens?.accessToken ?? "").aud).toEqual(["customer-service"]);
    });
    expect(statements).toHaveLength(1);
    const rows = await sql<{ audiences: string[]; rotated: boolean }[]>`
      select audiences, rotated_at is not null as rotated from refresh_tokens
      where customer_id = ${res.customerId} order by created_at`;
    expect(rows).toEqual([
      { audiences: [], rotated: true },
      { audiences: ["customer-service"], rotated: false },
    ]);
  });
});
