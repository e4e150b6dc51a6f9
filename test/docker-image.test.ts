/**
 * The production images without a Docker engine: each image's file set is
 * rebuilt from the Dockerfile's COPY lines (with .dockerignore applied; the
 * production dependencies installed as its deps stage installs them; the
 * build stage's output taken from this repository's `npm run build`), and the
 * compiled services are started from it with its CMD, plain `node`, against
 * the real PostgreSQL and NATS.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { BUILT_PACKAGES, buildProblem } from "../scripts/build.js";
import {
  applyStages,
  dockerignore,
  parseDockerfile,
  type StageConfig,
  type StageSources,
  stageChain,
} from "./support/dockerfile.js";
import { signUpByMail } from "./support/mailbox.js";
import { deleteStreams, type StreamNames, sharedNatsUrl, uniqueStreamNames } from "./support/nats.js";
import { freePort } from "./support/ports.js";
import { createTestDatabase, type TestDatabase } from "./support/postgres.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const run = promisify(execFile);

const stages = parseDockerfile(readFileSync(join(ROOT, "Dockerfile"), "utf8"));
const ignored = dockerignore(readFileSync(join(ROOT, ".dockerignore"), "utf8"));
const tmp = mkdtempSync(join(tmpdir(), "docker-image-"));
/** What the build and deps stages hold in their WORKDIR (/app). */
const sources: StageSources = { context: ROOT, ignored, stages: { build: ROOT, deps: join(tmp, "deps") } };

/** Every file under dir, relative to it, node_modules left out. */
function files(dir: string, rel = ""): string[] {
  return readdirSync(join(dir, rel), { withFileTypes: true }).flatMap((e) => {
    const path = rel === "" ? e.name : `${rel}/${e.name}`;
    if (e.isDirectory()) return e.name === "node_modules" ? [] : files(dir, path);
    return [path];
  });
}

type Target = "customer" | "identity";
const images = new Map<Target, { dir: string; config: StageConfig }>();
/** The file set (a directory standing for its /app) and the settings of an image, made in beforeAll. */
function image(target: Target): { dir: string; config: StageConfig } {
  const made = images.get(target);
  if (!made) throw new Error(`the ${target} image was not made (see beforeAll)`);
  return made;
}

beforeAll(async () => {
  // The build stage's output is this repository's dist/: it must be there and current.
  const problem = buildProblem();
  if (problem) throw new Error(problem);
  // The deps stage: its files, then the install it runs (from the npm cache the repository's install filled).
  const deps = stageChain(stages, "deps");
  const depsConfig = applyStages(deps, { ...sources, stages: {} }, join(tmp, "deps"));
  expect(depsConfig.run.join(" && ")).toContain("npm ci --omit=dev");
  await run("npm", ["ci", "--omit=dev", "--no-audit", "--no-fund", "--prefer-offline"], {
    cwd: join(tmp, "deps"),
    timeout: 120_000,
  });
  for (const target of ["customer", "identity"] as const) {
    const dir = join(tmp, target);
    mkdirSync(dir);
    images.set(target, { dir, config: applyStages(stageChain(stages, target), sources, dir) });
  }
}, 180_000);

afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe("the build stage", () => {
  it("gets every input of `npm run build` from the build context and runs it after a full install", () => {
    const dir = join(tmp, "build");
    const config = applyStages(stageChain(stages, "build"), { ...sources, stages: {} }, dir);
    expect(config.run).toEqual(["npm ci --no-audit --no-fund", "npm run build"]);
    const copied = new Set(files(dir));
    const inputs = [
      "package.json",
      "package-lock.json",
      "tsconfig.base.json",
      "tsconfig.build.json",
      "scripts/build.ts",
      "scripts/patch-dependencies.mjs",
      "gen/package.json",
      ...BUILT_PACKAGES.flatMap((pkg) => [
        `${pkg}/tsconfig.build.json`,
        ...files(join(ROOT, pkg, "src")).map((f) => `${pkg}/src/${f}`),
      ]),
      ...["sdk", "runtime"].map((pkg) => `${pkg}/package.json`),
      // The generated code tsc compiles against (and the images run).
      ...files(join(ROOT, "gen"))
        .filter((f) => f.endsWith(".js") || f.endsWith(".d.ts"))
        .map((f) => `gen/${f}`),
    ];
    expect(inputs.filter((f) => !copied.has(f))).toEqual([]);
    // Nothing built outside the stage leaks in: dist/ comes from the stage's own build.
    expect([...copied].filter((f) => f.split("/").includes("dist"))).toEqual([]);
  });
});

