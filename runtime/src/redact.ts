/**
 * The one way a URL reaches a log line or an error message: with whatever
 * authenticates replaced by `***`. Database URLs, the NATS URL and any other
 * URL a service or a script prints go through redactUrl.
 */

/** What replaces a secret. */
const MASK = "***";

// NATS reads a user without a password as a token (`nats://<token>@host`).
const TOKEN_SCHEMES = new Set(["nats:", "tls:", "ws:", "wss:"]);
// Query parameters that carry a secret in the URLs drivers accept (e.g. libpq's `?password=`).
const SECRET_PARAMS = /^(password|pass|passwd|sslpassword|token|secret)$/i;

/**
 * `raw` with its password (and a NATS token, and secret query parameters)
 * replaced by `***`; the scheme, user, host, port and path stay readable.
 * Never throws: text that is no URL is masked by pattern.
 */
export function redactUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return raw.replace(/\/\/[^/@\s]*@/g, (userinfo) =>
      userinfo.includes(":") ? userinfo.replace(/:[^@]*@$/, `:${MASK}@`) : `//${MASK}@`,
    );
  }
  if (url.password) url.password = MASK;
  else if (url.username && TOKEN_SCHEMES.has(url.protocol)) url.username = MASK;
  // Rewritten only when needed: setting a parameter re-encodes the whole query.
  for (const key of new Set(url.searchParams.keys())) {
    if (SECRET_PARAMS.test(key)) url.searchParams.set(key, MASK);
  }
  return url.toString();
}
