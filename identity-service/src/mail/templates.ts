/**
 * The identity service's mail: verification, the "someone tried to sign up
 * with your address" notice, recovery, the password-changed notice, and the
 * two mails of an email change (a code to the new address, a notice to the
 * old one). Each in plain text and HTML, in English and German, with the
 * product's name; every value put into the HTML is escaped.
 *
 * The codes live in the mail body only (never the subject, which shows in
 * notification previews and server logs). A message here is the runtime's
 * `MailMessage` for enqueueMail, the renderer its `MailRenderer` for the
 * deliverer (runtime/src/mail/); a render failure is a `MailRenderError`,
 * whose message names the template and field but never a value (it is logged).
 */
import { escapeHtml, MailRenderError, type MailRenderer } from "@customer-platform/runtime/mail";

export { MailRenderError };

/** The locales templates exist for; any other falls back to the first. */
export const MAIL_LOCALES = ["en", "de"] as const;
export type MailLocale = (typeof MAIL_LOCALES)[number];

/** Every mail identity sends, by template name, with the data each one needs. */
export interface IdentityMailData {
  /** After sign-up: proves the address. */
  "verification-code": { code: string; expiresInMinutes: number };
  /** Sign-up with an address that already has an account: tells its owner, reveals nothing to the caller. */
  "sign-up-attempt": Record<string, never>;
  /** Account recovery: the code that allows setting a new password. */
  "recovery-code": { code: string; expiresInMinutes: number };
  /** After a password change or reset: every session was signed out. */
  "password-changed": Record<string, never>;
  /** To the new address of an email change: the code that confirms it. */
  "email-change-code": { code: string; expiresInMinutes: number };
  /** To the old address of an email change: `requested` when the code was sent, `confirmed` once it changed. */
  "email-change-notice": { stage: "requested" | "confirmed" };
}

export type IdentityMailTemplate = keyof IdentityMailData;

/** A mail to queue (the runtime's `MailMessage`). */
export interface IdentityMailMessage<T extends IdentityMailTemplate = IdentityMailTemplate> {
  recipient: string;
  template: T;
  locale: string;
  data: IdentityMailData[T];
}

/** The message for `enqueueMail(tx, …)`: typed here, so a template always gets the data it needs. */
export function identityMail<T extends IdentityMailTemplate>(
  recipient: string,
  template: T,
  locale: string,
  data: IdentityMailData[T],
): IdentityMailMessage<T> {
  return { recipient, template, locale, data };
}

/** A rendered mail (the runtime's `RenderedMail`). */
export interface RenderedIdentityMail {
  subject: string;
  text: string;
  html: string;
}

/** `locale`'s language if templates exist for it (`de-AT` → `de`), else `en`. */
export function mailLocale(locale: string): MailLocale {
  const language = locale.toLowerCase().split(/[-_]/)[0];
  return (MAIL_LOCALES as readonly string[]).includes(language ?? "") ? (language as MailLocale) : "en";
}

/**
 * A template's words: the subject, then paragraphs, where a paragraph that
 * is `{ code }` shows the code set apart (large, monospaced, in HTML; on a
 * line of its own, in text).
 */
type Block = string | { code: string };
interface Words {
  subject: string;
  blocks: Block[];
}

type Texts = { [T in IdentityMailTemplate]: (product: string, data: IdentityMailData[T]) => Words };

