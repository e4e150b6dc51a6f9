/**
 * No secret in any log line, on stderr or in a response when a statement
 * fails: a sign-up (CompleteSignUp) insert cancelled while it runs (pg_cancel_backend), a
 * password update whose connection is terminated (pg_terminate_backend), a
 * unique and a check violation PostgreSQL explains with the row's values in
 * DETAIL, and a signing-key insert that fails (private JWK in its
 * parameters) at start-up and in the CLI. On PostgreSQL (postgres.js) in
 * process and as a child process, and on the embedded PGlite. Each log line
 * still says what failed: SQLSTATE, constraint, table, the statement.
 */
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Code, type ConnectError } from "@connectrpc/connect";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { openDatabase } from "@customer-platform/runtime/db";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { bearer, type Clients, failure, rpcError } from "../support/clients.js";
import { mailedCode, signUpByMail } from "../support/mailbox.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../support/nats.js";
import { createTestDatabase, holdLock, type TestDatabase } from "../support/postgres.js";
import { type Finished, runToEnd, spawnService } from "../support/processes.js";
import { createSecretScanner } from "../support/secrets.js";
import { startIdentityService } from "../support/services.js";

const secrets = createSecretScanner();
const PASSWORD = "correct horse battery staple";
const NEW_PASSWORD = "an entirely new passphrase";
// Loopback: an http issuer for another host may be refused.
const ISSUER = "http://127.0.0.1";
secrets.add("the password", PASSWORD, NEW_PASSWORD);

const cleanups: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  secrets.close();
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A fresh address, registered with the scanner: an email must not be logged either. */
function email(prefix = "user"): string {
  const address = `${prefix}.${randomUUID().slice(0, 8)}@example.com`;
  secrets.add("an email", address);
  return address;
}

/** The identity service's environment, without its database and port. */
function serviceEnv(): Record<string, string> {
  const streams = uniqueStreamNames("identity");
  cleanups.push(() => deleteStreams(sharedNatsUrl, streams.stream));
  return {
    NATS_URL: sharedNatsUrl,
    IDENTITY_STREAM: streams.stream,
    IDENTITY_SUBJECT_PREFIX: streams.subjectPrefix,
    IDENTITY_ISSUER: ISSUER,
    IDENTITY_ARGON2_MEMORY_KIB: "1024",
    IDENTITY_ARGON2_ITERATIONS: "1",
  };
}

/** The identity CLI as a process, as `npm run identity` runs it. */
function cli(args: string[], env: Record<string, string>): Promise<Finished> {
  return runToEnd(
    process.execPath,
    ["--conditions=source", "--import", "tsx", "identity-service/src/cli.ts", ...args],
    {
      ...process.env,
      ...env,
    },
  );
}

/** What signUpCode needs of an AuthService client. */
type SignUpStarter = { startSignUp(req: { email: string }): Promise<unknown> };

/** StartSignUp for address; the code mailed to it (the dev mailbox at mailbox). */
async function signUpCode(auth: SignUpStarter, mailbox: string, address: string): Promise<string> {
  await auth.startSignUp({ email: address });
  return mailedCode(mailbox, address);
}

const INVALID_CODE = rpcError("code: invalid or expired code [code.invalid]", Code.InvalidArgument);

/** The JSON log lines (others, e.g. a child's stderr, are skipped) whose `msg` is msg. */
function logLines(lines: readonly string[], msg: string): Array<Record<string, unknown>> {
  return lines
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((l) => l.msg === msg);
}

/** Every `code` in a logged error and its causes. */
function codes(err: unknown): string[] {
  const out: string[] = [];
  for (let e = err as { code?: string; cause?: unknown } | undefined; e; e = e.cause as typeof e) {
    if (e.code) out.push(e.code);
  }
  return out;
}

/** The error and causes of a log line, flattened into one object for toMatchObject. */
function flat(err: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (let e = err as Record<string, unknown> | undefined; e; e = e.cause as typeof e) {
    for (const [k, v] of Object.entries(e)) if (k !== "cause" && k !== "stack" && !(k in out)) out[k] = v;
  }
  return out;
}

