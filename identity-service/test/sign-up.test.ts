/**
 * Sign-up by a mailed code (StartSignUp, CompleteSignUp) and email change
 * (StartEmailChange, CompleteEmailChange) end to end, through a real SMTP
 * server on loopback: the code arrives by mail and makes a verified identity
 * whose token carries the email; an address that has an account gets the
 * same answer, byte for byte and in the same time, and its owner a notice;
 * codes wrong, guessed to the limit, used, replaced and expired; the mail
 * server down while a code is sent; CustomerEmailVerified with growing
 * versions; the deprecated CreateCredentials off by default, and its
 * unverified identities verified by a code.
 */
import { randomUUID } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { CustomerEmailVerifiedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, failure, rpcError } from "../../test/support/clients.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { startSmtpServer, type TestSmtpServer } from "../../test/support/smtp.js";
import { readSubject } from "../../test/support/streams.js";
import { median, pairedDifferences } from "../../test/support/timing.js";
import { CODE_MAX_ATTEMPTS } from "../src/codes.js";

const PASSWORD = "correct horse battery staple";
const INVALID_CODE = rpcError("code: invalid or expired code [code.invalid]", Code.InvalidArgument);

let smtp: TestSmtpServer;
let svc: RunningIdentityService;
/** With the deprecated CreateCredentials as it is by default: off. */
let strict: RunningIdentityService;
let nc: NatsConnection;

beforeAll(async () => {
  smtp = await startSmtpServer();
  const mail = { IDENTITY_SMTP_URL: smtp.url, IDENTITY_MAIL_FROM: "Platform <no-reply@example.test>" };
  svc = await startIdentityService(mail);
  strict = await startIdentityService({ ...mail, IDENTITY_LEGACY_CREATE_CREDENTIALS: "false" });
  nc = await connect({ servers: svc.natsUrl });
});

afterAll(async () => {
  await nc?.close();
  await Promise.all([svc?.close(), strict?.close()]);
  await smtp?.[Symbol.asyncDispose]();
});

const email = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;
const auth = (s: RunningIdentityService = svc) => s.clients.client(AuthService);
const mailsTo = (address: string) => smtp.messages.filter((m) => m.envelope.to.includes(address));

/** Waits for the n-th mail to `address`: its subject and its 8-digit code, if it carries one. */
async function nthMail(address: string, n: number) {
  await expect.poll(() => mailsTo(address).length, { timeout: 30_000 }).toBeGreaterThanOrEqual(n);
  const mail = mailsTo(address)[n - 1];
  const text = mail?.parsed.text ?? "";
  return { subject: mail?.parsed.subject ?? "", text, code: /\b(\d{8})\b/.exec(text)?.[1] };
}

async function codeFor(address: string, n = 1): Promise<string> {
  const { code } = await nthMail(address, n);
  if (!code) throw new Error(`mail ${n} to ${address} has no code`);
  return code;
}

/** Signs up as a customer does: code by mail, then the password. */
async function signUp(address: string, s: RunningIdentityService = svc) {
  await auth(s).startSignUp({ email: address });
  const code = await codeFor(address, mailsTo(address).length + 1);
  return auth(s).completeSignUp({ email: address, code, password: PASSWORD, audience: [s.env.IDENTITY_ISSUER ?? ""] });
}

/** The CustomerEmailVerified events of one customer, in order. */
async function emailEvents(customerId: string, count: number) {
  const reader = await readSubject(
    nc,
    svc.streams.stream,
    `${svc.streams.subjectPrefix}.customer.email_verified.${customerId}`,
  );
  const msgs = await reader.all(count);
  return msgs.map((m) => fromBinary(CustomerEmailVerifiedSchema, m.data));
}

/** How long a StartSignUp took, in ms. */
async function timed(fn: () => Promise<{ status: number }>): Promise<number> {
  const start = performance.now();
  const answer = await fn();
  const ms = performance.now() - start;
  expect(answer.status).toBe(200);
  return ms;
}

