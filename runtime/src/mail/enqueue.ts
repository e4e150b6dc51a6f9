/**
 * Queuing a mail: one row in `mail_outbox`, written in the statement or
 * transaction of the change it tells about, so a change that rolls back
 * sends nothing and one that commits has its mail waiting even while the
 * mail server is down. The write wakes the deliverer with a NOTIFY that
 * Postgres delivers only at commit.
 */
import { type SQL, sql } from "drizzle-orm";
import type { Db } from "../db.js";
import { uuidv7 } from "../ids.js";
import { mailOutbox } from "./schema.js";

/** The NOTIFY channel a queued mail wakes the deliverer on (one per database, as the table is). */
export const MAIL_CHANNEL = "mail_outbox";

/** A mail to send: to whom, which template, in which language, filled in with what. */
export interface MailMessage {
  /** One address, e.g. `ada@example.com`; never logged. */
  recipient: string;
  /** The renderer's name for it, e.g. `verification-code`. */
  template: string;
  /** e.g. `en`, `de`; the renderer falls back to its default for one it does not know. */
  locale: string;
  /** What the template fills in; never logged, erased once the mail is sent or given up. */
  data: Record<string, unknown>;
}

/** A drizzle transaction (or database) over any schema that includes `mail_outbox`. */
export type MailTx = Pick<Db<Record<string, unknown>>, "insert" | "execute">;

// One address, as identity stores it: no list, no display name, no header-breaking characters.
const SINGLE_ADDRESS = /^[^\s@,;<>"()[\]\\]+@[^\s@,;<>"()[\]\\]+$/;
const TEMPLATE = /^[a-z0-9][a-z0-9-]{0,62}$/;
const LOCALE = /^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$/;

/**
 * Queues `message` inside the caller's transaction and returns its id (a
 * UUIDv7, from which its Message-ID is derived). Throws for a recipient that
 * is not exactly one address, or a template or locale that is not a plain
 * name: those are bugs in the caller, not mail to retry.
 */
export async function enqueueMail(tx: MailTx, message: MailMessage): Promise<string> {
  if (!SINGLE_ADDRESS.test(message.recipient)) throw new Error("mail recipient must be exactly one plain address");
  checkMessage(message);
  const id = uuidv7();
  const insert = tx.insert(mailOutbox).values({
    id,
    recipient: message.recipient,
    template: message.template,
    locale: message.locale,
    data: message.data,
  });
  // One round trip: a data-modifying CTE always runs; the NOTIFY is delivered at commit.
  await tx.execute(sql`with m as ${insert} select ${MAIL_NOTIFY}`);
  return id;
}

/**
 * For a statement that finds its recipient itself (in SQL, so that whether
 * there is one shows neither in its answer nor in its round trips): an
 * `insert into mail_outbox … select` queuing `message` to the address
 * `recipient` yields (a query of one text column, at most one row: the
 * mail's id is made here), to be used as a CTE, with MAIL_NOTIFY selected
 * for each row it queues. The address comes from the database, where it was
 * checked when stored; the template and locale are checked as enqueueMail
 * checks them.
 */
export function mailInsertFrom(recipient: SQL, message: Omit<MailMessage, "recipient">): SQL {
  checkMessage(message);
  return sql`insert into ${mailOutbox} (id, recipient, template, locale, data)
    select ${uuidv7()}::uuid, r.recipient, ${message.template}::text, ${message.locale}::text,
      ${JSON.stringify(message.data)}::jsonb
    from (${recipient}) as r(recipient)`;
}

/** Wakes the deliverer (delivered at commit). */
export const MAIL_NOTIFY: SQL = sql`pg_notify(${MAIL_CHANNEL}, '')`;

function checkMessage(message: Pick<MailMessage, "template" | "locale">): void {
  if (!TEMPLATE.test(message.template)) throw new Error(`mail template "${message.template}" is not a plain name`);
  if (!LOCALE.test(message.locale)) throw new Error(`mail locale "${message.locale}" is not a language tag`);
}
