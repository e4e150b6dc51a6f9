/**
 * The endpoints a browser (or a relying party on a customer's behalf) uses:
 *
 * - `GET /oauth2/authorize` (RFC 6749 §4.1.1, RFC 7636, OpenID Connect Core
 *   §3.1.2): `response_type=code` with an S256 `code_challenge`; the client
 *   and its exactly matching redirect_uri are checked first, and an error
 *   about them is an HTML page, never a redirect; any later error goes back
 *   to the redirect_uri (§4.1.2.1). A valid request gets the hosted sign-in
 *   page;
 * - `POST /oauth2/authorize`: the page's form (sign-in, then consent for a
 *   third-party client), CSRF-protected by a token bound to the request
 *   (stored hashed with it, in a hidden field and a SameSite=Strict cookie);
 *   the password is checked by AuthenticateCustomer's own code
 *   (passwordSignIn: the same limits, throttle and answers); then the code
 *   and `state` go back to the client (303);
 * - the sign-up and recovery pages of a pending request (`GET
 *   /oauth2/authorize/{sign-in,sign-up,recovery}?request_id=…`, the same
 *   cookie, their forms posted to `POST /oauth2/authorize`): StartSignUp,
 *   CompleteSignUp, StartRecovery and CompleteRecovery's own cores (the same
 *   limits, rules and answers); a sign-up signs the new customer in for the
 *   request as a password sign-in does, a recovery goes back to sign-in;
 * - `GET`/`POST /oauth2/userinfo` (Core §5.3): the customer of a Bearer
 *   access token with `openid`;
 * - `GET /oauth2/logout` (RP-Initiated Logout 1.0): ends the session of the
 *   `id_token_hint` (revokeSessions, TokensRevoked) and goes back to a
 *   registered post_logout_redirect_uri, or shows that the customer is
 *   signed out.
 */
import type { ServerResponse } from "node:http";
import type { Http2ServerResponse } from "node:http2";
import { create, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { createValidator } from "@bufbuild/protovalidate";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  CompleteRecoveryRequestSchema,
  CompleteSignUpRequestSchema,
  StartRecoveryRequestSchema,
  StartSignUpRequestSchema,
} from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type { NodeHandlerFn } from "@customer-platform/runtime/health";
import { addressLimitKey, peerContextValues } from "@customer-platform/runtime/interceptors";
import type { Logger } from "@customer-platform/runtime/logger";
import { eq } from "drizzle-orm";
import { jwtVerify } from "jose";
import { clients, identities } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { type ClientRow, clientAudiences } from "../routes/authenticate-client.js";
import { passwordSignIn } from "../routes/authenticate-customer.js";
import { recoveryCompleter } from "../routes/complete-recovery.js";
import { signUpCompleter } from "../routes/complete-sign-up.js";
import { recoveryStarter } from "../routes/start-recovery.js";
import { signUpStarter } from "../routes/start-sign-up.js";
import { isAccessTokenRevoked, revokeSession, USER_AGENT_MAX_LENGTH } from "../sessions.js";
import { verifyIssuedAccessToken } from "../tokens.js";
import {
  AUTHORIZATION_REQUEST_TTL_SEC,
  type AuthorizationRequest,
  CODE_FLOW_SCOPES,
  createAuthorizationRequest,
  denyAuthorizationRequest,
  findAuthorizationRequest,
  issueAuthorizationCode,
  recordPageSignIn,
  recordPageSignInTx,
  SCOPE_EMAIL,
} from "./authorization.js";
import { OAuthError } from "./errors.js";
import { type NodeRequest, readForm } from "./form.js";
import {
  type CodeFlow,
  codePage,
  consentPage,
  emailPage,
  errorPage,
  PAGE_PATHS,
  signedOutPage,
  signInPage,
} from "./pages.js";

/** Where the browser endpoints are served, relative to the issuer (discovery names them: well-known.ts). */
export const BROWSER_PATHS = {
  authorization: "/oauth2/authorize",
  userinfo: "/oauth2/userinfo",
  endSession: "/oauth2/logout",
} as const;

