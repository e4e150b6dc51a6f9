/**
 * What the fault and load tests share: loads of registrations and updates
 * (and of sign-ins) that record every acknowledged command, reading a stream
 * back as decoded events, the checks that the two agree (each acknowledged
 * command has exactly its event, versions consecutive and in order per
 * customer, no event twice), and the customer service as a child process.
 */

import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { fromBinary } from "@bufbuild/protobuf";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import { CustomerRegisteredSchema, CustomerUpdatedSchema } from "@customer-platform/gen/customer/v1/events_pb.js";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { CustomerAuthenticatedSchema } from "@customer-platform/gen/identity/v1/events_pb.js";
import { CE_TYPE } from "@customer-platform/sdk/cloudevents";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { expect } from "vitest";
import { bearer } from "../support/clients.js";
import type { TestIssuer } from "../support/issuer.js";
import { freePort } from "../support/nats.js";

export const REGISTERED = CustomerRegisteredSchema.typeName;
export const AUTHENTICATED = CustomerAuthenticatedSchema.typeName;

/** One message of a stream, decoded. */
export interface StreamEvent {
  seq: number;
  eventId: string;
  /** `Nats-Msg-Id`, which must equal eventId. */
  msgId: string;
  type: string;
  customerId: string;
  /** 0 for CustomerAuthenticated. */
  version: number;
  /** The profile's family name after the change ("" for CustomerAuthenticated). */
  familyName: string;
}

/** Polls until check() is truthy; throws with message after timeoutMs. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  timeoutMs: number,
  message: string,
): Promise<Exclude<T, undefined | null | false>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as Exclude<T, undefined | null | false>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${message}`);
    await sleep(50);
  }
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The number of messages in stream, or undefined while it does not exist. */
export async function streamCount(natsUrl: string, stream: string): Promise<number | undefined> {
  const nc = await connect({ servers: natsUrl, reconnect: false });
  try {
    const jsm = await jetstreamManager(nc);
    return (await jsm.streams.info(stream)).state.messages;
  } catch {
    return undefined;
  } finally {
    await nc.close();
  }
}

/** Every message of stream, in stream order, read by an ordered consumer on its own connection. */
export async function readStream(natsUrl: string, stream: string): Promise<StreamEvent[]> {
  const nc = await connect({ servers: natsUrl });
  try {
    const total = (await (await jetstreamManager(nc)).streams.info(stream)).state.messages;
    const events: StreamEvent[] = [];
    if (total === 0) return events;
    const consumer = await jetstream(nc).consumers.get(stream);
    const messages = await consumer.consume({ max_messages: 512 });
    for await (const msg of messages) {
      const type = msg.headers?.get(CE_TYPE) ?? "";
      const base = { seq: msg.seq, msgId: msg.headers?.get("Nats-Msg-Id") ?? "", type };
      if (type === AUTHENTICATED) {
        const e = fromBinary(CustomerAuthenticatedSchema, msg.data);
        events.push({ ...base, eventId: e.eventId, customerId: e.customerId, version: 0, familyName: "" });
      } else {
        const e =
          type === REGISTERED
            ? fromBinary(CustomerRegisteredSchema, msg.data)
            : fromBinary(CustomerUpdatedSchema, msg.data);
        const c = e.customer;
        events.push({
          ...base,
          eventId: e.eventId,
          customerId: c?.customerId ?? "",
          version: Number(c?.version),
          familyName: c?.familyName ?? "",
        });
      }
      if (events.length >= total) break;
    }
    await messages.close();
    return events;
  } finally {
    await nc.close();
  }
}

/** What a load run saw: every acknowledged command and every failure. */
export interface Ledger {
  /** Customer ids whose RegisterCustomer answered OK. */
  readonly registered: Set<string>;
  /** Per customer, the versions its successful UpdateCustomer calls answered with. */
  readonly updated: Map<string, number[]>;
  /** Failed calls by code name, e.g. { Unavailable: 12 }. */
  readonly failures: Record<string, number>;
  /** Unexpected failures (not a ConnectError, or a code the caller did not allow). */
  readonly unexpected: string[];
  /** Calls that took longer than the load's bound. */
  readonly slow: Array<{ call: string; ms: number }>;
  /** When each failed call failed (performance.now()). */
  readonly failedAt: number[];
  /** Acknowledged commands: registrations plus updates. */
  commands(): number;
  calls: number;
}

