/**
 * The dev mailbox and the mail settings: with no SMTP server configured,
 * mail queued in the database lands as a readable `.eml` file plus an index
 * line under the mailbox directory, private to its owner; the mailbox
 * command lists, shows and tails it; a mail delivered again (same id) is
 * not listed twice. The settings pick SMTP or the mailbox from the
 * environment and name the variable of every mistake, never a password.
 */
import { randomBytes, randomInt } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateDrizzleJson, generateMigration } from "drizzle-kit/api";
import { simpleParser } from "mailparser";
import { afterEach, describe, expect, it } from "vitest";
import { createTestDatabase } from "../../test/support/postgres.js";
import { sleep, until } from "../../test/support/timing.js";
import { ConfigError } from "../src/config.js";
import { openDatabase } from "../src/db.js";
import { createLogger } from "../src/logger.js";
import { createMailTransport, describeMailTransport, envMailConfig } from "../src/mail/config.js";
import { createMailDeliverer } from "../src/mail/deliverer.js";
import { enqueueMail } from "../src/mail/enqueue.js";
import { createMailboxTransport, MAILBOX_INDEX, readMailbox } from "../src/mail/mailbox.js";
import { runMailboxCli } from "../src/mail/mailbox-cli.js";
import { escapeHtml, type MailRenderer } from "../src/mail/render.js";
import { mailOutbox } from "../src/mail/schema.js";

const schema = { mailOutbox };

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "mailbox-"));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Output written by the mailbox command. */
function sink() {
  const chunks: string[] = [];
  return { write: (text: string) => void chunks.push(text), text: () => chunks.join("") };
}

const render: MailRenderer = ({ data }) => ({
  subject: "Prüfcode für Sie",
  text: `Ihr Code lautet ${String(data.code)}.\n`,
  html: `<p>Ihr Code lautet <b>${escapeHtml(String(data.code))}</b>.</p>`,
});

