/**
 * Reading the dev mailbox from a terminal (mailbox.ts writes it):
 *
 *   mailbox [list]        one line per mail: time, recipient, template, subject, id
 *   mailbox show [id]     the plain-text body of a mail (default: the newest)
 *   mailbox tail [-n N]   the last N mails (default 1) in full, then each new one as it arrives, until Ctrl-C
 *   mailbox code <to>     the one-time code of the newest mail to <to> that has one (waiting up to
 *                         --wait seconds, default 10, for it to arrive), alone on a line, for scripts
 *
 * The directory is `--dir <path>`, else the caller's default (a service's
 * `<P>_MAILBOX_DIR`), else `.data/mailbox`. The service's npm script calls
 * `runMailboxCli(process.argv.slice(2), …)` and exits with what it returns.
 */
import { open } from "node:fs/promises";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { DEFAULT_MAILBOX_DIR, MAILBOX_INDEX, type MailboxEntry, parseIndex, readMailbox } from "./mailbox.js";

export interface MailboxCliOptions {
  /** Where output goes; default process.stdout. */
  out?: { write(text: string): unknown };
  /** Where errors go; default process.stderr. */
  err?: { write(text: string): unknown };
  /** The directory when no `--dir` is given; default `.data/mailbox`. */
  dir?: string;
  /** Ends `tail`; default: SIGINT or SIGTERM. */
  signal?: AbortSignal;
  /** How often `tail` looks for new mail; default 250 ms. */
  pollMs?: number;
}

const USAGE =
  "usage: mailbox [--dir <path>] [list | show [<id>] | tail [-n <count>] | code <address> [--wait <seconds>]]\n";

/** A one-time code in a mail's text: a line of 6 to 10 digits and nothing else (how the templates set it). */
const CODE_LINE = /^[ \t]*(\d{6,10})[ \t]*$/m;

/** One line for `list`. */
function summary(e: MailboxEntry): string {
  return `${e.date}  ${e.to}  ${e.template}  ${e.subject}  (${e.id})\n`;
}

/** A mail in full for `show` and `tail`: headers a person cares about, the text body, where the file is. */
function full(e: MailboxEntry, dir: string): string {
  const rule = "-".repeat(72);
  return [
    rule,
    `Date:    ${e.date}`,
    `To:      ${e.to}`,
    `Subject: ${e.subject}`,
    `File:    ${join(dir, e.file)}`,
    "",
    e.text.trimEnd(),
    "",
  ].join("\n");
}

/** Runs the mailbox command; resolves to the exit code. */
export async function runMailboxCli(argv: readonly string[], opts: MailboxCliOptions = {}): Promise<number> {
  const out = opts.out ?? process.stdout;
  const err = opts.err ?? process.stderr;
  const args = [...argv];
  let dir = opts.dir ?? DEFAULT_MAILBOX_DIR;
  const at = args.indexOf("--dir");
  if (at >= 0) {
    const value = args[at + 1];
    if (!value) {
      err.write(USAGE);
      return 64;
    }
    dir = value;
    args.splice(at, 2);
  }
  dir = resolve(dir);
  const [command = "list", ...rest] = args;
  switch (command) {
    case "list": {
      if (rest.length > 0) break;
      const entries = await readMailbox(dir);
      if (entries.length === 0) out.write(`no mail in ${dir}\n`);
      for (const e of entries) out.write(summary(e));
      return 0;
    }
    case "show": {
      if (rest.length > 1) break;
      const entries = await readMailbox(dir);
      const entry = rest[0] ? entries.find((e) => e.id === rest[0]) : entries.at(-1);
      if (!entry) {
        err.write(rest[0] ? `no mail ${rest[0]} in ${dir}\n` : `no mail in ${dir}\n`);
        return 1;
      }
      out.write(full(entry, dir));
      return 0;
    }
    case "code": {
      const [to, flag, seconds] = rest;
      if (!to || rest.length === 2 || rest.length > 3) break;
      if (flag !== undefined && (flag !== "--wait" || !/^\d+$/.test(seconds ?? ""))) break;
      const code = await newestCode(dir, to, Number(seconds ?? 10) * 1000, opts.pollMs ?? 250);
      if (!code) {
        err.write(`no mail with a code to ${to} in ${dir}\n`);
        return 1;
      }
      out.write(`${code}\n`);
      return 0;
    }
    case "tail": {
      let count = 1;
      if (rest.length === 2 && rest[0] === "-n" && /^\d+$/.test(rest[1] ?? "")) count = Number(rest[1]);
      else if (rest.length > 0) break;
      await tail(dir, count, out, opts);
      return 0;
    }
  }
  err.write(USAGE);
  return 64;
}

/** The code of the newest mail to `to` (case-insensitive) that has one, polling until `waitMs` passed. */
async function newestCode(dir: string, to: string, waitMs: number, pollMs: number): Promise<string | undefined> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const mails = (await readMailbox(dir)).filter((e) => e.to.toLowerCase() === to.toLowerCase());
    for (const e of mails.reverse()) {
      const code = CODE_LINE.exec(e.text)?.[1];
      if (code) return code;
    }
    if (Date.now() >= deadline) return undefined;
    await sleep(pollMs);
  }
}

/** Prints the last `count` mails, then each new one, until the signal (or Ctrl-C). */
async function tail(dir: string, count: number, out: { write(text: string): unknown }, opts: MailboxCliOptions) {
  const path = join(dir, MAILBOX_INDEX);
  const pollMs = opts.pollMs ?? 250;
  let signal = opts.signal;
  let cleanup = () => {};
  if (!signal) {
    const controller = new AbortController();
    const stop = () => controller.abort();
    process.once("SIGINT", stop);
    process.once("SIGTERM", stop);
    cleanup = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
    };
    signal = controller.signal;
  }
  out.write(`watching ${dir} (Ctrl-C to stop)\n`);
  // Read from `offset` on; a line still being appended waits for its newline.
  let offset = 0;
  let first = true;
  try {
    while (!signal.aborted) {
      const chunk = await readFrom(path, offset);
      const end = chunk.lastIndexOf("\n");
      if (end >= 0) {
        const complete = chunk.subarray(0, end + 1);
        offset += complete.length;
        let entries = parseIndex(complete.toString("utf8"));
        if (first) entries = count > 0 ? entries.slice(-count) : [];
        for (const e of entries) out.write(full(e, dir));
      }
      first = false;
      // Rejects when aborted: the loop then ends.
      await sleep(pollMs, undefined, { signal }).catch(() => {});
    }
  } finally {
    cleanup();
  }
}

/** The bytes of `path` from `offset` on; none while it does not exist. */
async function readFrom(path: string, offset: number): Promise<Buffer> {
  let file: Awaited<ReturnType<typeof open>>;
  try {
    file = await open(path, "r");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return Buffer.alloc(0);
    throw err;
  }
  try {
    const { size } = await file.stat();
    if (size <= offset) return Buffer.alloc(0);
    const buffer = Buffer.alloc(size - offset);
    const { bytesRead } = await file.read(buffer, 0, buffer.length, offset);
    return buffer.subarray(0, bytesRead);
  } finally {
    await file.close();
  }
}
