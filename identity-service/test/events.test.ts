/**
 * CustomerAuthenticated and TokensRevoked on JetStream: subject, CloudEvents
 * headers as DESIGN.md lists them, a payload that decodes with the generated
 * schema, nothing secret anywhere in the message (ids, never tokens); no
 * CustomerAuthenticated for anything but a successful sign-in, and one
 * TokensRevoked per revocation that changed something. After every test,
 * every message in the stream (payload and headers), the log and every error
 * received are scanned for every password, token and client secret sent or
 * issued and every hash stored (test/support/secrets.ts).
 */

import { randomUUID } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import {
  AuthenticationMethod,
  CustomerAuthenticatedSchema,
  TokenRevocationReason,
  type TokensRevoked,
  TokensRevokedSchema,
} from "@customer-platform/gen/identity/v1/events_pb.js";
import { CE_SUBJECT } from "@customer-platform/sdk/cloudevents";
import { type JetStreamManager, type JsMsg, jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { decodeJwt } from "jose";
import type postgres from "postgres";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { bearer, rpcError } from "../../test/support/clients.js";
import { scannableHeaders } from "../../test/support/events.js";
import { waitForOutboxEmpty } from "../../test/support/outbox.js";
import { createSecretScanner } from "../../test/support/secrets.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { cloudEventHeaders, headersOf, readSubject, waitForStream } from "../../test/support/streams.js";
import { runCli } from "../src/cli.js";

const PASSWORD = "correct horse battery staple";
const UUID_V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

let svc: RunningIdentityService;
let nc: NatsConnection;
let jsm: JetStreamManager;
let sql: postgres.Sql;

beforeAll(async () => {
  svc = await startIdentityService({});
  nc = await connect({ servers: svc.natsUrl });
  jsm = await jetstreamManager(nc);
  sql = svc.database.sql;
  await waitForStream(jsm, svc.streams.stream);
});

afterAll(async () => {
  scanner.close();
  await nc?.close();
  await svc?.close();
});

const scanner = createSecretScanner();

afterEach(async () => {
  await waitForOutboxEmpty(svc.database.url);
  await scanner.addStored(sql);
  const total = await messageCount();
  const everything = await readSubject(nc, svc.streams.stream, `${svc.streams.subjectPrefix}.>`);
  for (let i = 0; i < total; i++) {
    const msg = await everything.next();
    const leaks = [...scanner.findInBytes(msg.data), ...scanner.find(JSON.stringify(scannableHeaders(msg)))];
    expect(leaks, `${msg.subject} (#${msg.seq})`).toEqual([]);
  }
  scanner.expectClean({ identity: svc.logs.lines });
});

const auth = () => svc.clients.client(AuthService);
const email = () => `events.${randomUUID().slice(0, 8)}@example.com`;
const subjectFor = (customerId: string) => `${svc.streams.subjectPrefix}.customer.authenticated.${customerId}`;

async function messageCount(): Promise<number> {
  return (await jsm.streams.info(svc.streams.stream)).state.messages;
}

/** Rows in the outbox, sent or not. */
async function outboxRows(): Promise<number> {
  const [row] = await sql<[{ n: number }]>`select count(*)::int as n from outbox`;
  return row.n;
}

/** The first message on subject, read by an ordered consumer as any subscriber would. */
async function nextOn(subject: string): Promise<JsMsg> {
  return (await readSubject(nc, svc.streams.stream, subject)).next();
}

/** Neither the payload nor the headers of msg hold any of secrets; needle, which is there, is found. */
function expectNoSecrets(msg: JsMsg, secrets: string[], needles: string[]): void {
  const headerText = Object.entries(scannableHeaders(msg)).flat(2).join("\n");
  const payload = Buffer.from(msg.data);
  for (const secret of secrets) {
    expect(secret.length).toBeGreaterThan(6);
    expect(payload.includes(secret), `payload holds ${secret.slice(0, 12)}…`).toBe(false);
    expect(headerText.includes(secret), `headers hold ${secret.slice(0, 12)}…`).toBe(false);
  }
  // What is there is found: the search above would find a secret that were present.
  for (const needle of needles) expect(payload.includes(needle), `payload lacks ${needle}`).toBe(true);
}

describe("CustomerAuthenticated", () => {
  it("publishes nothing for CreateCredentials and failed sign-ins, one event for a sign-in", async () => {
    const before = await messageCount();
    const rowsBefore = await outboxRows();
    const address = email();
    const { customerId } = await auth().createCredentials({ email: address, password: PASSWORD });
    await expect(auth().authenticateCustomer({ email: address, password: "wrong password!" })).rejects.toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );
    await expect(auth().authenticateCustomer({ email: email(), password: PASSWORD })).rejects.toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );
    expect(await outboxRows()).toBe(rowsBefore);
    await waitForOutboxEmpty(svc.database.url);
    expect(await messageCount()).toBe(before);

    // The pipeline works: a sign-in adds exactly one event, so nothing earlier was merely late.
    await auth().authenticateCustomer({ email: address, password: PASSWORD });
    await waitForOutboxEmpty(svc.database.url);
    expect(await messageCount()).toBe(before + 1);
    const msg = await nextOn(subjectFor(customerId));
    expect(msg.subject).toBe(subjectFor(customerId));
  });

  it("arrives with the DESIGN.md headers and a payload that decodes with the generated schema", async () => {
    const address = email();
    const { customerId } = await auth().createCredentials({ email: address, password: PASSWORD });
    const startedAt = Date.now();
    const res = await auth().authenticateCustomer({ email: address, password: PASSWORD });
    expect(res.customerId).toBe(customerId);

    const msg = await nextOn(subjectFor(customerId));
    expect(msg.subject).toBe(`${svc.streams.subjectPrefix}.customer.authenticated.${customerId}`);
    const event = fromBinary(CustomerAuthenticatedSchema, msg.data);
    expect(event).toMatchObject({
      eventId: expect.stringMatching(UUID_V7),
      customerId,
      method: AuthenticationMethod.PASSWORD,
    });
    if (!event.occurTime) throw new Error("occur_time missing");
    const occurred = timestampDate(event.occurTime);
    expect(occurred.getTime()).toBeGreaterThanOrEqual(startedAt - 1000);
    expect(occurred.getTime()).toBeLessThanOrEqual(Date.now() + 1000);

    expect(headersOf(msg)).toEqual(
      cloudEventHeaders({
        id: event.eventId,
        type: "identity.v1.CustomerAuthenticated",
        source: "identity-service",
        time: occurred.toISOString(),
        subject: customerId,
      }),
    );
  });

  it("carries no password, token or hash, in its payload or its headers", async () => {
    const address = email();
    const signUp = await auth().createCredentials({ email: address, password: PASSWORD });
    const res = await auth().authenticateCustomer({ email: address, password: PASSWORD });
    const [row] = await sql<[{ password_hash: string }]>`
      select password_hash from identities where customer_id = ${res.customerId}`;
    const msg = await nextOn(subjectFor(res.customerId));
    const access = res.tokens?.accessToken ?? "";
    const secrets = [
      PASSWORD,
      access,
      access.split(".")[2] ?? "",
      res.tokens?.refreshToken ?? "",
      signUp.tokens?.accessToken ?? "",
      signUp.tokens?.refreshToken ?? "",
      row.password_hash,
      "$argon2",
    ];
    expectNoSecrets(msg, secrets, [res.customerId]);
    expect(headersOf(msg)["ce-subject"]).toEqual([res.customerId]);
    // The scan after each test would find a refresh token in a payload, even one it never saw.
    const lookup = createSecretScanner({ observe: false });
    await lookup.addStored(sql);
    const forged = Buffer.concat([msg.data, Buffer.from(res.tokens?.refreshToken ?? "")]);
    expect(lookup.findInBytes(forged)).toEqual([expect.stringMatching(/^an issued refresh token/)]);
    lookup.close();
  });

  it("publishes one event per sign-in, each with its own id", async () => {
    const address = email();
    const { customerId } = await auth().createCredentials({ email: address, password: PASSWORD });
    for (let i = 0; i < 3; i++) await auth().authenticateCustomer({ email: address, password: PASSWORD });
    await waitForOutboxEmpty(svc.database.url);
    const reader = await readSubject(nc, svc.streams.stream, subjectFor(customerId));
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push(fromBinary(CustomerAuthenticatedSchema, (await reader.next()).data).eventId);
    expect(new Set(ids).size).toBe(3);
    expect(await reader.none()).toBe(true);
  });
});