describe("dev mailbox", () => {
  /** A database with the mail outbox: PostgreSQL, or the embedded PGlite that `npm start` uses. */
  async function mailDatabase(kind: "postgres" | "pglite") {
    let url: string;
    if (kind === "postgres") {
      const testDb = await createTestDatabase("mailbox");
      cleanups.push(() => testDb.drop());
      url = testDb.url;
    } else {
      url = `pglite:${join(tempDir(), "db")}`;
    }
    const database = await openDatabase({ url, schema, max: 2 });
    cleanups.push(() => database.close());
    for (const ddl of await generateMigration(generateDrizzleJson({}), generateDrizzleJson(schema))) {
      await database.query(ddl);
    }
    return database;
  }

  it.each(["postgres", "pglite"] as const)(
    "on %s: a committed mail lands as a private, readable .eml file and an index line; the command lists, shows and tails it",
    async (kind) => {
      const database = await mailDatabase(kind);
      const dir = join(tempDir(), "mailbox");
      const logged: string[] = [];
      const deliverer = createMailDeliverer({
        database,
        transport: createMailboxTransport(dir),
        render,
        from: "Dev <no-reply@localhost>",
        logger: createLogger({
          name: "mailbox-test",
          level: "debug",
          destination: { write: (l: string) => logged.push(l) },
        }),
        pollIntervalMs: 200,
        lockRetryMs: 200,
      });
      cleanups.push(() => deliverer.stop());
      const sent: string[] = [];
      deliverer.events.on("sent", (m) => sent.push(m.id));
      deliverer.start();

      // `tail` runs from before the first mail: it prints mail as it arrives.
      const tailOut = sink();
      const stopTail = new AbortController();
      const tailing = runMailboxCli(["tail", "--dir", dir], { out: tailOut, signal: stopTail.signal, pollMs: 50 });

      const recipient = `dev-${randomBytes(4).toString("hex")}@example.test`;
      const code = String(randomInt(10_000_000, 99_999_999));
      const id = await database.db.transaction((tx) =>
        enqueueMail(tx, { recipient, template: "verification-code", locale: "de", data: { code } }),
      );
      await until("the mail written", () => sent.length === 1);

      const file = join(dir, `${id}.eml`);
      expect(statSync(dir).mode & 0o777).toBe(0o700);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(statSync(join(dir, MAILBOX_INDEX)).mode & 0o777).toBe(0o600);
      const raw = readFileSync(file);
      // Readable as it is: the code in plain sight, not only after decoding.
      expect(raw.toString("utf8")).toContain(code);
      const parsed = await simpleParser(raw);
      expect(parsed.messageId).toBe(`<${id}@localhost>`);
      expect(parsed.subject).toBe("Prüfcode für Sie");
      expect(parsed.text).toBe(`Ihr Code lautet ${code}.\n`);
      expect(parsed.html).toBe(`<p>Ihr Code lautet <b>${code}</b>.</p>`);
      expect(parsed.headers.get("content-language")).toBe("de");

      expect(await readMailbox(dir)).toEqual([
        {
          id,
          messageId: `<${id}@localhost>`,
          date: expect.any(String),
          to: recipient,
          template: "verification-code",
          subject: "Prüfcode für Sie",
          file: `${id}.eml`,
          text: `Ihr Code lautet ${code}.\n`,
        },
      ]);

      const list = sink();
      expect(await runMailboxCli(["list", "--dir", dir], { out: list })).toBe(0);
      expect(list.text()).toContain(`${recipient}  verification-code  Prüfcode für Sie  (${id})`);
      const show = sink();
      expect(await runMailboxCli(["show", "--dir", dir], { out: show })).toBe(0);
      expect(show.text()).toContain(`Ihr Code lautet ${code}.`);
      expect(show.text()).toContain(`File:    ${file}`);
      await until("tail prints the mail", () => tailOut.text().includes(`Ihr Code lautet ${code}.`), 5000);
      stopTail.abort();
      expect(await tailing).toBe(0);

      // Neither the code nor the address reaches a log line.
      expect(logged.filter((l) => l.includes(code) || l.includes(recipient))).toEqual([]);
    },
  );

  it("the same mail delivered again rewrites its file and adds no second index line", async () => {
    const dir = tempDir();
    const transport = createMailboxTransport(dir);
    const mail = {
      id: "01a0c7b3-0000-7000-8000-000000000001",
      template: "password-changed",
      messageId: "<01a0c7b3-0000-7000-8000-000000000001@localhost>",
      from: "no-reply@localhost",
      to: "ada@example.test",
      subject: "Password changed",
      text: "Your password was changed.\n",
      html: "<p>Your password was changed.</p>",
      locale: "en",
      date: new Date("2026-11-30T10:00:00Z"),
    };
    await transport.send(mail);
    await transport.send(mail);
    expect((await readMailbox(dir)).map((e) => e.id)).toEqual([mail.id]);
    await transport.close();
  });

  it("tail -n prints the last mails first; show names a mail by id; a bad command prints the usage", async () => {
    const dir = tempDir();
    const transport = createMailboxTransport(dir);
    const base = {
      template: "sign-up-attempt",
      from: "no-reply@localhost",
      to: "ada@example.test",
      html: "<p>x</p>",
      locale: "en",
      date: new Date(),
    };
    for (const n of [1, 2, 3]) {
      const id = `01a0c7b3-0000-7000-8000-00000000000${n}`;
      await transport.send({ ...base, id, messageId: `<${id}@localhost>`, subject: `mail ${n}`, text: `body ${n}\n` });
    }
    const out = sink();
    const stop = new AbortController();
    const tailing = runMailboxCli(["tail", "-n", "2", "--dir", dir], { out, signal: stop.signal, pollMs: 20 });
    await until("two mails printed", () => out.text().includes("body 3"));
    await sleep(100);
    stop.abort();
    await tailing;
    expect(out.text()).not.toContain("body 1");
    expect(out.text()).toContain("body 2");

    const show = sink();
    expect(await runMailboxCli(["show", "01a0c7b3-0000-7000-8000-000000000001", "--dir", dir], { out: show })).toBe(0);
    expect(show.text()).toContain("Subject: mail 1");
    const err = sink();
    expect(await runMailboxCli(["show", "nope", "--dir", dir], { out: sink(), err })).toBe(1);
    expect(err.text()).toBe(`no mail nope in ${dir}\n`);
    const usage = sink();
    expect(await runMailboxCli(["frobnicate"], { out: sink(), err: usage })).toBe(64);
    expect(usage.text()).toMatch(/^usage: mailbox/);
    const empty = sink();
    expect(await runMailboxCli(["list", "--dir", join(dir, "none")], { out: empty })).toBe(0);
    expect(empty.text()).toBe(`no mail in ${join(dir, "none")}\n`);
    await transport.close();
  });

  it("code prints the code of the newest mail to an address that has one, waiting for it to arrive", async () => {
    const dir = tempDir();
    const transport = createMailboxTransport(dir);
    const mail = (n: number, to: string, text: string) => {
      const id = `01a0c7b3-0000-7000-8000-00000000001${n}`;
      return transport.send({
        id,
        messageId: `<${id}@localhost>`,
        template: "verification-code",
        from: "no-reply@localhost",
        to,
        subject: `mail ${n}`,
        text,
        html: "<p>x</p>",
        locale: "en",
        date: new Date(),
      });
    };
    await mail(1, "ada@example.test", "Your code is:\n\n12345678\n\nEnter it within 15 minutes.\n");
    await mail(2, "ada@example.test", "No code here, 87654321 is inside a sentence.\n");
    await mail(3, "bob@example.test", "Your code is:\n\n11112222\n");
    const out = sink();
    expect(await runMailboxCli(["code", "ADA@example.test", "--dir", dir], { out })).toBe(0);
    expect(out.text()).toBe("12345678\n");
    // Not there yet: waits for it.
    const later = sink();
    const waiting = runMailboxCli(["code", "eve@example.test", "--wait", "5", "--dir", dir], {
      out: later,
      pollMs: 20,
    });
    await sleep(100);
    await mail(4, "eve@example.test", "Your code is:\n\n99990000\n");
    expect(await waiting).toBe(0);
    expect(later.text()).toBe("99990000\n");
    const err = sink();
    expect(await runMailboxCli(["code", "nobody@example.test", "--wait", "0", "--dir", dir], { err })).toBe(1);
    expect(err.text()).toBe(`no mail with a code to nobody@example.test in ${dir}\n`);
    expect(await runMailboxCli(["code"], { err: sink() })).toBe(64);
    await transport.close();
  });
});

