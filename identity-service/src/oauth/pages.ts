/**
 * The hosted pages of the authorization endpoint: sign-in, consent, signed
 * out and errors. Server-rendered HTML that works without JavaScript: one
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
}

/** The sign-in form: `email`, `password`, a submit button named `action` with value `sign_in`. */
export function signInPage(p: SignInPage): string {
  const error = p.error ? `<p class="error" id="error" role="alert">${escapeHtml(p.error)}</p>\n` : "";
  return layout(
    "Sign in",
    `<p>to continue to <strong>${escapeHtml(p.clientName)}</strong></p>
${error}<form method="post" action="/oauth2/authorize" id="sign-in">
${requestFields(p.requestId, p.csrfToken)}
<label for="email">Email</label>
<input type="email" name="email" id="email" autocomplete="username" required value="${escapeHtml(p.email ?? "")}"${p.email ? "" : " autofocus"}>
<label for="password">Password</label>
<input type="password" name="password" id="password" autocomplete="current-password" required${p.email ? " autofocus" : ""}>
<button type="submit" name="action" value="sign_in" id="sign-in-button">Sign in</button>
</form>`,
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
