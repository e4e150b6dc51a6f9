/**
 * NATS authorization as shipped: a private nats-server runs deploy/nats/nats.conf
 * (the file compose.yaml mounts; port and store rewritten, test passwords in
 * its environment) and both services sign in as their own users. Events flow
 * end to end (a registration lands in CUSTOMER, a revocation reaches the
 * customer service), while a forged TokensRevoked from the customer service's
 * user is refused by the broker and never lands in IDENTITY, a service cannot
 * touch the other's stream, the events reader publishes nothing, and an
 * anonymous client or a wrong password cannot connect. A service whose
 * credentials NATS refuses does not start (exit 78, one line naming the
 * variable); its password, from NATS_URL, a variable or a file, is in no log
 * line.
 */
import { spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { TokensRevokedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { StartupError } from "@customer-platform/runtime/main";
import { setCloudEventHeaders } from "@customer-platform/sdk/cloudevents";
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type MsgRequest } from "@nats-io/jetstream";
import {
  AuthorizationError,
  connect,
  headers,
  type MsgHdrs,
  type NatsConnection,
  PermissionViolationError,
  usernamePasswordAuthenticator,
} from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, failure, rpcError } from "../support/clients.js";
import { signUpByMail } from "../support/mailbox.js";
import { type PrivateNats, startPrivateNats } from "../support/nats.js";
import { waitForOutboxEmpty } from "../support/outbox.js";
import { reservePort } from "../support/ports.js";
import { createTestDatabase } from "../support/postgres.js";
import { runToEnd, waitWhileRunning } from "../support/processes.js";
import { createSecretScanner } from "../support/secrets.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "../support/services.js";
import { within } from "../support/timing.js";

const SHIPPED = readFileSync(new URL("../../deploy/nats/nats.conf", import.meta.url), "utf8");
const CUSTOMER = { stream: "CUSTOMER", subjectPrefix: "customer" };
const IDENTITY = { stream: "IDENTITY", subjectPrefix: "identity" };
const secret = (who: string) => `${who}-${randomBytes(12).toString("hex")}`;
/** The passwords nats.conf reads from the server's environment. */
const PASSWORDS = {
  CUSTOMER_NATS_PASSWORD: secret("customer"),
  IDENTITY_NATS_PASSWORD: secret("identity"),
  EVENTS_READER_NATS_PASSWORD: secret("reader"),
};
const PASSWORD = "correct horse battery staple";
const REVOKED = rpcError("access token revoked", Code.Unauthenticated);
// How long an event may take to arrive (usually milliseconds).
const PROPAGATION = { timeout: 10_000, interval: 50 };

/** The shipped configuration on a private port and store; each rewrite must find its line. */
function shippedConfig({ port, storeDir }: { port: number; storeDir: string }): string {
  const rewrites: Array<[RegExp, string]> = [
    [/^listen: .*$/m, `listen: 127.0.0.1:${port}`],
    [/^http_port: .*$/m, ""],
    [/^ {2}store_dir: .*$/m, `  store_dir: "${storeDir}"`],
  ];
  return rewrites.reduce((text, [line, replacement]) => {
    if (!line.test(text)) throw new Error(`deploy/nats/nats.conf has no line ${line}`);
    return text.replace(line, replacement);
  }, SHIPPED);
}

let nats: PrivateNats;
let identity: RunningIdentityService;
let customer: RunningCustomerService;
let issuer: string;
let secretsDir: string;
const clients: NatsConnection[] = [];

/** A connection as `user` (the services' inbox prefix for theirs), closed after the file. */
async function signIn(user: string, password: string, inboxPrefix?: string): Promise<NatsConnection> {
  const nc = await connect({
    servers: nats.url,
    authenticator: usernamePasswordAuthenticator(user, password),
    ...(inboxPrefix && { inboxPrefix }),
  });
  clients.push(nc);
  return nc;
}
const reader = () => signIn("events-reader", PASSWORDS.EVENTS_READER_NATS_PASSWORD);
const asCustomerService = () => signIn("customer-service", PASSWORDS.CUSTOMER_NATS_PASSWORD, "_INBOX_customer-service");
const asIdentityService = () => signIn("identity-service", PASSWORDS.IDENTITY_NATS_PASSWORD, "_INBOX_identity-service");

