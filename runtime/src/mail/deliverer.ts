/**
 * The mail deliverer: one per service instance, sending only while it leads
 * (leader.ts, an advisory lock of its own). A leader reads the mail that is
 * due, renders each with the service's templates, hands it to the transport
 * and marks it sent the moment the server accepted it; then it waits for a
 * NOTIFY from `enqueueMail`, the next mail's retry time, or the safety-net
 * poll, whichever comes first. A follower tries the lock now and then.
 *
 * Failures: a permanent rejection (a 5xx reply), a mail that cannot be
 * rendered, and a mail older than `giveUpAfterMs` are given up and logged as
 * errors; any other failure is retried with exponential backoff and jitter
 * up to `maxRetryDelayMs`. A failure of the transport itself (server down,
 * login refused) ends the batch: the other mails wait for the same backoff
 * instead of each failing in turn. Log lines name the mail's id and
 * template, never its recipient or data.
 *
 * Sent once per message id, as far as SMTP allows: every attempt carries the
 * same Message-ID (`<row id@sender domain>`) and Date, and the row is marked
 * sent right after the server's "250 accepted". A mark that fails because
 * the database cannot be reached is retried (the mail is remembered as
 * accepted, and only marked on the next try, never sent again by this
 * process). What remains is the window between that reply and a successful
 * mark in which this process dies, is stopped past its timeout, or loses
 * its lock session: the next leader sends that mail again, with the same
 * Message-ID, which lets a mail client show it once.
 */
import { EventEmitter } from "node:events";
import { createSupervisedLoop, type StepResult, settlesWithin } from "@customer-platform/sdk/background";
import { isConnectionError } from "../db.js";
import { errMessage, type Logger } from "../logger.js";
import { MAIL_CHANNEL } from "./enqueue.js";
import { createMailLeadership, MAIL_LOCK_KEY, type MailDatabase, type MailLock, type PendingMail } from "./leader.js";
import { MailRenderError, type MailRenderer } from "./render.js";
import { classifySendError, type MailSendError, type MailTransport, type OutgoingMail } from "./transport.js";

export interface MailDelivererOptions {
  /** The service's database (the pool; the lock takes one session of it). */
  database: MailDatabase;
  transport: MailTransport;
  render: MailRenderer;
  /** The From header, e.g. `Customer Platform <no-reply@example.com>`; its domain ends every Message-ID. */
  from: string;
  logger: Logger;
  /** A mail not delivered this long after it was queued is given up; default 24 h. */
  giveUpAfterMs?: number;
  /** The retry delay after the first failure, doubling with each one (with jitter); default 5000. */
  minRetryDelayMs?: number;
  /** The longest retry delay; default 15 min. */
  maxRetryDelayMs?: number;
  /** Safety-net poll when no NOTIFY arrives; default 5000. */
  pollIntervalMs?: number;
  /** How often a follower tries the lock: every `lockRetryMs` / 2 to `lockRetryMs`; default 2000. */
  lockRetryMs?: number;
  /** Mails read per batch; default 50. */
  batchSize?: number;
  /** The advisory lock; default MAIL_LOCK_KEY. */
  lockKey?: bigint;
  /** The current time (for the give-up age); tests may pin it. */
  now?: () => number;
}

/** A mail as the deliverer's events report it: its id and template, nothing else. */
export interface MailRef {
  readonly id: string;
  readonly template: string;
}

/** What the deliverer emits. Listeners run synchronously in its loop: keep them short. */
export interface MailDelivererEvents {
  leader: [];
  follower: [info: { reason: "lock session lost" | "stopping" }];
  /** Accepted by the server and marked sent. */
  sent: [mail: MailRef];
  /** Failed; tried again after `delayMs`. */
  retry: [mail: MailRef & { reason: string; attempts: number; delayMs: number }];
  /** Given up: never tried again. */
  gaveUp: [mail: MailRef & { reason: string }];
  /** The leader found nothing due. */
  idle: [];
  stopped: [];
}

