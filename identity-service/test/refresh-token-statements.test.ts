/**
 * What RefreshToken costs in round trips, read off the wire by a proxy
 * between the service and PostgreSQL (test/support/pg-statements.ts): a
 * rotation is one conditional `UPDATE … RETURNING` (the token is rotated
 * only if it is still live and its identity active) and the successor's
 * `INSERT`, in one transaction; no select-then-update. A rotated token
 * presented again still revokes its family.
 */

import { randomUUID } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type StatementLog, startStatementLog } from "../../test/support/pg-statements.js";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
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
 * The statements a call's transaction sent to PostgreSQL (on the connection
 * that began it: the outbox relay's polling goes on beside), their first
 * word or two.
 */
async function statementsOf(call: () => Promise<unknown>): Promise<string[]> {
  const from = proxy.statements.length;
  await call();
  const sent = proxy.statements.slice(from);
  const connection = sent.find((s) => s.text.toLowerCase() === "begin")?.connection;
  return sent
    .filter((s) => s.connection === connection)
    .map((s) => s.text.split(" ").slice(0, 2).join(" ").toLowerCase());
}

describe("RefreshToken round trips", () => {
  it("rotates with one UPDATE … RETURNING and one INSERT in a transaction", async () => {
    const res = await auth().createCredentials({
      email: `refresh.${randomUUID().slice(0, 8)}@example.com`,
      password: "correct horse battery staple",
    });
    const first = res.tokens?.refreshToken ?? "";
    let second = "";
    const statements = await statementsOf(async () => {
      second = (await auth().refreshToken({ refreshToken: first })).tokens?.refreshToken ?? "";
    });
    expect(statements).toEqual(["begin", 'update "refresh_tokens"', "insert into", "commit"]);
    const rotation = proxy.statements.find((s) => s.text.startsWith("update") && s.text.includes("rotated_at"));
    expect(rotation?.text).toMatch(/returning/i);

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
});
