/**
 * Mail delivery through the mail outbox to a real SMTP server on loopback
 * (test/support/smtp.ts): a committed mail arrives once with its text and
 * HTML parts and headers; a rolled-back one never; a server that is down is
 * retried with growing delays and gets the mail exactly once when it is
 * back; a permanent rejection and a mail too old are given up, not retried;
 * a refused login is retried, not given up; two deliverers on one database
 * send each mail once. No log line of any test holds a recipient or a code.
 */
import { randomBytes, randomInt } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { generateDrizzleJson, generateMigration } from "drizzle-kit/api";
import { afterEach, describe, expect, it } from "vitest";
import { createTestDatabase } from "../../test/support/postgres.js";
import { startSmtpServer, type TestSmtpServer } from "../../test/support/smtp.js";
import { sleep, until } from "../../test/support/timing.js";
import { type Database, openDatabase } from "../src/db.js";
import { createLogger } from "../src/logger.js";
import { createMailDeliverer, type MailDelivererOptions } from "../src/mail/deliverer.js";
import { enqueueMail } from "../src/mail/enqueue.js";
import { escapeHtml, MailRenderError, type MailRenderer } from "../src/mail/render.js";
import { mailOutbox } from "../src/mail/schema.js";
import { createSmtpTransport, type SmtpConfig } from "../src/mail/smtp.js";

const schema = { mailOutbox };
type MailDatabase = Database<typeof schema>;

const FROM = "Test Product <no-reply@mail.example.test>";

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

/** Every log line of the test, as JSON text, and what must never appear in one. */
const logged: string[] = [];
const secrets = new Set<string>();
afterEach(() => {
  const leaks = logged.filter((line) => [...secrets].some((s) => line.includes(s)));
  logged.length = 0;
  secrets.clear();
  expect(leaks).toEqual([]);
});

function logger() {
  return createLogger({
    name: "mail-test",
    level: "debug",
    destination: { write: (line: string) => logged.push(line) },
  });
}

/** Parsed log lines with message `msg`. */
const linesSaying = (msg: string) =>
  logged.map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l.msg === msg);

/** A fresh database with the mail outbox, its DDL generated from the schema as a migration would be. */
async function mailDatabase(): Promise<{ database: MailDatabase; url: string; open: () => Promise<MailDatabase> }> {
  const testDb = await createTestDatabase("mail");
  cleanups.push(() => testDb.drop());
  const open = async () => {
    const db = await openDatabase({ url: testDb.url, schema, max: 4 });
    cleanups.push(() => db.close());
    return db;
  };
  const database = await open();
  for (const ddl of await generateMigration(generateDrizzleJson({}), generateDrizzleJson(schema))) {
    await database.query(ddl);
  }
  return { database, url: testDb.url, open };
}

async function smtpServer(opts?: Parameters<typeof startSmtpServer>[0]): Promise<TestSmtpServer> {
  const server = await startSmtpServer(opts);
  cleanups.push(() => server.close());
  return server;
}

const smtpConfig = (server: TestSmtpServer, extra: Partial<SmtpConfig> = {}): SmtpConfig => ({
  host: server.host,
  port: server.port,
  secure: false,
  startTls: "off",
  connectionTimeoutMs: 2000,
  greetingTimeoutMs: 2000,
  socketTimeoutMs: 5000,
  ...extra,
});

/** The test's one template, `code`: the code in both parts, escaped in the HTML. */
const render: MailRenderer = ({ template, data }) => {
  if (template !== "code") throw new MailRenderError(`unknown template ${template}`);
  const code = String(data.code);
  return {
    subject: "Your code",
    text: `Your code is ${code}.\n`,
    html: `<p>Your code is <b>${escapeHtml(code)}</b>.</p>`,
  };
};