export function createLedger(): Ledger {
  const ledger: Ledger = {
    registered: new Set(),
    updated: new Map(),
    failures: {},
    unexpected: [],
    slow: [],
    failedAt: [],
    calls: 0,
    commands() {
      let n = ledger.registered.size;
      for (const versions of ledger.updated.values()) n += versions.length;
      return n;
    },
  };
  return ledger;
}

export interface CustomerLoadOptions {
  client: () => Client<typeof CustomerService>;
  issuer: TestIssuer;
  /** Concurrent workers; each registers a customer, then updates it `updatesPerCustomer` times. */
  workers: number;
  updatesPerCustomer: number;
  /** Workers stop starting calls once this returns true. */
  done: () => boolean;
  /** Codes a call may fail with without being unexpected (default: none). */
  allowed?: Code[];
  /** A call slower than this is recorded in `slow`. */
  slowMs?: number;
  /** Deadline of each call (a hang fails as DEADLINE_EXCEEDED). */
  timeoutMs?: number;
  /** Also read the profile after each update. */
  reads?: boolean;
  /** Pause after a failed call, so a down dependency is not hammered. */
  backoffMs?: number;
  ledger?: Ledger;
}

/**
 * Runs registrations and updates from several workers until done(). Every
 * update changes family_name, so each successful one is a new version.
 */
export async function runCustomerLoad(opts: CustomerLoadOptions): Promise<Ledger> {
  const ledger = opts.ledger ?? createLedger();
  const allowed = new Set(opts.allowed ?? []);
  const slowMs = opts.slowMs ?? Number.POSITIVE_INFINITY;
  const callOpts = (token: string) => ({ ...bearer(token), timeoutMs: opts.timeoutMs ?? 15_000 });

  const attempt = async <T>(name: string, call: () => Promise<T>): Promise<T | undefined> => {
    const start = performance.now();
    ledger.calls++;
    try {
      return await call();
    } catch (err) {
      const code = err instanceof ConnectError ? Code[err.code] : "NotAConnectError";
      ledger.failures[code] = (ledger.failures[code] ?? 0) + 1;
      ledger.failedAt.push(performance.now());
      if (!(err instanceof ConnectError) || !allowed.has(err.code)) {
        ledger.unexpected.push(`${name}: ${code}: ${err instanceof Error ? err.message : String(err)}`);
      }
      if (opts.backoffMs) await sleep(opts.backoffMs);
      return undefined;
    } finally {
      const ms = performance.now() - start;
      if (ms > slowMs) ledger.slow.push({ call: name, ms: Math.round(ms) });
    }
  };

  const worker = async (w: number) => {
    for (let n = 0; !opts.done(); n++) {
      const id = randomUUID();
      const token = await opts.issuer.customer(id);
      const registered = await attempt(`RegisterCustomer ${id}`, () =>
        opts
          .client()
          .registerCustomer(
            { email: `load.${id}@example.com`, givenName: `Worker${w}`, familyName: "v1" },
            callOpts(token),
          ),
      );
      if (!registered) continue;
      // Workers record, never throw: a load's promise settles only when it is done.
      if (registered.customer?.version !== 1n) ledger.unexpected.push(`RegisterCustomer ${id}: not version 1`);
      ledger.registered.add(id);
      const versions: number[] = [];
      ledger.updated.set(id, versions);
      for (let u = 0; u < opts.updatesPerCustomer && !opts.done(); u++) {
        const res = await attempt(`UpdateCustomer ${id}`, () =>
          opts
            .client()
            .updateCustomer(
              { customer: { customerId: id, familyName: `n${n}u${u}` }, updateMask: { paths: ["family_name"] } },
              callOpts(token),
            ),
        );
        if (res) versions.push(Number(res.customer?.version));
        if (opts.reads) {
          await attempt(`GetCustomer ${id}`, () => opts.client().getCustomer({ customerId: id }, callOpts(token)));
        }
      }
    }
  };
  await Promise.all(Array.from({ length: opts.workers }, (_, w) => worker(w)));
  return ledger;
}

