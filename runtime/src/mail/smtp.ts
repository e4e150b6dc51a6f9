/**
 * Sending over SMTP with nodemailer: one SMTP session per mail (mail here is
 * a trickle of codes and notices, and a fresh session never trips over one
 * the server closed while idle), the password read again for every session
 * so a rotated password file is picked up without a restart.
 */
import { createTransport } from "nodemailer";
import type { SMTPTransportOptions } from "nodemailer/lib/smtp-transport";
import { classifySendError, type MailTransport, mailOptions } from "./transport.js";

/** How TLS is used on a `smtp://` connection (`smtps://` is TLS from the first byte). */
export type StartTls = "required" | "opportunistic" | "off";

/** Where the SMTP server is and how to sign in; see config.ts for the variables. */
export interface SmtpConfig {
  readonly host: string;
  readonly port: number;
  /** True: TLS from the first byte (`smtps://`, usually port 465); false: plain, then STARTTLS as `startTls` says. */
  readonly secure: boolean;
  readonly startTls: StartTls;
  /** The login, if the server wants one. */
  readonly user?: string | undefined;
  /** The password, read again for each session (a file may be rotated); never logged. */
  readonly password?: (() => string) | undefined;
  /** Extra TLS options, e.g. a private CA (`ca`) or the name to check (`servername`). */
  readonly tls?: SMTPTransportOptions["tls"] | undefined;
  /** Connect, greeting, and idle socket limits in ms; defaults 10 000, 10 000, 30 000. */
  readonly connectionTimeoutMs?: number | undefined;
  readonly greetingTimeoutMs?: number | undefined;
  readonly socketTimeoutMs?: number | undefined;
}

/** `smtp://host:port` or `smtps://host:port`, without credentials: for the start-up line. */
export function describeSmtp(config: Pick<SmtpConfig, "host" | "port" | "secure">): string {
  const host = config.host.includes(":") ? `[${config.host}]` : config.host;
  return `${config.secure ? "smtps" : "smtp"}://${host}:${config.port}`;
}

/** A transport that delivers to the SMTP server `config` names. */
export function createSmtpTransport(config: SmtpConfig): MailTransport {
  const base: SMTPTransportOptions = {
    host: config.host,
    port: config.port,
    secure: config.secure,
    requireTLS: !config.secure && config.startTls === "required",
    ignoreTLS: !config.secure && config.startTls === "off",
    connectionTimeout: config.connectionTimeoutMs ?? 10_000,
    greetingTimeout: config.greetingTimeoutMs ?? 10_000,
    socketTimeout: config.socketTimeoutMs ?? 30_000,
    // nodemailer's own logger would print envelopes (addresses); errors reach us classified.
    logger: false,
    debug: false,
    ...(config.tls && { tls: config.tls }),
  };
  return {
    kind: "smtp",
    description: describeSmtp(config),
    async send(mail) {
      const transporter = createTransport({
        ...base,
        ...(config.user !== undefined && { auth: { user: config.user, pass: config.password?.() ?? "" } }),
      });
      try {
        await transporter.sendMail(mailOptions(mail));
      } catch (err) {
        throw classifySendError(err);
      } finally {
        transporter.close();
      }
    },
    async close() {},
  };
}
