/**
 * OAuth 2.0 error answers (RFC 6749 §5.2, RFC 7009 §2.2.1, RFC 7662 §2.3,
 * RFC 8707 §2): JSON `{ error, error_description }`, never echoing what the
 * client sent (a secret or a token would be in it).
 */

/** The error codes the endpoints answer with. */
export type OAuthErrorCode =
  | "invalid_request"
  | "invalid_client"
  | "invalid_grant"
  | "unauthorized_client"
  | "unsupported_grant_type"
  | "invalid_scope"
  | "invalid_target"
  | "server_error"
  | "temporarily_unavailable";

/** An error answer: thrown by the endpoint code, written by the handler. */
export class OAuthError extends Error {
  override readonly name = "OAuthError";
  constructor(
    readonly error: OAuthErrorCode,
    readonly description: string,
    /** The HTTP status; RFC 6749 §5.2 says 400 unless told otherwise. */
    readonly status = 400,
    readonly headers: Readonly<Record<string, string>> = {},
  ) {
    super(`${error}: ${description}`);
  }
}

/**
 * `invalid_client`: 401, and when the client tried HTTP Basic, the
 * `WWW-Authenticate` challenge RFC 6749 §5.2 requires then.
 */
export function invalidClient(description: string, triedBasic: boolean): OAuthError {
  return new OAuthError(
    "invalid_client",
    description,
    401,
    triedBasic ? { "www-authenticate": 'Basic realm="oauth2", charset="UTF-8"' } : {},
  );
}

/** `invalid_request`. */
export const invalidRequest = (description: string, status = 400) =>
  new OAuthError("invalid_request", description, status);