/**
 * Checks the customer events of a stream against what was acknowledged:
 * - no event twice (by event id), and `Nats-Msg-Id` is the event id;
 * - per customer, versions 1, 2, … in stream order: CustomerRegistered v1, then CustomerUpdated;
 * - every acknowledged registration has its v1 event, every acknowledged update its version;
 * - with `exact`, no customer has events beyond what was acknowledged (nothing failed ambiguously).
 * Returns the highest version per customer in the stream.
 */
export function checkCustomerEvents(
  events: readonly StreamEvent[],
  ledger: Ledger,
  opts: { exact: boolean },
): Map<string, number> {
  const ids = new Set(events.map((e) => e.eventId));
  expect(ids.size, "an event was published twice").toBe(events.length);
  expect(events.filter((e) => e.msgId !== e.eventId)).toEqual([]);

  const perCustomer = new Map<string, StreamEvent[]>();
  for (const e of events) {
    const list = perCustomer.get(e.customerId) ?? [];
    list.push(e);
    perCustomer.set(e.customerId, list);
  }
  const latest = new Map<string, number>();
  const misordered: string[] = [];
  for (const [id, list] of perCustomer) {
    const versions = list.map((e) => e.version);
    const types = list.map((e) => (e.type === REGISTERED ? "R" : "U")).join("");
    const consecutive = versions.every((v, i) => v === i + 1);
    if (!consecutive || !/^RU*$/.test(types)) misordered.push(`${id}: ${versions.join(",")} ${types}`);
    latest.set(id, versions.length);
  }
  expect(misordered, "per-customer versions not 1, 2, … in stream order").toEqual([]);

  const missing: string[] = [];
  for (const id of ledger.registered) {
    const versions = ledger.updated.get(id) ?? [];
    const top = latest.get(id) ?? 0;
    if (top < 1) missing.push(`${id}: registration`);
    for (const v of versions) if (v > top) missing.push(`${id}: v${v}`);
    if (opts.exact && top !== 1 + versions.length) {
      missing.push(`${id}: ${top} events in the stream, ${1 + versions.length} commands acknowledged`);
    }
    // Each acknowledged update got a new version, above the previous one (consecutive when nothing failed).
    const increasing = versions.every((v, i) => v > (i === 0 ? 1 : (versions[i - 1] ?? 0)));
    const consecutive = versions.every((v, i) => v === i + 2);
    if (!increasing || (opts.exact && !consecutive)) missing.push(`${id}: acknowledged versions ${versions.join(",")}`);
  }
  expect(missing, "acknowledged commands without their event").toEqual([]);
  if (opts.exact) {
    const strangers = [...perCustomer.keys()].filter((id) => !ledger.registered.has(id));
    expect(strangers, "events of customers never acknowledged").toEqual([]);
  }
  return latest;
}

/** What an identity load saw: successful sign-ins per customer, and failures. */
export interface SignInLedger {
  /** Per customer id, how many AuthenticateCustomer calls answered OK. */
  readonly signIns: Map<string, number>;
  readonly failures: Record<string, number>;
  readonly unexpected: string[];
  /** Successful sign-ins in all. */
  total(): number;
  calls: number;
}

export interface IdentityLoadOptions {
  client: () => Client<typeof AuthService>;
  workers: number;
  /** Sign-ins per created login before the worker signs up the next one. */
  signInsPerLogin: number;
  done: () => boolean;
  timeoutMs?: number;
}

/**
 * Each worker signs up a login (CreateCredentials, no event), then signs in
 * with it `signInsPerLogin` times (one CustomerAuthenticated each), one call
 * at a time so the login throttle never counts concurrent attempts.
 */
