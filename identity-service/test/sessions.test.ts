/**
 * A customer's sessions (ListSessions, RevokeSession, RevokeAllSessions) and
 * PasswordChanged, against the real service:
 * - every way a session starts (CompleteSignUp, AuthenticateCustomer, the
 *   deprecated CreateCredentials, ChangePassword) records the User-Agent (at
 *   most 256 characters, none when absent) and the client address (the peer,
 *   or the client named by a trusted proxy) of its sign-in;
 * - the list holds the live sessions only, newest first, the caller's marked
 *   `current`; a refresh moves `last_use_time` and nothing else;
 * - RevokeSession ends one session (its refresh token refused, its access
 *   token revoked, TokensRevoked with its `sid` in the outbox and the
 *   stream); another customer's session is NOT_FOUND and stays live;
 *   RevokeAllSessions ends them all;
 * - only a customer token for the identity service may call them;
 * - ChangePassword and CompleteRecovery each emit PasswordChanged (CHANGED,
 *   RESET) with the change.
 * This service trusts loopback as a proxy (IDENTITY_TRUSTED_PROXIES), so a
 * call's X-Forwarded-For names its client; the addresses are documentation
 * ranges (RFC 5737); every call really comes from 127.0.0.1.
 */
import { randomUUID } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { type Timestamp, timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AuthService, type Session, type TokenSet } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import {
  PasswordChangedSchema,
  PasswordChangeKind,
  TokenRevocationReason,
  TokensRevokedSchema,
} from "@customer-platform/gen/identity/v1/events_pb.js";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, CORE_PROTOCOLS, type CoreProtocol, rpcError } from "../../test/support/clients.js";
import { mailedCode } from "../../test/support/mailbox.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { readSubject, waitForStream } from "../../test/support/streams.js";
import { runCli } from "../src/cli.js";

const PASSWORD = "correct horse battery staple";
const NEW_PASSWORD = "a brand new passphrase";
/** IDENTITY_SESSION_MAX_LIFETIME's default: 90 days. */
const SESSION_LIFETIME_MS = 7_776_000 * 1000;
const INVALID_REFRESH = rpcError("invalid refresh token", Code.Unauthenticated);
const REVOKED = rpcError("access token revoked", Code.Unauthenticated);

let svc: RunningIdentityService;
let nc: NatsConnection;
let issuer: string;

beforeAll(async () => {
  svc = await startIdentityService({ IDENTITY_TRUSTED_PROXIES: "127.0.0.1, ::1" });
  issuer = svc.env.IDENTITY_ISSUER as string;
  nc = await connect({ servers: svc.natsUrl });
  await waitForStream(await jetstreamManager(nc), svc.streams.stream);
});

afterAll(async () => {
  await nc?.close();
  await svc?.close();
});

const auth = (protocol: CoreProtocol = "connect-http1") => svc.clients.client(AuthService, protocol);
const email = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;
/** A call from a client: its User-Agent, and its address as our trusted proxy names it (else the peer's). */
const from = (userAgent: string, address?: string, token?: string) => ({
  headers: {
    "user-agent": userAgent,
    ...(address && { "x-forwarded-for": address }),
    ...(token && { authorization: `Bearer ${token}` }),
  },
});
const access = (tokens: TokenSet | undefined) => tokens?.accessToken ?? "";
const refresh = (tokens: TokenSet | undefined) => tokens?.refreshToken ?? "";
/** A timestamp the answer must carry, in milliseconds. */
const ms = (t: Timestamp | undefined) => {
  if (!t) throw new Error("timestamp missing");
  return timestampDate(t).getTime();
};
/** The session (`sid`) an access token belongs to. */
const sid = (tokens: TokenSet | undefined) => decodeJwt(access(tokens)).sid as string;

/** Signs in with tokens for the identity service itself. */
async function signIn(address: string, userAgent: string, forwardedFor?: string, protocol?: CoreProtocol) {
  const res = await auth(protocol).authenticateCustomer(
    { email: address, password: PASSWORD, audience: [issuer] },
    from(userAgent, forwardedFor),
  );
  return res.tokens;
}

/** A customer made with the deprecated CreateCredentials (the harness enables it). */
async function newCustomer(label: string) {
  const address = email(label);
  const res = await auth().createCredentials(
    { email: address, password: PASSWORD, audience: [issuer] },
    from("Setup/1.0", "198.51.100.1"),
  );
  return { email: address, customerId: res.customerId, tokens: res.tokens };
}

