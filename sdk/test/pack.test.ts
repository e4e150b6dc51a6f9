/**
 * The SDK as another team gets it: `npm pack` of gen and sdk (to a temp dir,
 * never into the tree), `npm install` of the two tarballs and the peers in a
 * separate project outside the repository, a TypeScript program there
 * compiled against the packages' own type declarations and run with plain
 * `node` (no `source` condition, so the built dist/ is what runs). The
 * program consumes a real event from a private stream on the local NATS and
 * verifies a real access token of a running identity service, and sees a
 * revoked one refused. The tarballs hold no tarball and no test file.
 * (Packed from the build `npm run build` made, not by the prepack script: see pack().)
 */
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildProblem } from "../../scripts/build.js";
import { signUpByMail } from "../../test/support/mailbox.js";
import { deleteStreams, sharedNatsUrl, uniqueStreamNames } from "../../test/support/nats.js";
import { reservePort } from "../../test/support/ports.js";
import { type RunningIdentityService, startIdentityService } from "../../test/support/services.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
const run = promisify(execFile);
// Plain node: nothing of the test runner's options (a `source` condition would hide a broken dist/).
const env = { ...process.env, NODE_OPTIONS: "" };

const PROGRAM = `
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import { create, toBinary } from "@bufbuild/protobuf";
import { CustomerRegisteredSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import {
  CE_SIGNATURE,
  consumeEvents,
  createEventSigner,
  createEventVerifier,
  createRevocationList,
  createTokenVerifier,
  customerSubjects,
  EVENT_KEYS_PATH,
  generateEventSigningKey,
  type Logger,
  publicEventKeys,
  setCloudEventHeaders,
  signedAttributesOf,
  TokenError,
} from "@customer-platform/sdk";
import { SCOPE_CUSTOMER_READ } from "@customer-platform/sdk/scopes";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect, headers } from "@nats-io/transport-node";

const arg = (name: string): string => {
  const value = process.env[name];
  if (!value) throw new Error(name + " is not set");
  return value;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const silent: Logger = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };

const nc = await connect({ servers: arg("NATS_URL") });
try {
  // (a) An event published with the SDK's headers, subjects and signature, consumed with consumeEvents.
  const key = await generateEventSigningKey();
  const signer = await createEventSigner(key);
  const keyServer = createServer((_req, res) => res.end(JSON.stringify(publicEventKeys([key]))));
  await new Promise<void>((resolve) => keyServer.listen(0, "127.0.0.1", resolve));
  const keysUrl = "http://127.0.0.1:" + (keyServer.address() as { port: number }).port + EVENT_KEYS_PATH;
  const subjects = customerSubjects(arg("SUBJECT_PREFIX"));
  const stream = arg("STREAM");
  await (await jetstreamManager(nc)).streams.add({ name: stream, subjects: [subjects.all] });
  const customerId = randomUUID();
  const eventId = randomUUID();
  const event = create(CustomerRegisteredSchema, {
    eventId,
    customer: { customerId, email: "ada@example.com", givenName: "Ada", familyName: "Lovelace", version: 1n },
  });
  const h = setCloudEventHeaders(headers(), {
    id: eventId,
    type: CustomerRegisteredSchema.typeName,
    source: "pack-test",
    time: new Date(),
    subject: customerId,
  });
  const payload = toBinary(CustomerRegisteredSchema, event);
  h.set(CE_SIGNATURE, await signer.sign(payload, signedAttributesOf(subjects.registered(customerId), h)));
  await jetstream(nc).publish(subjects.registered(customerId), payload, { msgID: eventId, headers: h });
  let received: Record<string, unknown> | undefined;
  const consumer = await consumeEvents({
    js: jetstream(nc),
    stream,
    consumer: "pack-test",
    verifier: createEventVerifier({ trust: { "pack-test": keysUrl } }),
    handlers: {
      "customer.v1.CustomerRegistered": async (e, meta) => {
        received = { sent: eventId, id: meta.id, source: meta.source, subject: meta.subject, customerId: meta.customerId,
          email: e.customer?.email, version: String(e.customer?.version) };
      },
    },
  });
  for (let i = 0; i < 200 && !received; i++) await sleep(50);
  await consumer.stop();
  keyServer.close();

  // (b) A real access token, and a revoked one, from the running identity service.
  const revocations = createRevocationList({
    nats: nc,
    stream: arg("IDENTITY_STREAM"),
    subjectPrefix: arg("IDENTITY_PREFIX"),
    lookbackMs: 15 * 60_000,
    verifier: createEventVerifier({ trust: { "identity-service": arg("ISSUER") + EVENT_KEYS_PATH } }),
    logger: silent,
  });
  revocations.start();
  const tokens = createTokenVerifier({ jwksUrl: arg("JWKS_URL"), issuer: arg("ISSUER"), audience: "customer-service", revocations });
  const p = await tokens.verifyAuthorizationHeader("Bearer " + arg("ACCESS_TOKEN"));
  let revoked: string | undefined;
  for (let i = 0; i < 200 && !revoked; i++) {
    try {
      await tokens.verify(arg("REVOKED_TOKEN"));
      await sleep(50);
    } catch (err) {
      if (!(err instanceof TokenError)) throw err;
      revoked = err.reason + ": " + err.message;
    }
  }
  const malformed = await tokens.verifyAuthorizationHeader("Basic Zm9v").catch((e: unknown) => (e as TokenError).reason);
  await revocations.stop();
  console.log(JSON.stringify({
    received,
    principal: { kind: p.kind, subject: p.subject, clientId: p.clientId, scopes: [...p.scopes], session: typeof p.sessionId, email: p.email },
    revoked,
    malformed,
    scope: SCOPE_CUSTOMER_READ,
  }));
} finally {
  await nc.close();
}
`;

