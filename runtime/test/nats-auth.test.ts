/**
 * How a service signs in to NATS. envNats reads one way of signing in (a
 * creds file, an nkey seed file, a user with a password or password file, or
 * credentials in NATS_URL), per service (`<PREFIX>_NATS_*`) or shared
 * (`NATS_*`); a file that cannot be read or holds no credentials, or two ways
 * at once, is a ConfigError naming the variable and never the secret. Files
 * are read again at each connect (rotation). createNats signs in with it on a
 * private nats-server and tells refused credentials from NATS being down;
 * redactUrl is the one way a URL reaches a log line.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { nkeys } from "@nats-io/transport-node";
import { afterAll, describe, expect, it, vi } from "vitest";
import { startPrivateNats } from "../../test/support/nats.js";
import { ConfigError, envNats } from "../src/config.js";
import { createNats } from "../src/nats.js";
import { redactUrl } from "../src/redact.js";
import { afterThisTest, captureLogger } from "./outbox-harness.js";

const dir = mkdtempSync(join(tmpdir(), "nats-auth-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let files = 0;
/** A new file holding text; its path. */
function file(text: string): string {
  const path = join(dir, `f${++files}`);
  writeFileSync(path, text, { mode: 0o600 });
  return path;
}

const seedOf = (kp: ReturnType<typeof nkeys.createUser>) => new TextDecoder().decode(kp.getSeed());
/** A creds file as `nsc generate creds` writes it (the JWT's signature is not checked here). */
function credsText(seed: string): string {
  const jwt = `${Buffer.from('{"typ":"JWT","alg":"ed25519-nkey"}').toString("base64url")}.${Buffer.from('{"sub":"U"}').toString("base64url")}.c2ln`;
  return [
    "-----BEGIN NATS USER JWT-----",
    jwt,
    "------END NATS USER JWT------",
    "",
    "************************* IMPORTANT *************************",
    "NKEY Seed printed below can be used to sign and prove identity.",
    "NKEYs are sensitive and should be treated as secrets.",
    "",
    "-----BEGIN USER NKEY SEED-----",
    seed,
    "------END USER NKEY SEED------",
    "",
    "*************************************************************",
    "",
  ].join("\n");
}