async function list(tokens: TokenSet | undefined, protocol?: CoreProtocol): Promise<Session[]> {
  return (await auth(protocol).listSessions({}, bearer(access(tokens)))).sessions;
}

/** The events of `type` the outbox holds for a customer (sent or not), decoded with schema, oldest first. */
async function outboxEvents<T>(
  type: string,
  customerId: string,
  decode: (payload: Uint8Array) => T,
): Promise<{ subject: string; event: T }[]> {
  const rows = await svc.database.sql<{ subject: string; payload: Buffer }[]>`
    select subject, payload from outbox where type = ${type} and ce_subject = ${customerId} order by id`;
  return rows.map((r) => ({ subject: r.subject, event: decode(r.payload) }));
}

const revocations = (customerId: string) =>
  outboxEvents(TokensRevokedSchema.typeName, customerId, (p) => fromBinary(TokensRevokedSchema, p));

describe.each(CORE_PROTOCOLS)("ListSessions over %s", (protocol) => {
  it("lists each live session with its sign-in's client, address and times, newest first, the caller's current", async () => {
    // Signed up as customers do: StartSignUp, the mailed code, CompleteSignUp (a session of its own).
    const address = email("list");
    await auth(protocol).startSignUp({ email: address });
    const code = await mailedCode(svc.env.IDENTITY_MAILBOX_DIR as string, address);
    const signUp = await auth(protocol).completeSignUp(
      { email: address, code, password: PASSWORD, audience: [issuer] },
      from("SignUp/1.0", "192.0.2.10"),
    );
    const phone = await signIn(address, "Phone/1.0 (iOS)", "203.0.113.7", protocol);
    // No forwarded address: the peer's.
    const laptop = await signIn(address, "Laptop/2.0", undefined, protocol);

    const sessions = await list(laptop, protocol);
    expect(sessions.map((s) => s.sessionId)).toEqual([sid(laptop), sid(phone), sid(signUp.tokens)]);
    expect(sessions.map((s) => [s.userAgent, s.ipAddress, s.current])).toEqual([
      ["Laptop/2.0", "127.0.0.1", true],
      ["Phone/1.0 (iOS)", "203.0.113.7", false],
      ["SignUp/1.0", "192.0.2.10", false],
    ]);
    for (const s of sessions) {
      expect(s.clientId).toBe(decodeJwt(access(laptop)).client_id);
      // Never refreshed: last used at its sign-in; it ends the absolute lifetime after it.
      const created = ms(s.createTime);
      expect(ms(s.lastUseTime)).toBe(created);
      expect(ms(s.expireTime)).toBe(created + SESSION_LIFETIME_MS);
    }
    // Newest first: strictly decreasing sign-in times.
    const created = sessions.map((s) => ms(s.createTime));
    expect([...created].sort((a, b) => b - a)).toEqual(created);
    expect(new Set(created).size).toBe(3);

    // Another session asking: it is the current one.
    expect((await list(phone, protocol)).filter((s) => s.current).map((s) => s.sessionId)).toEqual([sid(phone)]);
  });
});

describe("ListSessions", () => {
  it("leaves out sessions that ended: token expired, lifetime over, signed out, refresh token replayed", async () => {
    const user = await newCustomer("ended");
    const [expired, lifetimeOver, signedOut, replayed, live] = [
      await signIn(user.email, "Expired/1.0"),
      await signIn(user.email, "LifetimeOver/1.0"),
      await signIn(user.email, "SignedOut/1.0"),
      await signIn(user.email, "Replayed/1.0"),
      await signIn(user.email, "Live/1.0"),
    ];
    const sql = svc.database.sql;
    await sql`update refresh_tokens set expires_at = now() - interval '1 second' where family_id = ${sid(expired)}`;
    await sql`update refresh_tokens set session_expires_at = now() - interval '1 second'
              where family_id = ${sid(lifetimeOver)}`;
    await auth().revokeToken({ token: refresh(signedOut) });
    await auth().refreshToken({ refreshToken: refresh(replayed) });
    await expect(auth().refreshToken({ refreshToken: refresh(replayed) })).rejects.toMatchObject(INVALID_REFRESH);

    expect((await list(live)).map((s) => s.userAgent)).toEqual(["Live/1.0", "Setup/1.0"]);
  });
});

