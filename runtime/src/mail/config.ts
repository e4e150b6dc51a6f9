/**
 * Mail settings from the environment, each variable named after the
 * service's prefix (`IDENTITY_SMTP_URL`, …). With no SMTP server configured,
 * mail goes to the dev mailbox, so `npm start` works on a bare machine; the
 * service says which at start (`describeMailTransport`).
 *
 * | Variable                      | Meaning                                                                 |
 * | ----------------------------- | ----------------------------------------------------------------------- |
 * | `<P>_SMTP_URL`                | `smtp://host[:port]` (STARTTLS, port 587) or `smtps://host[:port]` (TLS, 465); unset: dev mailbox |
 * | `<P>_SMTP_STARTTLS`           | `required` (default), `opportunistic` (default for a loopback host), `off` |
 * | `<P>_SMTP_USER`               | login (or the URL's user part)                                          |
 * | `<P>_SMTP_PASSWORD_FILE`      | a file holding the password, read again for every session; or `<P>_SMTP_PASSWORD` |
 * | `<P>_MAIL_FROM`               | From header, e.g. `Customer Platform <no-reply@example.com>`; required with SMTP |
 * | `<P>_MAILBOX_DIR`             | the dev mailbox, default `.data/mailbox`; not with `<P>_SMTP_URL`        |
 * | `<P>_MAIL_GIVE_UP_AFTER_S`    | give a mail up this long after it was queued; default 86400              |
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { ConfigError, type Env, envEnum, envInt, envOptional, envUrl, isLoopbackHost, redactUrl } from "../config.js";
import { createMailboxTransport, DEFAULT_MAILBOX_DIR } from "./mailbox.js";
import { createSmtpTransport, describeSmtp, type SmtpConfig, type StartTls } from "./smtp.js";
import type { MailTransport } from "./transport.js";

/** Where mail goes: an SMTP server, or the dev mailbox directory. */
export type MailTransportConfig = { kind: "smtp"; smtp: SmtpConfig } | { kind: "mailbox"; dir: string };

export interface MailConfig {
  readonly transport: MailTransportConfig;
  /** The From header. */
  readonly from: string;
  readonly giveUpAfterMs: number;
}

/** The From header of the dev mailbox when `<P>_MAIL_FROM` is unset. */
const DEV_FROM = "no-reply@localhost";
const STARTTLS_MODES = ["required", "opportunistic", "off"] as const satisfies readonly StartTls[];
// One address, bare or as `Display Name <address>`; no line breaks (header injection).
const FROM = /^(?:[^\r\n<>]*<[^\s@<>]+@[^\s@<>]+>|[^\s@<>]+@[^\s@<>]+)$/;

/** A password file's text: checked now, read again at each call, the last good text kept if a read fails. */
function passwordFile(variable: string, file: string): () => string {
  const path = resolve(file);
  const read = () => readFileSync(path, "utf8").replace(/[\r\n]+$/, "");
  let last: string;
  try {
    last = read();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? "unreadable";
    throw new ConfigError(`${variable}: cannot read ${path}: ${code}`);
  }
  if (!last) throw new ConfigError(`${variable}: ${path} is empty`);
  return () => {
    try {
      const text = read();
      if (text) last = text;
    } catch {
      // Keep the last good password: a rotation under way.
    }
    return last;
  };
}

/** `text` percent-decoded, or a ConfigError that never shows it. */
function decoded(variable: string, text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new ConfigError(`${variable}: the user or password is not valid percent-encoding`);
  }
}