describe("envNats", () => {
  it("connects anonymously when nothing is set, and leaves the URL alone", () => {
    expect(envNats({}, "ORDERS")).toEqual({ url: "nats://127.0.0.1:4222", auth: undefined });
    expect(envNats({ NATS_URL: "tls://nats.internal:4443" }, "ORDERS")).toEqual({
      url: "tls://nats.internal:4443",
      auth: undefined,
    });
  });

  it("takes a user and password (percent-decoded) or a token from NATS_URL and removes them from the URL", () => {
    const withUser = envNats({ NATS_URL: "nats://orders:p%40ss%3Aw0rd@nats.internal:4222" }, "ORDERS");
    expect(withUser).toMatchObject({
      url: "nats://nats.internal:4222",
      auth: { method: "user", variable: "NATS_URL", identity: "orders" },
    });
    expect(withUser.auth?.secret()).toBe("p@ss:w0rd");
    const withToken = envNats({ NATS_URL: "nats://s3cr3t-t0ken@nats.internal:4222" }, "ORDERS");
    expect(withToken).toMatchObject({ url: "nats://nats.internal:4222", auth: { method: "token" } });
    expect(withToken.auth?.secret()).toBe("s3cr3t-t0ken");
  });

  it("reads a user with a password, or with a password file without its final newline", () => {
    const given = envNats({ ORDERS_NATS_USER: "orders", ORDERS_NATS_PASSWORD: " spaces kept " }, "ORDERS");
    expect(given.auth).toMatchObject({ method: "user", variable: "ORDERS_NATS_USER", identity: "orders" });
    expect(given.auth?.secret()).toBe(" spaces kept ");
    const fromFile = envNats({ NATS_USER: "orders", NATS_PASSWORD_FILE: file("from a file\n") }, "ORDERS");
    expect(fromFile.auth).toMatchObject({ method: "user", variable: "NATS_USER", identity: "orders" });
    expect(fromFile.auth?.secret()).toBe("from a file");
  });

  it("prefers the service's own variables to the shared ones", () => {
    const env = {
      NATS_USER: "shared",
      NATS_PASSWORD: "shared-pw",
      ORDERS_NATS_NKEY_SEED_FILE: file(seedOf(nkeys.createUser())),
    };
    expect(envNats(env, "ORDERS").auth).toMatchObject({ method: "nkey", variable: "ORDERS_NATS_NKEY_SEED_FILE" });
    expect(envNats(env, "BILLING").auth).toMatchObject({ method: "user", variable: "NATS_USER", identity: "shared" });
  });

  it("reads an nkey seed file (its public key is what is logged) and a creds file", () => {
    const kp = nkeys.createUser();
    const nkey = envNats({ ORDERS_NATS_NKEY_SEED_FILE: file(`${seedOf(kp)}\n`) }, "ORDERS").auth;
    expect(nkey).toMatchObject({ method: "nkey", identity: kp.getPublicKey() });
    expect(nkey?.secret()).toBe(seedOf(kp));
    const creds = envNats({ NATS_CREDS_FILE: file(credsText(seedOf(kp))) }, "ORDERS").auth;
    expect(creds).toMatchObject({ method: "creds", variable: "NATS_CREDS_FILE" });
    expect(creds?.secret()).toContain("BEGIN NATS USER JWT");
  });

  it("reads a file again at each use, and keeps the last good contents while it is gone or broken", () => {
    const path = file("first\n");
    const auth = envNats({ NATS_USER: "orders", NATS_PASSWORD_FILE: path }, "ORDERS").auth;
    writeFileSync(path, "second\n");
    expect(auth?.secret()).toBe("second");
    writeFileSync(path, "\n");
    expect(auth?.secret()).toBe("second");
    rmSync(path);
    expect(auth?.secret()).toBe("second");
  });

  const seed = seedOf(nkeys.createUser());
  it.each([
    [
      { ORDERS_NATS_CREDS_FILE: join(dir, "missing") },
      `ORDERS_NATS_CREDS_FILE: cannot read ${join(dir, "missing")}: no such file`,
    ],
    [{ ORDERS_NATS_NKEY_SEED_FILE: dir }, `ORDERS_NATS_NKEY_SEED_FILE: cannot read ${dir}: it is a directory`],
    [{ NATS_USER: "orders", NATS_PASSWORD_FILE: "EMPTY" }, "NATS_PASSWORD_FILE: <file> is empty"],
    [
      { NATS_CREDS_FILE: "SEED" },
      "NATS_CREDS_FILE: <file> is not a NATS credentials file (a user JWT and a user nkey seed, as `nsc generate creds` writes)",
    ],
    [
      { NATS_NKEY_SEED_FILE: "CREDS" },
      "NATS_NKEY_SEED_FILE: <file> holds no user nkey seed (one line starting with SU, as `nk -gen user` writes)",
    ],
    [{ ORDERS_NATS_PASSWORD: "secret-password" }, "ORDERS_NATS_PASSWORD needs ORDERS_NATS_USER"],
    [{ ORDERS_NATS_USER: "orders" }, "ORDERS_NATS_USER needs ORDERS_NATS_PASSWORD or ORDERS_NATS_PASSWORD_FILE"],
    [
      { ORDERS_NATS_USER: "orders", ORDERS_NATS_PASSWORD: "secret-password", ORDERS_NATS_PASSWORD_FILE: "SEED" },
      "set ORDERS_NATS_PASSWORD or ORDERS_NATS_PASSWORD_FILE, not both",
    ],
    [
      { ORDERS_NATS_CREDS_FILE: "CREDS", ORDERS_NATS_NKEY_SEED_FILE: "SEED" },
      "set one way to sign in to NATS (ORDERS_NATS_CREDS_FILE, ORDERS_NATS_NKEY_SEED_FILE, ORDERS_NATS_USER with a password, or credentials in NATS_URL), got ORDERS_NATS_CREDS_FILE and ORDERS_NATS_NKEY_SEED_FILE",
    ],
    [
      { NATS_URL: "nats://orders:secret-password@nats:4222", NATS_USER: "orders", NATS_PASSWORD: "secret-password" },
      "set one way to sign in to NATS (NATS_CREDS_FILE, NATS_NKEY_SEED_FILE, NATS_USER with a password, or credentials in NATS_URL), got NATS_USER and NATS_PASSWORD and credentials in NATS_URL",
    ],
    [{ NATS_URL: "nats://:secret-password@nats:4222" }, "NATS_URL has a password but no user name"],
    [{ NATS_URL: "http://nats:4222" }, 'NATS_URL must use nats: or tls: or ws: or wss:, got "http:"'],
  ])("refuses %j, naming the variable and never the secret", (given, message) => {
    const files: Record<string, string> = { EMPTY: file(""), SEED: file(seed), CREDS: file(credsText(seed)) };
    const env = Object.fromEntries(Object.entries(given).map(([k, v]) => [k, files[v] ?? v]));
    const path = Object.values(env).find((v) => Object.values(files).includes(v)) ?? "";
    let err: unknown;
    try {
      envNats(env, "ORDERS");
    } catch (e) {
      err = e;
    }
    expect(err).toEqual(new ConfigError(message.replace("<file>", path)));
    for (const s of ["secret-password", seed]) expect((err as Error).message).not.toContain(s);
  });
});