export async function runIdentityLoad(opts: IdentityLoadOptions): Promise<SignInLedger> {
  const ledger: SignInLedger = {
    signIns: new Map(),
    failures: {},
    unexpected: [],
    calls: 0,
    total() {
      let n = 0;
      for (const c of ledger.signIns.values()) n += c;
      return n;
    },
  };
  const callOpts = { timeoutMs: opts.timeoutMs ?? 15_000 };
  const attempt = async <T>(name: string, call: () => Promise<T>): Promise<T | undefined> => {
    ledger.calls++;
    try {
      return await call();
    } catch (err) {
      const code = err instanceof ConnectError ? Code[err.code] : "NotAConnectError";
      ledger.failures[code] = (ledger.failures[code] ?? 0) + 1;
      ledger.unexpected.push(`${name}: ${code}: ${err instanceof Error ? err.message : String(err)}`);
      return undefined;
    }
  };
  const worker = async () => {
    while (!opts.done()) {
      const email = `load.${randomUUID()}@example.com`;
      const password = `pw-${randomUUID()}`;
      const created = await attempt("CreateCredentials", () =>
        opts.client().createCredentials({ email, password }, callOpts),
      );
      if (!created) continue;
      ledger.signIns.set(created.customerId, 0);
      for (let i = 0; i < opts.signInsPerLogin && !opts.done(); i++) {
        const res = await attempt("AuthenticateCustomer", () =>
          opts.client().authenticateCustomer({ email, password }, callOpts),
        );
        if (res && res.customerId !== created.customerId) {
          ledger.unexpected.push(
            `AuthenticateCustomer: customer ${res.customerId}, signed up as ${created.customerId}`,
          );
        } else if (res) {
          ledger.signIns.set(res.customerId, (ledger.signIns.get(res.customerId) ?? 0) + 1);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: opts.workers }, worker));
  return ledger;
}

/**
 * Checks CustomerAuthenticated events against the sign-ins acknowledged:
 * none twice, exactly one per successful sign-in, per customer.
 */
export function checkSignInEvents(events: readonly StreamEvent[], ledger: SignInLedger): void {
  expect(new Set(events.map((e) => e.eventId)).size, "an event was published twice").toBe(events.length);
  expect(events.filter((e) => e.msgId !== e.eventId)).toEqual([]);
  expect(events.filter((e) => e.type !== AUTHENTICATED)).toEqual([]);
  const perCustomer = new Map<string, number>();
  for (const e of events) perCustomer.set(e.customerId, (perCustomer.get(e.customerId) ?? 0) + 1);
  const expected = new Map([...ledger.signIns].filter(([, n]) => n > 0));
  expect(perCustomer).toEqual(expected);
}

/** The customer service running as a child process (`npx tsx customer-service/src/main.ts`). */
export interface ChildService {
  readonly url: string;
  readonly port: number;
  /** The pid of the node process that serves (npx and tsx run it as a grandchild). */
  readonly pid: number;
  /** The last lines it wrote to stdout and stderr. */
  readonly output: string[];
  /** Resident set size of the serving process in KiB (/proc/<pid>/status VmRSS). */
  rssKib(): number;
  /** With `memoryProbe`: heapUsed and rss in bytes right after a full garbage collection. */
  memoryAfterGc(): Promise<{ heapUsed: number; rss: number }>;
  /** SIGKILL to the whole process group: npx, tsx and the server die at once. */
  kill(): Promise<void>;
  /** SIGTERM to the server alone (a graceful stop), then waits for the group to end. */
  stop(timeoutMs?: number): Promise<void>;
}

const REPO = fileURLToPath(new URL("../..", import.meta.url));

const MEMORY_PROBE = new URL("./memory-probe.mjs", import.meta.url).href;

/**
 * Starts the customer service as a child process on a free port and waits
 * until /readyz says SERVING. With `memoryProbe`, memory-probe.mjs is
 * preloaded (and gc exposed) for memoryAfterGc().
 */
export async function spawnCustomerService(
  env: Record<string, string>,
  opts: { memoryProbe?: boolean } = {},
): Promise<ChildService> {
  const port = await freePort();
  const nodeOptions = opts.memoryProbe ? { NODE_OPTIONS: `--expose-gc --import=${MEMORY_PROBE}` } : {};
  const child = spawn("npx", ["tsx", "--conditions=source", "customer-service/src/main.ts"], {
    cwd: REPO,
    env: {
      ...process.env,
      ...nodeOptions,
      CUSTOMER_HOST: "127.0.0.1",
      CUSTOMER_PORT: String(port),
      LOG_LEVEL: "warn",
      ...env,
    },
    // Its own process group, so one signal reaches npx, tsx and the server alike.
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const group = child.pid;
  if (group === undefined) throw new Error("could not spawn the customer service");
  const output: string[] = [];
  const lineListeners = new Set<(line: string) => void>();
  const lines = () => {
    let partial = "";
    return (chunk: Buffer) => {
      const parts = (partial + chunk.toString("utf8")).split("\n");
      partial = parts.pop() ?? "";
      for (const line of parts.filter(Boolean)) {
        output.push(line);
        for (const listener of lineListeners) listener(line);
      }
      output.splice(0, Math.max(0, output.length - 200));
    };
  };
  child.stdout.on("data", lines());
  child.stderr.on("data", lines());
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const url = `http://127.0.0.1:${port}`;

  const groupAlive = () => processesInGroup(group).some((p) => p.state !== "Z");
  const waitGone = async (timeoutMs: number) => {
    await waitFor(() => !groupAlive(), timeoutMs, `process group ${group} ends`);
    await exited;
  };
  const kill = async () => {
    try {
      process.kill(-group, "SIGKILL");
    } catch {
      // Gone already.
    }
    await waitGone(10_000);
  };
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`customer service exited:\n${output.join("\n")}`);
        const res = await fetch(`${url}/readyz`).catch(() => undefined);
        return res?.status === 200;
      },
      60_000,
      "the customer service child is ready",
    );
  } catch (err) {
    await kill();
    throw err;
  }
  const server = processesInGroup(group).find((p) => p.cmdline.includes("loader.mjs"));
  if (!server) {
    await kill();
    throw new Error("cannot find the serving node process");
  }
  return {
    url,
    port,
    pid: server.pid,
    output,
    rssKib() {
      const status = readFileSync(`/proc/${server.pid}/status`, "utf8");
      const m = /^VmRSS:\s+(\d+) kB$/m.exec(status);
      if (!m?.[1]) throw new Error(`no VmRSS for ${server.pid}`);
      return Number(m[1]);
    },
    memoryAfterGc() {
      // SIGUSR2 without a handler would end the process: make sure the probe has one.
      const caught = /^SigCgt:\s+([0-9a-f]+)$/m.exec(readFileSync(`/proc/${server.pid}/status`, "utf8"))?.[1];
      if (!caught || !((BigInt(`0x${caught}`) >> 11n) & 1n)) {
        return Promise.reject(new Error("the memory probe is not loaded (spawn with memoryProbe)"));
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          lineListeners.delete(listener);
          reject(new Error("no answer from the memory probe"));
        }, 10_000);
        const listener = (line: string) => {
          if (!line.startsWith('{"memoryProbe"')) return;
          clearTimeout(timer);
          lineListeners.delete(listener);
          resolve((JSON.parse(line) as { memoryProbe: { heapUsed: number; rss: number } }).memoryProbe);
        };
        lineListeners.add(listener);
        process.kill(server.pid, "SIGUSR2");
      });
    },
    kill,
    async stop(timeoutMs = 15_000) {
      // The server alone: tsx would relay a group-wide SIGTERM a second time, which means "exit now".
      try {
        process.kill(server.pid, "SIGTERM");
        await waitFor(() => !alive(server.pid), timeoutMs, "the customer service stops");
      } finally {
        await kill();
      }
    },
  };
}

interface ProcInfo {
  pid: number;
  state: string;
  cmdline: string;
}

/** The processes of a process group, from /proc. */
function processesInGroup(pgid: number): ProcInfo[] {
  const found: ProcInfo[] = [];
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      // pid (comm) state ppid pgrp …; comm may hold spaces and parentheses.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(fields[2]) !== pgid) continue;
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ");
      found.push({ pid: Number(entry), state: fields[0] ?? "", cmdline });
    } catch {
      // Exited while we looked.
    }
  }
  return found;
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}
