/**
 * The identity service as a real process (`identity-service/src/main.ts`,
 * spawned as `npm run start:identity` runs it): on SIGTERM it stops
 * accepting, finishes the calls in flight, publishes every unsent outbox
 * row (those written before the signal and those the calls in flight write
 * after it) and exits 0, logging JSON lines only.
 *
 * To have both kinds of rows at the signal, the test first holds the relay's
 * advisory lock (so sign-ins commit events that nobody publishes), then
 * locks the outbox table and lets go of the advisory lock: the service's
 * relay takes the lead and waits on the table, and so do two sign-ins about
 * to write their events. Nothing is in the stream when SIGTERM comes.
 */
import { randomUUID } from "node:crypto";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import type { CoreProtocol } from "../../test/support/clients.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { unsentEvents } from "../../test/support/outbox.js";
import { refused } from "../../test/support/ports.js";
import { connectSql, createTestDatabase, holdLock, type TestDatabase } from "../../test/support/postgres.js";
import { type ChildService, spawnService, waitWhileRunning } from "../../test/support/processes.js";
import { AUTHENTICATED, readStream, streamCount } from "../../test/support/streams.js";
import { within } from "../../test/support/timing.js";
import { identityOutbox } from "../src/outbox.js";

let database: TestDatabase;
const streams = uniqueStreamNames("identity");
let child: ChildService | undefined;

beforeAll(async () => {
  database = await createTestDatabase("identity_lifecycle");
});

afterAll(async () => {
  await child?.kill();
  await database?.drop();
  await deleteStreams(sharedNatsUrl, streams.stream);
});

interface Login {
  readonly email: string;
  readonly password: string;
  readonly customerId: string;
}

/** Waits until check() holds; fails at once, with its output, if the process exits first. */
async function whileRunning(svc: ChildService, what: string, check: () => boolean | Promise<boolean>, ms = 15_000) {
  await waitWhileRunning(
    svc.exited,
    async () => {
      if (!(await check())) throw new Error(`timed out waiting for ${what}`);
    },
    { timeout: ms, exitedError: () => new Error(`exited while waiting for ${what}:\n${svc.output.join("\n")}`) },
  );
}

describe("the identity service process", () => {
  it("on SIGTERM finishes calls in flight, publishes every unsent event and exits 0", async () => {
    // Its own client: two locks held and the test's queries need a connection each.
    const sql = connectSql(database.url, 4);
    onTestFinished(() => sql.end());
    const lockKey = identityOutbox(streams).lockKey.toString();
    /** The event writes and relay reads of this database that wait for a lock (housekeeping may wait too). */
    const waiting = async () => {
      const rows = await sql<{ what: string }[]>`
        select what from (
          select case when query like '%insert into "outbox"%' then 'event write'
                      when query like '%from outbox%where published_at is null%' then 'relay read' end as what
          from pg_stat_activity
          where datname = ${database.name} and wait_event_type = 'Lock'
        ) w where what is not null`;
      return rows.map((r) => r.what).sort();
    };

    // Until the test lets go of the relay's lock, sign-ins commit events that nobody publishes.
    const relayLock = await holdLock(sql, (tx) => tx`select pg_advisory_xact_lock(${lockKey}::bigint)`);
    const svc = await spawnService("identity-service", {
      IDENTITY_DATABASE_URL: database.url,
      NATS_URL: sharedNatsUrl,
      IDENTITY_STREAM: streams.stream,
      IDENTITY_SUBJECT_PREFIX: streams.subjectPrefix,
      IDENTITY_ARGON2_MEMORY_KIB: "1024",
      IDENTITY_ARGON2_ITERATIONS: "1",
      LOG_LEVEL: "info",
      SHUTDOWN_GRACE_MS: "10000",
    });
    child = svc;
    const auth = (protocol: CoreProtocol) => svc.clients.client(AuthService, protocol);
    const logins: Login[] = await Promise.all(
      ["before1", "before2", "held1", "held2"].map(async (name) => {
        const login = { email: `${name}.${randomUUID()}@example.com`, password: `pw-${randomUUID()}` };
        const { customerId } = await auth("grpc").createCredentials(login);
        return { ...login, customerId };
      }),
    );
    const [before1, before2, held1, held2] = logins as [Login, Login, Login, Login];
    for (const login of [before1, before2]) {
      const res = await auth("grpc").authenticateCustomer({ email: login.email, password: login.password });
      expect(res.customerId).toBe(login.customerId);
    }
    expect(await unsentEvents(database.url)).toBe(2);

    // The outbox table locked, the relay leads and waits to read it; two sign-ins wait to write to it.
    const table = await holdLock(sql, (tx) => tx`lock table outbox in access exclusive mode`);
    let inFlight: Promise<Array<{ customerId: string }>> | undefined;
    try {
      await relayLock.release();
      await whileRunning(svc, "the relay to read", async () => (await waiting()).includes("relay read"));
      inFlight = Promise.all([
        auth("connect-http1").authenticateCustomer({ email: held1.email, password: held1.password }),
        auth("grpc").authenticateCustomer({ email: held2.email, password: held2.password }),
      ]);
      // Settled only after the table is unlocked; until then a failure must not count as unhandled.
      inFlight.catch(() => {});
      await whileRunning(
        svc,
        "both sign-ins to wait for the outbox",
        async () => JSON.stringify(await waiting()) === JSON.stringify(["event write", "event write", "relay read"]),
      );
      // Nothing published yet: two events committed and unsent (counted above), two not yet written.
      expect(await streamCount(sharedNatsUrl, streams.stream)).toBe(0);

      process.kill(svc.pid, "SIGTERM");
      await whileRunning(svc, "the shutting down log line", () =>
        svc.output.some((l) => l.includes('"shutting down"')),
      );
      // It stops accepting while the calls are still in flight.
      await whileRunning(svc, "the port to refuse connections", () => refused(svc.port), 5_000);
      expect(await waiting()).toEqual(["event write", "event write", "relay read"]);
    } finally {
      await table.release();
    }
    const results = await within(inFlight, 5_000, "the calls in flight");
    expect(results.map((r) => r.customerId)).toEqual([held1.customerId, held2.customerId]);
    expect(await within(svc.exited, 15_000, "the exit")).toEqual({ code: 0, signal: null });

    // Every event reached the stream before the process exited, once each.
    expect(await unsentEvents(database.url)).toBe(0);
    const events = await readStream(sharedNatsUrl, streams.stream);
    expect(events.map((e) => e.type)).toEqual(Array(4).fill(AUTHENTICATED));
    expect(events.map((e) => e.customerId).sort()).toEqual(logins.map((l) => l.customerId).sort());

    // JSON log lines only; the calls in flight finished after the signal and were logged as ok.
    const lines = svc.output.map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const line of lines) expect(line).toMatchObject({ level: expect.any(Number), service: "identity-service" });
    const msgs = lines.map((l) => l.msg);
    const shuttingDown = msgs.indexOf("shutting down");
    expect(lines[shuttingDown]).toMatchObject({ signal: "SIGTERM" });
    expect(msgs.at(-1)).toBe("stopped");
    const signIns = lines
      .map((l, i) => ({ l, i }))
      .filter(({ l }) => l.msg === "rpc" && l.procedure === "identity.v1.AuthService/AuthenticateCustomer");
    expect(signIns.map(({ l }) => l.code)).toEqual(["ok", "ok", "ok", "ok"]);
    expect(signIns.slice(2).every(({ i }) => i > shuttingDown)).toBe(true);
  }, 60_000);
});
