/**
 * `npm run mailbox [-- list | show [id] | tail [-n N]]`: reads the dev
 * mailbox the identity service delivers to when no SMTP server is configured
 * (IDENTITY_MAILBOX_DIR, default .data/mailbox).
 */
import { runMailboxCli } from "@customer-platform/runtime/mail-cli";

process.exitCode = await runMailboxCli(process.argv.slice(2), {
  ...(process.env.IDENTITY_MAILBOX_DIR && { dir: process.env.IDENTITY_MAILBOX_DIR }),
});