let tmp: string;
let identity: RunningIdentityService;
const { stream, subjectPrefix } = uniqueStreamNames("customer");

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), "sdk-pack-"));
  const port = await reservePort();
  identity = await startIdentityService({ IDENTITY_ISSUER: `http://127.0.0.1:${port.port}` }, { port });
});

afterAll(async () => {
  await identity?.close();
  await deleteStreams(sharedNatsUrl, stream);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/**
 * `npm pack` of a workspace package into dest; the tarball's path. Without
 * the package's prepack script: it rebuilds dist/ from scratch (deleting it
 * first), and other test files run the compiled services from that dist/ at
 * the same time. It packs the dist/ that `npm run build` made (the same
 * tsconfig.build.json; `npm test` builds first), checked current here.
 */
async function pack(pkg: string, dest: string): Promise<string> {
  const problem = buildProblem();
  if (problem) throw new Error(problem);
  const { stdout } = await run("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", dest], {
    cwd: join(ROOT, pkg),
    env,
  });
  // A prepack script's output comes first on stdout.
  const [result] = JSON.parse(stdout.slice(stdout.indexOf("[\n"))) as Array<{ filename: string }>;
  if (!result) throw new Error(`npm pack ${pkg} printed no result`);
  return join(dest, result.filename);
}

/** The paths inside a tarball, without npm's `package/` prefix. */
async function entries(tarball: string): Promise<string[]> {
  const { stdout } = await run("tar", ["-tzf", tarball]);
  return stdout
    .split("\n")
    .filter(Boolean)
    .map((p) => p.replace(/^package\//, ""));
}

describe("the SDK installed from its tarball in another project", () => {
  it("consumes a real event and verifies real access tokens, run with plain node", async () => {
    const tarballs = join(tmp, "tarballs");
    mkdirSync(tarballs);
    const gen = await pack("gen", tarballs);
    const sdk = await pack("sdk", tarballs);
    // Packing leaves nothing in the tree for the next pack to ship.
    for (const pkg of ["gen", "sdk"])
      expect(readdirSync(join(ROOT, pkg)).filter((f) => f.endsWith(".tgz"))).toEqual([]);

    const genFiles = await entries(gen);
    const sdkFiles = await entries(sdk);
    for (const files of [genFiles, sdkFiles]) {
      expect(files.filter((f) => f.endsWith(".tgz") || /(^|\/)test\/|\.test\./.test(f))).toEqual([]);
      expect(files).toContain("package.json");
    }
    expect(genFiles.filter((f) => !/_pb\.(js|d\.ts)$/.test(f))).toEqual(["package.json"]);
    expect(genFiles).toContain("customer/v1/events_pb.js");
    // dist/ runs; src/ is there so that every export condition, `source` included, names a file.
    expect(sdkFiles.filter((f) => !/^(dist\/[a-z-]+\.(js|d\.ts)|src\/[a-z-]+\.ts)$/.test(f)).sort()).toEqual([
      "README.md",
      "package.json",
    ]);
    const sdkExports = Object.values(
      (JSON.parse(readFileSync(join(ROOT, "sdk/package.json"), "utf8")) as { exports: Record<string, object> }).exports,
    ).flatMap((conditions) => Object.values(conditions) as string[]);
    expect(sdkExports.map((target) => target.replace(/^\.\//, "")).filter((f) => !sdkFiles.includes(f))).toEqual([]);
    expect(sdkFiles).toEqual(expect.arrayContaining(["dist/index.js", "dist/index.d.ts", "dist/tokens.js"]));

    // A project of its own, outside the repository: nothing resolves to the workspace.
    const app = join(tmp, "app");
    mkdirSync(app);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "orders-app", private: true, type: "module" }));
    const root = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as {
      dependencies: Record<string, string>;
      devDependencies: Record<string, string>;
    };
    const peers = ["@bufbuild/protobuf", "@bufbuild/protovalidate", "@nats-io/jetstream", "@nats-io/transport-node"];
    await run(
      "npm",
      [
        "install",
        "--prefer-offline",
        "--no-audit",
        "--no-fund",
        gen,
        sdk,
        ...peers.map((p) => `${p}@${root.dependencies[p]}`),
        `@types/node@${root.devDependencies["@types/node"]}`,
      ],
      { cwd: app, env },
    );

    // Compiled against the installed packages' declarations (types condition, no `source`).
    writeFileSync(join(app, "main.ts"), PROGRAM);
    writeFileSync(
      join(app, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          target: "ES2022",
          module: "NodeNext",
          moduleResolution: "NodeNext",
          strict: true,
          exactOptionalPropertyTypes: true,
          verbatimModuleSyntax: true,
          skipLibCheck: true,
          types: ["node"],
          outDir: "out",
        },
        files: ["main.ts"],
      }),
    );
    const tsc = join(ROOT, "node_modules/typescript/bin/tsc");
    await run(process.execPath, [tsc, "-p", "tsconfig.json"], { cwd: app, env }).catch((err: { stdout?: string }) => {
      throw new Error(`the program does not compile against the packages:\n${err.stdout}`);
    });

    const auth = identity.clients.client(AuthService);
    const password = "correct horse battery staple";
    // Signed up as a customer does (the mailed code): the token carries the verified email.
    const mailbox = identity.env.IDENTITY_MAILBOX_DIR ?? "";
    const customerEmail = `${randomUUID().slice(0, 8)}@example.com`;
    const customer = await signUpByMail(auth, mailbox, { email: customerEmail, password });
    const other = await signUpByMail(auth, mailbox, { email: `${randomUUID().slice(0, 8)}@example.com`, password });
    const revokedToken = other.tokens?.accessToken ?? "";
    await auth.revokeToken({ token: revokedToken });

    const { stdout } = await run(process.execPath, ["out/main.js"], {
      cwd: app,
      timeout: 30_000,
      env: {
        ...env,
        NATS_URL: sharedNatsUrl,
        STREAM: stream,
        SUBJECT_PREFIX: subjectPrefix,
        IDENTITY_STREAM: identity.streams.stream,
        IDENTITY_PREFIX: identity.streams.subjectPrefix,
        ISSUER: identity.env.IDENTITY_ISSUER ?? "",
        JWKS_URL: `${identity.env.IDENTITY_ISSUER}/.well-known/jwks.json`,
        ACCESS_TOKEN: customer.tokens?.accessToken ?? "",
        REVOKED_TOKEN: revokedToken,
      },
    });
    const out = JSON.parse(stdout) as Record<string, { sent?: string } & Record<string, unknown>>;
    expect(out).toEqual({
      received: {
        sent: expect.any(String),
        id: out.received?.sent,
        source: "pack-test",
        subject: expect.stringMatching(new RegExp(`^${subjectPrefix.replace(".", "\\.")}\\.registered\\.`)),
        customerId: expect.any(String),
        email: "ada@example.com",
        version: "1",
      },
      principal: {
        kind: "customer",
        subject: customer.customerId,
        clientId: "first-party",
        scopes: ["openid", "profile", "customer:self"],
        session: "string",
        email: customerEmail,
      },
      revoked: "revoked: access token revoked",
      malformed: "malformed",
      scope: "customer:read",
    });
  }, 120_000);
});