describe.each(["customer", "identity"] as const)("the %s image", (target) => {
  const service = `${target}-service`;

  it("holds compiled JavaScript and production dependencies only, and runs it with plain node", () => {
    const { dir, config } = image(target);
    expect(config.cmd).toEqual(["node", `${service}/dist/main.js`]);
    const all = files(dir);
    expect(all.filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))).toEqual([]);
    expect(all).toContain(`${service}/dist/main.js`);
    expect(all).toContain(`${service}/dist/db/migrations/meta/_journal.json`);
    const other = target === "customer" ? "identity-service" : "customer-service";
    expect(all.filter((f) => f.startsWith(`${other}/`))).toEqual([]);
    for (const dev of ["tsx", "typescript", "vitest", "@biomejs", "drizzle-kit"]) {
      expect({ dev, installed: existsSync(join(dir, "node_modules", dev)) }).toEqual({ dev, installed: false });
    }
    // npm ci's postinstall patched the dependencies (scripts/patch-dependencies.mjs).
    expect(readFileSync(join(dir, "node_modules/postgres/src/queue.js"), "utf8")).toContain("xs.indexOf(x, index)");
    // The workspace packages are links into the image, as npm ci made them.
    for (const pkg of ["gen", "sdk", "runtime"]) {
      expect(realpathSync(join(dir, "node_modules/@customer-platform", pkg))).toBe(realpathSync(join(dir, pkg)));
    }
  });
});