describe("TokensRevoked", () => {
  const revokedSubject = (customerId: string) => `${svc.streams.subjectPrefix}.token.revoked.${customerId}`;
  const claims = (token: string | undefined) => {
    const { jti, sid, exp } = decodeJwt(token ?? "");
    return { jti: jti ?? "", sid: String(sid ?? ""), exp: (exp ?? 0) * 1000 };
  };

  /** Reads the events on subject one by one, as any subscriber would. */
  async function reader(subject: string) {
    const messages = await readSubject(nc, svc.streams.stream, subject);
    return {
      async next(): Promise<{ msg: JsMsg; event: TokensRevoked }> {
        const msg = await messages.next();
        return { msg, event: fromBinary(TokensRevokedSchema, msg.data) };
      },
      /** True when nothing more arrives, once everything committed was relayed. */
      async none(): Promise<boolean> {
        await waitForOutboxEmpty(svc.database.url);
        return messages.none();
      },
    };
  }

  const expireMs = (event: TokensRevoked) => (event.expireTime ? timestampDate(event.expireTime).getTime() : 0);

  it("names the revoked access token by jti, the revoked session by sid, once each", async () => {
    const address = email();
    const signUp = await auth().createCredentials({ email: address, password: PASSWORD });
    const tokens = reader(revokedSubject(signUp.customerId));
    const access = claims(signUp.tokens?.accessToken);

    await auth().revokeToken({ token: signUp.tokens?.accessToken ?? "" });
    await auth().revokeToken({ token: signUp.tokens?.accessToken ?? "" }); // already revoked: no event
    const first = await (await tokens).next();
    expect(first.event).toMatchObject({
      customerId: signUp.customerId,
      clientId: "",
      jwtIds: [access.jti],
      sessionIds: [],
      reason: TokenRevocationReason.REVOKED,
    });
    expect(expireMs(first.event)).toBe(access.exp);

    const before = Date.now();
    await auth().revokeToken({ token: signUp.tokens?.refreshToken ?? "" });
    await auth().revokeToken({ token: signUp.tokens?.refreshToken ?? "" });
    const second = await (await tokens).next();
    expect(second.event).toMatchObject({
      customerId: signUp.customerId,
      jwtIds: [],
      sessionIds: [access.sid],
      reason: TokenRevocationReason.REVOKED,
    });
    // Any access token of the session expires by then: none is issued after it, none lives over 900 s.
    expect(expireMs(second.event)).toBeGreaterThanOrEqual(before + 900_000);
    expect(expireMs(second.event)).toBeLessThanOrEqual(Date.now() + 900_000);
    await auth().revokeToken({ token: "garbage" });
    expect(await (await tokens).none()).toBe(true);
  });

  it("names the session a reused refresh token belonged to, and every session ChangePassword ended", async () => {
    const address = email();
    const { customerId, tokens: signUp } = await auth().createCredentials({ email: address, password: PASSWORD });
    const events = reader(revokedSubject(customerId));
    const rotated = await auth().refreshToken({ refreshToken: signUp?.refreshToken ?? "" });
    await expect(auth().refreshToken({ refreshToken: signUp?.refreshToken ?? "" })).rejects.toMatchObject({
      code: Code.Unauthenticated,
    });
    const reused = await (await events).next();
    expect(reused.event).toMatchObject({
      customerId,
      jwtIds: [],
      sessionIds: [claims(rotated.tokens?.accessToken).sid],
      reason: TokenRevocationReason.REFRESH_TOKEN_REUSED,
    });

    // For ChangePassword: a token for the identity service (its issuer), not only the customer service.
    const a = await auth().authenticateCustomer({
      email: address,
      password: PASSWORD,
      audience: [svc.env.IDENTITY_ISSUER ?? ""],
    });
    const b = await auth().authenticateCustomer({ email: address, password: PASSWORD });
    const changed = await auth().changePassword(
      { currentPassword: PASSWORD, newPassword: `${PASSWORD}!` },
      bearer(a.tokens?.accessToken ?? ""),
    );
    const ended = await (await events).next();
    expect(ended.event).toMatchObject({ customerId, jwtIds: [], reason: TokenRevocationReason.PASSWORD_CHANGED });
    // Not the session revoked before, nor the new one.
    expect([...ended.event.sessionIds].sort()).toEqual(
      [claims(a.tokens?.accessToken).sid, claims(b.tokens?.accessToken).sid].sort(),
    );
    expect(ended.event.sessionIds).not.toContain(claims(changed.tokens?.accessToken).sid);
    expect(await (await events).none()).toBe(true);
  });

  it("names a service's revoked token by client id", async () => {
    const clientId = `svc-${randomUUID().slice(0, 8)}`;
    const out: string[] = [];
    expect(
      await runCli(["clients", "create", clientId, "--scopes", "customer:read"], svc.env, (l) => out.push(l)),
    ).toBe(0);
    const { client_secret } = JSON.parse(out[0] ?? "{}") as { client_secret: string };
    const res = await auth().authenticateClient({ clientId, clientSecret: client_secret, scope: "" });
    const token = res.tokens?.accessToken ?? "";
    await auth().revokeToken({ token });
    const subject = `${svc.streams.subjectPrefix}.token.revoked.client.${clientId}`;
    const { msg, event } = await (await reader(subject)).next();
    expect(event).toMatchObject({ customerId: "", clientId, jwtIds: [claims(token).jti], sessionIds: [] });
    expect(msg.headers?.get(CE_SUBJECT)).toBe(clientId);
  });

  it("arrives with the DESIGN.md headers and carries ids, never a token", async () => {
    const address = email();
    const signUp = await auth().createCredentials({ email: address, password: PASSWORD });
    const startedAt = Date.now();
    await auth().revokeToken({ token: signUp.tokens?.refreshToken ?? "" });
    const { msg, event } = await (await reader(revokedSubject(signUp.customerId))).next();
    expect(msg.subject).toBe(`${svc.streams.subjectPrefix}.token.revoked.${signUp.customerId}`);
    expect(event.eventId).toMatch(UUID_V7);
    if (!event.occurTime) throw new Error("occur_time missing");
    const occurred = timestampDate(event.occurTime);
    expect(occurred.getTime()).toBeGreaterThanOrEqual(startedAt - 1000);
    expect(occurred.getTime()).toBeLessThanOrEqual(Date.now() + 1000);
    expect(headersOf(msg)).toEqual(
      cloudEventHeaders({
        id: event.eventId,
        type: "identity.v1.TokensRevoked",
        source: "identity-service",
        time: occurred.toISOString(),
        subject: signUp.customerId,
      }),
    );

    const [row] = await sql<[{ password_hash: string }]>`
      select password_hash from identities where customer_id = ${signUp.customerId}`;
    const access = signUp.tokens?.accessToken ?? "";
    const secrets = [
      PASSWORD,
      access,
      ...access.split("."),
      signUp.tokens?.refreshToken ?? "",
      row.password_hash,
      "$argon2",
    ];
    expectNoSecrets(msg, secrets, [claims(access).sid, signUp.customerId]);
  });
});
