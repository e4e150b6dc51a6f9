/**
 * The OAuth 2.0 form endpoints over the same code as the RPCs (routes/):
 *
 * - `POST /oauth2/token` (RFC 6749 §3.2): `client_credentials` for
 *   confidential clients (AuthenticateClient's checks and token),
 *   `authorization_code` with PKCE (oauth/authorization.ts: the customer
 *   session of a sign-in, and an ID token for `openid`), and
 *   `refresh_token` for the first-party public client and the clients
 *   registered for it (RefreshToken's rotation and reuse detection);
 *   `resource` (RFC 8707, repeatable) names the audiences;
 * - `POST /oauth2/revoke` (RFC 7009): RevokeToken's revocation, a refresh
 *   token only by the client it was issued to;
 * - `POST /oauth2/introspect` (RFC 7662): IntrospectToken's answer, for a
 *   confidential client holding `identity:introspect`.
 *
 * Same database, same tokens, sessions, revocations and TokensRevoked
 * events as the RPCs. Requests are bounded forms (form.ts); errors are RFC
 * 6749 §5.2 JSON (errors.ts). A log line per request names the endpoint,
 * grant, client and outcome, never a secret or a token.
 */
import { create, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { createValidator } from "@bufbuild/protovalidate";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AuthenticateClientRequestSchema,
  RefreshTokenRequestSchema,
} from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import type { NodeHandlerFn } from "@customer-platform/runtime/health";
import type { Logger } from "@customer-platform/runtime/logger";
import { SCOPE_IDENTITY_INTROSPECT } from "@customer-platform/sdk/scopes";
import { eq } from "drizzle-orm";
import { clients } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import {
  type ClientRow,
  clientAudiences,
  clientAuthenticator,
  clientScope,
  issueClientToken,
} from "../routes/authenticate-client.js";
import { type Introspection, tokenIntrospector } from "../routes/introspect-token.js";
import { refreshTokenGrant } from "../routes/refresh-token.js";
import { tokenRevoker } from "../routes/revoke-token.js";
import { CUSTOMER_SCOPE, type TokenSetInit } from "../sessions.js";
import { exchangeAuthorizationCode, signIdToken } from "./authorization.js";
import { invalidClient, invalidRequest, OAuthError } from "./errors.js";
import { type ClientCredentials, clientCredentials, type FormParams, type NodeRequest, readForm } from "./form.js";

/** Where the endpoints are served, relative to the issuer (discovery names them: well-known.ts). */
export const OAUTH_PATHS = {
  token: "/oauth2/token",
  revocation: "/oauth2/revoke",
  introspection: "/oauth2/introspect",
} as const;

/** The grant types the token endpoint serves. */
export const GRANT_TYPES = ["authorization_code", "client_credentials", "refresh_token"] as const;

/** How clients authenticate at each endpoint (RFC 8414 `*_auth_methods_supported`). */
export const AUTH_METHODS = {
  // `none`: public clients (the first-party app, a registered --public client) by their client_id.
  token: ["client_secret_basic", "client_secret_post", "none"],
  revocation: ["client_secret_basic", "client_secret_post", "none"],
  introspection: ["client_secret_basic", "client_secret_post"],
} as const;

/** The longest token revocation and introspection look at (the RPCs' max_len); a longer one is none of ours. */
const MAX_TOKEN_CHARS = 8192;

type Endpoint = keyof typeof OAUTH_PATHS;
const ENDPOINTS = new Map<string, Endpoint>(
  Object.entries(OAUTH_PATHS).map(([name, path]) => [path, name as Endpoint]),
);

/** An answer: status and JSON body (none for a revocation). */
interface Answer {
  readonly status: number;
  readonly body?: unknown;
}