/** A StartSignUp over Connect JSON with fetch: status, body and the headers a client could tell apart. */
async function rawStartSignUp(address: string) {
  const res = await fetch(`${svc.url}/identity.v1.AuthService/StartSignUp`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email: address }),
  });
  const body = Buffer.from(await res.arrayBuffer());
  const headers = [...res.headers].filter(([k]) => k !== "date");
  return { status: res.status, body, headers };
}

describe("sign-up by a mailed code", () => {
  it("verifies the address: the identity's token carries the email, and CustomerEmailVerified version 1 is published", async () => {
    const address = email("new");
    await auth().startSignUp({ email: address });
    const mail = await nthMail(address, 1);
    expect(mail.subject).toMatch(/verify your email/i);
    expect(mail.subject).not.toContain(mail.code);
    const res = await auth().completeSignUp({ email: address, code: mail.code ?? "", password: PASSWORD });
    expect(res.customerId).toMatch(/^[0-9a-f-]{36}$/);
    expect(decodeJwt(res.tokens?.accessToken ?? "")).toMatchObject({
      sub: res.customerId,
      email: address,
      email_verified: true,
    });
    const signedIn = await auth().authenticateCustomer({ email: address, password: PASSWORD });
    expect(decodeJwt(signedIn.tokens?.accessToken ?? "")).toMatchObject({ email: address, email_verified: true });
    const refreshed = await auth().refreshToken({ refreshToken: signedIn.tokens?.refreshToken ?? "" });
    expect(decodeJwt(refreshed.tokens?.accessToken ?? "")).toMatchObject({ email: address, email_verified: true });
    const [event] = await emailEvents(res.customerId, 1);
    expect(event).toMatchObject({ customerId: res.customerId, email: address, emailVersion: 1n });
    const [row] = await svc.database.sql<{ email_verified_at: Date | null; email_version: string }[]>`
      select email_verified_at, email_version from identities where customer_id = ${res.customerId}`;
    expect(row?.email_verified_at).toBeInstanceOf(Date);
    expect(Number(row?.email_version)).toBe(1);
  });

  it("answers an address that has an account exactly as a new one, and mails its owner a notice instead of a code", async () => {
    const taken = email("taken");
    await signUp(taken);
    const fresh = email("fresh");
    const [a, b] = [await rawStartSignUp(taken), await rawStartSignUp(fresh)];
    expect(a.status).toBe(200);
    expect(a).toEqual(b);
    const notice = await nthMail(taken, 2);
    expect(notice.subject).toMatch(/tried to sign up/i);
    expect(notice.code).toBeUndefined();
    expect((await nthMail(fresh, 1)).code).toMatch(/^\d{8}$/);
    // No code exists for the taken address: completing fails as a wrong code does.
    expect(
      await failure(auth().completeSignUp({ email: taken, code: "12345678", password: "another passphrase" })),
    ).toMatchObject(INVALID_CODE);
  });

  it("takes the same time for an address with an account as for a new one: the median of 40 paired differences is under a quarter of a call", async () => {
    const taken = email("timed");
    await signUp(taken);
    const known = () => timed(() => rawStartSignUp(taken));
    const unknown = () => timed(() => rawStartSignUp(email("timed-new")));
    await pairedDifferences(3, known, unknown);
    const calls: number[] = [];
    const diffs = await pairedDifferences(
      40,
      async () => {
        const ms = await known();
        calls.push(ms);
        return ms;
      },
      unknown,
    );
    const d = median(diffs);
    const typical = median(calls);
    expect(Math.abs(d), `known − unknown ${d.toFixed(2)} ms, a call ${typical.toFixed(2)} ms`).toBeLessThan(
      typical / 4,
    );
  });

  it("counts wrong guesses and uses the code up at the limit; a newer code replaces an older one; a code works once", async () => {
    const address = email("guess");
    await auth().startSignUp({ email: address });
    const code = await codeFor(address, 1);
    const wrong = code === "00000000" ? "11111111" : "00000000";
    for (let i = 0; i < CODE_MAX_ATTEMPTS; i++) {
      expect(await failure(auth().completeSignUp({ email: address, code: wrong, password: PASSWORD }))).toMatchObject(
        INVALID_CODE,
      );
    }
    // The right code after the last allowed guess: used up.
    expect(await failure(auth().completeSignUp({ email: address, code, password: PASSWORD }))).toMatchObject(
      INVALID_CODE,
    );

    await auth().startSignUp({ email: address });
    const older = await codeFor(address, 2);
    await auth().startSignUp({ email: address });
    const newer = await codeFor(address, 3);
    if (older !== newer) {
      expect(await failure(auth().completeSignUp({ email: address, code: older, password: PASSWORD }))).toMatchObject(
        INVALID_CODE,
      );
    }
    await auth().completeSignUp({ email: address, code: newer, password: PASSWORD });
    expect(await failure(auth().completeSignUp({ email: address, code: newer, password: PASSWORD }))).toMatchObject(
      INVALID_CODE,
    );
  });

  it("refuses an expired code, and keeps a code usable when the password breaks the rules", async () => {
    const address = email("expire");
    await auth().startSignUp({ email: address });
    const code = await codeFor(address, 1);
    expect(await failure(auth().completeSignUp({ email: address, code, password: "password1" }))).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: expect.stringMatching(/^password: /),
    });
    await svc.database.sql`
      update one_time_codes set expires_at = now() - interval '1 second' where email = ${address}`;
    expect(await failure(auth().completeSignUp({ email: address, code, password: PASSWORD }))).toMatchObject(
      INVALID_CODE,
    );
  });

  it("sends the code once the mail server is back, once", async () => {
    const address = email("down");
    await smtp.stop();
    try {
      await auth().startSignUp({ email: address });
      await new Promise((r) => setTimeout(r, 1500));
      expect(mailsTo(address)).toEqual([]);
    } finally {
      await smtp.start();
    }
    const code = await codeFor(address, 1);
    await auth().completeSignUp({ email: address, code, password: PASSWORD });
    await new Promise((r) => setTimeout(r, 1000));
    expect(mailsTo(address)).toHaveLength(1);
  });

  it("stores sign-up codes only as salted hashes, and no log line holds one", async () => {
    const address = email("stored");
    await auth().startSignUp({ email: address });
    const code = await codeFor(address, 1);
    const rows = await svc.database.sql<{ salt: Buffer; code_hash: Buffer; customer_id: string | null }[]>`
      select salt, code_hash, customer_id from one_time_codes where email = ${address}`;
    expect(rows).toHaveLength(1);
    expect(rows[0]?.customer_id).toBeNull();
    expect(JSON.stringify(rows.map((r) => [r.salt.toString("hex"), r.code_hash.toString("hex")]))).not.toContain(code);
    expect(svc.logs.lines.join("\n")).not.toContain(code);
  });

  it("has the deprecated CreateCredentials off by default", async () => {
    expect(await failure(auth(strict).createCredentials({ email: email("legacy"), password: PASSWORD }))).toMatchObject(
      rpcError("CreateCredentials is retired: sign up with StartSignUp and CompleteSignUp", Code.FailedPrecondition),
    );
  });
});