describe("session metadata", () => {
  it("keeps the first 256 characters of a User-Agent, and none when the header is absent", async () => {
    const user = await newCustomer("agent");
    const long = `Agent/${"x".repeat(400)}`;
    const longOne = await signIn(user.email, long);
    // A client that sends no User-Agent at all (connect-es adds its own unless told otherwise).
    const dropUserAgent: Interceptor = (next) => (req) => {
      req.header.delete("user-agent");
      return next(req);
    };
    const bare = createClient(
      AuthService,
      createConnectTransport({ baseUrl: svc.url, httpVersion: "1.1", interceptors: [dropUserAgent] }),
    );
    const none = (await bare.authenticateCustomer({ email: user.email, password: PASSWORD, audience: [issuer] }))
      .tokens;

    const sessions = await list(none);
    expect(sessions.map((s) => [s.sessionId, s.userAgent, s.ipAddress])).toEqual([
      [sid(none), "", "127.0.0.1"],
      [sid(longOne), long.slice(0, 256), "127.0.0.1"],
      // CreateCredentials' session.
      [sid(user.tokens), "Setup/1.0", "198.51.100.1"],
    ]);
    const [stored] = await svc.database.sql<{ n: number }[]>`
      select length(user_agent)::int as n from refresh_tokens where id = ${sid(longOne)}`;
    expect(stored?.n).toBe(256);
  });

  it("a refresh moves last_use_time only: the session keeps its id, sign-in time and sign-in's client", async () => {
    const user = await newCustomer("refresh");
    const first = await signIn(user.email, "Tablet/3.0", "203.0.113.20");
    const [before] = (await list(first)).filter((s) => s.sessionId === sid(first));
    const refreshed = (
      await auth().refreshToken({ refreshToken: refresh(first) }, from("SomethingElse/9.9", "203.0.113.99"))
    ).tokens;
    expect(sid(refreshed)).toBe(sid(first));

    const sessions = await list(refreshed);
    // Still two sessions (CreateCredentials' and this one): the rotated token is no session of its own.
    expect(sessions.map((s) => s.sessionId)).toEqual([sid(first), sid(user.tokens)]);
    const [after] = sessions;
    expect(after).toMatchObject({
      userAgent: "Tablet/3.0",
      ipAddress: "203.0.113.20",
      createTime: before?.createTime,
      expireTime: before?.expireTime,
      current: true,
    });
    const lastUse = (s: Session | undefined) => ms(s?.lastUseTime);
    expect(lastUse(after)).toBeGreaterThan(lastUse(before));
    const [newest] = await svc.database.sql<{ created_at: Date }[]>`
      select created_at from refresh_tokens where family_id = ${sid(first)} order by created_at desc limit 1`;
    expect(lastUse(after)).toBe(newest?.created_at.getTime());
  });

  it("ChangePassword's new session records its client; the ended ones leave the list", async () => {
    const user = await newCustomer("change");
    const before = await signIn(user.email, "Old/1.0");
    const changed = await auth().changePassword(
      { currentPassword: PASSWORD, newPassword: NEW_PASSWORD, audience: [issuer] },
      from("Changer/1.0", "203.0.113.30", access(before)),
    );
    const sessions = await list(changed.tokens);
    expect(sessions.map((s) => [s.sessionId, s.userAgent, s.ipAddress, s.current])).toEqual([
      [sid(changed.tokens), "Changer/1.0", "203.0.113.30", true],
    ]);
  });
});

