/**
 * Account recovery (StartRecovery, CompleteRecovery) end to end, through a
 * real SMTP server on loopback: the code arrives by mail; it sets a new
 * password, ends every session (TokensRevoked), clears the login lock,
 * sends a notice and verifies an unverified email; the same answer for an
 * address nobody has (and no mail); codes wrong, guessed up to the limit,
 * used, replaced and expired; a weak new password leaves the code usable;
 * the per-email limit; and recovery codes are stored only as hashes.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { toBinary } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { AuthService, StartRecoveryResponseSchema } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { readMailbox } from "@customer-platform/runtime/mail";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { failure, rpcError } from "../../test/support/clients.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";
import { startSmtpServer, type TestSmtpServer } from "../../test/support/smtp.js";
import { CODE_MAX_ATTEMPTS } from "../src/codes.js";

const PASSWORD = "correct horse battery staple";
const NEW_PASSWORD = "a brand new passphrase";
const INVALID_CODE = rpcError("code: invalid or expired code [code.invalid]", Code.InvalidArgument);

let smtp: TestSmtpServer;
let svc: RunningIdentityService;
/** Its per-email limit is low, to be reached. */
let limited: RunningIdentityService;

beforeAll(async () => {
  smtp = await startSmtpServer();
  const mail = { IDENTITY_SMTP_URL: smtp.url, IDENTITY_MAIL_FROM: "Platform <no-reply@example.test>" };
  svc = await startIdentityService(mail);
  limited = await startIdentityService({ ...mail, IDENTITY_RECOVERY_EMAIL_LIMIT: "2" });
});

afterAll(async () => {
  await Promise.all([svc?.close(), limited?.close()]);
  await smtp?.[Symbol.asyncDispose]();
});

const email = (label: string) => `${label}.${randomUUID().slice(0, 8)}@example.com`;
const auth = (s: RunningIdentityService = svc) => s.clients.client(AuthService);

/** The mails that reached `address`, in order. */
const mailsTo = (address: string) => smtp.messages.filter((m) => m.envelope.to.includes(address));

/** Waits for the n-th mail to `address` and returns its 8-digit code (if it carries one) and subject. */
async function nthMail(address: string, n: number) {
  await expect.poll(() => mailsTo(address).length, { timeout: 15_000 }).toBeGreaterThanOrEqual(n);
  const mail = mailsTo(address)[n - 1];
  const text = mail?.parsed.text ?? "";
  return { subject: mail?.parsed.subject ?? "", text, code: /\b(\d{8})\b/.exec(text)?.[1] };
}

async function recoveryCode(address: string, n: number, s?: RunningIdentityService): Promise<string> {
  await auth(s).startRecovery({ email: address });
  const { code } = await nthMail(address, n);
  if (!code) throw new Error("no code in the recovery mail");
  return code;
}

