/**
 * `npm run events -- tail`: spawned against the real services' own streams,
 * it prints each event they publish as one JSON line, decoded by ce-type.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer } from "./support/clients.js";
import { startTestIssuer, type TestIssuer } from "./support/issuer.js";
import { signUpByMail } from "./support/mailbox.js";
import { waitForOutboxEmpty } from "./support/outbox.js";
import { waitWhileRunning } from "./support/processes.js";
import {
  type RunningCustomerService,
  type RunningIdentityService,
  startCustomerService,
  startIdentityService,
} from "./support/services.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

let issuer: TestIssuer;
let customer: RunningCustomerService;
let identity: RunningIdentityService;
const children: ChildProcess[] = [];

beforeAll(async () => {
  issuer = await startTestIssuer();
  customer = await startCustomerService({ IDENTITY_ISSUER: issuer.issuer, IDENTITY_JWKS_URL: issuer.jwksUrl });
  identity = await startIdentityService({});
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await customer?.close();
  await identity?.close();
  await issuer?.close();
});

interface Tail {
  readonly child: ChildProcess;
  readonly stdout: string[];
  readonly stderr: string[];
  /** Resolves with the first stdout line (parsed) that matches. */
  line(match: (rec: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  exit(): Promise<number | null>;
}

function spawnTail(...args: string[]): Tail {
  const child = spawn(
    process.execPath,
    ["--conditions=source", "--import", "tsx", "scripts/events.ts", "tail", ...args],
    {
      cwd: ROOT,
      env: {
        ...process.env,
        NATS_URL: customer.natsUrl,
        CUSTOMER_EVENT_KEYS_URL: `${customer.url}/.well-known/event-keys.json`,
      },
      stdio: ["ignore", "pipe", "pipe"],
    },
  );
  children.push(child);
  const stdout: string[] = [];
  const stderr: string[] = [];
  if (child.stdout) createInterface({ input: child.stdout }).on("line", (l) => stdout.push(l));
  if (child.stderr) createInterface({ input: child.stderr }).on("line", (l) => stderr.push(l));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return {
    child,
    stdout,
    stderr,
    line: (match) =>
      waitWhileRunning(
        exited,
        () => {
          const found = stdout.map((l) => JSON.parse(l) as Record<string, unknown>).find(match);
          if (!found) throw new Error(`no matching line; stdout:\n${stdout.join("\n")}`);
          return found;
        },
        { timeout: 15_000, exitedError: () => new Error(`tail exited: ${stderr.join("\n")}`) },
      ),
    exit: () => exited,
  };
}

async function untilStderr(tail: Tail, n: number): Promise<void> {
  await waitWhileRunning(
    tail.exit(),
    () => {
      if (tail.stderr.filter((l) => l.startsWith("events: tailing")).length < n) {
        throw new Error(`tail not ready: ${tail.stderr.join("\n")}`);
      }
    },
    { timeout: 15_000, exitedError: () => new Error(`tail exited: ${tail.stderr.join("\n")}`) },
  );
}

async function register() {
  const id = randomUUID();
  const email = `${id.slice(0, 8)}@example.com`;
  // The profile takes the verified email the token carries.
  const token = await issuer.customer(id, email);
  await customer.clients
    .client(CustomerService)
    .registerCustomer({ email, givenName: "Ada", familyName: "Lovelace" }, bearer(token));
  return { id, token, email };
}

describe("npm run events -- tail", () => {
  it("with --all prints events already in the stream, decoded, with subject and CloudEvents attributes", async () => {
    const c = await register();
    await waitForOutboxEmpty(customer.database.url);
    const tail = spawnTail(`${customer.streams.subjectPrefix}.>`, "--all");
    const rec = await tail.line((r) => r.customer_id === c.id);
    expect(rec).toMatchObject({
      subject: `${customer.streams.subjectPrefix}.registered.${c.id}`,
      type: "customer.v1.CustomerRegistered",
      source: "customer-service",
      event: {
        customer: { customerId: c.id, email: c.email, givenName: "Ada", familyName: "Lovelace", version: "1" },
      },
    });
    expect(rec.seq).toEqual(expect.any(Number));
    // Signed by the customer service, checked against its published event keys.
    expect(rec).toMatchObject({ verified: true, signature: expect.any(String) });
    expect((rec.event as { eventId: string }).eventId).toBe(rec.id);
    expect(new Date(String(rec.time)).toISOString()).toBe(rec.time);
    tail.child.kill("SIGINT");
    expect(await tail.exit()).toBe(0);
  });

  it("by default prints only new events, from both services' subjects", async () => {
    const old = await register();
    await waitForOutboxEmpty(customer.database.url);
    const tail = spawnTail(`${customer.streams.subjectPrefix}.>`, `${identity.streams.subjectPrefix}.>`);
    await untilStderr(tail, 2);

    await customer.clients
      .client(CustomerService)
      .updateCustomer(
        { customer: { customerId: old.id, familyName: "Byron" }, updateMask: { paths: ["family_name"] } },
        bearer(old.token),
      );
    const email = `${randomUUID().slice(0, 8)}@example.com`;
    const auth = identity.clients.client(AuthService);
    const { customerId, tokens } = await signUpByMail(auth, identity.env.IDENTITY_MAILBOX_DIR ?? "", {
      email,
      password: "correct horse battery staple",
    });
    await auth.authenticateCustomer({ email, password: "correct horse battery staple" });
    await auth.revokeToken({ token: tokens?.refreshToken ?? "" });

    const updated = await tail.line((r) => r.type === "customer.v1.CustomerUpdated");
    expect(updated).toMatchObject({
      subject: `${customer.streams.subjectPrefix}.updated.${old.id}`,
      event: { customer: { customerId: old.id, familyName: "Byron", version: "2" }, updateMask: "familyName" },
    });
    const authenticated = await tail.line((r) => r.type === "identity.v1.CustomerAuthenticated");
    expect(authenticated).toMatchObject({
      subject: `${identity.streams.subjectPrefix}.customer.authenticated.${customerId}`,
      source: "identity-service",
      event: { customerId, method: "AUTHENTICATION_METHOD_PASSWORD" },
    });
    const revoked = await tail.line((r) => r.type === "identity.v1.TokensRevoked");
    expect(revoked).toMatchObject({
      subject: `${identity.streams.subjectPrefix}.token.revoked.${customerId}`,
      customer_id: customerId,
      event: { customerId, sessionIds: [expect.any(String)], reason: "TOKEN_REVOCATION_REASON_REVOKED" },
    });
    // The registration happened before the tail started.
    expect(tail.stdout.map((l) => JSON.parse(l).type)).not.toContain("customer.v1.CustomerRegistered");
    tail.child.kill("SIGINT");
    expect(await tail.exit()).toBe(0);
  });

  it("explains a bad command and exits 64", async () => {
    const child = spawn(process.execPath, ["--conditions=source", "--import", "tsx", "scripts/events.ts", "tial"], {
      cwd: ROOT,
      stdio: ["ignore", "ignore", "pipe"],
    });
    children.push(child);
    let err = "";
    child.stderr?.on("data", (d) => {
      err += String(d);
    });
    const code = await new Promise((resolve) => child.once("exit", resolve));
    expect(code).toBe(64);
    expect(err).toContain("usage: npm run events -- tail [subject…] [--all]");
  });
});