/**
 * Runs call while `lock` blocks its statement (one whose text starts with
 * `statement`), then cancels or terminates that statement's backend from
 * another connection; returns the error the call ended with.
 */
async function interrupt(
  db: TestDatabase,
  statement: string,
  how: "cancel" | "terminate",
  call: () => Promise<unknown>,
): Promise<ConnectError | undefined> {
  const lock = await holdLock(db.sql, (tx) => tx`lock table identities in exclusive mode`);
  try {
    const pending = failure(call());
    const ended = pending.then((err) => {
      throw new Error(`the call ended before its statement ran: ${err ?? "success"}`);
    });
    const waiting = vi.waitFor(
      async () => {
        const [row] = await db.sql<[{ pid: number }?]>`
          select pid from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock' and query like ${`${statement}%`}`;
        if (!row) throw new Error(`no statement "${statement}…" waits on the lock yet`);
        return row.pid;
      },
      { timeout: 20_000, interval: 50 },
    );
    ended.catch(() => {});
    waiting.catch(() => {});
    const pid = await Promise.race([waiting, ended]);
    if (how === "cancel") await db.sql`select pg_cancel_backend(${pid})`;
    else await db.sql`select pg_terminate_backend(${pid})`;
    return await pending;
  } finally {
    await lock.release();
  }
}

interface Target {
  clients: Clients;
  /** Its issuer: the audience of tokens for its own RPCs (ChangePassword). */
  issuer: string;
  database: TestDatabase;
  /** Its dev mailbox (sign-up codes). */
  mailbox: string;
  lines(): readonly string[];
}

const targets: Array<[string, () => Promise<Target>]> = [
  [
    "in process",
    async () => {
      const svc = await startIdentityService({});
      cleanups.push(() => svc.close());
      return {
        clients: svc.clients,
        issuer: svc.env.IDENTITY_ISSUER ?? "",
        database: svc.database,
        mailbox: svc.env.IDENTITY_MAILBOX_DIR ?? "",
        lines: () => svc.logs.lines,
      };
    },
  ],
  [
    "as a process (npm run start:identity)",
    async () => {
      const database = await createTestDatabase("log_secrets_child");
      cleanups.push(() => database.drop());
      const mailbox = mkdtempSync(join(tmpdir(), "log-secrets-mailbox-"));
      cleanups.push(async () => rmSync(mailbox, { recursive: true, force: true }));
      const env = { ...serviceEnv(), IDENTITY_DATABASE_URL: database.url, IDENTITY_MAILBOX_DIR: mailbox };
      const child = await spawnService("identity-service", env);
      cleanups.push(() => child.stop());
      return { clients: child.clients, issuer: ISSUER, database, mailbox, lines: () => child.output };
    },
  ],
];