/** The claims userinfo and ID tokens may carry (discovery's claims_supported). */
export const CLAIMS = ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "sid", "email", "email_verified"];

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** RFC 7636 §4.2: BASE64URL of a SHA-256 is 43 characters of the unreserved set. */
const S256_CHALLENGE = /^[A-Za-z0-9_-]{43}$/;
/** The longest state or nonce kept (they come back in a URL or a token). */
const MAX_ECHO_CHARS = 512;

type NodeResponse = ServerResponse | Http2ServerResponse;

/** A redirect back to the client with the parameters of RFC 6749 §4.1.2 / §4.1.2.1. */
class RedirectBack extends Error {
  constructor(
    readonly to: string,
    readonly params: Record<string, string | null | undefined>,
  ) {
    super("redirect");
  }
}

/** An error for the browser's eyes only (RFC 6749 §4.1.2.1: never redirected to an unverified URI). */
class PageError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    override readonly message: string,
  ) {
    super(message);
  }
}

/** The request moved on while a sign-up was completing (another tab): the sign-up is rolled back. */
class RequestMoved extends Error {}

/** Serves the browser endpoints; anything else goes to next. */
export function browserHandler(deps: AuthServiceDeps, opts: { logger: Logger }, next: NodeHandlerFn): NodeHandlerFn {
  const log = opts.logger.child({}, { redact: [] });
  const checkPassword = passwordSignIn(deps);
  const startSignUp = signUpStarter(deps);
  const completeSignUp = signUpCompleter(deps);
  const startRecovery = recoveryStarter(deps);
  const completeRecovery = recoveryCompleter(deps);
  const validator = createValidator();
  const issuer = deps.tokens.issuer;
  const secureCookies = issuer.startsWith("https://");
  const cookieName = (requestId: string) => `${secureCookies ? "__Host-" : ""}authz-${requestId}`;

  const findClient = async (clientId: string): Promise<ClientRow | undefined> => {
    const [row] = await deps.db.select().from(clients).where(eq(clients.clientId, clientId));
    return row;
  };

  const clientAddress = (req: NodeRequest) => {
    const forwarded = req.headers["x-forwarded-for"];
    const header = new Headers();
    if (typeof forwarded === "string") header.set("x-forwarded-for", forwarded);
    return deps.clientAddress({ values: peerContextValues(req), requestHeader: header });
  };

  return (req, res) => {
    const [path = "", query = ""] = (req.url ?? "").split("?", 2);
    const endpoint =
      Object.entries(BROWSER_PATHS).find(([, p]) => p === path)?.[0] ??
      (Object.values(PAGE_PATHS) as string[]).find((p) => p === path);
    if (!endpoint) return next(req, res);
    const start = performance.now();
    const facts: { clientId?: string; outcome?: string } = {};
    const done = (status: number) =>
      log.info({ endpoint: path, ...facts, status, ms: Math.round(performance.now() - start) }, "oauth");
    const handle = async (): Promise<number> => {
      const r = req as NodeRequest;
      const w = res as NodeResponse;
      if (endpoint === "userinfo") return userinfo(r, w);
      const pageName = (Object.keys(PAGE_PATHS) as (keyof typeof PAGE_PATHS)[]).find((k) => PAGE_PATHS[k] === path);
      if (pageName) {
        if (req.method !== "GET") throw new PageError(405, "Method not allowed", "Use GET.");
        return requestPage(pageName, new URLSearchParams(query), r, w, facts);
      }
      if (endpoint === "endSession") {
        if (req.method !== "GET") throw new PageError(405, "Method not allowed", "Use GET.");
        return logout(new URLSearchParams(query), w, facts);
      }
      if (req.method === "GET") return authorize(new URLSearchParams(query), r, w, facts);
      if (req.method === "POST") return authorizePost(r, w, facts);
      throw new PageError(405, "Method not allowed", "Use GET or POST.");
    };
    handle().then(done, (err: unknown) => {
      let status = 500;
      try {
        if (err instanceof RedirectBack) {
          facts.outcome = err.params.error ?? "redirect";
          status = redirect(res as NodeResponse, err.to, err.params);
        } else if (err instanceof PageError) {
          facts.outcome = "error page";
          status = html(res as NodeResponse, err.status, errorPage(err.title, err.message));
        } else {
          opts.logger.error({ err, endpoint: path }, "oauth endpoint failed");
          const unavailable = err instanceof ConnectError && err.code === Code.Unavailable;
          status = html(
            res as NodeResponse,
            unavailable ? 503 : 500,
            errorPage("Something went wrong", "Please try again in a moment."),
          );
        }
      } catch {
        // The client went away: nobody to answer.
      }
      done(status);
    });
  };

  /** GET /oauth2/authorize: checks the request, stores it, answers the sign-in page. */
  async function authorize(
    params: URLSearchParams,
    req: NodeRequest,
    res: NodeResponse,
    facts: { clientId?: string },
  ): Promise<number> {
    // Each request stores a row: limited per address as sign-in is (a bucket of its own, the same limit).
    try {
      await deps.rateLimits.authorize.consume(addressLimitKey(clientAddress(req)));
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.ResourceExhausted) {
        throw new PageError(
          429,
          "Too many requests",
          "Too many sign-in requests from your network. Wait a moment and try again.",
        );
      }
      throw err;
    }
    const repeated = [...new Set([...params.keys()].filter((k) => params.getAll(k).length > 1))];
    const one = (name: string) => (params.getAll(name).length === 1 ? params.get(name) || undefined : undefined);
    const clientId = one("client_id");
    if (!clientId) throw new PageError(400, "Invalid request", "The application did not say who it is (client_id).");
    const client = await findClient(clientId);
    if (!client || client.disabledAt) {
      throw new PageError(400, "Unknown application", "This application is not registered with us.");
    }
    facts.clientId = client.clientId;
    const redirectUri = one("redirect_uri");
    // Exact string comparison (RFC 6749 §3.1.2.3, OAuth 2.1): no normalisation, no prefix matching.
    if (!redirectUri || !client.redirectUris.includes(redirectUri)) {
      throw new PageError(
        400,
        "Invalid request",
        "The redirect URI (redirect_uri) the application sent is not registered for it.",
      );
    }
    const state = one("state");
    const back = (error: string, description: string) =>
      new RedirectBack(redirectUri, { error, error_description: description, state, iss: issuer });
    if (state && state.length > MAX_ECHO_CHARS) throw back("invalid_request", "state is too long");
    if (repeated.length > 0) throw back("invalid_request", "a parameter is repeated");
    if (!client.grantTypes.includes("authorization_code")) {
      throw back("unauthorized_client", "the client may not use the authorization code grant");
    }
    if (one("request") !== undefined) throw back("request_not_supported", "request objects are not supported");
    if (one("request_uri") !== undefined) throw back("request_uri_not_supported", "request_uri is not supported");
    const responseType = one("response_type");
    if (responseType === undefined) throw back("invalid_request", "response_type is required");
    if (responseType !== "code") throw back("unsupported_response_type", "only response_type=code is supported");
    const responseMode = one("response_mode");
    if (responseMode !== undefined && responseMode !== "query") {
      throw back("invalid_request", "only response_mode=query is supported");
    }
    const challenge = one("code_challenge");
    if (challenge === undefined) throw back("invalid_request", "code_challenge is required (PKCE, S256)");
    if (one("code_challenge_method") !== "S256") throw back("invalid_request", "code_challenge_method must be S256");
    if (!S256_CHALLENGE.test(challenge)) throw back("invalid_request", "code_challenge is malformed");
    const nonce = one("nonce");
    if (nonce && nonce.length > MAX_ECHO_CHARS) throw back("invalid_request", "nonce is too long");
    const requested = [...new Set((one("scope") ?? "").split(" ").filter(Boolean))];
    const allowed = client.scopes.filter((s) => (CODE_FLOW_SCOPES as readonly string[]).includes(s));
    const scopes = requested.length > 0 ? requested : allowed;
    if (scopes.length === 0 || !scopes.every((s) => allowed.includes(s))) {
      throw back("invalid_scope", "a scope the client may not ask a customer for");
    }
    let audiences: string[];
    try {
      audiences = clientAudiences(client, params.getAll("resource"));
    } catch {
      throw back("invalid_target", "a resource the client may not ask for");
    }
    // There is no sign-in session in the browser to reuse: prompt=none cannot be answered without the page.
    if ((one("prompt") ?? "").split(" ").includes("none")) throw back("login_required", "the customer must sign in");
    const request = await createAuthorizationRequest(deps, {
      clientId: client.clientId,
      redirectUri,
      state,
      nonce,
      scope: scopes.join(" "),
      audiences,
      codeChallenge: challenge,
    });
    return html(
      res,
      200,
      signInPage({
        requestId: request.id,
        csrfToken: request.csrfToken,
        clientName: client.description || client.clientId,
      }),
      {
        "set-cookie": cookie(cookieName(request.id), request.csrfToken),
      },
    );
  }

  /** POST /oauth2/authorize: the sign-in form, then the consent form. */
  async function authorizePost(
    req: NodeRequest,
    res: NodeResponse,
    facts: { clientId?: string; outcome?: string },
  ): Promise<number> {
    const form = await readForm(req).catch((err: unknown) => {
      if (err instanceof OAuthError) throw new PageError(err.status, "Invalid request", "The form could not be read.");
      throw err;
    });
    const requestId = form.one("request_id") ?? "";
    const csrfToken = form.one("csrf_token") ?? "";
    const { request, client } = await loadRequest(req, requestId, csrfToken, facts);
    const action = form.one("action") ?? "sign_in";
    const page = { requestId, csrfToken };
    const expired = expiredPage();
    const signInFor = (customerId: string, rehash: string | undefined) => ({
      customerId,
      rehash,
      client: { userAgent: userAgent(req), ipAddress: clientAddress(req) },
    });
    /** After a sign-in (a password, or a sign-up just completed): consent for a third-party client, else the code. */
    const signedIn = () => {
      if (!client.firstParty) {
        return html(
          res,
          200,
          consentPage({
            ...page,
            clientId: client.clientId,
            clientDescription: client.description,
            scopes: request.scope.split(" "),
          }),
        );
      }
      return codeBack(res, request, facts);
    };
    if (request.stage === "pending" && (action === "sign_up_start" || action === "recover_start")) {
      const flow: CodeFlow = action === "sign_up_start" ? "sign-up" : "recovery";
      const email = (form.one("email") ?? "").trim();
      const again = (status: number, error: string) => {
        facts.outcome = `${flow} refused`;
        return html(res, status, emailPage({ ...page, flow, email, error }));
      };
      const schema = flow === "sign-up" ? StartSignUpRequestSchema : StartRecoveryRequestSchema;
      const invalid = contractError(schema, { email });
      if (invalid) return again(400, invalid);
      try {
        await (flow === "sign-up" ? startSignUp : startRecovery)({ email, locale: "" }, clientAddress(req));
      } catch (err) {
        const refused = refusal(err);
        return again(refused.status, refused.error);
      }
      facts.outcome = `${flow} code`;
      return html(res, 200, codePage({ ...page, flow, email }));
    }
    if (request.stage === "pending" && (action === "sign_up_complete" || action === "recover_complete")) {
      const flow: CodeFlow = action === "sign_up_complete" ? "sign-up" : "recovery";
      const email = (form.one("email") ?? "").trim();
      const code = (form.one("code") ?? "").trim();
      const password = form.one("password") ?? "";
      const again = (status: number, error: string) => {
        facts.outcome = `${flow} refused`;
        return html(res, status, codePage({ ...page, flow, email, error }));
      };
      if (flow === "recovery") {
        const invalid = contractError(CompleteRecoveryRequestSchema, { email, code, newPassword: password });
        if (invalid) return again(400, invalid);
        try {
          // The pages are in English, and so are their mails (locale "": mail/templates.ts mailLocale).
          await completeRecovery({ email, code, newPassword: password, locale: "" }, clientAddress(req));
        } catch (err) {
          const refused = refusal(err);
          return again(refused.status, refused.error);
        }
        facts.outcome = "password reset";
        const clientName = client.description || client.clientId;
        return html(res, 200, signInPage({ ...page, clientName, email, notice: "Password changed, sign in." }));
      }
      const invalid = contractError(CompleteSignUpRequestSchema, { email, code, password });
      if (invalid) return again(400, invalid);
      const next = client.firstParty ? "signed-in" : "consent";
      try {
        await completeSignUp({ email, code, password }, clientAddress(req), async (tx, customerId) => {
          // In the sign-up's transaction: a request that moved on meanwhile leaves no account behind.
          if (!(await recordPageSignInTx(tx, deps, requestId, signInFor(customerId, undefined), next))) {
            throw new RequestMoved();
          }
        });
      } catch (err) {
        if (err instanceof RequestMoved) throw expired;
        const refused = refusal(err);
        return again(refused.status, refused.error);
      }
      facts.outcome = "signed up";
      return signedIn();
    }
    if (request.stage === "pending" && action === "sign_in") {
      const email = form.one("email") ?? "";
      const password = form.one("password") ?? "";
      const again = (status: number, error: string) => {
        facts.outcome = "sign-in refused";
        return html(
          res,
          status,
          signInPage({ ...page, clientName: client.description || client.clientId, email, error }),
        );
      };
      if (!email || !password) return again(400, "Enter your email and password.");
      let checked: Awaited<ReturnType<typeof checkPassword>>;
      try {
        checked = await checkPassword(email, password, clientAddress(req));
      } catch (err) {
        if (!(err instanceof ConnectError)) throw err;
        if (err.code === Code.Unauthenticated) return again(401, "Invalid email or password.");
        if (err.code === Code.ResourceExhausted) return again(429, "Too many attempts. Wait a moment and try again.");
        if (err.code === Code.FailedPrecondition) {
          return again(
            403,
            err.rawMessage === "account disabled" ? "This account is disabled." : capitalize(err.rawMessage),
          );
        }
        throw err;
      }
      const next = client.firstParty ? "signed-in" : "consent";
      const signIn = signInFor(checked.identity.customerId, checked.rehash);
      if (!(await recordPageSignIn(deps, requestId, signIn, next))) throw expired;
      return signedIn();
    }
    if (request.stage === "consent" && action === "allow") return codeBack(res, request, facts);
    if (request.stage === "consent" && action === "deny") {
      if (!(await denyAuthorizationRequest(deps, requestId))) throw expired;
      throw new RedirectBack(request.redirectUri, {
        error: "access_denied",
        error_description: "the customer did not allow access",
        state: request.state,
        iss: issuer,
      });
    }
    throw expired;
  }

  /**
   * The live request a form or page belongs to, checked as a double submit
   * bound to the request: the token (the form's hidden field, or on a GET
   * the cookie itself), the cookie and the stored hash must all agree; and
   * its client, still enabled.
   */
  async function loadRequest(
    req: NodeRequest,
    requestId: string,
    csrfToken: string,
    facts: { clientId?: string },
  ): Promise<{ request: AuthorizationRequest; client: ClientRow }> {
    const expired = expiredPage();
    if (!UUID.test(requestId)) throw expired;
    const cookieValue = cookies(req)[cookieName(requestId)];
    const forbidden = new PageError(403, "Invalid request", "The form could not be verified. Go back and start again.");
    if (!csrfToken || cookieValue !== csrfToken) throw forbidden;
    const request = await findAuthorizationRequest(deps, requestId, csrfToken);
    if (request === "csrf") throw forbidden;
    if (!request) throw expired;
    facts.clientId = request.clientId;
    const client = await findClient(request.clientId);
    if (!client || client.disabledAt) {
      throw new PageError(400, "Unknown application", "This application is not registered with us.");
    }
    return { request, client };
  }

  /** GET /oauth2/authorize/{sign-in,sign-up,recovery}: a page of a request still waiting for its sign-in. */
  async function requestPage(
    name: keyof typeof PAGE_PATHS,
    params: URLSearchParams,
    req: NodeRequest,
    res: NodeResponse,
    facts: { clientId?: string },
  ): Promise<number> {
    const requestId = params.get("request_id") ?? "";
    // A link carries no token: the cookie is the token, as SameSite=Strict sends it only from our own pages.
    const csrfToken = UUID.test(requestId) ? (cookies(req)[cookieName(requestId)] ?? "") : "";
    const { request, client } = await loadRequest(req, requestId, csrfToken, facts);
    if (request.stage !== "pending") throw expiredPage();
    const page = { requestId, csrfToken };
    if (name === "sign-in") {
      return html(res, 200, signInPage({ ...page, clientName: client.description || client.clientId }));
    }
    return html(res, 200, emailPage({ ...page, flow: name }));
  }

  /** The contract's rules (the RPC request's protovalidate constraints) on a form: the first broken one, in words. */
  function contractError<S extends DescMessage>(schema: S, init: MessageInitShape<S>): string | undefined {
    const result = validator.validate(schema, create(schema, init));
    if (result.kind === "valid") return undefined;
    if (result.kind === "error") throw result.error;
    const [violation] = result.violations;
    const field = violation?.field[0];
    const name = field && "name" in field ? field.name : "";
    if (name === "email") return "Enter a valid email address.";
    if (name === "code") return "Enter the 8-digit code from the mail.";
    const words = `${name ? "Password " : ""}${violation?.message ?? "is not valid"}`;
    return `${words.charAt(0).toUpperCase()}${words.slice(1)}.`;
  }

  async function codeBack(res: NodeResponse, request: AuthorizationRequest, facts: { outcome?: string }) {
    const code = await issueAuthorizationCode(deps, request.id);
    if (!code) throw new PageError(400, "Sign-in expired", "This sign-in was already completed.");
    facts.outcome = "code";
    return redirect(res, request.redirectUri, { code, state: request.state, iss: issuer });
  }

  /** GET or POST /oauth2/userinfo with a Bearer access token (RFC 6750 §2.1). */
  async function userinfo(req: NodeRequest, res: NodeResponse): Promise<number> {
    const cors = { "access-control-allow-origin": "*" };
    if (req.method !== "GET" && req.method !== "POST") {
      return json(res, 405, { error: "invalid_request" }, { allow: "GET, POST", ...cors });
    }
    const challenge = (error: string, status: number) =>
      json(res, status, { error }, { "www-authenticate": `Bearer error="${error}"`, ...cors });
    const [scheme, token, extra] = (req.headers.authorization ?? "").trim().split(/ +/);
    if (scheme?.toLowerCase() !== "bearer" || !token || extra !== undefined) {
      return json(res, 401, { error: "invalid_token" }, { "www-authenticate": "Bearer", ...cors });
    }
    const issued = await verifyIssuedAccessToken(deps.keys, deps.tokens, token);
    const principal = issued?.principal;
    if (principal?.kind !== "customer" || (await isAccessTokenRevoked(deps.db, principal))) {
      return challenge("invalid_token", 401);
    }
    if (!principal.scopes.has("openid")) return challenge("insufficient_scope", 403);
    const [identity] = await deps.db
      .select({ email: identities.email, emailVerifiedAt: identities.emailVerifiedAt })
      .from(identities)
      .where(eq(identities.customerId, principal.subject));
    if (!identity) return challenge("invalid_token", 401);
    const withEmail = principal.scopes.has(SCOPE_EMAIL) && identity.emailVerifiedAt !== null;
    return json(
      res,
      200,
      { sub: principal.subject, ...(withEmail && { email: identity.email, email_verified: true }) },
      cors,
    );
  }

  /** GET /oauth2/logout (OpenID Connect RP-Initiated Logout 1.0). */
  async function logout(params: URLSearchParams, res: NodeResponse, facts: { clientId?: string }): Promise<number> {
    const one = (name: string) => (params.getAll(name).length === 1 ? params.get(name) || undefined : undefined);
    const hint = one("id_token_hint");
    if (!hint) throw new PageError(400, "Cannot sign out", "The application did not say which sign-in to end.");
    let claims: { sub?: string; sid?: unknown; aud?: string | string[] };
    try {
      // An expired ID token still names its session (RP-Initiated Logout §2): its age is bounded by a session's.
      ({ payload: claims } = await jwtVerify(hint, deps.keys.getKey, {
        issuer,
        typ: "JWT",
        currentDate: deps.keys.now(),
        clockTolerance: deps.tokens.sessionMaxLifetimeSec,
      }));
    } catch {
      throw new PageError(400, "Cannot sign out", "The application sent a sign-in we do not recognise.");
    }
    const aud = typeof claims.aud === "string" ? claims.aud : claims.aud?.[0];
    const clientId = one("client_id") ?? aud;
    if (!aud || clientId !== aud || typeof claims.sid !== "string" || !UUID.test(claims.sid) || !claims.sub) {
      throw new PageError(400, "Cannot sign out", "The application sent a sign-in we do not recognise.");
    }
    facts.clientId = aud;
    const after = one("post_logout_redirect_uri");
    if (after !== undefined) {
      const client = await findClient(aud);
      if (!client?.postLogoutRedirectUris.includes(after)) {
        throw new PageError(
          400,
          "Invalid request",
          "The post_logout_redirect_uri the application sent is not registered for it.",
        );
      }
    }
    await revokeSession(deps, { customerId: claims.sub, familyId: claims.sid }, deps.now());
    if (after === undefined) return html(res, 200, signedOutPage());
    return redirect(res, after, { state: one("state") });
  }
}