describe("RevokeSession", () => {
  it("ends that session only: its refresh token is refused, its access token revoked, TokensRevoked names its sid", async () => {
    const user = await newCustomer("revoke");
    const keep = await signIn(user.email, "Keep/1.0");
    const end = await signIn(user.email, "End/1.0");
    const before = (await revocations(user.customerId)).length;

    expect(await auth().revokeSession({ sessionId: sid(end) }, bearer(access(keep)))).toBeDefined();

    await expect(auth().refreshToken({ refreshToken: refresh(end) })).rejects.toMatchObject(INVALID_REFRESH);
    await expect(auth().listSessions({}, bearer(access(end)))).rejects.toMatchObject(REVOKED);
    expect((await list(keep)).map((s) => s.sessionId)).toEqual([sid(keep), sid(user.tokens)]);

    const events = (await revocations(user.customerId)).slice(before);
    expect(events).toHaveLength(1);
    expect(events[0]?.event).toMatchObject({
      customerId: user.customerId,
      sessionIds: [sid(end)],
      jwtIds: [],
      reason: TokenRevocationReason.REVOKED,
    });
    // Published, on the customer's revocation subject, for resource servers that verify offline.
    const subject = `${svc.streams.subjectPrefix}.token.revoked.${user.customerId}`;
    const published = (await (await readSubject(nc, svc.streams.stream, subject)).all(1)).map(
      (m) => fromBinary(TokensRevokedSchema, m.data).eventId,
    );
    expect(published).toContain(events[0]?.event.eventId);

    // The other sessions still work.
    await expect(auth().refreshToken({ refreshToken: refresh(keep) })).resolves.toBeDefined();
  });

  it("succeeds for a session of the caller's that already ended, without another event", async () => {
    const user = await newCustomer("again");
    const caller = await signIn(user.email, "Caller/1.0");
    const gone = await signIn(user.email, "Gone/1.0");
    await auth().revokeToken({ token: refresh(gone) });
    const before = (await revocations(user.customerId)).length;

    await expect(auth().revokeSession({ sessionId: sid(gone) }, bearer(access(caller)))).resolves.toBeDefined();
    await expect(auth().revokeSession({ sessionId: sid(gone) }, bearer(access(caller)))).resolves.toBeDefined();
    expect(await revocations(user.customerId)).toHaveLength(before);
  });

  it("is NOT_FOUND for another customer's session and for an id nobody has; the other's session stays live", async () => {
    const mallory = await newCustomer("mallory");
    const alice = await newCustomer("alice");
    const alices = await signIn(alice.email, "Alice/1.0");
    const notFound = rpcError("session not found", Code.NotFound);

    await expect(
      auth().revokeSession({ sessionId: sid(alices) }, bearer(access(mallory.tokens))),
    ).rejects.toMatchObject(notFound);
    await expect(
      auth().revokeSession({ sessionId: randomUUID() }, bearer(access(mallory.tokens))),
    ).rejects.toMatchObject(notFound);
    expect(await revocations(alice.customerId)).toEqual([]);
    expect((await list(alices)).map((s) => s.sessionId)).toContain(sid(alices));
    await expect(auth().refreshToken({ refreshToken: refresh(alices) })).resolves.toBeDefined();

    await expect(
      auth().revokeSession({ sessionId: "not-a-uuid" }, bearer(access(mallory.tokens))),
    ).rejects.toMatchObject(rpcError("session_id: must be a valid UUID [string.uuid]", Code.InvalidArgument));
  });
});

describe("RevokeAllSessions", () => {
  it("ends every session, the caller's own included", async () => {
    const user = await newCustomer("all");
    const a = await signIn(user.email, "A/1.0");
    const b = await signIn(user.email, "B/1.0");
    const before = (await revocations(user.customerId)).length;

    expect(await auth().revokeAllSessions({}, bearer(access(a)))).toBeDefined();

    for (const tokens of [user.tokens, a, b]) {
      await expect(auth().refreshToken({ refreshToken: refresh(tokens) })).rejects.toMatchObject(INVALID_REFRESH);
    }
    await expect(auth().listSessions({}, bearer(access(a)))).rejects.toMatchObject(REVOKED);
    const events = (await revocations(user.customerId)).slice(before);
    expect(events).toHaveLength(1);
    expect(events[0]?.event.reason).toBe(TokenRevocationReason.REVOKED);
    expect([...(events[0]?.event.sessionIds ?? [])].sort()).toEqual([sid(user.tokens), sid(a), sid(b)].sort());

    // Signing in again starts the only live session.
    const fresh = await signIn(user.email, "Fresh/1.0");
    expect((await list(fresh)).map((s) => s.sessionId)).toEqual([sid(fresh)]);
  });
});