/** A deliverer with short timings, stopped after the test. */
function deliverer(database: MailDatabase, server: TestSmtpServer, extra: Partial<MailDelivererOptions> = {}) {
  const d = createMailDeliverer({
    database,
    transport: createSmtpTransport(smtpConfig(server)),
    render,
    from: FROM,
    logger: logger(),
    minRetryDelayMs: 100,
    maxRetryDelayMs: 400,
    pollIntervalMs: 200,
    lockRetryMs: 200,
    ...extra,
  });
  cleanups.push(() => d.stop());
  return d;
}

/** A recipient and a code no other test uses, both registered as secrets for the log check. */
function newMail() {
  const recipient = `user-${randomBytes(4).toString("hex")}@example.test`;
  const code = String(randomInt(10_000_000, 99_999_999));
  secrets.add(recipient);
  secrets.add(recipient.split("@")[0] as string);
  secrets.add(code);
  return { recipient, template: "code", locale: "en", data: { code } };
}

/** Queues `mail` in a transaction of its own; returns its id. */
function enqueue(database: MailDatabase, mail: ReturnType<typeof newMail>): Promise<string> {
  return database.db.transaction((tx) => enqueueMail(tx, mail));
}

interface Row {
  id: string;
  attempts: number;
  sent_at: Date | null;
  given_up_at: Date | null;
  last_error: string | null;
  data: unknown;
}
async function rowOf(database: MailDatabase, id: string): Promise<Row> {
  const [row] = await database.query<Row>(
    "select id::text, attempts, sent_at, given_up_at, last_error, data from mail_outbox where id = $1",
    [id],
  );
  if (!row) throw new Error(`no mail_outbox row ${id}`);
  return row;
}

