/**
 * The README's walkthrough, run as written: the shell block between the
 * `walkthrough` markers is taken from README.md and run by bash against both
 * services (real PostgreSQL and NATS), with only the two base URLs pointed at
 * this test's ports and the mailbox command at its identity service's dev
 * mailbox (IDENTITY_MAILBOX_DIR, as `npm start` would have it under .data/). Meanwhile `npm run events -- tail` watches this test's
 * subjects, as the README tells a reader to do in a second terminal.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Platform, startPlatform } from "./support/platform.js";
import { type Finished, runToEnd } from "./support/processes.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

/** The walkthrough's shell commands, exactly as README.md shows them. */
function walkthrough(): string {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const block = /<!-- walkthrough:start -->\s*```sh\n([\s\S]*?)```\s*<!-- walkthrough:end -->/.exec(readme);
  if (!block?.[1]) throw new Error("README.md has no walkthrough block between the markers");
  return block[1];
}

function run(command: string, args: string[], extra: Record<string, string> = {}): Promise<Finished> {
  // A clean shell: no startup files (BASH_ENV), whatever the machine's setup.
  const { BASH_ENV: _, ENV: __, ...env } = process.env;
  return runToEnd(command, args, { ...env, ...extra });
}

describe("README walkthrough", () => {
  let platform: Platform;
  let tail: ChildProcess | undefined;
  const tailed: string[] = [];

  beforeAll(async () => {
    platform = await startPlatform();
  });

  afterAll(async () => {
    // npm runs the CLI in a child of its own: stop the whole process group.
    if (tail?.pid && tail.exitCode === null) process.kill(-tail.pid, "SIGTERM");
    await platform?.close();
  });

  it("runs as pasted: sign up with the mailed code, register, sign in, get, update; the events tail shows every event", async () => {
    const { customer, identity } = platform;
    // Watch first, as the README says: new events only, on this test's subjects.
    tail = spawn(
      "npm",
      [
        "run",
        "--silent",
        "events",
        "--",
        "tail",
        `${customer.streams.subjectPrefix}.>`,
        `${identity.streams.subjectPrefix}.>`,
      ],
      { cwd: ROOT, env: { ...process.env, NATS_URL: customer.natsUrl }, detached: true },
    );
    let tailErr = "";
    tail.stderr?.on("data", (d: Buffer) => {
      tailErr += d;
    });
    let buffered = "";
    tail.stdout?.on("data", (d: Buffer) => {
      buffered += d;
      const lines = buffered.split("\n");
      buffered = lines.pop() ?? "";
      tailed.push(...lines.filter(Boolean));
    });
    // It says so on stderr once it tails each subject (the services create their streams at start).
    await expect.poll(() => tailErr.match(/events: tailing /g)?.length ?? 0, { timeout: 20_000 }).toBe(2);

    const script = walkthrough()
      .replaceAll("http://127.0.0.1:8081", identity.url)
      .replaceAll("http://127.0.0.1:8080", customer.url);
    expect(script).toContain(identity.url);
    expect(script).toContain(customer.url);

    const out = await run("bash", ["--norc", "--noprofile", "-euo", "pipefail", "-c", script], {
      IDENTITY_MAILBOX_DIR: identity.env.IDENTITY_MAILBOX_DIR ?? "",
    });
    expect(out.stderr).toBe("");
    expect(out.code).toBe(0);

    // --list-methods, StartSignUp's empty answer, then the answers of RegisterCustomer, GetCustomer and UpdateCustomer.
    expect(out.stdout).toContain("identity.v1.AuthService/AuthenticateCustomer");
    expect(out.stdout).toMatch(/^\{\}$/m);
    const answers = [...out.stdout.matchAll(/^\{\n[\s\S]*?^\}$/gm)].map(
      (m) => JSON.parse(m[0]) as { customer: Record<string, string> },
    );
    expect(answers).toHaveLength(3);
    const [registered, read, updated] = answers;
    expect(registered?.customer).toMatchObject({ email: "ada@example.com", givenName: "Ada", version: "1" });
    const customerId = registered?.customer.customerId ?? "";
    expect(read?.customer).toMatchObject({ customerId, givenName: "Ada", familyName: "Lovelace", version: "1" });
    expect(updated?.customer).toMatchObject({ customerId, givenName: "Augusta", familyName: "Lovelace", version: "2" });

    // The second terminal: one line per event, decoded.
    await expect
      .poll(() => tailed.map((l) => (JSON.parse(l) as { type: string }).type), { timeout: 15_000 })
      .toEqual(
        expect.arrayContaining([
          "identity.v1.CustomerEmailVerified",
          "customer.v1.CustomerRegistered",
          "identity.v1.CustomerAuthenticated",
          "customer.v1.CustomerUpdated",
        ]),
      );
    const updateLine = tailed
      .map((l) => JSON.parse(l) as { type: string; customer_id: string; event: { customer: { version: string } } })
      .find((l) => l.type === "customer.v1.CustomerUpdated");
    expect(updateLine?.customer_id).toBe(customerId);
    expect(updateLine?.event.customer.version).toBe("2");
  }, 90_000);
});