const EN: Texts = {
  "verification-code": (p, d) => ({
    subject: `Verify your email address for ${p}`,
    blocks: [
      "Your verification code is:",
      { code: d.code },
      `Enter it in ${p} within ${d.expiresInMinutes} minutes to confirm this email address.`,
      `If you did not sign up for ${p}, you can ignore this email.`,
    ],
  }),
  "sign-up-attempt": (p) => ({
    subject: `Someone tried to sign up for ${p} with your address`,
    blocks: [
      `Someone just tried to create a ${p} account with this email address, but you already have one.`,
      "If it was you, sign in instead, or reset your password if you have forgotten it.",
      "If it was not you, you can ignore this email: nothing has changed on your account.",
    ],
  }),
  "recovery-code": (p, d) => ({
    subject: `Reset your ${p} password`,
    blocks: [
      `Someone (hopefully you) asked to reset the password of your ${p} account. Your code is:`,
      { code: d.code },
      `It is valid for ${d.expiresInMinutes} minutes.`,
      "If you did not ask for this, ignore this email: your password stays as it is.",
    ],
  }),
  "password-changed": (p) => ({
    subject: `Your ${p} password was changed`,
    blocks: [
      `The password of your ${p} account was just changed, and every device signed in to it was signed out.`,
      "If you did this, there is nothing more to do.",
      "If you did not, reset your password now.",
    ],
  }),
  "email-change-code": (p, d) => ({
    subject: `Confirm your new email address for ${p}`,
    blocks: [
      `Someone (hopefully you) asked to make this address the sign-in email of a ${p} account. Your confirmation code is:`,
      { code: d.code },
      `It is valid for ${d.expiresInMinutes} minutes. The email address changes only once the code is entered.`,
      "If you did not ask for this, ignore this email.",
    ],
  }),
  "email-change-notice": (p, d) =>
    d.stage === "requested"
      ? {
          subject: `A change of your ${p} email address was requested`,
          blocks: [
            `Someone asked to change the sign-in email of your ${p} account from this address to another one.`,
            "The change takes effect only once it is confirmed with a code sent to the new address.",
            "If this was you, there is nothing more to do. If it was not, change your password now: whoever asked knows it.",
          ],
        }
      : {
          subject: `Your ${p} email address was changed`,
          blocks: [
            `The sign-in email of your ${p} account was changed from this address to another one.`,
            "Mail about this account no longer comes here.",
            `If you did not do this, contact the operator of ${p} at once.`,
          ],
        },
};

const DE: Texts = {
  "verification-code": (p, d) => ({
    subject: `Bestätigen Sie Ihre E-Mail-Adresse für ${p}`,
    blocks: [
      "Ihr Bestätigungscode lautet:",
      { code: d.code },
      `Geben Sie ihn innerhalb von ${d.expiresInMinutes} Minuten in ${p} ein, um diese E-Mail-Adresse zu bestätigen.`,
      `Wenn Sie sich nicht bei ${p} registriert haben, können Sie diese E-Mail ignorieren.`,
    ],
  }),
  "sign-up-attempt": (p) => ({
    subject: `Jemand wollte sich mit Ihrer Adresse bei ${p} registrieren`,
    blocks: [
      `Soeben wurde versucht, mit dieser E-Mail-Adresse ein ${p}-Konto anzulegen, doch Sie haben bereits eines.`,
      "Wenn Sie das waren, melden Sie sich stattdessen an, oder setzen Sie Ihr Passwort zurück, falls Sie es vergessen haben.",
      "Wenn Sie es nicht waren, können Sie diese E-Mail ignorieren: An Ihrem Konto hat sich nichts geändert.",
    ],
  }),
  "recovery-code": (p, d) => ({
    subject: `Passwort für ${p} zurücksetzen`,
    blocks: [
      `Jemand (hoffentlich Sie) möchte das Passwort Ihres ${p}-Kontos zurücksetzen. Ihr Code lautet:`,
      { code: d.code },
      `Er ist ${d.expiresInMinutes} Minuten gültig.`,
      "Wenn Sie das nicht angefordert haben, ignorieren Sie diese E-Mail: Ihr Passwort bleibt unverändert.",
    ],
  }),
  "password-changed": (p) => ({
    subject: `Ihr Passwort für ${p} wurde geändert`,
    blocks: [
      `Das Passwort Ihres ${p}-Kontos wurde soeben geändert, und alle angemeldeten Geräte wurden abgemeldet.`,
      "Wenn Sie das waren, ist nichts weiter zu tun.",
      "Wenn nicht, setzen Sie Ihr Passwort jetzt zurück.",
    ],
  }),
  "email-change-code": (p, d) => ({
    subject: `Bestätigen Sie Ihre neue E-Mail-Adresse für ${p}`,
    blocks: [
      `Jemand (hoffentlich Sie) möchte diese Adresse zur Anmelde-E-Mail eines ${p}-Kontos machen. Ihr Bestätigungscode lautet:`,
      { code: d.code },
      `Er ist ${d.expiresInMinutes} Minuten gültig. Die E-Mail-Adresse ändert sich erst, wenn der Code eingegeben wurde.`,
      "Wenn Sie das nicht angefordert haben, ignorieren Sie diese E-Mail.",
    ],
  }),
  "email-change-notice": (p, d) =>
    d.stage === "requested"
      ? {
          subject: `Änderung Ihrer E-Mail-Adresse bei ${p} angefordert`,
          blocks: [
            `Es wurde angefordert, die Anmelde-E-Mail Ihres ${p}-Kontos von dieser Adresse auf eine andere zu ändern.`,
            "Die Änderung wird erst wirksam, wenn sie mit einem Code bestätigt wird, der an die neue Adresse ging.",
            "Wenn Sie das waren, ist nichts weiter zu tun. Wenn nicht, ändern Sie jetzt Ihr Passwort: Wer die Änderung angefordert hat, kennt es.",
          ],
        }
      : {
          subject: `Ihre E-Mail-Adresse bei ${p} wurde geändert`,
          blocks: [
            `Die Anmelde-E-Mail Ihres ${p}-Kontos wurde von dieser Adresse auf eine andere geändert.`,
            "E-Mails zu diesem Konto kommen nicht mehr hierher.",
            `Wenn Sie das nicht waren, wenden Sie sich sofort an den Betreiber von ${p}.`,
          ],
        },
};