describe("redactUrl", () => {
  it.each([
    ["postgres://customer:s3cret@db:5432/customer", "postgres://customer:***@db:5432/customer"],
    ["nats://customer-service:s3cret@nats:4222", "nats://customer-service:***@nats:4222"],
    ["nats://s3cret-token@nats:4222", "nats://***@nats:4222"],
    ["postgres://customer@db/customer", "postgres://customer@db/customer"],
    ["postgres://db/customer?sslmode=require&password=s3cret", "postgres://db/customer?sslmode=require&password=***"],
    ["nats://nats:4222", "nats://nats:4222"],
    ["not a url //customer:s3cret@db", "not a url //customer:***@db"],
  ])("%s → %s", (raw, redacted) => {
    expect(redactUrl(raw)).toBe(redacted);
  });
});

describe("createNats with credentials", () => {
  it("signs in with an nkey or a password, and reports refused credentials apart from NATS being down", async () => {
    const kp = nkeys.createUser();
    const server = await startPrivateNats({
      config: ({ port, storeDir }) => `
        listen: 127.0.0.1:${port}
        jetstream { store_dir: "${storeDir}" }
        authorization { users: [
          { nkey: ${kp.getPublicKey()} }
          { user: orders, password: $ORDERS_PASSWORD }
        ] }`,
      env: { ORDERS_PASSWORD: "the-right-password" },
    });
    afterThisTest(() => server.stop());
    const open = (env: Record<string, string>) => {
      const { logger, lines } = captureLogger();
      const config = envNats({ NATS_URL: server.url, ...env }, "ORDERS");
      const nats = createNats({ url: config.url, auth: config.auth, name: "orders", logger, maxRetryMs: 500 });
      afterThisTest(() => nats.close());
      return { nats, lines };
    };

    const byKey = open({ ORDERS_NATS_NKEY_SEED_FILE: file(seedOf(kp)) });
    await expect(byKey.nats.firstAttempt).resolves.toEqual({ outcome: "connected" });
    expect(await byKey.nats.connection?.rtt()).toBeGreaterThanOrEqual(0);
    const byPassword = open({ ORDERS_NATS_USER: "orders", ORDERS_NATS_PASSWORD: "the-right-password" });
    await expect(byPassword.nats.firstAttempt).resolves.toEqual({ outcome: "connected" });

    const refused = open({ ORDERS_NATS_USER: "orders", ORDERS_NATS_PASSWORD: "a-wrong-password" });
    const reason = `NATS at ${server.url} refused user orders (ORDERS_NATS_USER): Authorization Violation; check the credentials and the server's authorization (docs/deploy.md, NATS authorization)`;
    await expect(refused.nats.firstAttempt).resolves.toEqual({ outcome: "refused", reason });
    await vi.waitUntil(() => refused.lines.some((l) => l.msg === `${reason}; retrying`));
    expect(JSON.stringify(refused.lines)).not.toContain("a-wrong-password");

    await server.kill();
    const down = open({ ORDERS_NATS_USER: "orders", ORDERS_NATS_PASSWORD: "the-right-password" });
    await expect(down.nats.firstAttempt).resolves.toEqual({ outcome: "unreachable" });
  });
});