describe.each(targets)("the identity service %s on PostgreSQL", (_name, start) => {
  let t: Target;
  const auth = () => t.clients.client(AuthService);

  beforeAll(async () => {
    t = await start();
  }, 120_000);

  it("logs a sign-up insert cancelled while it runs with its SQLSTATE and statement, never its values", async () => {
    const address = email();
    const code = await signUpCode(auth(), t.mailbox, address);
    const err = await interrupt(t.database, 'insert into "identities"', "cancel", () =>
      auth().completeSignUp({ email: address, code, password: PASSWORD }),
    );
    expect(err).toMatchObject(rpcError("internal error", Code.Internal));
    // A process writes its log lines in chunks, within 200 ms.
    await expect.poll(() => logLines(t.lines(), "rpc: internal error").length).toBe(1);
    await secrets.addStored(t.database.sql);
    secrets.expectClean({ log: t.lines() });
    // What the operator needs is still there.
    const [line] = logLines(t.lines(), "rpc: internal error");
    expect(line).toMatchObject({ procedure: "identity.v1.AuthService/CompleteSignUp", code: "Internal" });
    expect(line?.err).toMatchObject({
      message: "failed query",
      query: expect.stringMatching(/^insert into "identities" \(.*\) values \(\$1, /),
      cause: { code: "57014", message: "canceling statement due to user request" },
    });
  });

  it("logs a password update whose connection was terminated as database unavailable, never the new hash", async () => {
    const address = email();
    const user = await signUpByMail(auth(), t.mailbox, { email: address, password: PASSWORD, audience: [t.issuer] });
    const err = await interrupt(t.database, 'update "identities"', "terminate", () =>
      auth().changePassword(
        { currentPassword: PASSWORD, newPassword: NEW_PASSWORD },
        bearer(user.tokens?.accessToken ?? ""),
      ),
    );
    expect(err).toMatchObject(rpcError("database unavailable", Code.Unavailable));
    await expect.poll(() => logLines(t.lines(), "rpc: database unavailable").length).toBe(1);
    await secrets.addStored(t.database.sql);
    secrets.expectClean({ log: t.lines() });
    const [line] = logLines(t.lines(), "rpc: database unavailable");
    expect(line).toMatchObject({ procedure: "identity.v1.AuthService/ChangePassword", code: "Unavailable" });
    expect(codes(line?.err).some((c) => c === "57P01" || c.startsWith("CONNECTION_"))).toBe(true);
  });
});

describe("the identity service in process, on violations PostgreSQL explains with the row's values", () => {
  let svc: Awaited<ReturnType<typeof startIdentityService>>;
  const auth = () => svc.clients.client(AuthService);

  beforeAll(async () => {
    svc = await startIdentityService({});
    cleanups.push(() => svc.close());
  });

  const mailbox = () => svc.env.IDENTITY_MAILBOX_DIR ?? "";

  it("an email taken since its sign-up code was sent: answered as a wrong code, and the log never has the email", async () => {
    const address = email();
    const code = await signUpCode(auth(), mailbox(), address);
    // The address gets an account meanwhile (the deprecated CreateCredentials, on in the harness).
    await auth().createCredentials({ email: address, password: PASSWORD });
    expect(await failure(auth().completeSignUp({ email: address, code, password: PASSWORD }))).toMatchObject(
      INVALID_CODE,
    );
    await secrets.addStored(svc.database.sql);
    secrets.expectClean({ log: svc.logs.lines });
  });

  it("a unique violation the service does not expect (DETAIL: Key (lower(email))=(…)): constraint and table, no email", async () => {
    const address = email();
    const code = await signUpCode(auth(), mailbox(), address);
    await auth().createCredentials({ email: address, password: PASSWORD });
    const sql = svc.database.sql;
    await sql`alter index identities_email_key rename to identities_email_unique`;
    try {
      expect(await failure(auth().completeSignUp({ email: address, code, password: PASSWORD }))).toMatchObject(
        rpcError("internal error", Code.Internal),
      );
    } finally {
      await sql`alter index identities_email_unique rename to identities_email_key`;
    }
    await secrets.addStored(sql);
    secrets.expectClean({ log: svc.logs.lines });
    const line = logLines(svc.logs.lines, "rpc: internal error").at(-1);
    expect(line?.err).toMatchObject({
      message: "failed query",
      cause: { code: "23505", message: "unique violation", constraint: "identities_email_unique", table: "identities" },
    });
  });

  it("a check violation (DETAIL: Failing row contains (…, email, hash, …)): constraint and table only", async () => {
    const sql = svc.database.sql;
    const refused = email("refused");
    const code = await signUpCode(auth(), mailbox(), refused);
    await sql`alter table identities add constraint log_secrets_refused check (email not like 'refused.%') not valid`;
    try {
      expect(await failure(auth().completeSignUp({ email: refused, code, password: PASSWORD }))).toMatchObject(
        rpcError("internal error", Code.Internal),
      );
    } finally {
      await sql`alter table identities drop constraint log_secrets_refused`;
    }
    await secrets.addStored(sql);
    secrets.expectClean({ log: svc.logs.lines });
    const line = logLines(svc.logs.lines, "rpc: internal error").at(-1);
    expect(flat(line?.err)).toMatchObject({ code: "23514", constraint: "log_secrets_refused", table: "identities" });
  });
});

describe("a signing key whose insert fails (its private JWK is a statement parameter)", () => {
  it("at start-up: the service exits 1 with one safe description on stderr", async () => {
    const database = await createTestDatabase("log_secrets_keys");
    cleanups.push(() => database.drop());
    const env = { ...serviceEnv(), IDENTITY_DATABASE_URL: database.url };
    // Migrated, no key yet; the first key the service creates is refused.
    expect(await runCli(["keys", "list"], env, () => {})).toBe(0);
    await database.sql`alter table signing_keys add constraint log_secrets_no_keys check (false) not valid`;
    const started = await runToEnd(
      process.execPath,
      ["--conditions=source", "--import", "tsx", "identity-service/src/main.ts"],
      { ...process.env, ...env, IDENTITY_PORT: "0", LOG_LEVEL: "warn" },
    );
    expect(secrets.find(started.stderr + started.stdout)).toEqual([]);
    expect(started.code).toBe(1);
    expect(started.stderr).toMatch(
      /^identity-service: failed to start: failed query: check violation \(23514\)\n\s+at /,
    );
  }, 120_000);

  it("in the CLI (keys rotate): one safe line on stderr naming SQLSTATE", async () => {
    const database = await createTestDatabase("log_secrets_cli");
    cleanups.push(() => database.drop());
    const env = { ...serviceEnv(), IDENTITY_DATABASE_URL: database.url };
    expect(await runCli(["keys", "list"], env, () => {})).toBe(0);
    await database.sql`alter table signing_keys add constraint log_secrets_no_keys check (false) not valid`;
    const rotated = await cli(["keys", "rotate"], env);
    expect(secrets.find(rotated.stderr + rotated.stdout)).toEqual([]);
    expect(rotated).toMatchObject({ code: 1, stderr: "error: failed query: check violation (23514)\n" });
  }, 120_000);
});

describe("the identity service on the embedded PGlite (npm start)", () => {
  it("logs a refused sign-up and prints a refused key write without a value", async () => {
    const dir = mkdtempSync(join(tmpdir(), "log-secrets-"));
    cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
    const url = `pglite:${join(dir, "identity")}`;
    const env = { ...serviceEnv(), IDENTITY_DATABASE_URL: url };
    expect(await runCli(["keys", "list"], env, () => {})).toBe(0);
    const alter = async (statement: string) => {
      const db = await openDatabase({ url, schema: {} });
      try {
        await db.query(statement);
      } finally {
        await db.close();
      }
    };
    await alter(
      "alter table identities add constraint log_secrets_refused check (email not like 'refused.%') not valid",
    );

    const svc = await startIdentityService({ IDENTITY_DATABASE_URL: url });
    try {
      const auth = svc.clients.client(AuthService);
      const mailbox = svc.env.IDENTITY_MAILBOX_DIR ?? "";
      await signUpByMail(auth, mailbox, { email: email(), password: PASSWORD });
      const refused = email("refused");
      const code = await signUpCode(auth, mailbox, refused);
      expect(await failure(auth.completeSignUp({ email: refused, code, password: PASSWORD }))).toMatchObject(
        rpcError("internal error", Code.Internal),
      );
      secrets.expectClean({ pglite: svc.logs.lines });
      const line = logLines(svc.logs.lines, "rpc: internal error").at(-1);
      expect(flat(line?.err)).toMatchObject({
        message: "failed query",
        code: "23514",
        constraint: "log_secrets_refused",
        table: "identities",
      });
    } finally {
      await svc.close();
    }

    await alter("alter table signing_keys add constraint log_secrets_no_keys check (false) not valid");
    const rotated = await cli(["keys", "rotate"], env);
    expect(secrets.find(rotated.stderr + rotated.stdout)).toEqual([]);
    expect(rotated).toMatchObject({ code: 1, stderr: "error: failed query: check violation (23514)\n" });
  }, 180_000);
});