describe("mail delivery over SMTP", () => {
  it("delivers a committed mail once, with text and HTML parts and its headers, and erases its data", async () => {
    const { database } = await mailDatabase();
    const server = await smtpServer();
    const d = deliverer(database, server);
    d.start();
    const mail = newMail();
    const id = await enqueue(database, mail);

    const [received] = await server.waitForMessages(1);
    const parsed = received?.parsed;
    expect(received?.envelope).toEqual({ from: "no-reply@mail.example.test", to: [mail.recipient] });
    expect(parsed?.messageId).toBe(`<${id}@mail.example.test>`);
    expect(parsed?.subject).toBe("Your code");
    expect(parsed?.from?.value).toEqual([{ address: "no-reply@mail.example.test", name: "Test Product" }]);
    expect(parsed?.text).toBe(`Your code is ${mail.data.code}.\n`);
    expect(parsed?.html).toBe(`<p>Your code is <b>${mail.data.code}</b>.</p>`);
    expect(parsed?.headers.get("content-language")).toBe("en");
    expect(parsed?.headers.get("auto-submitted")).toBe("auto-generated");
    expect(parsed?.headers.get("content-type")).toMatchObject({ value: "multipart/alternative" });

    await until("the mail marked sent", async () => (await rowOf(database, id)).sent_at !== null);
    const row = await rowOf(database, id);
    expect(row).toMatchObject({ attempts: 0, given_up_at: null, last_error: null, data: null });
    // Idle, it polls (every 200 ms here) rather than spins, and sends nothing again.
    let idle = 0;
    d.events.on("idle", () => idle++);
    await sleep(1000);
    expect(idle).toBeGreaterThanOrEqual(2);
    expect(idle).toBeLessThanOrEqual(8);
    expect(server.messages).toHaveLength(1);
    expect(d.status).toMatchObject({ state: "leader", sent: 1, retried: 0, gaveUp: 0 });
  });

  it("a mail queued in a transaction that rolls back is never sent", async () => {
    const { database } = await mailDatabase();
    const server = await smtpServer();
    deliverer(database, server).start();
    const rolledBack = newMail();
    await expect(
      database.db.transaction(async (tx) => {
        await enqueueMail(tx, rolledBack);
        throw new Error("the change failed");
      }),
    ).rejects.toThrow("the change failed");
    const committed = newMail();
    await enqueue(database, committed);

    await server.waitForMessages(1);
    await sleep(500);
    expect(server.messages.map((m) => m.envelope.to)).toEqual([[committed.recipient]]);
    const [count] = await database.query<{ n: number }>("select count(*)::int as n from mail_outbox");
    expect(count?.n).toBe(1);
  });

  it("while the server is down, retries with growing delays; sends once when it is back", async () => {
    const { database } = await mailDatabase();
    const server = await smtpServer();
    await server.stop();
    const d = deliverer(database, server);
    const retries: Array<{ attempts: number; delayMs: number; reason: string }> = [];
    d.events.on("retry", (r) => retries.push(r));
    d.start();
    const mail = newMail();
    const id = await enqueue(database, mail);

    await until("three failed attempts", () => retries.length >= 3);
    // minRetryDelayMs 100, doubling to at most 400, the upper half jittered.
    const [first, second, third] = retries;
    expect(first?.attempts).toBe(1);
    expect(first?.delayMs).toBeGreaterThanOrEqual(50);
    expect(first?.delayMs).toBeLessThanOrEqual(100);
    expect(second?.delayMs).toBeGreaterThanOrEqual(100);
    expect(second?.delayMs).toBeLessThanOrEqual(200);
    expect(third?.delayMs).toBeGreaterThanOrEqual(200);
    expect(third?.delayMs).toBeLessThanOrEqual(400);
    expect(first?.reason).toBe("connection ECONNREFUSED");
    const pending = await rowOf(database, id);
    expect(pending.attempts).toBeGreaterThanOrEqual(3);
    expect(pending).toMatchObject({ sent_at: null, given_up_at: null, last_error: "connection ECONNREFUSED" });
    expect(server.messages).toHaveLength(0);
    // An outage is one warning, however many attempts fail.
    expect(linesSaying("mail transport is down; retrying with backoff")).toHaveLength(1);

    await server.start();
    await server.waitForMessages(1);
    await until("the mail marked sent", async () => (await rowOf(database, id)).sent_at !== null);
    // Longer than the longest retry delay: a second send would have happened by now.
    await sleep(1000);
    expect(server.messages).toHaveLength(1);
    expect(server.messages[0]?.parsed.messageId).toBe(`<${id}@mail.example.test>`);
    expect(linesSaying("mail transport is back")).toHaveLength(1);
  });

  it("a permanent rejection (5xx) is given up at once and logged by id and template, without the address", async () => {
    const { database } = await mailDatabase();
    const server = await smtpServer();
    const mail = newMail();
    // The server's reply quotes the address, as real servers do.
    server.reject({ code: 550, message: `5.1.1 <${mail.recipient}>: Recipient address rejected` }, mail.recipient);
    const d = deliverer(database, server);
    const gaveUp: string[] = [];
    d.events.on("gaveUp", (m) => gaveUp.push(m.id));
    d.start();
    const id = await enqueue(database, mail);
    await until("the mail given up", () => gaveUp.length === 1);

    const row = await rowOf(database, id);
    expect(row).toMatchObject({ attempts: 1, sent_at: null, last_error: "smtp 550 at RCPT TO", data: null });
    expect(row.given_up_at).not.toBeNull();
    const [line] = linesSaying("mail given up");
    expect(line).toMatchObject({ level: 50, mailId: id, template: "code", reason: "smtp 550 at RCPT TO", attempts: 1 });
    // Not retried: no session after the one that was refused.
    const sessions = server.sessions;
    await sleep(800);
    expect(server.sessions).toBe(sessions);
    expect(d.status).toMatchObject({ sent: 0, gaveUp: 1 });

    // Another recipient still gets mail: one rejection stops neither the deliverer nor the queue.
    const other = newMail();
    await enqueue(database, other);
    await server.waitForMessages(1);
    expect(server.messages.map((m) => m.envelope.to)).toEqual([[other.recipient]]);
  });

  it("a transient rejection (4xx) is retried until the server accepts", async () => {
    const { database } = await mailDatabase();
    const server = await smtpServer();
    server.reject({ code: 451, message: "4.7.1 try again later" });
    const d = deliverer(database, server);
    const retries: string[] = [];
    d.events.on("retry", (r) => retries.push(r.reason));
    d.start();
    const id = await enqueue(database, newMail());
    await until("two failed attempts", () => retries.length >= 2);
    expect(retries[0]).toBe("smtp 451 at RCPT TO");
    server.reject(undefined);
    await server.waitForMessages(1);
    await until("the mail marked sent", async () => (await rowOf(database, id)).sent_at !== null);
    expect((await rowOf(database, id)).given_up_at).toBeNull();
  });

  it("a mail not delivered within the give-up age is given up with an error log", async () => {
    const { database } = await mailDatabase();
    const server = await smtpServer();
    await server.stop();
    const d = deliverer(database, server, { giveUpAfterMs: 1500 });
    const gaveUp: Array<{ id: string; reason: string }> = [];
    d.events.on("gaveUp", (m) => gaveUp.push(m));
    d.start();
    const id = await enqueue(database, newMail());
    await until("the mail given up", () => gaveUp.length === 1, 10_000);
    // Given up when a retry would land past the age, or when the mail is read past it (a retry that came late).
    expect(gaveUp[0]).toEqual({
      id,
      template: "code",
      reason: expect.stringMatching(/^(connection ECONNREFUSED; not delivered in time|not delivered within 1500 ms)$/),
    });
    const row = await rowOf(database, id);
    expect(row.attempts).toBeGreaterThanOrEqual(2);
    expect(row.given_up_at).not.toBeNull();
    expect(row.data).toBeNull();
    expect(linesSaying("mail given up")).toHaveLength(1);

    // Back up, the server gets nothing: given up means never sent.
    await server.start();
    await sleep(800);
    expect(server.messages).toHaveLength(0);
  });

  it("the database lost right after the server accepted: the mail is marked on the next try, not sent again", async () => {
    const { database } = await mailDatabase();
    const server = await smtpServer();
    // Fault injection over the real database: the first "mark sent" fails as a dropped connection would.
    let cut = true;
    const faulty: typeof database = Object.create(database);
    faulty.query = <T>(text: string, params?: unknown[]) => {
      if (cut && text.includes("set sent_at")) {
        cut = false;
        return Promise.reject(Object.assign(new Error("connection lost"), { code: "CONNECTION_CLOSED" }));
      }
      return database.query<T>(text, params);
    };
    const d = deliverer(faulty, server);
    d.start();
    const id = await enqueue(database, newMail());
    await server.waitForMessages(1);
    await until("the mail marked sent", async () => (await rowOf(database, id)).sent_at !== null);
    await sleep(600);
    expect(cut).toBe(false);
    expect(server.messages).toHaveLength(1);
    expect(d.status).toMatchObject({ sent: 1, retried: 0 });
    expect(linesSaying("mail deliverer cannot reach the database; retrying")).toHaveLength(1);
  });

  it("an unrenderable mail is given up; the rest is sent", async () => {
    const { database } = await mailDatabase();
    const server = await smtpServer();
    const d = deliverer(database, server);
    const gaveUp: Array<{ reason: string }> = [];
    d.events.on("gaveUp", (m) => gaveUp.push(m));
    d.start();
    await enqueue(database, { ...newMail(), template: "no-such-template" });
    const mail = newMail();
    await enqueue(database, mail);
    await server.waitForMessages(1);
    await until("the unrenderable mail given up", () => gaveUp.length === 1);
    expect(gaveUp[0]?.reason).toBe("render failed: unknown template no-such-template");
    expect(server.messages.map((m) => m.envelope.to)).toEqual([[mail.recipient]]);
  });

  it("signs in with the password from its file; a refused login is retried, not given up", async () => {
    const { database } = await mailDatabase();
    const server = await smtpServer({ auth: { user: "mailer", password: "right-password-1" } });
    const dir = mkdtempSync(join(tmpdir(), "mail-"));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, "password");
    writeFileSync(file, "wrong-password-1\n", { mode: 0o600 });
    secrets.add("wrong-password-1");
    secrets.add("right-password-1");
    const { readFileSync } = await import("node:fs");
    const password = () => readFileSync(file, "utf8").trim();
    const transport = createSmtpTransport(smtpConfig(server, { user: "mailer", password }));
    const d = deliverer(database, server, { transport });
    const retries: string[] = [];
    d.events.on("retry", (r) => retries.push(r.reason));
    d.start();
    const id = await enqueue(database, newMail());
    await until("a refused login", () => retries.length >= 1);
    expect(retries[0]).toBe("smtp setup EAUTH 535");
    expect((await rowOf(database, id)).given_up_at).toBeNull();

    // The rotated password is read for the next session.
    writeFileSync(file, "right-password-1\n");
    const [received] = await server.waitForMessages(1);
    expect(received?.user).toBe("mailer");
  });
});