interface Started {
  readonly url: string;
  readonly child: ChildProcess;
  readonly output: () => string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts an image's CMD in its directory with the image's ENV plus env (and PATH), waits for /readyz. */
async function startImage(target: Target, port: number, env: Record<string, string>) {
  const { dir, config } = image(target);
  const [command, ...args] = config.cmd ?? [];
  // The image's `node` is this node (same major version as NODE_VERSION in CI).
  const child = spawn(command === "node" ? process.execPath : (command as string), args, {
    cwd: dir,
    env: { PATH: process.env.PATH ?? "", ...config.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  child.stdout?.on("data", (d: Buffer) => {
    out += d;
  });
  child.stderr?.on("data", (d: Buffer) => {
    out += d;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  const url = `http://127.0.0.1:${port}`;
  const started: Started = { url, child, output: () => out, exited };
  const ready = vi.waitFor(
    async () => {
      const res = await fetch(`${url}/readyz`);
      if (!res.ok) throw new Error(`readyz ${res.status}`);
    },
    { timeout: 30_000, interval: 100 },
  );
  const died = exited.then(({ code, signal }) => {
    throw new Error(`${target} exited (${signal ?? code}) before it was ready:\n${out}`);
  });
  await Promise.race([ready, died]);
  return started;
}

describe("the images' services, started as the images start them", () => {
  let identityDb: TestDatabase;
  let customerDb: TestDatabase;
  let identityStreams: StreamNames;
  let customerStreams: StreamNames;
  const running: Started[] = [];

  beforeAll(async () => {
    [identityDb, customerDb] = await Promise.all([
      createTestDatabase("image_identity"),
      createTestDatabase("image_customer"),
    ]);
    identityStreams = uniqueStreamNames("identity");
    customerStreams = uniqueStreamNames("customer");
  });

  afterAll(async () => {
    for (const s of running) if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill("SIGKILL");
    await Promise.all(running.map((s) => s.exited));
    await identityDb?.drop();
    await customerDb?.drop();
    if (identityStreams && customerStreams) {
      await deleteStreams(sharedNatsUrl, identityStreams.stream, customerStreams.stream);
    }
  });

  it("serves a sign-up, a registration verified against the identity JWKS, and answers its HEALTHCHECK", async () => {
    const [identityPort, customerPort] = await Promise.all([freePort(), freePort()]);
    const issuer = `http://127.0.0.1:${identityPort}`;
    const mailbox = join(tmp, "mailbox");
    const identity = await startImage("identity", identityPort, {
      IDENTITY_HOST: "127.0.0.1",
      IDENTITY_PORT: String(identityPort),
      IDENTITY_DATABASE_URL: identityDb.url,
      IDENTITY_ISSUER: issuer,
      NATS_URL: sharedNatsUrl,
      IDENTITY_STREAM: identityStreams.stream,
      IDENTITY_SUBJECT_PREFIX: identityStreams.subjectPrefix,
      // Cheap hashes keep the test fast; the OWASP defaults have their own test.
      IDENTITY_ARGON2_MEMORY_KIB: "1024",
      IDENTITY_ARGON2_ITERATIONS: "1",
      // No SMTP server: sign-up codes go to the dev mailbox, here a temporary one (not under the image's directory).
      IDENTITY_MAILBOX_DIR: mailbox,
      SHUTDOWN_GRACE_MS: "2000",
    });
    running.push(identity);
    const customer = await startImage("customer", customerPort, {
      CUSTOMER_HOST: "127.0.0.1",
      CUSTOMER_PORT: String(customerPort),
      CUSTOMER_DATABASE_URL: customerDb.url,
      IDENTITY_ISSUER: issuer,
      NATS_URL: sharedNatsUrl,
      CUSTOMER_STREAM: customerStreams.stream,
      CUSTOMER_SUBJECT_PREFIX: customerStreams.subjectPrefix,
      CUSTOMER_REVOCATION_STREAM: identityStreams.stream,
      CUSTOMER_REVOCATION_SUBJECT_PREFIX: identityStreams.subjectPrefix,
      SHUTDOWN_GRACE_MS: "2000",
    });
    running.push(customer);

    const sessions = [new Http2SessionManager(identity.url), new Http2SessionManager(customer.url)];
    try {
      const auth = createClient(
        AuthService,
        createGrpcTransport({ baseUrl: identity.url, sessionManager: sessions[0] }),
      );
      const customers = createClient(
        CustomerService,
        createGrpcTransport({ baseUrl: customer.url, sessionManager: sessions[1] }),
      );
      const email = `image-${customerStreams.stream.toLowerCase()}@example.com`;
      // The mailed-code sign-up: the email is verified, and the token carries it to the customer service.
      const signUp = await signUpByMail(auth, mailbox, { email, password: "correct horse battery staple" });
      const headers = { authorization: `Bearer ${signUp.tokens?.accessToken ?? ""}` };
      const registered = await customers.registerCustomer({ givenName: "Ada", familyName: "Lovelace" }, { headers });
      expect(registered.customer).toMatchObject({ customerId: signUp.customerId, email, givenName: "Ada" });
      const got = await customers.getCustomer({ customerId: signUp.customerId }, { headers });
      expect(got.customer).toMatchObject({ customerId: signUp.customerId, familyName: "Lovelace" });
    } finally {
      for (const s of sessions) s.abort();
    }

    // The images' HEALTHCHECK commands, run as Docker runs them: in the container's environment.
    for (const [target, started, port] of [
      ["customer", customer, customerPort],
      ["identity", identity, identityPort],
    ] as const) {
      const { config } = image(target);
      const [command, ...args] = config.healthcheck ?? [];
      const env = { PATH: process.env.PATH ?? "", ...config.env, [`${target.toUpperCase()}_PORT`]: String(port) };
      await expect(
        run(command === "node" ? process.execPath : (command as string), args, { env, timeout: 10_000 }),
      ).resolves.toBeDefined();
      expect(started.child.exitCode).toBeNull();
    }

    // SIGTERM (what `docker stop` sends) stops both cleanly.
    for (const s of [customer, identity]) {
      s.child.kill("SIGTERM");
      expect({ exit: await s.exited, output: s.output() }).toMatchObject({ exit: { code: 0, signal: null } });
    }
  }, 90_000);
});