/** The mail settings of the service whose variables start with `prefix` (e.g. `IDENTITY`). */
export function envMailConfig(env: Env, prefix: string, opts: { cwd: string }): MailConfig {
  const urlVar = `${prefix}_SMTP_URL`;
  const fromVar = `${prefix}_MAIL_FROM`;
  const dirVar = `${prefix}_MAILBOX_DIR`;
  const giveUpAfterMs = envInt(env, `${prefix}_MAIL_GIVE_UP_AFTER_S`, 86_400, 60, 30 * 86_400) * 1000;
  const from = envOptional(env, fromVar);
  if (from !== undefined && !FROM.test(from)) {
    throw new ConfigError(`${fromVar} must be one address, e.g. "Example <no-reply@example.com>"`);
  }
  const raw = envUrl(env, urlVar, ["smtp:", "smtps:"]);
  if (raw === undefined) {
    for (const name of ["STARTTLS", "USER", "PASSWORD", "PASSWORD_FILE"]) {
      if (envOptional(env, `${prefix}_SMTP_${name}`)) throw new ConfigError(`${prefix}_SMTP_${name} needs ${urlVar}`);
    }
    const dir = resolve(opts.cwd, envOptional(env, dirVar) ?? DEFAULT_MAILBOX_DIR);
    return { transport: { kind: "mailbox", dir }, from: from ?? DEV_FROM, giveUpAfterMs };
  }
  if (envOptional(env, dirVar)) throw new ConfigError(`set ${urlVar} or ${dirVar}, not both`);
  if (from === undefined) throw new ConfigError(`${fromVar} is required with ${urlVar}`);
  const url = new URL(raw);
  if (!url.hostname) throw new ConfigError(`${urlVar} must name a host, got "${redactUrl(raw)}"`);
  if (url.pathname && url.pathname !== "/") throw new ConfigError(`${urlVar} takes no path, got "${redactUrl(raw)}"`);
  const secure = url.protocol === "smtps:";
  const host = url.hostname.replace(/^\[(.*)\]$/, "$1");
  const startTlsVar = `${prefix}_SMTP_STARTTLS`;
  const startTls = envEnum(
    env,
    startTlsVar,
    STARTTLS_MODES,
    isLoopbackHost(url.hostname) ? "opportunistic" : "required",
  );
  if (secure && envOptional(env, startTlsVar)) throw new ConfigError(`${startTlsVar} is for smtp:, not smtps:`);

  const userVar = `${prefix}_SMTP_USER`;
  const passwordVar = `${prefix}_SMTP_PASSWORD`;
  const passwordFileVar = `${prefix}_SMTP_PASSWORD_FILE`;
  const urlUser = url.username ? decoded(urlVar, url.username) : undefined;
  const urlPassword = url.password ? decoded(urlVar, url.password) : undefined;
  const user = envOptional(env, userVar) ?? urlUser;
  const given = [
    urlPassword !== undefined && urlVar,
    envOptional(env, passwordVar) && passwordVar,
    envOptional(env, passwordFileVar) && passwordFileVar,
  ].filter((v): v is string => typeof v === "string");
  if (given.length > 1) throw new ConfigError(`set the SMTP password once, not in ${given.join(" and ")}`);
  const file = envOptional(env, passwordFileVar);
  const plain = env[passwordVar] ?? urlPassword;
  const password = file !== undefined ? passwordFile(passwordFileVar, file) : plain ? () => plain : undefined;
  if (password && user === undefined) throw new ConfigError(`an SMTP password needs a user (${userVar})`);
  if (user !== undefined && !password) throw new ConfigError(`${userVar} needs ${passwordFileVar} or ${passwordVar}`);
  const smtp: SmtpConfig = {
    host,
    port: url.port ? Number(url.port) : secure ? 465 : 587,
    secure,
    startTls,
    ...(user !== undefined && { user, password }),
  };
  return { transport: { kind: "smtp", smtp }, from, giveUpAfterMs };
}

/** The transport `config` describes. */
export function createMailTransport(config: MailTransportConfig): MailTransport {
  return config.kind === "smtp" ? createSmtpTransport(config.smtp) : createMailboxTransport(config.dir);
}

/**
 * Where mail goes, for the start-up line: `smtp://host:port` (never the
 * credentials), or `dev mailbox <dir>`: a service that falls back to the dev
 * mailbox says so, so nobody waits for mail that no server will send.
 */
export function describeMailTransport(config: MailTransportConfig): string {
  return config.kind === "smtp" ? describeSmtp(config.smtp) : `dev mailbox ${config.dir}`;
}
