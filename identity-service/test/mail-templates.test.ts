/**
 * Identity's mail templates (identity-service/src/mail/templates.ts), as the
 * deliverer renders them: every template in English and German, the code in
 * both bodies and never in the subject, every value escaped in the HTML, an
 * unknown template or bad data refused with a message that names the field
 * but not its value. One German mail goes through the real SMTP server to
 * show that its umlauts and both parts arrive intact.
 *
 * (Kept with the runtime's mail tests while identity does not send mail yet;
 * it moves to identity-service/test/ when the service is wired.)
 */

import { createSmtpTransport, messageIdFor } from "@customer-platform/runtime/mail";
import { simpleParser } from "mailparser";
import { afterEach, describe, expect, it } from "vitest";
import { startSmtpServer } from "../../test/support/smtp.js";
import {
  createIdentityMailRenderer,
  type IdentityMailData,
  type IdentityMailTemplate,
  identityMail,
  MAIL_LOCALES,
  MailRenderError,
  mailLocale,
} from "../src/mail/templates.js";

const cleanups: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch(() => {});
});

const render = createIdentityMailRenderer({ productName: "Acme <ID> & Co" });
const CODE = "48213907";

const EXAMPLES: { [T in IdentityMailTemplate]: IdentityMailData[T] } = {
  "verification-code": { code: CODE, expiresInMinutes: 15 },
  "sign-up-attempt": {},
  "recovery-code": { code: CODE, expiresInMinutes: 15 },
  "password-changed": {},
  "email-change-code": { code: CODE, expiresInMinutes: 15 },
  "email-change-notice": { stage: "requested" },
};
const WITH_CODE = new Set<IdentityMailTemplate>(["verification-code", "recovery-code", "email-change-code"]);

describe("identity mail templates", () => {
  for (const locale of MAIL_LOCALES) {
    for (const [template, data] of Object.entries(EXAMPLES)) {
      it(`${template} (${locale}): text and HTML, the product escaped, the code in the body only`, () => {
        const mail = render({ template, locale, data });
        expect(mail.subject).toContain("Acme <ID> & Co");
        expect(mail.subject).not.toContain(CODE);
        expect(mail.text).toContain("Acme <ID> & Co");
        expect(mail.html).toContain("Acme &lt;ID&gt; &amp; Co");
        expect(mail.html).not.toContain("<ID>");
        expect(mail.html).toContain(`<html lang="${locale}">`);
        const hasCode = WITH_CODE.has(template as IdentityMailTemplate);
        expect(mail.text.includes(CODE)).toBe(hasCode);
        expect(mail.html.includes(CODE)).toBe(hasCode);
      });
    }
  }

  it("German is German, and the other languages fall back to English", () => {
    const de = render({ template: "verification-code", locale: "de-AT", data: EXAMPLES["verification-code"] });
    expect(de.subject).toBe("Bestätigen Sie Ihre E-Mail-Adresse für Acme <ID> & Co");
    expect(de.text).toContain("innerhalb von 15 Minuten");
    const fr = render({ template: "verification-code", locale: "fr", data: EXAMPLES["verification-code"] });
    expect(fr.subject).toBe("Verify your email address for Acme <ID> & Co");
    expect([mailLocale("DE"), mailLocale("de_CH"), mailLocale("en-GB"), mailLocale("pt")]).toEqual([
      "de",
      "de",
      "en",
      "en",
    ]);
    const confirmed = render({ template: "email-change-notice", locale: "en", data: { stage: "confirmed" } });
    expect(confirmed.subject).toBe("Your Acme <ID> & Co email address was changed");
  });

  it("an unknown template or bad data is a MailRenderError naming the field, not the value", () => {
    expect(() => render({ template: "welcome", locale: "en", data: {} })).toThrow(
      new MailRenderError("unknown template welcome"),
    );
    const secretish = "<script>alert(1)</script>";
    let caught: unknown;
    try {
      render({ template: "recovery-code", locale: "en", data: { code: secretish, expiresInMinutes: 15 } });
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(MailRenderError);
    expect((caught as Error).name).toBe("MailRenderError");
    expect((caught as Error).message).toBe("template recovery-code: data.code must be 4 to 32 letters or digits");
    expect(() =>
      render({ template: "email-change-code", locale: "de", data: { code: CODE, expiresInMinutes: 0 } }),
    ).toThrow("template email-change-code: data.expiresInMinutes must be a positive integer");
    expect(() => render({ template: "email-change-notice", locale: "de", data: {} })).toThrow(
      'template email-change-notice: data.stage must be "requested" or "confirmed"',
    );
  });

  it("identityMail types the data a template needs", () => {
    expect(identityMail("ada@example.test", "recovery-code", "de", { code: CODE, expiresInMinutes: 10 })).toEqual({
      recipient: "ada@example.test",
      template: "recovery-code",
      locale: "de",
      data: { code: CODE, expiresInMinutes: 10 },
    });
  });

  it("a German mail crosses a real SMTP server with its umlauts, both parts and its language intact", async () => {
    const server = await startSmtpServer();
    cleanups.push(() => server.close());
    const transport = createSmtpTransport({ host: server.host, port: server.port, secure: false, startTls: "off" });
    const mail = render({ template: "recovery-code", locale: "de", data: EXAMPLES["recovery-code"] });
    const id = "01a0c7b3-0000-7000-8000-0000000000aa";
    const from = "Acme <no-reply@acme.example>";
    await transport.send({
      id,
      template: "recovery-code",
      messageId: messageIdFor(id, from),
      from,
      to: "ada@example.test",
      ...mail,
      locale: "de",
      date: new Date(),
    });
    const [received] = await server.waitForMessages(1);
    const parsed = await simpleParser(received?.raw ?? Buffer.alloc(0));
    expect(parsed.subject).toBe("Passwort für Acme <ID> & Co zurücksetzen");
    expect(parsed.text).toBe(mail.text);
    expect(parsed.html).toBe(mail.html);
    expect(parsed.messageId).toBe(`<${id}@acme.example>`);
    expect(parsed.headers.get("content-language")).toBe("de");
  });
});
