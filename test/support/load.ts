/**
 * Loads for fault and load tests, and the checks that what they saw agrees
 * with the stream and the database: registrations and updates (and sign-ups
 * and sign-ins) from several workers, each acknowledged command recorded in
 * a ledger; then each acknowledged command has exactly its event, versions
 * are consecutive and in order per customer, no event is published twice,
 * and the stream holds exactly the outbox.
 */
import { randomUUID } from "node:crypto";
import { type Client, Code, ConnectError } from "@connectrpc/connect";
import type { CustomerService } from "@customer-platform/gen/customer/v1/customer_service_pb.js";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type postgres from "postgres";
import { expect } from "vitest";
import { bearer } from "./clients.js";
import type { TestIssuer } from "./issuer.js";
import { AUTHENTICATED, REGISTERED, type StreamEvent } from "./streams.js";
import { sleep } from "./timing.js";

/** A load under way. */
export interface RunningLoad<L> {
  /** What it saw so far. */
  readonly ledger: L;
  /** Tells the workers to start no more calls; resolves with the ledger once the calls in flight have ended. */
  stop(): Promise<L>;
}

/** Runs workers until stop(); a worker that throws fails stop(). */
function startWorkers<L>(ledger: L, workers: number, work: (w: number, done: () => boolean) => Promise<void>) {
  let stopped = false;
  const done = () => stopped;
  const all = Promise.all(Array.from({ length: workers }, (_, w) => work(w, done))).then(() => ledger);
  // Settled by stop(); until then a failure must not count as unhandled.
  all.catch(() => {});
  return {
    ledger,
    stop() {
      stopped = true;
      return all;
    },
  };
}

/** Every call a load made: how many, and how the failed ones failed. */
export interface CallLedger {
  calls: number;
  /** Failed calls by code name, e.g. { Unavailable: 12 }. */
  readonly failures: Record<string, number>;
  /** Unexpected failures (not a ConnectError, or a code the caller did not allow). */
  readonly unexpected: string[];
  /** Calls that took longer than the load's bound. */
  readonly slow: Array<{ call: string; ms: number }>;
  /** When each failed call failed (performance.now()). */
  readonly failedAt: number[];
}

/** What a customer load saw: every acknowledged command and every failure. */
export interface Ledger extends CallLedger {
  /** Customer ids whose RegisterCustomer answered OK. */
  readonly registered: Set<string>;
  /** Per customer, the versions its successful UpdateCustomer calls answered with. */
  readonly updated: Map<string, number[]>;
  /** Acknowledged commands: registrations plus updates. */
  commands(): number;
}

/**
 * Makes calls that record themselves in ledger: a failure is counted (and is
 * unexpected unless its code is allowed), a call slower than slowMs is
 * noted, and after a failure the caller pauses backoffMs.
 */
function recorder(ledger: CallLedger, opts: { allowed?: Code[]; slowMs?: number; backoffMs?: number }) {
  const allowed = new Set(opts.allowed ?? []);
  const slowMs = opts.slowMs ?? Number.POSITIVE_INFINITY;
  return async <T>(name: string, call: () => Promise<T>): Promise<T | undefined> => {
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
}

function createLedger(): Ledger {
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
}

/**
 * Starts registrations and updates from several workers, until stop(). Every
 * update changes family_name, so each successful one is a new version.
 */
export function startCustomerLoad(opts: CustomerLoadOptions): RunningLoad<Ledger> {
  const ledger = createLedger();
  const callOpts = (token: string) => ({ ...bearer(token), timeoutMs: opts.timeoutMs ?? 15_000 });
  const attempt = recorder(ledger, opts);

  const worker = async (w: number, done: () => boolean) => {
    for (let n = 0; !done(); n++) {
      const id = randomUUID();
      const email = `load.${id}@example.com`;
      // The profile's email is the verified one the token carries.
      const token = await opts.issuer.customer(id, email);
      const registered = await attempt(`RegisterCustomer ${id}`, () =>
        opts.client().registerCustomer({ email, givenName: `Worker${w}`, familyName: "v1" }, callOpts(token)),
      );
      if (!registered) continue;
      // Workers record, never throw: a load settles only when it is stopped.
      if (registered.customer?.version !== 1n) ledger.unexpected.push(`RegisterCustomer ${id}: not version 1`);
      ledger.registered.add(id);
      const versions: number[] = [];
      ledger.updated.set(id, versions);
      for (let u = 0; u < opts.updatesPerCustomer && !done(); u++) {
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
  return startWorkers(ledger, opts.workers, worker);
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

/** What an identity load saw: successful sign-ins per customer, and failures (none is expected). */
export interface SignInLedger extends CallLedger {
  /** Per customer id, how many AuthenticateCustomer calls answered OK. */
  readonly signIns: Map<string, number>;
  /** Successful sign-ins in all. */
  total(): number;
}

export interface IdentityLoadOptions {
  client: () => Client<typeof AuthService>;
  workers: number;
  /** Sign-ins per created login before the worker signs up the next one. */
  signInsPerLogin: number;
  timeoutMs?: number;
}

/**
 * Each worker signs up a login (the deprecated CreateCredentials, on in the
 * harness: an identity without a verified email, so no event), then signs in
 * with it `signInsPerLogin` times (one CustomerAuthenticated each), one call
 * at a time so the login throttle never counts concurrent attempts.
 */
export function startIdentityLoad(opts: IdentityLoadOptions): RunningLoad<SignInLedger> {
  const ledger: SignInLedger = {
    signIns: new Map(),
    failures: {},
    unexpected: [],
    slow: [],
    failedAt: [],
    calls: 0,
    total() {
      let n = 0;
      for (const c of ledger.signIns.values()) n += c;
      return n;
    },
  };
  const callOpts = { timeoutMs: opts.timeoutMs ?? 15_000 };
  const attempt = recorder(ledger, {});
  const worker = async (_w: number, done: () => boolean) => {
    while (!done()) {
      const email = `load.${randomUUID()}@example.com`;
      const password = `pw-${randomUUID()}`;
      const created = await attempt("CreateCredentials", () =>
        opts.client().createCredentials({ email, password }, callOpts),
      );
      if (!created) continue;
      ledger.signIns.set(created.customerId, 0);
      for (let i = 0; i < opts.signInsPerLogin && !done(); i++) {
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
  return startWorkers(ledger, opts.workers, worker);
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

/**
 * The stream holds exactly the outbox: every event written is published, and
 * nothing else. (Across customers the order may differ: rows are published
 * in commit order, which need not be id order.)
 */
export async function expectStreamHoldsOutbox(events: readonly StreamEvent[], sql: postgres.Sql): Promise<void> {
  const outbox = await sql<{ event_id: string }[]>`select event_id::text as event_id from outbox`;
  expect(events.map((e) => e.eventId).sort()).toEqual(outbox.map((r) => r.event_id).sort());
}

/** The version of every stored customer, by id. */
export async function storedVersions(sql: postgres.Sql): Promise<Map<string, number>> {
  const rows = await sql<{ customer_id: string; version: number }[]>`
    select customer_id::text as customer_id, version from customers`;
  return new Map(rows.map((r) => [r.customer_id, Number(r.version)]));
}

/**
 * Every stored customer is at the version of its last event (latest, from
 * checkCustomerEvents): a call cut off mid-way either committed with its
 * event or not at all.
 */
export async function expectStoredMatchesEvents(latest: Map<string, number>, sql: postgres.Sql): Promise<void> {
  const stored = await storedVersions(sql);
  expect([...stored].filter(([id, version]) => latest.get(id) !== version)).toEqual([]);
}
