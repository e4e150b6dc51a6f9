/**
 * Where rendered mail goes: an SMTP server (smtp.ts) or, in development, a
 * directory a person reads (mailbox.ts). Both build the same MIME message
 * with nodemailer, so what the dev mailbox shows is what SMTP would carry.
 *
 * A failed send is a {@link MailSendError}: whether trying the same mail
 * again can help (`permanent`), whether the failure is the mail's own or the
 * transport's (`scope`: a server that is down fails every mail, so the
 * deliverer stops the batch), and a `reason` fit for a log line and the
 * `last_error` column. The reason never holds the server's reply text, which
 * may quote the address (`550 5.1.1 <ada@example.com>: unknown user`).
 */
import type { SendMailOptions } from "nodemailer";

/** A rendered mail, ready to hand to a transport. */
export interface OutgoingMail {
  /** The mail_outbox row id. */
  readonly id: string;
  /** The template, for the dev mailbox's index (logs name it too). */
  readonly template: string;
  /** `<row id@sender domain>`: the same on every attempt. */
  readonly messageId: string;
  /** The From header, e.g. `Customer Platform <no-reply@example.com>`. */
  readonly from: string;
  readonly to: string;
  readonly subject: string;
  readonly text: string;
  readonly html: string;
  /** Content-Language. */
  readonly locale: string;
  /** The Date header: when the mail was queued, the same on every attempt. */
  readonly date: Date;
}

export interface MailTransport {
  /** `smtp` or `mailbox`. */
  readonly kind: string;
  /** Where mail goes, for the start-up line: `smtp://host:port` (no credentials) or the mailbox directory. */
  readonly description: string;
  /**
   * Resolves once the server accepted the mail (or the file is written);
   * rejects with a MailSendError. Takes no abort signal on purpose: a send cut
   * off while the server says "250 accepted" would look failed and be sent
   * again; the connect, greeting and socket timeouts bound it instead.
   */
  send(mail: OutgoingMail): Promise<void>;
  close(): Promise<void>;
}

/** Why a send failed, as far as retrying is concerned; carries no address and no reply text. */
export class MailSendError extends Error {
  override name = "MailSendError";
  constructor(
    /** e.g. `smtp 550 at RCPT TO`, `connection ECONNREFUSED`. */
    readonly reason: string,
    /** True when sending the same mail again gets the same answer (a 5xx other than 503). */
    readonly permanent: boolean,
    /** `transport`: nothing can be sent now (server down, login refused); `message`: this mail failed. */
    readonly scope: "message" | "transport",
  ) {
    super(reason);
  }
}

// Codes nodemailer and Node set when no SMTP conversation took place (or it broke off).
const CONNECTION_CODES = new Set([
  "ECONNECTION",
  "ESOCKET",
  "ETIMEDOUT",
  "EDNS",
  "ETLS",
  "EPROXY",
  "ECONNREFUSED",
  "ECONNRESET",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENOTFOUND",
  "EPIPE",
]);
// A configuration the operator fixes; every mail would fail the same way until then.
const SETUP_CODES = new Set(["EAUTH", "ENOAUTH", "EOAUTH2", "ECONFIG", "EREQUIRETLS"]);
// The SMTP verbs a reason may name; the rest of a command can hold an address or credentials.
const VERBS = ["MAIL FROM", "RCPT TO", "DATA", "AUTH", "EHLO", "HELO", "STARTTLS", "RSET", "QUIT", "BDAT"];

/** The verb of an SMTP command (`RCPT TO:<…>` → `RCPT TO`), or undefined. */
function verbOf(command: unknown): string | undefined {
  if (typeof command !== "string") return undefined;
  const upper = command.trimStart().toUpperCase();
  return VERBS.find((v) => upper.startsWith(v));
}

/** `err` (from nodemailer or the file system) as a MailSendError. */
export function classifySendError(err: unknown): MailSendError {
  if (err instanceof MailSendError) return err;
  const e = (err ?? {}) as { code?: unknown; responseCode?: unknown; permanent?: unknown; command?: unknown };
  const code = typeof e.code === "string" && /^[A-Z][A-Z0-9_]{1,40}$/.test(e.code) ? e.code : undefined;
  if (code && SETUP_CODES.has(code)) {
    // A refused login is answered with 535, a 5xx, but it is not this mail's fault.
    const reply = typeof e.responseCode === "number" ? ` ${e.responseCode}` : "";
    return new MailSendError(`smtp setup ${code}${reply}`, false, "transport");
  }
  if (typeof e.responseCode === "number") {
    const verb = verbOf(e.command);
    const permanent =
      typeof e.permanent === "boolean"
        ? e.permanent
        : e.responseCode >= 500 && e.responseCode < 600 && e.responseCode !== 503;
    // 421: the server closes the session (busy, shutting down): nothing else goes through it either.
    const scope = e.responseCode === 421 ? "transport" : "message";
    return new MailSendError(`smtp ${e.responseCode}${verb ? ` at ${verb}` : ""}`, permanent, scope);
  }
  if (code && CONNECTION_CODES.has(code)) {
    // Node's own code (ECONNREFUSED), which nodemailer keeps as originalCode under its own (ESOCKET), says more.
    const original = (err as { originalCode?: unknown }).originalCode;
    const detail = typeof original === "string" && CONNECTION_CODES.has(original) ? original : code;
    return new MailSendError(`connection ${detail}`, false, "transport");
  }
  const type = err instanceof Error ? err.constructor.name : typeof err;
  return new MailSendError(`send failed: ${code ?? type}`, false, "message");
}

/** The nodemailer message both transports build from `mail`. */
export function mailOptions(mail: OutgoingMail): SendMailOptions {
  return {
    from: mail.from,
    to: mail.to,
    subject: mail.subject,
    text: mail.text,
    html: mail.html,
    messageId: mail.messageId,
    date: mail.date,
    headers: {
      "Content-Language": mail.locale,
      // RFC 3834: a machine sent it; auto-responders (vacation replies) stay quiet.
      "Auto-Submitted": "auto-generated",
      "X-Auto-Response-Suppress": "All",
    },
    // Templates are text, never references to files or URLs to inline.
    disableFileAccess: true,
    disableUrlAccess: true,
  };
}