/** Serves the OAuth endpoints; anything else goes to next. */
export function oauthHandler(deps: AuthServiceDeps, opts: { logger: Logger }, next: NodeHandlerFn): NodeHandlerFn {
  const endpoints = createEndpoints(deps);
  // The line's keys are these, never a secret's (as the rpc line: no redaction walk).
  const log = opts.logger.child({}, { redact: [] });
  return (req, res) => {
    const path = req.url?.split("?")[0] ?? "";
    const endpoint = ENDPOINTS.get(path);
    if (!endpoint) return next(req, res);
    const start = performance.now();
    const facts: RequestFacts = {};
    const answer = (status: number, body: unknown, headers: Record<string, string> = {}) => {
      const text = body === undefined ? "" : JSON.stringify(body);
      try {
        res.writeHead(status, {
          ...(body !== undefined && { "content-type": "application/json; charset=utf-8" }),
          // RFC 6749 §5.1: token responses (and here every answer) must not be cached.
          "cache-control": "no-store",
          pragma: "no-cache",
          ...headers,
        });
        res.end(text);
      } catch {
        // The client went away (its request errored): nobody to answer.
      }
      const outcome = body && typeof body === "object" && "error" in body ? body.error : "ok";
      log.info({ endpoint: path, ...facts, status, outcome, ms: Math.round(performance.now() - start) }, "oauth");
    };
    const handle = async (): Promise<Answer> => {
      if (req.method !== "POST") throw new OAuthError("invalid_request", "use POST", 405, { allow: "POST" });
      const form = await readForm(req as NodeRequest);
      const client = clientCredentials(req as NodeRequest, form);
      return endpoints[endpoint](form, client, facts);
    };
    handle().then(
      (a) => answer(a.status, a.body),
      (err: unknown) => {
        if (err instanceof OAuthError) {
          answer(err.status, { error: err.error, error_description: err.description }, { ...err.headers });
          return;
        }
        const unavailable = err instanceof ConnectError && err.code === Code.Unavailable;
        opts.logger.error({ err, endpoint: path }, "oauth endpoint failed");
        if (unavailable) answer(503, { error: "temporarily_unavailable" });
        else answer(500, { error: "server_error" });
      },
    );
  };
}

/** What the request log line may say about a request (never a secret or a token). */
interface RequestFacts {
  /** Once authenticated, or the first-party public client: an unchecked client_id may be a pasted secret. */
  clientId?: string;
  grantType?: string;
}

type EndpointFn = (form: FormParams, client: ClientCredentials, facts: RequestFacts) => Promise<Answer>;