/** Publishes and resolves with the error the server answers (the connection's next error status). */
async function publishRefused(nc: NatsConnection, subject: string, data: Uint8Array, h?: MsgHdrs): Promise<unknown> {
  const errors = (async () => {
    for await (const s of nc.status()) if (s.type === "error") return s.error;
    return undefined;
  })();
  nc.publish(subject, data, h ? { headers: h } : {});
  await nc.flush();
  return within(errors, 10_000, `the server's answer to a publish on ${subject}`);
}

/** The stream's last sequence, as the events reader sees it. */
async function lastSeq(stream: string): Promise<number> {
  const jsm = await jetstreamManager(await reader());
  return (await jsm.streams.info(stream)).state.last_seq;
}

/** The `jti` of an access token. */
const jwtId = (token: string) =>
  (JSON.parse(Buffer.from(token.split(".")[1] ?? "", "base64url").toString()) as { jti: string }).jti;

beforeAll(async () => {
  secretsDir = mkdtempSync(join(tmpdir(), "nats-secrets-"));
  nats = await startPrivateNats({ config: shippedConfig, env: PASSWORDS });
  const port = await reservePort();
  issuer = `http://127.0.0.1:${port.port}`;
  identity = await startIdentityService(
    {
      IDENTITY_ISSUER: issuer,
      IDENTITY_NATS_USER: "identity-service",
      IDENTITY_NATS_PASSWORD: PASSWORDS.IDENTITY_NATS_PASSWORD,
    },
    { natsUrl: nats.url, streams: IDENTITY, port },
  );
  // The customer service reads its password from a file, as from a container secret.
  const passwordFile = join(secretsDir, "customer-nats-password");
  writeFileSync(passwordFile, `${PASSWORDS.CUSTOMER_NATS_PASSWORD}\n`, { mode: 0o600 });
  customer = await startCustomerService(
    { IDENTITY_ISSUER: issuer, CUSTOMER_NATS_USER: "customer-service", CUSTOMER_NATS_PASSWORD_FILE: passwordFile },
    { natsUrl: nats.url, streams: CUSTOMER, identityStreams: IDENTITY },
  );
});

afterAll(async () => {
  for (const nc of clients) await nc.close().catch(() => {});
  await customer?.close();
  await identity?.close();
  await nats?.stop();
  rmSync(secretsDir, { recursive: true, force: true });
});

/** A customer signed up at the identity service and registered at the customer service. */
async function newCustomer(label: string) {
  const email = `${label}.${randomBytes(4).toString("hex")}@example.com`;
  const res = await signUpByMail(identity.clients.client(AuthService), identity.env.IDENTITY_MAILBOX_DIR ?? "", {
    email,
    password: PASSWORD,
  });
  const token = res.tokens?.accessToken ?? "";
  await customer.clients
    .client(CustomerService)
    .registerCustomer({ givenName: "Ada", familyName: "Lovelace" }, bearer(token));
  return { customerId: res.customerId, token };
}

const read = (c: { customerId: string }, token: string) =>
  customer.clients.client(CustomerService).getCustomer({ customerId: c.customerId }, bearer(token));

