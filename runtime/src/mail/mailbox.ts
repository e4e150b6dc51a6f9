/**
 * The dev mailbox: mail for a developer's machine (`npm start` with no SMTP
 * server) written to a directory instead of sent. Each mail is one `.eml`
 * file, the exact MIME message SMTP would carry (any mail client opens it),
 * named after its id, and one JSON line in `index.jsonl` with what a person
 * looks for: when, to whom, the subject and the plain-text body (where the
 * code is). `mailbox-cli.ts` lists and tails it.
 *
 * The files hold one-time codes: the directory is made private (0700) and
 * the files readable by their owner only (0600). A mail delivered again
 * after a crash (same id) rewrites its file and adds no second index line.
 */
import { appendFile, chmod, mkdir, readFile, stat, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { createTransport } from "nodemailer";
import { classifySendError, type MailTransport, mailOptions } from "./transport.js";

/** The directory `npm start` uses unless configured otherwise (relative to the working directory). */
export const DEFAULT_MAILBOX_DIR = ".data/mailbox";
/** The index file in a mailbox directory: one JSON line per mail. */
export const MAILBOX_INDEX = "index.jsonl";

/** One line of `index.jsonl`. */
export interface MailboxEntry {
  id: string;
  messageId: string;
  /** ISO 8601. */
  date: string;
  to: string;
  template: string;
  subject: string;
  /** The `.eml` file's name, inside the directory. */
  file: string;
  /** The plain-text body. */
  text: string;
}

/** A transport that writes every mail into `dir` (created if missing). */
export function createMailboxTransport(dir: string = DEFAULT_MAILBOX_DIR): MailTransport {
  const root = resolve(dir);
  const composer = createTransport({ streamTransport: true, buffer: true, newline: "unix" });
  let made = false;
  return {
    kind: "mailbox",
    description: root,
    async send(mail) {
      try {
        if (!made) {
          await mkdir(root, { recursive: true, mode: 0o700 });
          made = true;
        }
        const { message } = await composer.sendMail(mailOptions(mail));
        const file = `${mail.id}.eml`;
        const path = join(root, file);
        const again = await stat(path).then(
          () => true,
          () => false,
        );
        await writeFile(path, message as Buffer, { mode: 0o600 });
        if (again) return;
        const entry: MailboxEntry = {
          id: mail.id,
          messageId: mail.messageId,
          date: mail.date.toISOString(),
          to: mail.to,
          template: mail.template,
          subject: mail.subject,
          file,
          text: mail.text,
        };
        const index = join(root, MAILBOX_INDEX);
        await appendFile(index, `${JSON.stringify(entry)}\n`, { mode: 0o600 });
        // appendFile's mode applies only when it creates the file; an older one is made private too.
        await chmod(index, 0o600);
      } catch (err) {
        throw classifySendError(err);
      }
    },
    async close() {
      composer.close();
    },
  };
}

/** The entries of the mailbox in `dir`, oldest first; none if it has no index yet. */
export async function readMailbox(dir: string = DEFAULT_MAILBOX_DIR): Promise<MailboxEntry[]> {
  let text: string;
  try {
    text = await readFile(join(resolve(dir), MAILBOX_INDEX), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  return parseIndex(text);
}

/** The complete lines of an index text as entries; a torn last line (still being written) is skipped. */
export function parseIndex(text: string): MailboxEntry[] {
  const entries: MailboxEntry[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      entries.push(JSON.parse(line) as MailboxEntry);
    } catch {
      // A line cut short by a crash, or being appended right now.
    }
  }
  return entries;
}