describe("mail deliverer leadership", () => {
  it("two deliverers on one database: one leads at a time, each mail is sent once, the other takes over", async () => {
    const { database, open } = await mailDatabase();
    const server = await smtpServer();
    // Two instances, each with its own pool, as two processes would have.
    const a = deliverer(database, server);
    const b = deliverer(await open(), server);
    const transitions: string[] = [];
    let leaders = 0;
    let most = 0;
    for (const [name, d] of [
      ["a", a],
      ["b", b],
    ] as const) {
      d.events.on("leader", () => {
        transitions.push(`${name}:leader`);
        most = Math.max(most, ++leaders);
      });
      d.events.on("follower", ({ reason }) => {
        transitions.push(`${name}:follower:${reason}`);
        leaders--;
      });
    }
    a.start();
    await until("a leads", () => a.status.state === "leader");
    b.start();
    await sleep(500);
    expect(b.status.state).toBe("follower");

    for (let i = 0; i < 20; i++) await enqueue(database, newMail());
    await server.waitForMessages(20);
    // A mail is counted once marked sent, just after the server accepted it.
    await until("a counted its 20 mails", () => a.status.sent === 20);
    expect([a.status.sent, b.status.sent]).toEqual([20, 0]);

    await a.stop();
    await until("b leads", () => b.status.state === "leader");
    for (let i = 0; i < 5; i++) await enqueue(database, newMail());
    await server.waitForMessages(25);
    await sleep(500);
    const ids = server.messages.map((m) => m.parsed.messageId);
    expect(ids).toHaveLength(25);
    expect(new Set(ids).size).toBe(25);
    expect([a.status.sent, b.status.sent]).toEqual([20, 5]);
    expect(transitions).toEqual(["a:leader", "a:follower:stopping", "b:leader"]);
    expect(most).toBe(1);
  });

  it("a leader whose lock session dies steps down; one leads again and nothing is sent twice", async () => {
    const { database, open } = await mailDatabase();
    const server = await smtpServer();
    const a = deliverer(database, server);
    const b = deliverer(await open(), server);
    a.start();
    await until("a leads", () => a.status.state === "leader");
    b.start();
    await sleep(300);
    // Kill a's lock session from outside, as a network cut or a failover would.
    const [killed] = await database.query<{ n: number }>(
      `select count(pg_terminate_backend(pid))::int as n from pg_locks where locktype = 'advisory' and objid = 7310004
       and database = (select oid from pg_database where datname = current_database())`,
    );
    expect(killed?.n).toBe(1);
    await until(
      "a notices",
      () => a.status.state !== "leader" || linesSaying("mail deliverer lost its lock session; following").length > 0,
    );
    for (let i = 0; i < 10; i++) await enqueue(database, newMail());
    await server.waitForMessages(10);
    await sleep(500);
    const ids = server.messages.map((m) => m.parsed.messageId);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toHaveLength(10);
    expect(a.status.sent + b.status.sent).toBe(10);
    expect([a.status.state, b.status.state].filter((s) => s === "leader")).toHaveLength(1);
  });
});
