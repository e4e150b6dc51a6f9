import { randomBytes, randomUUID } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Database, openDatabase } from "@customer-platform/runtime/db";
import { runHousekeeping } from "@customer-platform/runtime/housekeeping";
import { createLogger } from "@customer-platform/runtime/logger";
import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "../../test/support/postgres.js";
import * as schema from "../src/db/schema.js";
import { identityHousekeeping } from "../src/housekeeping.js";
import { DEFAULT_THROTTLE } from "../src/throttle.js";

let testDb: TestDatabase;
let database: Database<typeof schema>;

beforeAll(async () => {
  testDb = await createTestDatabase("housekeeping");
  database = await openDatabase({ url: testDb.url, schema });
  await database.migrate(join(dirname(fileURLToPath(import.meta.url)), "../src/db/migrations"));
});

afterAll(async () => {
  await database?.close();
  await testDb?.drop();
});

it("deletes old published events, stale throttles and dead tokens, and nothing else", async () => {
  const q = (text: string, params: unknown[] = []) => database.query(text, params);
  const event = (published: string | null) =>
    q(
      "insert into outbox (event_id, subject, type, source, ce_subject, payload, occur_time, published_at) values ($1, 's', 't', 'x', 'c', '\\x00', now(), $2)",
      [randomUUID(), published],
    );
  await event(new Date(Date.now() - 8 * 86_400_000).toISOString()); // old, sent: goes
  await event(new Date(Date.now() - 86_400_000).toISOString()); // recent, sent: stays
  await event(null); // unsent: stays
  const throttle = (lastFailureMinutesAgo: number, blockedMinutes: number | null, locked = false) =>
    q(
      "insert into login_throttles (key, failures, blocked_until, last_failure_at, locked_at) values ($1, 3, $2, $3, $4)",
      [
        randomBytes(32),
        blockedMinutes === null ? null : new Date(Date.now() + blockedMinutes * 60_000).toISOString(),
        new Date(Date.now() - lastFailureMinutesAgo * 60_000).toISOString(),
        locked ? new Date().toISOString() : null,
      ],
    );
  const dayAndMore = DEFAULT_THROTTLE.windowMs / 60_000 + 60;
  await throttle(dayAndMore, null); // stale: goes
  await throttle(60, null); // an hour old: within the window, stays
  await throttle(dayAndMore, 30); // stale but still blocked: stays
  await throttle(dayAndMore, null, true); // stale but locked: stays until unlocked
  const rateLimit = (tatMinutes: number) =>
    q("insert into rate_limits (key, tat) values ($1, $2)", [
      randomBytes(32),
      new Date(Date.now() + tatMinutes * 60_000).toISOString(),
    ]);
  await rateLimit(-1); // passed: carries nothing, goes
  await rateLimit(10); // running: stays
  await q(
    "insert into revoked_access_tokens (jti, expires_at, revoked_at) values ('old', now() - interval '1 minute', now())",
  );
  await q(
    "insert into revoked_access_tokens (jti, expires_at, revoked_at) values ('live', now() + interval '10 minutes', now())",
  );

  await runHousekeeping(
    database,
    identityHousekeeping({ throttle: DEFAULT_THROTTLE }),
    createLogger({ name: "t", level: "silent" }),
  );

  const count = async (sql: string) => Number((await q(sql))[0]?.n);
  expect(await count("select count(*)::int as n from outbox")).toBe(2);
  expect(await count("select count(*)::int as n from outbox where published_at is null")).toBe(1);
  expect(await count("select count(*)::int as n from login_throttles")).toBe(3);
  expect(await count("select count(*)::int as n from rate_limits")).toBe(1);
  expect((await q("select jti from revoked_access_tokens")).map((r) => r.jti)).toEqual(["live"]);
});