export interface MailDelivererStatus {
  readonly state: "created" | "follower" | "leader" | "stopping" | "stopped";
  /** Mails this deliverer sent since it started. */
  readonly sent: number;
  /** Failed attempts that will be retried. */
  readonly retried: number;
  readonly gaveUp: number;
  /** Failed steps (database trouble) since the last success: 0 while healthy. */
  readonly failures: number;
}

export interface MailDeliverer {
  readonly events: EventEmitter<MailDelivererEvents>;
  readonly status: MailDelivererStatus;
  /** Starts in the background; never throws, never waits for the network. */
  start(): void;
  /**
   * Stops after the mail being sent, if any (waiting up to `timeoutMs`,
   * default 10 000), releases the lock and closes the transport. Never throws.
   */
  stop(opts?: { timeoutMs?: number }): Promise<void>;
}

type State =
  | { kind: "created" }
  | { kind: "follower" }
  | { kind: "leader"; lock: MailLock }
  | { kind: "stopping"; lock: MailLock | undefined }
  | { kind: "stopped" };

/** `<id@domain>` with the domain of `from`'s address (`localhost` if it has none). */
export function messageIdFor(id: string, from: string): string {
  const domain = /@([^\s<>@]+)>?\s*$/.exec(from)?.[1] ?? "localhost";
  return `<${id}@${domain}>`;
}