describe("mail settings", () => {
  const cwd = "/srv/app";

  it("no SMTP server: the dev mailbox under .data/mailbox (or IDENTITY_MAILBOX_DIR)", () => {
    expect(envMailConfig({}, "IDENTITY", { cwd })).toEqual({
      transport: { kind: "mailbox", dir: "/srv/app/.data/mailbox" },
      from: "no-reply@localhost",
      giveUpAfterMs: 86_400_000,
    });
    const custom = envMailConfig({ IDENTITY_MAILBOX_DIR: "mail", IDENTITY_MAIL_GIVE_UP_AFTER_S: "3600" }, "IDENTITY", {
      cwd,
    });
    expect(custom.transport).toEqual({ kind: "mailbox", dir: "/srv/app/mail" });
    expect(custom.giveUpAfterMs).toBe(3_600_000);
    expect(createMailTransport(custom.transport)).toMatchObject({ kind: "mailbox", description: "/srv/app/mail" });
    expect(describeMailTransport(custom.transport)).toBe("dev mailbox /srv/app/mail");
  });

  it("SMTP: STARTTLS required unless the host is this machine; smtps is TLS; the password file is read again", () => {
    const dir = tempDir();
    const file = join(dir, "smtp-password");
    writeFileSync(file, "first-secret\n");
    const from = "Example <no-reply@example.com>";
    const remote = envMailConfig(
      {
        IDENTITY_SMTP_URL: "smtp://mail.example.com",
        IDENTITY_SMTP_USER: "mailer",
        IDENTITY_SMTP_PASSWORD_FILE: file,
        IDENTITY_MAIL_FROM: from,
      },
      "IDENTITY",
      { cwd },
    );
    expect(remote).toMatchObject({
      from,
      transport: { kind: "smtp", smtp: { host: "mail.example.com", port: 587, secure: false, startTls: "required" } },
    });
    const smtp = remote.transport.kind === "smtp" ? remote.transport.smtp : undefined;
    expect(smtp?.password?.()).toBe("first-secret");
    writeFileSync(file, "second-secret\n");
    expect(smtp?.password?.()).toBe("second-secret");
    expect(createMailTransport(remote.transport).description).toBe("smtp://mail.example.com:587");
    expect(describeMailTransport(remote.transport)).toBe("smtp://mail.example.com:587");

    const local = envMailConfig({ IDENTITY_SMTP_URL: "smtp://127.0.0.1:2525", IDENTITY_MAIL_FROM: from }, "IDENTITY", {
      cwd,
    });
    expect(local.transport).toMatchObject({ smtp: { host: "127.0.0.1", port: 2525, startTls: "opportunistic" } });
    const tls = envMailConfig({ IDENTITY_SMTP_URL: "smtps://mail.example.com", IDENTITY_MAIL_FROM: from }, "IDENTITY", {
      cwd,
    });
    expect(tls.transport).toMatchObject({ smtp: { port: 465, secure: true } });
  });

  it("a mistake names its variable and never shows a password", () => {
    const from = "no-reply@example.com";
    const fails = (env: Record<string, string>) => {
      try {
        envMailConfig(env, "IDENTITY", { cwd });
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return (err as Error).message;
      }
      throw new Error("no ConfigError");
    };
    expect(fails({ IDENTITY_SMTP_URL: "smtp://mail.example.com" })).toBe(
      "IDENTITY_MAIL_FROM is required with IDENTITY_SMTP_URL",
    );
    expect(fails({ IDENTITY_SMTP_URL: "http://mail.example.com", IDENTITY_MAIL_FROM: from })).toBe(
      'IDENTITY_SMTP_URL must use smtp: or smtps:, got "http:"',
    );
    expect(
      fails({ IDENTITY_SMTP_URL: "smtp://mail.example.com", IDENTITY_MAILBOX_DIR: "x", IDENTITY_MAIL_FROM: from }),
    ).toBe("set IDENTITY_SMTP_URL or IDENTITY_MAILBOX_DIR, not both");
    expect(fails({ IDENTITY_SMTP_USER: "mailer" })).toBe("IDENTITY_SMTP_USER needs IDENTITY_SMTP_URL");
    expect(
      fails({ IDENTITY_SMTP_URL: "smtp://mail.example.com", IDENTITY_SMTP_USER: "u", IDENTITY_MAIL_FROM: from }),
    ).toBe("IDENTITY_SMTP_USER needs IDENTITY_SMTP_PASSWORD_FILE or IDENTITY_SMTP_PASSWORD");
    expect(fails({ IDENTITY_SMTP_URL: "smtp://mail.example.com", IDENTITY_MAIL_FROM: "a@b.c\r\nBcc: x@y.z" })).toMatch(
      /^IDENTITY_MAIL_FROM must be one address/,
    );
    const twice = fails({
      IDENTITY_SMTP_URL: "smtp://u:hunter2-secret@mail.example.com",
      IDENTITY_SMTP_PASSWORD: "other-secret",
      IDENTITY_MAIL_FROM: from,
    });
    expect(twice).toBe("set the SMTP password once, not in IDENTITY_SMTP_URL and IDENTITY_SMTP_PASSWORD");
    const path = fails({ IDENTITY_SMTP_URL: "smtp://u:hunter2-secret@mail.example.com/x", IDENTITY_MAIL_FROM: from });
    expect(path).toBe('IDENTITY_SMTP_URL takes no path, got "smtp://u:***@mail.example.com/x"');
  });
});
