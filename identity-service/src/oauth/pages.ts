/**
 * The hosted pages of the authorization endpoint: sign-in, sign-up and
 * password recovery (an email page, then a code and new password page),
 * consent, signed out and errors. Server-rendered HTML that works without JavaScript: one
 * form per page, every field labelled, `lang`, stable `name`/`id`s, the CSRF
 * token in a hidden input. Every value is escaped.
 */

/** Escapes text for HTML content and quoted attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const STYLE = `body{font-family:system-ui,sans-serif;max-width:26rem;margin:3rem auto;padding:0 1rem;line-height:1.5}
label{display:block;margin-top:1rem;font-weight:600}input[type=email],input[type=password]{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}
button{margin-top:1.5rem;padding:.6rem 1.2rem;font-size:1rem}.error{color:#a00;border:1px solid #a00;padding:.5rem}
.notice{color:#060;border:1px solid #060;padding:.5rem}nav{margin-top:1.5rem}nav a{display:block;margin-top:.3rem}
input[type=text]{width:100%;padding:.5rem;font-size:1rem;box-sizing:border-box}
ul{padding-left:1.2rem}`;

function layout(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<main>
<h1>${escapeHtml(title)}</h1>
${body}
</main>
</body>
</html>
`;
}

/** The hidden fields every form of a request posts back. */
function requestFields(requestId: string, csrfToken: string): string {
  return `<input type="hidden" name="request_id" id="request_id" value="${escapeHtml(requestId)}">
<input type="hidden" name="csrf_token" id="csrf_token" value="${escapeHtml(csrfToken)}">`;
}

/** What the sign-in page shows. */
export interface SignInPage {
  requestId: string;
  csrfToken: string;
  /** The client's description (or id), to say where the customer is signing in to. */
  clientName: string;
  /** The email typed before a failed attempt, kept in its field. */
  email?: string;
  /** Why the last attempt failed: generic, never whether the email exists. */
  error?: string;
  /** What just happened (a password changed by recovery). */
  notice?: string;
}

/** Where the pages of a pending request are (GET, with `request_id`; the request's cookie is sent there). */
export const PAGE_PATHS = {
  "sign-in": "/oauth2/authorize/sign-in",
  "sign-up": "/oauth2/authorize/sign-up",
  recovery: "/oauth2/authorize/recovery",
} as const;

const pageUrl = (page: keyof typeof PAGE_PATHS, requestId: string) =>
  `${PAGE_PATHS[page]}?request_id=${encodeURIComponent(requestId)}`;

const errorLine = (error: string | undefined) =>
  error ? `<p class="error" id="error" role="alert">${escapeHtml(error)}</p>\n` : "";

/**
 * The sign-in form: `email`, `password`, a submit button named `action` with
 * value `sign_in`; links to sign-up (`#sign-up-link`) and recovery
 * (`#recovery-link`) for the same request.
 */
export function signInPage(p: SignInPage): string {
  const notice = p.notice ? `<p class="notice" id="notice" role="status">${escapeHtml(p.notice)}</p>\n` : "";
  return layout(
    "Sign in",
    `<p>to continue to <strong>${escapeHtml(p.clientName)}</strong></p>
${notice}${errorLine(p.error)}<form method="post" action="/oauth2/authorize" id="sign-in">
${requestFields(p.requestId, p.csrfToken)}
<label for="email">Email</label>
<input type="email" name="email" id="email" autocomplete="username" required value="${escapeHtml(p.email ?? "")}"${p.email ? "" : " autofocus"}>
<label for="password">Password</label>
<input type="password" name="password" id="password" autocomplete="current-password" required${p.email ? " autofocus" : ""}>
<button type="submit" name="action" value="sign_in" id="sign-in-button">Sign in</button>
</form>
<nav>
<a href="${escapeHtml(pageUrl("sign-up", p.requestId))}" id="sign-up-link">Create an account</a>
<a href="${escapeHtml(pageUrl("recovery", p.requestId))}" id="recovery-link">Forgot your password?</a>
</nav>`,
  );
}

/** Sign-up or recovery: which flow an email or code page belongs to. */
export type CodeFlow = "sign-up" | "recovery";

const FLOW_TEXT = {
  "sign-up": {
    title: "Create an account",
    intro: "Enter your email address. We will mail you a code to confirm it.",
    start: "sign_up_start",
    complete: "sign_up_complete",
    codeTitle: "Confirm your email",
    // The same words whether or not the address has an account (StartSignUp answers the same).
    sent: "We sent a code to %s, unless it already has an account: then we mailed its owner instead.",
    password: "Choose a password",
    button: "Create account",
  },
  recovery: {
    title: "Reset your password",
    intro: "Enter the email address of your account. We will mail you a code.",
    start: "recover_start",
    complete: "recover_complete",
    codeTitle: "Choose a new password",
    sent: "If %s has an account, we sent a code to it.",
    password: "New password",
    button: "Change password",
  },
} as const;

