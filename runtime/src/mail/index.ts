/**
 * Mail delivery through a transactional mail outbox: `enqueueMail` in the
 * caller's transaction, one deliverer per database sending over SMTP (or to
 * the dev mailbox), retrying with backoff, giving up after a permanent
 * rejection or an age. The table is in ./schema.ts (imported on its own by a
 * service's drizzle schema); the dev mailbox reader in ./mailbox-cli.ts.
 */
export {
  createMailTransport,
  describeMailTransport,
  envMailConfig,
  type MailConfig,
  type MailTransportConfig,
} from "./config.js";
export {
  createMailDeliverer,
  type MailDeliverer,
  type MailDelivererEvents,
  type MailDelivererOptions,
  type MailDelivererStatus,
  type MailRef,
  messageIdFor,
} from "./deliverer.js";
export { enqueueMail, MAIL_CHANNEL, MAIL_NOTIFY, type MailMessage, type MailTx, mailInsertFrom } from "./enqueue.js";
export { MAIL_LOCK_KEY } from "./leader.js";
export { createMailboxTransport, DEFAULT_MAILBOX_DIR, type MailboxEntry, readMailbox } from "./mailbox.js";
export { escapeHtml, MailRenderError, type MailRenderer, type MailToRender, type RenderedMail } from "./render.js";
export { createSmtpTransport, describeSmtp, type SmtpConfig, type StartTls } from "./smtp.js";
export { classifySendError, MailSendError, type MailTransport, type OutgoingMail } from "./transport.js";