describe("who may call", () => {
  it("a customer token for the identity service only: a service token is PERMISSION_DENIED, others UNAUTHENTICATED", async () => {
    const clientId = `svc-${randomUUID().slice(0, 8)}`;
    const out: string[] = [];
    const created = await runCli(
      ["clients", "create", clientId, "--scopes", "customer:read", "--audiences", issuer],
      svc.env,
      (l) => out.push(l),
    );
    expect(created).toBe(0);
    const secret = (JSON.parse(out[0] ?? "{}") as { client_secret: string }).client_secret;
    const service = (await auth().authenticateClient({ clientId, clientSecret: secret, scope: "" })).tokens;
    const user = await newCustomer("who");
    const sessionId = sid(user.tokens);
    const calls = (token?: string) => {
      const opts = token === undefined ? {} : bearer(token);
      // Each made when awaited: a rejection nobody awaits yet would be unhandled.
      return [
        ["list sessions", () => auth().listSessions({}, opts)],
        ["revoke a session", () => auth().revokeSession({ sessionId }, opts)],
        ["revoke sessions", () => auth().revokeAllSessions({}, opts)],
      ] as const;
    };

    for (const [action, call] of calls(access(service))) {
      await expect(call()).rejects.toMatchObject(
        rpcError(`only a customer token can ${action}`, Code.PermissionDenied),
      );
    }
    for (const [, call] of calls()) {
      await expect(call()).rejects.toMatchObject(rpcError("missing bearer token", Code.Unauthenticated));
    }
    // A customer token for the customer service (the default audience) is not for these RPCs.
    const elsewhere = (await auth().authenticateCustomer({ email: user.email, password: PASSWORD })).tokens;
    for (const [, call] of calls(access(elsewhere))) {
      await expect(call()).rejects.toMatchObject(rpcError("invalid access token", Code.Unauthenticated));
    }
    // None of it ended a session.
    expect((await list(user.tokens)).map((s) => s.sessionId)).toContain(sessionId);
  });
});

describe("PasswordChanged", () => {
  const passwordEvents = (customerId: string) =>
    outboxEvents(PasswordChangedSchema.typeName, customerId, (p) => fromBinary(PasswordChangedSchema, p));

  it("ChangePassword emits it (CHANGED) with the change, on the customer's subject, and it is published", async () => {
    const user = await newCustomer("changed");
    expect(await passwordEvents(user.customerId)).toEqual([]);
    await auth().changePassword(
      { currentPassword: PASSWORD, newPassword: NEW_PASSWORD, audience: [issuer] },
      bearer(access(user.tokens)),
    );
    const subject = `${svc.streams.subjectPrefix}.customer.password_changed.${user.customerId}`;
    const events = await passwordEvents(user.customerId);
    expect(events).toEqual([
      {
        subject,
        event: expect.objectContaining({ customerId: user.customerId, kind: PasswordChangeKind.CHANGED }),
      },
    ]);
    const [published] = await (await readSubject(nc, svc.streams.stream, subject)).all(1);
    expect(published && fromBinary(PasswordChangedSchema, published.data).eventId).toBe(events[0]?.event.eventId);
    // Written with the change: the same occur_time as the revocation of the sessions it ended.
    const [revoked] = (await revocations(user.customerId)).filter(
      (e) => e.event.reason === TokenRevocationReason.PASSWORD_CHANGED,
    );
    expect(events[0]?.event.occurTime).toEqual(revoked?.event.occurTime);
  });

  it("CompleteRecovery emits it (RESET)", async () => {
    const user = await newCustomer("reset");
    await auth().startRecovery({ email: user.email });
    const code = await mailedCode(svc.env.IDENTITY_MAILBOX_DIR as string, user.email);
    await auth().completeRecovery({ email: user.email, code, newPassword: NEW_PASSWORD });
    const events = await passwordEvents(user.customerId);
    expect(events).toEqual([
      {
        subject: `${svc.streams.subjectPrefix}.customer.password_changed.${user.customerId}`,
        event: expect.objectContaining({ customerId: user.customerId, kind: PasswordChangeKind.RESET }),
      },
    ]);
    const [revoked] = (await revocations(user.customerId)).filter(
      (e) => e.event.reason === TokenRevocationReason.PASSWORD_RESET,
    );
    expect(events[0]?.event.occurTime).toEqual(revoked?.event.occurTime);
  });

  it("a wrong current password changes nothing and emits nothing", async () => {
    const user = await newCustomer("wrong");
    await expect(
      auth().changePassword(
        { currentPassword: "not the password", newPassword: NEW_PASSWORD },
        bearer(access(user.tokens)),
      ),
    ).rejects.toMatchObject(rpcError("current password is wrong", Code.Unauthenticated));
    expect(await passwordEvents(user.customerId)).toEqual([]);
  });
});