function createEndpoints(deps: AuthServiceDeps): Record<Endpoint, EndpointFn> {
  const authenticate = clientAuthenticator(deps);
  const refresh = refreshTokenGrant(deps);
  const revoke = tokenRevoker(deps);
  const introspect = tokenIntrospector(deps);
  const validator = createValidator();
  const isPublicFirstParty = (c: ClientCredentials) => c.method === "none" && c.clientId === deps.firstPartyClientId;

  /** A registered public client (no secret), by its client_id; invalid_client for anything else. */
  const registeredPublic = async (clientId: string, facts: RequestFacts): Promise<ClientRow> => {
    const [row] = await deps.db.select().from(clients).where(eq(clients.clientId, clientId));
    if (!row?.isPublic) throw invalidClient("unknown public client", false);
    if (row.disabledAt) throw invalidClient("client disabled", false);
    facts.clientId = row.clientId;
    return row;
  };

  /** The client of a request to the token endpoint: a public one by id, a confidential one by its secret. */
  const anyClient = (client: ClientCredentials, facts: RequestFacts): Promise<ClientRow> =>
    client.method === "none" ? registeredPublic(client.clientId, facts) : confidential(client, facts);

  /** unauthorized_client unless the client is registered for the grant. */
  const requireGrant = (row: ClientRow, grant: string) => {
    if (!row.grantTypes.includes(grant)) {
      throw new OAuthError("unauthorized_client", `the client is not registered for ${grant}`);
    }
  };

  /** A confidential client whose credentials hold; invalid_client otherwise. */
  const confidential = async (client: ClientCredentials, facts: RequestFacts): Promise<ClientRow> => {
    const triedBasic = client.method === "client_secret_basic";
    if (client.method === "anonymous") throw invalidClient("client authentication required", false);
    if (client.method === "none") {
      throw invalidClient(
        client.clientId === deps.firstPartyClientId
          ? "this endpoint wants a confidential client's credentials"
          : "client authentication required",
        false,
      );
    }
    try {
      const row = await authenticate(client.clientId, client.secret);
      facts.clientId = row.clientId;
      return row;
    } catch (err) {
      if (err instanceof ConnectError && (err.code === Code.Unauthenticated || err.code === Code.FailedPrecondition)) {
        throw invalidClient(err.rawMessage, triedBasic);
      }
      throw err;
    }
  };

  /** The contract's rules (the RPC request's protovalidate constraints) for the fields an OAuth request fills. */
  const check = <S extends DescMessage>(schema: S, init: MessageInitShape<S>, errors: Record<string, OAuthError>) => {
    const result = validator.validate(schema, create(schema, init));
    if (result.kind === "valid") return;
    if (result.kind === "error") throw result.error;
    for (const violation of result.violations) {
      const field = violation.field[0];
      const name = field && "name" in field ? field.name : "";
      const error = errors[name];
      if (error) throw error;
    }
    throw invalidRequest(result.error.message);
  };

  const resources = (form: FormParams) => form.all("resource");
  const invalidTarget = (description: string) => new OAuthError("invalid_target", description);

  return {
    async token(form, client, facts) {
      const grantType = form.one("grant_type");
      if (grantType === undefined) throw invalidRequest("grant_type is required");
      if (!(GRANT_TYPES as readonly string[]).includes(grantType)) {
        throw new OAuthError("unsupported_grant_type", `supported: ${GRANT_TYPES.join(", ")}`);
      }
      facts.grantType = grantType;
      if (grantType === "authorization_code") return { status: 200, body: await codeGrant(form, client, facts) };
      const tokens =
        grantType === "client_credentials"
          ? await clientCredentialsGrant(form, client, facts)
          : await refreshGrant(form, client, facts);
      return { status: 200, body: tokenResponse(tokens) };
    },

    async revocation(form, client, facts) {
      // The first-party app is public: its client_id is all it has (RFC 7009 §2.1).
      const publicClient = isPublicFirstParty(client);
      if (publicClient) facts.clientId = deps.firstPartyClientId;
      const clientId = publicClient ? deps.firstPartyClientId : (await anyClient(client, facts)).clientId;
      const token = form.one("token");
      if (token === undefined) throw invalidRequest("token is required");
      // token_type_hint is only a hint (RFC 7009 §2.1): the token's form tells which it is.
      if (token.length > MAX_TOKEN_CHARS) return { status: 200 };
      const outcome = await revoke(token, { clientId });
      if (outcome === "other-client") {
        throw new OAuthError("unauthorized_client", "the token was not issued to this client");
      }
      // An unknown or invalid token is answered like a revoked one (RFC 7009 §2.2).
      return { status: 200 };
    },

    async introspection(form, client, facts) {
      const caller = await confidential(client, facts);
      if (!caller.scopes.includes(SCOPE_IDENTITY_INTROSPECT)) {
        throw new OAuthError(
          "unauthorized_client",
          `introspection requires the scope ${SCOPE_IDENTITY_INTROSPECT}`,
          403,
        );
      }
      const token = form.one("token");
      if (token === undefined) throw invalidRequest("token is required");
      if (token.length > MAX_TOKEN_CHARS) return { status: 200, body: { active: false } };
      return { status: 200, body: introspectionResponse(await introspect(token, caller.clientId), deps.tokens.issuer) };
    },
  };

  async function clientCredentialsGrant(
    form: FormParams,
    client: ClientCredentials,
    facts: RequestFacts,
  ): Promise<TokenSetInit> {
    // RFC 6749 §4.4: confidential clients only.
    if (isPublicFirstParty(client)) {
      throw new OAuthError("unauthorized_client", "client_credentials is for confidential clients");
    }
    const row = await confidential(client, facts);
    requireGrant(row, "client_credentials");
    const scope = form.one("scope") ?? "";
    const audience = resources(form);
    // The client and its secret were checked above; the contract's rules are wanted for scope and audience.
    check(
      AuthenticateClientRequestSchema,
      { clientId: row.clientId, clientSecret: "checked", scope, audience },
      {
        scope: new OAuthError("invalid_scope", "scope is malformed"),
        audience: invalidTarget("resource must be 1 to 8 distinct audience names of printable ASCII"),
      },
    );
    const granted = mapDenied(() => clientScope(row, scope), "invalid_scope");
    const audiences = mapDenied(() => clientAudiences(row, audience), "invalid_target");
    return issueClientToken(deps, row, granted, audiences);
  }

  /** RFC 6749 §4.1.3 with RFC 7636 §4.5: the code, the same redirect_uri, the PKCE verifier; an ID token for openid. */
  async function codeGrant(form: FormParams, client: ClientCredentials, facts: RequestFacts) {
    if (client.method === "anonymous") throw invalidClient("client_id is required", false);
    const row = await anyClient(client, facts);
    requireGrant(row, "authorization_code");
    const code = form.one("code");
    if (code === undefined) throw invalidRequest("code is required");
    if (code.length > 256) throw new OAuthError("invalid_grant", "invalid authorization code");
    const exchanged = await exchangeAuthorizationCode(deps, {
      code,
      clientId: row.clientId,
      redirectUri: form.one("redirect_uri"),
      verifier: form.one("code_verifier"),
    });
    if (typeof exchanged === "string") {
      throw new OAuthError("invalid_grant", CODE_REFUSALS[exchanged]);
    }
    const body = tokenResponse(exchanged.tokens);
    if (!row.grantTypes.includes("refresh_token")) delete body.refresh_token;
    if (exchanged.scope.split(" ").includes("openid")) {
      body.id_token = await signIdToken(deps, { ...exchanged, clientId: row.clientId });
    }
    return body;
  }

  async function refreshGrant(form: FormParams, client: ClientCredentials, facts: RequestFacts): Promise<TokenSetInit> {
    if (client.method === "anonymous") throw invalidClient("client_id is required", false);
    // Refresh tokens are refreshed by the client they were issued to (RFC 6749 §6): the first-party app,
    // or a client registered for refresh_token (its sessions come from the authorization code grant).
    let clientId = deps.firstPartyClientId;
    let sessionScope = CUSTOMER_SCOPE.split(" ");
    if (!isPublicFirstParty(client)) {
      const row = await anyClient(client, facts);
      if (!row.grantTypes.includes("refresh_token")) {
        throw new OAuthError("unauthorized_client", "the client is not registered for refresh_token");
      }
      clientId = row.clientId;
      sessionScope = row.scopes;
    }
    facts.clientId = clientId;
    const refreshToken = form.one("refresh_token");
    if (refreshToken === undefined) throw invalidRequest("refresh_token is required");
    // The session's scope is kept (RFC 6749 §6): a scope not in it is refused; a narrower one is not supported.
    const scope = form.one("scope");
    if (scope !== undefined) {
      const session = sessionScope;
      const outside = scope.split(" ").filter((s) => s && !session.includes(s));
      if (outside.length > 0) throw new OAuthError("invalid_scope", "a refresh keeps the session's scope");
    }
    const audience = resources(form);
    check(
      RefreshTokenRequestSchema,
      { refreshToken, audience },
      {
        refresh_token: new OAuthError("invalid_grant", "invalid refresh token"),
        audience: invalidTarget("resource must be 1 to 8 distinct audience names of printable ASCII"),
      },
    );
    try {
      return await refresh(refreshToken, audience, clientId);
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
        throw new OAuthError("invalid_grant", err.rawMessage);
      }
      if (err instanceof ConnectError && err.code === Code.PermissionDenied) throw invalidTarget(err.rawMessage);
      throw err;
    }
  }
}