/** What the first page of sign-up or recovery shows. */
export interface EmailPage {
  flow: CodeFlow;
  requestId: string;
  csrfToken: string;
  email?: string;
  error?: string;
}

/** The email form of sign-up or recovery: `email`, a submit button `action` = `sign_up_start` / `recover_start`. */
export function emailPage(p: EmailPage): string {
  const t = FLOW_TEXT[p.flow];
  return layout(
    t.title,
    `<p>${escapeHtml(t.intro)}</p>
${errorLine(p.error)}<form method="post" action="/oauth2/authorize" id="${p.flow}-email">
${requestFields(p.requestId, p.csrfToken)}
<label for="email">Email</label>
<input type="email" name="email" id="email" autocomplete="email" required autofocus value="${escapeHtml(p.email ?? "")}">
<button type="submit" name="action" value="${t.start}" id="send-code">Send code</button>
</form>
<nav><a href="${escapeHtml(pageUrl("sign-in", p.requestId))}" id="sign-in-link">Back to sign in</a></nav>`,
  );
}

/** What the second page of sign-up or recovery shows. */
export interface CodePage {
  flow: CodeFlow;
  requestId: string;
  csrfToken: string;
  email: string;
  error?: string;
}

/**
 * The code form of sign-up or recovery: `code`, `password` (the new one),
 * the `email` hidden, a submit button `action` = `sign_up_complete` /
 * `recover_complete`.
 */
export function codePage(p: CodePage): string {
  const t = FLOW_TEXT[p.flow];
  const [before, after] = t.sent.split("%s");
  return layout(
    t.codeTitle,
    `<p id="code-sent">${escapeHtml(before ?? "")}<strong>${escapeHtml(p.email)}</strong>${escapeHtml(after ?? "")}</p>
${errorLine(p.error)}<form method="post" action="/oauth2/authorize" id="${p.flow}-code">
${requestFields(p.requestId, p.csrfToken)}
<input type="hidden" name="email" id="email" value="${escapeHtml(p.email)}">
<label for="code">Code from the mail</label>
<input type="text" name="code" id="code" inputmode="numeric" pattern="[0-9]{8}" maxlength="8" autocomplete="one-time-code" required autofocus>
<label for="password">${escapeHtml(t.password)}</label>
<input type="password" name="password" id="password" autocomplete="new-password" minlength="8" required>
<button type="submit" name="action" value="${t.complete}" id="complete">${escapeHtml(t.button)}</button>
</form>
<nav><a href="${escapeHtml(pageUrl(p.flow, p.requestId))}" id="start-again-link">Send a new code</a>
<a href="${escapeHtml(pageUrl("sign-in", p.requestId))}" id="sign-in-link">Back to sign in</a></nav>`,
  );
}

/** What the consent page shows. */
export interface ConsentPage {
  requestId: string;
  csrfToken: string;
  clientId: string;
  clientDescription: string;
  scopes: readonly string[];
}

/** What each scope means, in the customer's words. */
const SCOPE_TEXT: Record<string, string> = {
  openid: "Know who you are (your account id)",
  email: "See your email address",
  profile: "See your basic profile",
  "customer:self": "Read and change your customer profile",
};

/** The consent form: two submit buttons named `action`, `allow` and `deny`. */
export function consentPage(p: ConsentPage): string {
  const items = p.scopes.map((s) => `<li>${escapeHtml(SCOPE_TEXT[s] ?? s)} <code>${escapeHtml(s)}</code></li>`);
  const about = p.clientDescription ? `<p id="client-description">${escapeHtml(p.clientDescription)}</p>\n` : "";
  return layout(
    "Allow access?",
    `<p><strong>${escapeHtml(p.clientId)}</strong> asks to:</p>
${about}<ul id="scopes">
${items.join("\n")}
</ul>
<form method="post" action="/oauth2/authorize" id="consent">
${requestFields(p.requestId, p.csrfToken)}
<button type="submit" name="action" value="allow" id="allow">Allow</button>
<button type="submit" name="action" value="deny" id="deny">Deny</button>
</form>`,
  );
}

/** A page for an error that must not go back to the client (an unknown client, an unregistered redirect URI). */
export function errorPage(title: string, message: string): string {
  return layout(title, `<p id="error" role="alert">${escapeHtml(message)}</p>`);
}

/** After RP-initiated logout without a redirect back. */
export function signedOutPage(): string {
  return layout("Signed out", `<p id="signed-out">You are signed out. You can close this window.</p>`);
}