describe("recovery", () => {
  it("mails a code that sets a new password, ends every session and sends a notice", async () => {
    const address = email("recover");
    const signedUp = await auth().createCredentials({ email: address, password: PASSWORD });
    const code = await recoveryCode(address, 1);
    const first = await nthMail(address, 1);
    expect(first.subject).not.toContain(code);

    expect(await auth().completeRecovery({ email: address, code, newPassword: NEW_PASSWORD })).toBeDefined();
    // The old password no longer works, the new one does; the old session is over.
    expect(await failure(auth().authenticateCustomer({ email: address, password: PASSWORD }))).toMatchObject(
      rpcError("invalid email or password", Code.Unauthenticated),
    );
    await auth().authenticateCustomer({ email: address, password: NEW_PASSWORD });
    expect(await failure(auth().refreshToken({ refreshToken: signedUp.tokens?.refreshToken ?? "" }))).toMatchObject({
      code: Code.Unauthenticated,
    });
    const [revoked] = await svc.database.sql<{ n: number }[]>`
      select count(*)::int as n from outbox where type = 'identity.v1.TokensRevoked' and ce_subject = ${signedUp.customerId}`;
    expect(revoked?.n).toBe(1);
    // The identity came from CreateCredentials, unverified: the code proved the address.
    const [verified] = await svc.database.sql<{ email_version: string; events: number }[]>`
      select email_version, (select count(*)::int from outbox where type = 'identity.v1.CustomerEmailVerified'
        and ce_subject = ${signedUp.customerId}) as events
      from identities where customer_id = ${signedUp.customerId}`;
    expect(verified).toEqual({ email_version: "1", events: 1 });
    // The notice, without any code.
    const notice = await nthMail(address, 2);
    expect(notice.code).toBeUndefined();
    // The code worked once.
    expect(await failure(auth().completeRecovery({ email: address, code, newPassword: PASSWORD }))).toMatchObject(
      INVALID_CODE,
    );
  });

  it("answers an address nobody has exactly as one that exists, and mails nothing", async () => {
    const known = email("known");
    await auth().createCredentials({ email: known, password: PASSWORD });
    const unknown = email("unknown");
    const [a, b] = await Promise.all([
      auth().startRecovery({ email: known }),
      auth().startRecovery({ email: unknown }),
    ]);
    expect(toBinary(StartRecoveryResponseSchema, a)).toEqual(toBinary(StartRecoveryResponseSchema, b));
    await nthMail(known, 1);
    // Completing for the unknown address fails as a wrong code does.
    expect(
      await failure(auth().completeRecovery({ email: unknown, code: "12345678", newPassword: NEW_PASSWORD })),
    ).toMatchObject(INVALID_CODE);
    expect(mailsTo(unknown)).toEqual([]);
  });

  it("counts wrong guesses and uses the code up at the limit; a newer code replaces an older one", async () => {
    const address = email("guess");
    await auth().createCredentials({ email: address, password: PASSWORD });
    const code = await recoveryCode(address, 1);
    const wrong = code === "00000000" ? "11111111" : "00000000";
    for (let i = 0; i < CODE_MAX_ATTEMPTS; i++) {
      expect(
        await failure(auth().completeRecovery({ email: address, code: wrong, newPassword: NEW_PASSWORD })),
      ).toMatchObject(INVALID_CODE);
    }
    // The right code no longer works after the last allowed wrong guess.
    expect(await failure(auth().completeRecovery({ email: address, code, newPassword: NEW_PASSWORD }))).toMatchObject(
      INVALID_CODE,
    );

    const older = await recoveryCode(address, 2);
    const newer = await recoveryCode(address, 3);
    if (older !== newer) {
      expect(
        await failure(auth().completeRecovery({ email: address, code: older, newPassword: NEW_PASSWORD })),
      ).toMatchObject(INVALID_CODE);
    }
    await auth().completeRecovery({ email: address, code: newer, newPassword: NEW_PASSWORD });
  });

  it("refuses an expired code, and keeps a code usable when the new password breaks the rules", async () => {
    const address = email("expire");
    await auth().createCredentials({ email: address, password: PASSWORD });
    const code = await recoveryCode(address, 1);
    expect(await failure(auth().completeRecovery({ email: address, code, newPassword: "password1" }))).toMatchObject({
      code: Code.InvalidArgument,
      rawMessage: expect.stringMatching(/^new_password: /),
    });
    await svc.database.sql`
      update one_time_codes set expires_at = now() - interval '1 second'
      where customer_id = (select customer_id from identities where lower(email) = ${address})`;
    expect(await failure(auth().completeRecovery({ email: address, code, newPassword: NEW_PASSWORD }))).toMatchObject(
      INVALID_CODE,
    );
  });

  it("clears the email's sign-in lock", async () => {
    const address = email("locked");
    await auth().createCredentials({ email: address, password: PASSWORD });
    await svc.database.sql`
      insert into login_throttles (key, failures, blocked_until, last_failure_at, locked_at)
      values (sha256(convert_to(${`login:${address}`}, 'UTF8')), 100, now() + interval '1 hour', now(), now())`;
    expect(await failure(auth().authenticateCustomer({ email: address, password: PASSWORD }))).toMatchObject({
      code: Code.FailedPrecondition,
    });
    const code = await recoveryCode(address, 1);
    await auth().completeRecovery({ email: address, code, newPassword: NEW_PASSWORD });
    await auth().authenticateCustomer({ email: address, password: NEW_PASSWORD });
  });

  it("limits recoveries per email, known or not, with RetryInfo", async () => {
    for (const address of [email("limit-known"), email("limit-unknown")]) {
      if (address.startsWith("limit-known")) {
        await auth(limited).createCredentials({ email: address, password: PASSWORD });
      }
      await auth(limited).startRecovery({ email: address });
      await auth(limited).startRecovery({ email: address });
      const err = await failure(auth(limited).startRecovery({ email: address }));
      expect(err?.code).toBe(Code.ResourceExhausted);
      expect(err?.details.length).toBeGreaterThan(0);
    }
  });

  it("stores codes only as salted hashes, and no log line holds a code", async () => {
    const address = email("stored");
    await auth().createCredentials({ email: address, password: PASSWORD });
    const code = await recoveryCode(address, 1);
    const rows = await svc.database.sql<{ salt: Buffer; code_hash: Buffer }[]>`
      select salt, code_hash from one_time_codes
      where customer_id = (select customer_id from identities where lower(email) = ${address})`;
    expect(rows).toHaveLength(1);
    const stored = JSON.stringify(rows.map((r) => [r.salt.toString("hex"), r.code_hash.toString("hex")]));
    expect(stored).not.toContain(code);
    expect(rows[0]?.code_hash.length).toBe(32);
    expect(svc.logs.lines.join("\n")).not.toContain(code);
  });
});