/** Creates the deliverer; nothing runs until start(). */
export function createMailDeliverer(opts: MailDelivererOptions): MailDeliverer {
  const { database, transport, render, from } = opts;
  const log = opts.logger;
  const giveUpAfterMs = opts.giveUpAfterMs ?? 24 * 3600_000;
  const minRetryDelayMs = opts.minRetryDelayMs ?? 5000;
  const maxRetryDelayMs = opts.maxRetryDelayMs ?? 15 * 60_000;
  const pollIntervalMs = opts.pollIntervalMs ?? 5000;
  const lockRetryMs = opts.lockRetryMs ?? 2000;
  const batchSize = opts.batchSize ?? 50;
  const now = opts.now ?? Date.now;
  const leadership = createMailLeadership({ database, lockKey: opts.lockKey ?? MAIL_LOCK_KEY, logger: log });
  const events = new EventEmitter<MailDelivererEvents>();

  let state: State = { kind: "created" };
  const counts = { sent: 0, retried: 0, gaveUp: 0 };
  // Said once per outage of the transport (server down, login refused), and once when it is back.
  let transportDown: { since: number; mails: number } | undefined;
  let listening: { kind: "on"; unlisten: () => Promise<void> } | { kind: "off"; retryAt: number } = {
    kind: "off",
    retryAt: 0,
  };
  let stopped: Promise<void> | undefined;
  // Mails the server accepted whose mark failed (the database unreachable): marked, never sent, on the next try.
  const acceptedUnmarked = new Set<string>();

  // A listener that throws must not fail a step (and so send a mail again).
  const emit = <K extends keyof MailDelivererEvents>(name: K, ...args: MailDelivererEvents[K]) => {
    try {
      (events.emit as (name: K, ...args: MailDelivererEvents[K]) => boolean)(name, ...args);
    } catch (err) {
      log.warn({ err: errMessage(err), event: name }, "mail deliverer listener failed");
    }
  };

  const loseLock = (lock: MailLock) => {
    if (state.kind !== "leader" || state.lock !== lock) return;
    state = { kind: "follower" };
    log.warn("mail deliverer lost its lock session; following");
    emit("follower", { reason: "lock session lost" });
  };

  /** The pause after a failure numbered `attempts` (1 for the first): doubling, capped, the upper half jittered. */
  const retryDelay = (attempts: number) => {
    const ms = Math.min(maxRetryDelayMs, minRetryDelayMs * 2 ** Math.min(attempts - 1, 30));
    return ms / 2 + (Math.random() * ms) / 2;
  };

  async function listen(): Promise<void> {
    if (listening.kind === "on" || now() < listening.retryAt) return;
    try {
      listening = { kind: "on", unlisten: await database.listen(MAIL_CHANNEL, () => loop.wake()) };
    } catch (err) {
      listening = { kind: "off", retryAt: now() + pollIntervalMs };
      log.debug({ err: errMessage(err) }, "LISTEN failed");
    }
  }

  async function follow(): Promise<StepResult> {
    const lock = await leadership.tryAcquire();
    if (!lock) return lockRetryMs / 2 + (Math.random() * lockRetryMs) / 2;
    if (state.kind !== "follower") {
      await leadership.release(lock);
      return "done";
    }
    state = { kind: "leader", lock };
    log.info({ transport: transport.kind }, "mail deliverer leads");
    emit("leader");
    return 0;
  }

  /** What became of one mail: handled (sent, retried or given up), the transport is down, or the lock is gone. */
  type Outcome = { kind: "done" } | { kind: "transport down"; delayMs: number } | { kind: "lock lost" };

  async function giveUp(lock: MailLock, row: PendingMail, reason: string, attempted: boolean): Promise<Outcome> {
    if (!(await leadership.markGivenUp(lock, row.id, reason, attempted))) return { kind: "lock lost" };
    counts.gaveUp++;
    log.error(
      { mailId: row.id, template: row.template, reason, attempts: row.attempts + (attempted ? 1 : 0) },
      "mail given up",
    );
    emit("gaveUp", { id: row.id, template: row.template, reason });
    return { kind: "done" };
  }

  /** Marks an accepted mail sent; a failure to reach the database throws, and the next try only marks it. */
  async function markAccepted(lock: MailLock, row: PendingMail): Promise<Outcome> {
    acceptedUnmarked.add(row.id);
    // Marked even when stop() is under way: the server has it, so it must not go out again.
    if (!(await leadership.markSent(lock, row.id))) {
      log.warn({ mailId: row.id, template: row.template }, "mail sent but not marked: the next leader sends it again");
      return { kind: "lock lost" };
    }
    acceptedUnmarked.delete(row.id);
    counts.sent++;
    if (transportDown) {
      log.info({ outageMs: now() - transportDown.since, failures: transportDown.mails }, "mail transport is back");
      transportDown = undefined;
    }
    emit("sent", { id: row.id, template: row.template });
    return { kind: "done" };
  }

  async function deliver(lock: MailLock, row: PendingMail): Promise<Outcome> {
    if (acceptedUnmarked.has(row.id)) return markAccepted(lock, row);
    const queuedAt = new Date(row.created_at);
    const age = now() - queuedAt.getTime();
    if (age >= giveUpAfterMs) return giveUp(lock, row, `not delivered within ${giveUpAfterMs} ms`, false);
    let mail: OutgoingMail;
    try {
      const rendered = render({ template: row.template, locale: row.locale, data: row.data ?? {} });
      mail = {
        id: row.id,
        template: row.template,
        messageId: messageIdFor(row.id, from),
        from,
        to: row.recipient,
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
        locale: row.locale,
        date: queuedAt,
      };
    } catch (err) {
      // A MailRenderError's message names the template or field, never a value; any other error's is not read.
      const why = err instanceof MailRenderError ? err.message : err instanceof Error ? err.name : typeof err;
      return giveUp(lock, row, `render failed: ${why}`, true);
    }

    let failure: MailSendError | undefined;
    try {
      await transport.send(mail);
    } catch (err) {
      failure = classifySendError(err);
    }

    if (!failure) return markAccepted(lock, row);

    if (failure.permanent) return giveUp(lock, row, failure.reason, true);
    const attempts = row.attempts + 1;
    const delayMs = retryDelay(attempts);
    if (age + delayMs >= giveUpAfterMs) return giveUp(lock, row, `${failure.reason}; not delivered in time`, true);
    if (!(await leadership.markRetry(lock, row.id, failure.reason, delayMs))) return { kind: "lock lost" };
    counts.retried++;
    const fields = {
      mailId: row.id,
      template: row.template,
      reason: failure.reason,
      attempts,
      delayMs: Math.round(delayMs),
    };
    if (failure.scope === "transport") {
      if (transportDown) {
        transportDown.mails++;
        log.debug(fields, "mail transport still down; retrying");
      } else {
        transportDown = { since: now(), mails: 1 };
        log.warn({ ...fields, transport: transport.description }, "mail transport is down; retrying with backoff");
      }
    } else {
      log.warn(fields, "mail not delivered; retrying");
    }
    emit("retry", { id: row.id, template: row.template, reason: failure.reason, attempts, delayMs });
    return failure.scope === "transport" ? { kind: "transport down", delayMs } : { kind: "done" };
  }

  async function lead(lock: MailLock, signal: AbortSignal): Promise<StepResult> {
    const rows = await leadership.readDue(lock, batchSize);
    if (rows.length === 0 && !(await leadership.isAlive(lock))) {
      loseLock(lock);
      return state.kind === "follower" ? 0 : "done";
    }
    for (const row of rows) {
      // Between mails, never during one: see MailTransport.send.
      if (signal.aborted) return "done";
      const outcome = await deliver(lock, row);
      if (outcome.kind === "lock lost") {
        loseLock(lock);
        return state.kind === "follower" ? 0 : "done";
      }
      // The others would meet the same closed door; they are tried again after this one's delay.
      if (outcome.kind === "transport down") return Math.min(outcome.delayMs, pollIntervalMs * 12);
    }
    if (rows.length === batchSize) return 0;
    const next = await leadership.nextDueInMs();
    if (next === undefined) emit("idle");
    return Math.min(next ?? pollIntervalMs, pollIntervalMs);
  }

  async function step(signal: AbortSignal): Promise<StepResult> {
    if (state.kind !== "follower" && state.kind !== "leader") return "done";
    await listen();
    const s = state;
    return s.kind === "leader" ? lead(s.lock, signal) : follow();
  }

  const loop = createSupervisedLoop({
    name: "mail deliverer",
    logger: log,
    step,
    minBackoffMs: 100,
    maxBackoffMs: 5000,
    failureMessage: (err) =>
      isConnectionError(err) ? "mail deliverer cannot reach the database; retrying" : "mail deliverer failed; retrying",
  });

  async function stopNow(timeoutMs: number): Promise<void> {
    if (state.kind === "created") {
      state = { kind: "stopped" };
      await transport.close().catch(() => {});
      emit("stopped");
      return;
    }
    state = { kind: "stopping", lock: state.kind === "leader" ? state.lock : undefined };
    const ended = await loop.stop(timeoutMs);
    const lock = state.lock;
    state = { kind: "stopped" };
    if (lock) {
      emit("follower", { reason: "stopping" });
      if (ended) await leadership.release(lock);
      else log.warn("mail deliverer did not stop in time; its lock goes with its connection");
    }
    if (listening.kind === "on") await settlesWithin(listening.unlisten(), 2000);
    listening = { kind: "off", retryAt: Number.POSITIVE_INFINITY };
    await transport.close().catch(() => {});
    emit("stopped");
  }

  return {
    events,
    get status() {
      return { state: state.kind, ...counts, failures: loop.failures };
    },
    start() {
      if (state.kind !== "created") return;
      state = { kind: "follower" };
      loop.start();
    },
    stop({ timeoutMs = 10_000 } = {}) {
      stopped ??= stopNow(timeoutMs).catch((err: unknown) =>
        log.error({ err: errMessage(err) }, "mail deliverer stop failed"),
      );
      return stopped;
    },
  };
}