/** What invalid_grant says for each reason a code is refused. */
const CODE_REFUSALS = {
  unknown: "invalid authorization code",
  "other-client": "invalid authorization code",
  reused: "the authorization code was used before; the session it issued is revoked",
  expired: "the authorization code has expired",
  "redirect-uri": "redirect_uri is not the one of the authorization request",
  pkce: "code_verifier does not match the code_challenge",
  identity: "the account cannot sign in",
} as const;

/** A PERMISSION_DENIED of the shared code as the OAuth error that means it here; anything else unchanged. */
function mapDenied<T>(fn: () => T, error: "invalid_scope" | "invalid_target"): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof ConnectError && err.code === Code.PermissionDenied) throw new OAuthError(error, err.rawMessage);
    throw err;
  }
}

/** RFC 6749 §5.1, with the granted `scope` always named (it may differ from the request's, §3.3). */
function tokenResponse(t: TokenSetInit): Record<string, unknown> {
  return {
    access_token: t.accessToken,
    token_type: t.tokenType,
    expires_in: t.expiresIn,
    ...(t.refreshToken && { refresh_token: t.refreshToken }),
    scope: t.scope,
  };
}

/** RFC 7662 §2.2: `{"active": false}` and nothing else for an inactive token. */
function introspectionResponse(i: Introspection, issuer: string): Record<string, unknown> {
  if (!i.active) return { active: false };
  return {
    active: true,
    iss: issuer,
    sub: i.sub,
    client_id: i.clientId,
    scope: i.scope,
    exp: Number(i.exp),
    iat: Number(i.iat),
    token_type: i.tokenType,
    aud: i.aud,
  };
}