/** This page's request is gone (expired, completed, or never existed). */
const expiredPage = () =>
  new PageError(400, "Sign-in expired", "This sign-in page has expired. Go back to the application and start again.");

/**
 * A sign-up or recovery core's expected refusal as the form shows it: a
 * broken rule or a wrong code (INVALID_ARGUMENT, `field: message [rule]`,
 * passwords.ts fieldError) re-renders the form with its message, a limit is
 * 429; anything else is unexpected.
 */
function refusal(err: unknown): { status: number; error: string } {
  if (!(err instanceof ConnectError)) throw err;
  if (err.code === Code.ResourceExhausted) {
    return { status: 429, error: "Too many attempts. Wait a moment and try again." };
  }
  if (err.code === Code.InvalidArgument) {
    const m = /^(\w+): (.*) \[[^\]]+\]$/.exec(err.rawMessage);
    if (m?.[1] === "code") return { status: 400, error: "Invalid or expired code." };
    if (m) return { status: 400, error: `Password ${m[2]}.` };
  }
  throw err;
}

/** 303 to `to` with `params` added to its query (RFC 6749 §4.1.2: the registered URI's own query kept). */
function redirect(res: NodeResponse, to: string, params: Record<string, string | null | undefined>): number {
  const url = new URL(to);
  for (const [k, v] of Object.entries(params)) if (v) url.searchParams.append(k, v);
  res.writeHead(303, { location: url.href, "cache-control": "no-store", "referrer-policy": "no-referrer" });
  res.end();
  return 303;
}