describe("email change by a mailed code", () => {
  it("changes the login email once the code sent to the new address is confirmed, with notices to the old one", async () => {
    const old = email("old");
    const signedUp = await signUp(old);
    const token = signedUp.tokens?.accessToken ?? "";
    const next = email("next");
    await auth().startEmailChange({ newEmail: next, currentPassword: PASSWORD }, bearer(token));
    const code = await codeFor(next, 1);
    expect((await nthMail(next, 1)).subject).toMatch(/confirm your new email/i);
    expect((await nthMail(old, 2)).subject).toMatch(/change of your .* email address was requested/i);
    // Not changed before the code is confirmed.
    await auth().authenticateCustomer({ email: old, password: PASSWORD });

    const changed = await auth().completeEmailChange({ code }, bearer(token));
    expect(changed).toMatchObject({ email: next, emailVersion: 2n });
    expect((await nthMail(old, 3)).subject).toMatch(/email address was changed/i);
    expect(await failure(auth().authenticateCustomer({ email: old, password: PASSWORD }))).toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );
    const signedIn = await auth().authenticateCustomer({ email: next, password: PASSWORD });
    expect(decodeJwt(signedIn.tokens?.accessToken ?? "")).toMatchObject({ email: next });
    // A refresh reads the identity's own email, among many verified ones.
    const refreshed = await auth().refreshToken({ refreshToken: signedIn.tokens?.refreshToken ?? "" });
    expect(decodeJwt(refreshed.tokens?.accessToken ?? "")).toMatchObject({ sub: signedUp.customerId, email: next });
    const events = await emailEvents(signedUp.customerId, 2);
    expect(events.map((e) => [e.email, e.emailVersion])).toEqual([
      [old, 1n],
      [next, 2n],
    ]);
    // The code worked once.
    expect(await failure(auth().completeEmailChange({ code }, bearer(token)))).toMatchObject(INVALID_CODE);
  });

  it("answers the same for an address another account has, and sends it nothing", async () => {
    const mine = email("mine");
    const theirs = email("theirs");
    const me = await signUp(mine);
    await signUp(theirs);
    const token = me.tokens?.accessToken ?? "";
    const res = await auth().startEmailChange({ newEmail: theirs, currentPassword: PASSWORD }, bearer(token));
    expect(res).toEqual(
      await auth().startEmailChange({ newEmail: email("free"), currentPassword: PASSWORD }, bearer(token)),
    );
    await nthMail(mine, 3); // two notices: one per request
    await new Promise((r) => setTimeout(r, 500));
    expect(mailsTo(theirs)).toHaveLength(1); // their own sign-up code only
  });

  it("wants the current password, a customer token and a right code", async () => {
    const address = email("guarded");
    const me = await signUp(address);
    const token = me.tokens?.accessToken ?? "";
    expect(
      await failure(
        auth().startEmailChange({ newEmail: email("x"), currentPassword: "wrong password!" }, bearer(token)),
      ),
    ).toMatchObject(rpcError("current password is wrong", Code.Unauthenticated));
    expect(await failure(auth().startEmailChange({ newEmail: email("x"), currentPassword: PASSWORD }))).toMatchObject({
      code: Code.Unauthenticated,
    });
    expect(await failure(auth().completeEmailChange({ code: "12345678" }, bearer(token)))).toMatchObject(INVALID_CODE);
  });

  it("verifies the address of an identity from CreateCredentials, which starts unverified", async () => {
    const address = email("legacy");
    const created = await auth().createCredentials({
      email: address,
      password: PASSWORD,
      audience: [svc.env.IDENTITY_ISSUER ?? ""],
    });
    const token = created.tokens?.accessToken ?? "";
    expect(decodeJwt(token).email).toBeUndefined();
    await auth().startEmailChange({ newEmail: address, currentPassword: PASSWORD }, bearer(token));
    const mail = await nthMail(address, 1);
    expect(mail.subject).toMatch(/verify your email/i);
    expect(await auth().completeEmailChange({ code: mail.code ?? "" }, bearer(token))).toMatchObject({
      email: address,
      emailVersion: 1n,
    });
    expect(mailsTo(address)).toHaveLength(1); // no notice: the address did not change
    const signedIn = await auth().authenticateCustomer({ email: address, password: PASSWORD });
    expect(decodeJwt(signedIn.tokens?.accessToken ?? "")).toMatchObject({ email: address, email_verified: true });
    expect((await emailEvents(created.customerId, 1))[0]).toMatchObject({ email: address, emailVersion: 1n });
  });
});