describe("recovery on the embedded database (npm start)", () => {
  it("works end to end on PGlite", async () => {
    const dir = mkdtempSync(join(tmpdir(), "identity-recovery-pglite-"));
    const embedded = await startIdentityService({
      IDENTITY_SMTP_URL: smtp.url,
      IDENTITY_MAIL_FROM: "Platform <no-reply@example.test>",
      IDENTITY_DATABASE_URL: `pglite:${dir}`,
    });
    try {
      const address = email("pglite");
      await auth(embedded).createCredentials({ email: address, password: PASSWORD });
      const code = await recoveryCode(address, 1, embedded);
      await auth(embedded).completeRecovery({ email: address, code, newPassword: NEW_PASSWORD });
      await auth(embedded).authenticateCustomer({ email: address, password: NEW_PASSWORD });
      expect((await nthMail(address, 2)).code).toBeUndefined();
    } finally {
      await embedded.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("recovery without a mail server (npm start)", () => {
  it("says at start that mail goes to the dev mailbox, where the code then is", async () => {
    const dir = mkdtempSync(join(tmpdir(), "identity-recovery-mailbox-"));
    const devMail = await startIdentityService({ IDENTITY_MAILBOX_DIR: dir });
    try {
      expect(devMail.logs.lines.some((l) => l.includes("mail goes to the dev mailbox") && l.includes(dir))).toBe(true);
      const address = email("mailbox");
      await auth(devMail).createCredentials({ email: address, password: PASSWORD });
      await auth(devMail).startRecovery({ email: address, locale: "de" });
      await expect.poll(async () => (await readMailbox(dir)).length, { timeout: 15_000 }).toBe(1);
      const [entry] = await readMailbox(dir);
      expect(entry).toMatchObject({ to: address, template: "recovery-code" });
      const code = /\b(\d{8})\b/.exec(entry?.text ?? "")?.[1] ?? "";
      await auth(devMail).completeRecovery({ email: address, code, newPassword: NEW_PASSWORD });
      await auth(devMail).authenticateCustomer({ email: address, password: NEW_PASSWORD });
    } finally {
      await devMail.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