describe("the services as their own NATS users", () => {
  it("carry events end to end: a registration lands in CUSTOMER, a revocation reaches the customer service", async () => {
    const c = await newCustomer("flow");
    const js = jetstream(await reader());
    const registered = await js.consumers.get("CUSTOMER", {
      filter_subjects: `customer.registered.${c.customerId}`,
      deliver_policy: DeliverPolicy.All,
    });
    await expect
      .poll(async () => (await registered.next({ expires: 1_000 }))?.subject, PROPAGATION)
      .toBe(`customer.registered.${c.customerId}`);

    await expect(read(c, c.token)).resolves.toMatchObject({ customer: { customerId: c.customerId } });
    await identity.clients.client(AuthService).revokeToken({ token: c.token });
    await expect.poll(() => failure(read(c, c.token)), PROPAGATION).toMatchObject(REVOKED);
  });

  it("refuses a TokensRevoked forged by the customer service's user: nothing lands in IDENTITY, the token stays valid", async () => {
    const victim = await newCustomer("victim");
    await expect(read(victim, victim.token)).resolves.toMatchObject({ customer: { customerId: victim.customerId } });
    // The victim's own sign-up events are in the stream before it is measured.
    await waitForOutboxEmpty(identity.database.url);
    const before = await lastSeq("IDENTITY");
    const forged = create(TokensRevokedSchema, {
      customerId: victim.customerId,
      jwtIds: [jwtId(victim.token)],
      expireTime: timestampFromMs(Date.parse("9999-01-01T00:00:00Z")),
    });
    const h = setCloudEventHeaders(headers(), {
      id: randomUUID(),
      type: TokensRevokedSchema.typeName,
      source: "identity-service",
      time: new Date(),
      subject: victim.customerId,
    });
    const subject = `identity.token.revoked.${victim.customerId}`;

    const nc = await asCustomerService();
    const err = await publishRefused(nc, subject, toBinary(TokensRevokedSchema, forged), h);
    expect(err).toBeInstanceOf(PermissionViolationError);
    expect(err).toMatchObject({ operation: "publish", subject });
    // Through JetStream too: no ack, no message.
    await expect(
      jetstream(nc).publish(subject, toBinary(TokensRevokedSchema, forged), { timeout: 2_000 }),
    ).rejects.toThrow();

    expect(await lastSeq("IDENTITY")).toBe(before);
    await expect(read(victim, victim.token)).resolves.toMatchObject({ customer: { customerId: victim.customerId } });
  });

  it("lets neither service publish on the other's subjects, delete or purge a stream, or delete the other's messages", async () => {
    const ofCustomer = await asCustomerService();
    const ofIdentity = await asIdentityService();
    const forged = "customer.registered.00000000-0000-0000-0000-000000000000";
    expect(await publishRefused(ofIdentity, forged, new Uint8Array())).toMatchObject({
      operation: "publish",
      subject: forged,
    });

    const before = { CUSTOMER: await lastSeq("CUSTOMER"), IDENTITY: await lastSeq("IDENTITY") };
    const own = new Map([
      [ofCustomer, "CUSTOMER"],
      [ofIdentity, "IDENTITY"],
    ]);
    for (const [nc, mine] of own) {
      const jsm = await jetstreamManager(nc, { timeout: 2_000 });
      for (const stream of ["CUSTOMER", "IDENTITY"]) {
        await expect(jsm.streams.delete(stream)).rejects.toThrow();
        // Not even its own: a filtered purge moves every consumer of the stream past its end (NATS 2.9).
        await expect(jsm.streams.purge(stream)).rejects.toThrow();
        if (stream !== mine) await expect(jsm.streams.deleteMessage(stream, 1)).rejects.toThrow(/timeout|Permissions/i);
      }
      // In its own stream it may read and delete messages one by one (an erased customer's; here
      // a sequence past the end, which the server answers as such, not as a permission violation).
      const nobody = `${mine.toLowerCase()}.updated.${randomUUID()}`;
      await expect(
        jsm.streams.getMessage(mine, { next_by_subj: nobody, seq: 1 } as unknown as MsgRequest),
      ).resolves.toBeNull();
      await expect(jsm.streams.deleteMessage(mine, 2 ** 52)).rejects.toThrow(/stream store EOF|no message found/);
    }
    expect({ CUSTOMER: await lastSeq("CUSTOMER"), IDENTITY: await lastSeq("IDENTITY") }).toEqual(before);
  });

  it("lets the customer service bind its durable consumer of identity events, filtered to identity.customer.>", async () => {
    const jsm = await jetstreamManager(await reader(), { timeout: 2_000 });
    await expect
      .poll(
        async () => (await jsm.consumers.info("IDENTITY", "customer-service-identity").catch(() => undefined))?.config,
        PROPAGATION,
      )
      .toMatchObject({ durable_name: "customer-service-identity", filter_subject: "identity.customer.>" });
  });

  it("lets the customer service's user read revocations from IDENTITY and nothing else", async () => {
    const nc = await asCustomerService();
    const jsm = await jetstreamManager(nc, { timeout: 2_000 });
    const everything = jsm.consumers.add("IDENTITY", {
      name: `wide_${randomBytes(4).toString("hex")}`,
      filter_subject: "identity.>",
    });
    await expect(everything).rejects.toThrow(/Permissions Violation/);
    // The filter in the API subject must match the one asked for: the server checks.
    const name = `sneaky_${randomBytes(4).toString("hex")}`;
    const answer = await nc.request(
      `$JS.API.CONSUMER.CREATE.IDENTITY.${name}.identity.token.revoked.>`,
      JSON.stringify({ stream_name: "IDENTITY", config: { name, filter_subject: "identity.>", ack_policy: "none" } }),
      { timeout: 5_000 },
    );
    expect(answer.json()).toMatchObject({ error: { code: 400 } });
    const revocations = await jsm.consumers.add("IDENTITY", {
      name: `narrow_${randomBytes(4).toString("hex")}`,
      filter_subject: "identity.token.revoked.>",
      ack_policy: AckPolicy.None,
    });
    expect(revocations.config.filter_subject).toBe("identity.token.revoked.>");
    await jsm.consumers.delete("IDENTITY", revocations.name);
  });

  it("lets the events reader read, but not publish an event or change a stream", async () => {
    const nc = await reader();
    for (const subject of ["customer.updated.x", "identity.token.revoked.x"]) {
      expect(await publishRefused(nc, subject, new Uint8Array())).toMatchObject({ operation: "publish", subject });
    }
    const jsm = await jetstreamManager(nc, { timeout: 2_000 });
    const before = await lastSeq("IDENTITY");
    await expect(jsm.streams.purge("IDENTITY")).rejects.toThrow();
    await expect(jsm.streams.delete("IDENTITY")).rejects.toThrow();
    expect(await lastSeq("IDENTITY")).toBe(before);
  });

  it("lets `npm run events -- tail` read both streams as the events reader", async () => {
    const c = await newCustomer("tail");
    await identity.clients.client(AuthService).revokeToken({ token: c.token });
    const tail = spawn(
      process.execPath,
      ["--conditions=source", "--import", "tsx", "scripts/events.ts", "tail", "--all"],
      {
        cwd: new URL("../..", import.meta.url),
        env: {
          ...process.env,
          NATS_URL: nats.url,
          EVENTS_READER_NATS_USER: "events-reader",
          EVENTS_READER_NATS_PASSWORD: PASSWORDS.EVENTS_READER_NATS_PASSWORD,
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    let output = "";
    tail.stdout.on("data", (d: Buffer) => {
      output += d;
    });
    tail.stderr.on("data", (d: Buffer) => {
      output += d;
    });
    const exited = new Promise((resolve) => tail.once("exit", resolve));
    try {
      await waitWhileRunning(
        exited,
        () => {
          for (const subject of [`customer.registered.${c.customerId}`, `identity.token.revoked.${c.customerId}`]) {
            if (!output.includes(`"subject":"${subject}`)) throw new Error(`no ${subject} yet:\n${output}`);
          }
        },
        { timeout: 30_000, exitedError: () => new Error(`tail exited:\n${output}`) },
      );
    } finally {
      tail.kill("SIGKILL");
      await exited;
    }
  });

  it("refuses an anonymous client and a wrong password", async () => {
    await expect(connect({ servers: nats.url, reconnect: false })).rejects.toBeInstanceOf(AuthorizationError);
    await expect(
      connect({
        servers: nats.url,
        reconnect: false,
        authenticator: usernamePasswordAuthenticator("customer-service", "not-the-password"),
      }),
    ).rejects.toBeInstanceOf(AuthorizationError);
  });
});

describe("a service whose NATS credentials are refused", () => {
  it("does not start: a StartupError (exit 78) naming the user and the variable, without the password", async () => {
    const wrong = secret("wrong");
    const started = startCustomerService(
      { IDENTITY_ISSUER: issuer, CUSTOMER_NATS_USER: "customer-service", CUSTOMER_NATS_PASSWORD: wrong },
      { natsUrl: nats.url, streams: CUSTOMER, identityStreams: IDENTITY },
    );
    const err = await started.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(StartupError);
    expect(err).toMatchObject({
      exitCode: 78,
      message: expect.stringMatching(
        /^NATS at nats:\/\/127\.0\.0\.1:\d+ refused user customer-service \(CUSTOMER_NATS_USER\): /,
      ),
    });
    expect((err as Error).message).not.toContain(wrong);
  });

  it("exits 78 as a process, with one line on stderr and the password nowhere", async () => {
    const wrong = secret("wrong");
    const url = new URL(nats.url);
    url.username = "customer-service";
    url.password = wrong;
    await using database = await createTestDatabase("customer");
    const { code, stdout, stderr } = await runToEnd(
      process.execPath,
      ["--conditions=source", "--import", "tsx", "customer-service/src/main.ts"],
      {
        ...process.env,
        CUSTOMER_PORT: "0",
        CUSTOMER_DATABASE_URL: database.url,
        IDENTITY_ISSUER: issuer,
        NATS_URL: url.toString(),
        LOG_LEVEL: "debug",
      },
    );
    expect(code).toBe(78);
    expect(stderr).toMatch(
      /customer-service: NATS at nats:\/\/127\.0\.0\.1:\d+ refused user customer-service \(NATS_URL\)/,
    );
    expect(`${stdout}\n${stderr}`).not.toContain(wrong);
  });
});

describe("the NATS password", () => {
  it.each([
    [
      "in NATS_URL",
      (password: string) => ({
        NATS_URL: `nats://customer-service:${encodeURIComponent(password)}@127.0.0.1:${nats.port}`,
      }),
    ],
    [
      "in a password file",
      (password: string) => {
        const file = join(secretsDir, `password-${randomBytes(4).toString("hex")}`);
        writeFileSync(file, `${password}\n`, { mode: 0o600 });
        return { NATS_URL: nats.url, NATS_USER: "customer-service", NATS_PASSWORD_FILE: file };
      },
    ],
  ])("%s signs the service in and is in no log line", async (_, env) => {
    const scanner = createSecretScanner({ observe: false });
    scanner.add("the NATS password", PASSWORDS.CUSTOMER_NATS_PASSWORD);
    await using svc = await startCustomerService(
      { IDENTITY_ISSUER: issuer, LOG_LEVEL: "debug", ...env(PASSWORDS.CUSTOMER_NATS_PASSWORD) },
      { natsUrl: nats.url, streams: CUSTOMER, identityStreams: IDENTITY },
    );
    const listening = svc.logs.lines.find((l) => l.includes('"customer service listening"')) ?? "";
    expect(JSON.parse(listening)).toMatchObject({
      nats: nats.url,
      natsAuth: expect.stringMatching(/^user customer-service \((NATS_URL|NATS_USER)\)$/),
    });
    // Signed in: it follows revocations on IDENTITY, which an anonymous client could not.
    await expect.poll(() => svc.server.revocations.subscribed, PROPAGATION).toBe(true);
    scanner.expectClean({ "customer-service": svc.logs.lines });
    scanner.close();
  });
});