function html(res: NodeResponse, status: number, body: string, headers: Record<string, string> = {}): number {
  res.writeHead(status, {
    "content-type": "text/html; charset=utf-8",
    "cache-control": "no-store",
    // The forms post to us; the answer to a post may redirect to the client (form-action covers redirects).
    "content-security-policy":
      "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'; base-uri 'none'",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    ...headers,
  });
  res.end(body);
  return status;
}

function json(res: NodeResponse, status: number, body: unknown, headers: Record<string, string> = {}): number {
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store", ...headers });
  res.end(JSON.stringify(body));
  return status;
}

/** The CSRF cookie of one request: HttpOnly, SameSite=Strict, for the form's path, as long as the request lives. */
function cookie(name: string, value: string): string {
  const secure = name.startsWith("__Host-");
  // __Host- cookies must have Path=/ (RFC 6265bis); on plain http (loopback) the name has no prefix.
  return `${name}=${value}; ${secure ? "Path=/; Secure; " : "Path=/oauth2/authorize; "}HttpOnly; SameSite=Strict; Max-Age=${AUTHORIZATION_REQUEST_TTL_SEC}`;
}

function cookies(req: NodeRequest): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of (req.headers.cookie ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0) out[part.slice(0, eq).trim()] = part.slice(eq + 1).trim();
  }
  return out;
}

const capitalize = (s: string) => s.charAt(0).toUpperCase() + s.slice(1);

/** The User-Agent as a session keeps it (sessions.ts sessionClient): cut short, null if absent. */
function userAgent(req: NodeRequest): string | null {
  const ua = req.headers["user-agent"];
  return typeof ua === "string" && ua ? ua.slice(0, USER_AGENT_MAX_LENGTH) : null;
}