const TEXTS: Record<MailLocale, Texts> = { en: EN, de: DE };
const CODE = /^[A-Za-z0-9-]{4,32}$/;

/** Checks `data` against what `template` needs; the error names the field, never its value. */
function checked<T extends IdentityMailTemplate>(
  template: T,
  data: Readonly<Record<string, unknown>>,
): IdentityMailData[T] {
  const fail = (field: string, what: string) =>
    new MailRenderError(`template ${template}: data.${field} must be ${what}`);
  switch (template) {
    case "verification-code":
    case "recovery-code":
    case "email-change-code": {
      if (typeof data.code !== "string" || !CODE.test(data.code)) throw fail("code", "4 to 32 letters or digits");
      const minutes = data.expiresInMinutes;
      if (typeof minutes !== "number" || !Number.isInteger(minutes) || minutes < 1) {
        throw fail("expiresInMinutes", "a positive integer");
      }
      return { code: data.code, expiresInMinutes: minutes } as IdentityMailData[T];
    }
    case "email-change-notice":
      if (data.stage !== "requested" && data.stage !== "confirmed") throw fail("stage", '"requested" or "confirmed"');
      return { stage: data.stage } as IdentityMailData[T];
    default:
      return {} as IdentityMailData[T];
  }
}

function isTemplate(name: string): name is IdentityMailTemplate {
  return Object.hasOwn(EN, name);
}

function textOf(words: Words, product: string, locale: MailLocale): string {
  const footer =
    locale === "de"
      ? `Diese E-Mail wurde automatisch von ${product} gesendet. Antworten darauf werden nicht gelesen.`
      : `This email was sent automatically by ${product}. Replies are not read.`;
  const body = words.blocks.map((b) => (typeof b === "string" ? b : `    ${b.code}`));
  return `${[...body, "--", footer].join("\n\n")}\n`;
}

function htmlOf(words: Words, product: string, locale: MailLocale): string {
  const e = escapeHtml;
  const footer =
    locale === "de"
      ? `Diese E-Mail wurde automatisch von ${e(product)} gesendet. Antworten darauf werden nicht gelesen.`
      : `This email was sent automatically by ${e(product)}. Replies are not read.`;
  const body = words.blocks
    .map((b) =>
      typeof b === "string"
        ? `<p style="margin:0 0 16px">${e(b)}</p>`
        : `<p style="margin:0 0 16px;font:bold 28px/1.2 ui-monospace,Menlo,Consolas,monospace;letter-spacing:4px">${e(b.code)}</p>`,
    )
    .join("\n");
  return `<!doctype html>
<html lang="${locale}">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>${e(words.subject)}</title></head>
<body style="margin:0;padding:24px;background:#f6f6f6;font:16px/1.5 -apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;color:#222">
<div style="max-width:560px;margin:0 auto;padding:24px;background:#fff;border-radius:8px">
<p style="margin:0 0 24px;font-weight:bold">${e(product)}</p>
${body}
<p style="margin:24px 0 0;font-size:13px;color:#666">${footer}</p>
</div>
</body>
</html>
`;
}

/**
 * The renderer of identity's mail (the runtime's `MailRenderer`), for the
 * product called `productName`.
 */
export function createIdentityMailRenderer(opts: { productName: string }): MailRenderer {
  const product = opts.productName;
  return (mail): RenderedIdentityMail => {
    if (!isTemplate(mail.template)) throw new MailRenderError(`unknown template ${mail.template}`);
    const locale = mailLocale(mail.locale);
    const render = TEXTS[locale][mail.template] as (product: string, data: unknown) => Words;
    const words = render(product, checked(mail.template, mail.data));
    return { subject: words.subject, text: textOf(words, product, locale), html: htmlOf(words, product, locale) };
  };
}
