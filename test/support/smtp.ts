/**
 * A real SMTP server on loopback for tests (the `smtp-server` package, the
 * server side of nodemailer's project): every message that arrives is kept
 * raw and parsed (`mailparser`), with its envelope. `stop()` closes the
 * listener so connections are refused, as a server that is down; `start()`
 * listens again on the same port. `reject` answers RCPT TO with an error of
 * the test's choosing (e.g. a permanent 550); `auth` makes it require a login.
 */
import { type ParsedMail, simpleParser } from "mailparser";
import { SMTPServer, type SMTPServerOptions } from "smtp-server";
import { reservePort } from "./ports.js";
import { until } from "./timing.js";

/** A message the server accepted. */
export interface ReceivedMail {
  /** MAIL FROM and RCPT TO, as the client sent them. */
  readonly envelope: { readonly from: string; readonly to: readonly string[] };
  /** The user it signed in as, if it did. */
  readonly user: string | undefined;
  /** The message as it came over DATA. */
  readonly raw: Buffer;
  readonly parsed: ParsedMail;
}

/** An SMTP error reply for RCPT TO: `code` is the reply code (e.g. 550, 451), `message` its text. */
export interface SmtpReply {
  readonly code: number;
  readonly message: string;
}

export interface TestSmtpServerOptions {
  /** Require AUTH (PLAIN or LOGIN) with this login; plain-text auth is allowed (no TLS on loopback). */
  readonly auth?: { readonly user: string; readonly password: string };
}

export interface TestSmtpServer extends AsyncDisposable {
  readonly host: "127.0.0.1";
  readonly port: number;
  /** `smtp://127.0.0.1:<port>`. */
  readonly url: string;
  /** Accepted messages in arrival order. */
  readonly messages: readonly ReceivedMail[];
  /** SMTP sessions opened so far (tries, successful or not). */
  readonly sessions: number;
  /** True while it listens. */
  readonly listening: boolean;
  /**
   * Answers RCPT TO for `recipient` (any recipient when omitted) with
   * `reply` instead of accepting it; undefined accepts again.
   */
  reject(reply: SmtpReply | undefined, recipient?: string): void;
  /** Stops listening and ends open sessions: connections are refused until start(). */
  stop(): Promise<void>;
  /** Listens again on the same port. */
  start(): Promise<void>;
  /** Waits until at least `count` messages arrived (default 10 s). */
  waitForMessages(count: number, timeoutMs?: number): Promise<readonly ReceivedMail[]>;
  close(): Promise<void>;
}

/** Starts an SMTP server on 127.0.0.1, on a port of its own. */
export async function startSmtpServer(opts: TestSmtpServerOptions = {}): Promise<TestSmtpServer> {
  const reserved = await reservePort();
  const port = reserved.port;
  const messages: ReceivedMail[] = [];
  let sessions = 0;
  let rejection: { reply: SmtpReply; recipient: string | undefined } | undefined;
  let server: SMTPServer | undefined;

  const replyError = (reply: SmtpReply) => Object.assign(new Error(reply.message), { responseCode: reply.code });

  const options: SMTPServerOptions = {
    // No TLS on loopback: STARTTLS would use the package's published test key.
    disabledCommands: opts.auth ? ["STARTTLS"] : ["STARTTLS", "AUTH"],
    authOptional: !opts.auth,
    allowInsecureAuth: true,
    logger: false,
    onConnect(_session, callback) {
      sessions++;
      callback();
    },
    onAuth(auth, _session, callback) {
      if (opts.auth && auth.username === opts.auth.user && auth.password === opts.auth.password) {
        callback(null, { user: auth.username });
        return;
      }
      callback(Object.assign(new Error("invalid login"), { responseCode: 535 }));
    },
    onRcptTo(address, _session, callback) {
      if (rejection && (rejection.recipient === undefined || rejection.recipient === address.address)) {
        callback(replyError(rejection.reply));
        return;
      }
      callback();
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("end", () => {
        const raw = Buffer.concat(chunks);
        const envelope = {
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
          to: session.envelope.rcptTo.map((r) => r.address),
        };
        const user = typeof session.user === "string" ? session.user : undefined;
        // Accepted once parsed: what the test reads is there when the client hears 250.
        simpleParser(raw).then(
          (parsed) => {
            messages.push({ envelope, user, raw, parsed });
            callback();
          },
          (err: unknown) => callback(err as Error),
        );
      });
    },
  };

  const listen = async () => {
    const s = new SMTPServer(options);
    s.on("error", () => {});
    await new Promise<void>((resolve, reject) => {
      s.server.once("error", reject);
      s.listen(port, "127.0.0.1", () => {
        s.server.off("error", reject);
        resolve();
      });
    });
    server = s;
  };

  const stop = async () => {
    const s = server;
    server = undefined;
    if (!s) return;
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      // Sessions in progress end now, as with a server that went away.
      for (const connection of s.connections) connection.close();
    });
  };

  await reserved.release();
  await listen();
  const close = async () => {
    await stop();
  };
  return {
    host: "127.0.0.1",
    port,
    url: `smtp://127.0.0.1:${port}`,
    messages,
    get sessions() {
      return sessions;
    },
    get listening() {
      return server !== undefined;
    },
    reject(reply, recipient) {
      rejection = reply ? { reply, recipient } : undefined;
    },
    stop,
    async start() {
      if (!server) await listen();
    },
    async waitForMessages(count, timeoutMs = 10_000) {
      await until(`${count} messages at the SMTP server`, () => messages.length >= count, timeoutMs);
      return messages;
    },
    close,
    [Symbol.asyncDispose]: close,
  };
}
