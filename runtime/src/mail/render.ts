/**
 * What the deliverer asks of the service that queued a mail: turn its
 * template, locale and data into a subject, a plain-text body and an HTML
 * body. The service owns its templates (identity: identity-service's
 * mail/templates.ts); the runtime only sends what they make.
 */

/** A mail as its template made it. */
export interface RenderedMail {
  readonly subject: string;
  readonly text: string;
  readonly html: string;
}

/** A queued mail as the renderer sees it (the recipient is not the template's business). */
export interface MailToRender {
  readonly template: string;
  readonly locale: string;
  readonly data: Readonly<Record<string, unknown>>;
}

/**
 * Renders a queued mail; throws a {@link MailRenderError} for an unknown
 * template or missing data, and the deliverer gives that mail up (rendering
 * it again would fail again).
 */
export type MailRenderer = (mail: MailToRender) => RenderedMail;

/** A mail that cannot be rendered. Its message names the template or field, never a value: it is logged. */
export class MailRenderError extends Error {
  override name = "MailRenderError";
}

/** `text` with the five characters that matter in HTML text and attribute values escaped. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c] ?? c);
}

const HTML_ESCAPES: Record<string, string> = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
