/**
 * The authorization code flow's state (RFC 6749 §4.1, RFC 7636, OpenID
 * Connect Core §3.1): pending authorization requests with their CSRF token,
 * the one-time code, its exchange for the same customer session as a
 * sign-in (sessions.ts newCustomerSession), and the ID token. Tokens,
 * refresh-token families, `sid`, revocations and TokensRevoked are the RPCs'.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { enqueueEvent } from "@customer-platform/runtime/outbox-writer";
import { and, eq, gt, inArray, isNotNull } from "drizzle-orm";
import { SignJWT } from "jose";
import { authorizationRequests, identities, refreshTokens } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { AuthenticationMethod, customerAuthenticatedEvent, TokenRevocationReason } from "../events.js";
import {
  newCustomerSession,
  revokeSessions,
  type SessionClient,
  type TokenSetInit,
  verifiedEmail,
} from "../sessions.js";
import { hashToken } from "../tokens.js";

/** How long a sign-in page works (the request row lives as long). */
export const AUTHORIZATION_REQUEST_TTL_SEC = 600;
/** How long an authorization code works (RFC 6749 §4.1.2: short, at most ten minutes recommended). */
export const AUTHORIZATION_CODE_TTL_SEC = 60;
/** The scopes a customer may grant a client in the code flow; `email` adds the email claims. */
export const CODE_FLOW_SCOPES = ["openid", "email", "profile", "customer:self"] as const;
export const SCOPE_EMAIL = "email";

export type AuthorizationRequest = typeof authorizationRequests.$inferSelect;

/** What a validated authorization request stores. */
export interface NewAuthorizationRequest {
  clientId: string;
  redirectUri: string;
  state: string | undefined;
  nonce: string | undefined;
  scope: string;
  audiences: string[];
  codeChallenge: string;
}

const randomToken = () => randomBytes(32).toString("base64url");

/** Stores a pending request; its id and CSRF token (only the token's hash is stored). */
export async function createAuthorizationRequest(
  deps: Pick<AuthServiceDeps, "db" | "now">,
  r: NewAuthorizationRequest,
): Promise<{ id: string; csrfToken: string }> {
  const id = uuidv7();
  const csrfToken = randomToken();
  const now = deps.now();
  await deps.db.insert(authorizationRequests).values({
    id,
    csrfHash: hashToken(csrfToken),
    clientId: r.clientId,
    redirectUri: r.redirectUri,
    state: r.state ?? null,
    nonce: r.nonce ?? null,
    scope: r.scope,
    audiences: r.audiences,
    codeChallenge: r.codeChallenge,
    stage: "pending",
    createdAt: now,
    expiresAt: new Date(now.getTime() + AUTHORIZATION_REQUEST_TTL_SEC * 1000),
  });
  return { id, csrfToken };
}

/**
 * A live request whose CSRF token is `csrfToken` (compared by hash in
 * constant time); undefined for an unknown or expired one, "csrf" for a
 * wrong token.
 */
export async function findAuthorizationRequest(
  deps: Pick<AuthServiceDeps, "db" | "now">,
  id: string,
  csrfToken: string,
): Promise<AuthorizationRequest | "csrf" | undefined> {
  const [row] = await deps.db
    .select()
    .from(authorizationRequests)
    .where(and(eq(authorizationRequests.id, id), gt(authorizationRequests.expiresAt, deps.now())));
  if (!row) return undefined;
  return timingSafeEqual(hashToken(csrfToken), row.csrfHash) ? row : "csrf";
}

/**
 * Records a sign-in on the page as AuthenticateCustomer records it (the
 * identity's last_sign_in_at, its upgraded hash, CustomerAuthenticated), and
 * moves the request on to `next`, in one transaction; false if the request
 * was not pending any more (a second tab, a replayed form).
 */
export function recordPageSignIn(
  deps: Pick<AuthServiceDeps, "db" | "events" | "now">,
  requestId: string,
  signIn: PageSignIn,
  next: "consent" | "signed-in",
): Promise<boolean> {
  return deps.db.transaction((tx) => recordPageSignInTx(tx, deps, requestId, signIn, next));
}

/** A sign-in on the hosted pages: who, an upgraded password hash, and the browser's session details. */
export interface PageSignIn {
  customerId: string;
  rehash: string | undefined;
  client: SessionClient;
}

type Tx = Parameters<Parameters<AuthServiceDeps["db"]["transaction"]>[0]>[0];

/** recordPageSignIn within the caller's transaction (a sign-up on the page creates the identity in it). */
export async function recordPageSignInTx(
  tx: Tx,
  deps: Pick<AuthServiceDeps, "events" | "now">,
  requestId: string,
  signIn: PageSignIn,
  next: "consent" | "signed-in",
): Promise<boolean> {
  const { customerId, rehash, client } = signIn;
  const now = deps.now();
  const moved = await tx
    .update(authorizationRequests)
    .set({ stage: next, customerId, authTime: now, userAgent: client.userAgent, ipAddress: client.ipAddress })
    .where(and(eq(authorizationRequests.id, requestId), eq(authorizationRequests.stage, "pending")))
    .returning({ id: authorizationRequests.id });
  if (moved.length === 0) return false;
  await tx
    .update(identities)
    .set({
      lastSignInAt: now,
      ...(rehash && { passwordHash: rehash, updatedAt: now }),
    })
    .where(eq(identities.customerId, customerId));
  await enqueueEvent(
    tx,
    customerAuthenticatedEvent(deps.events, customerId, AuthenticationMethod.PASSWORD, now),
    deps.events,
  );
  return true;
}

/**
 * Issues the request's one-time code (only its hash is stored), valid for
 * AUTHORIZATION_CODE_TTL_SEC, once the customer signed in (and consented);
 * undefined if the request is not at that stage.
 */
export async function issueAuthorizationCode(
  deps: Pick<AuthServiceDeps, "db" | "now">,
  requestId: string,
): Promise<string | undefined> {
  const code = randomToken();
  const now = deps.now();
  const rows = await deps.db
    .update(authorizationRequests)
    .set({
      stage: "code",
      codeHash: hashToken(code),
      codeExpiresAt: new Date(now.getTime() + AUTHORIZATION_CODE_TTL_SEC * 1000),
      // Kept after the code expires, so that a code replayed later still revokes the session it issued.
      expiresAt: new Date(now.getTime() + AUTHORIZATION_REQUEST_TTL_SEC * 1000),
    })
    .where(
      and(
        eq(authorizationRequests.id, requestId),
        inArray(authorizationRequests.stage, ["consent", "signed-in"]),
        isNotNull(authorizationRequests.customerId),
      ),
    )
    .returning({ id: authorizationRequests.id });
  return rows.length > 0 ? code : undefined;
}

/** Ends a request the customer refused (consent denied); false if it was not waiting for consent. */
export async function denyAuthorizationRequest(deps: Pick<AuthServiceDeps, "db">, requestId: string): Promise<boolean> {
  const rows = await deps.db
    .update(authorizationRequests)
    .set({ stage: "denied" })
    .where(and(eq(authorizationRequests.id, requestId), eq(authorizationRequests.stage, "consent")))
    .returning({ id: authorizationRequests.id });
  return rows.length > 0;
}

/** RFC 7636 §4.6: BASE64URL(SHA256(code_verifier)) == code_challenge. */
export function pkceMatches(verifier: string, challenge: string): boolean {
  if (!/^[A-Za-z0-9._~-]{43,128}$/.test(verifier)) return false;
  const computed = Buffer.from(createHash("sha256").update(verifier, "ascii").digest("base64url"));
  const expected = Buffer.from(challenge);
  return computed.length === expected.length && timingSafeEqual(computed, expected);
}

/** Why a code was refused (all `invalid_grant`); "reused" has revoked the session it issued. */
export type CodeRefusal = "unknown" | "reused" | "other-client" | "expired" | "redirect-uri" | "pkce" | "identity";

/** A code exchanged: the session's tokens, and what the ID token needs. */
export interface ExchangedCode {
  tokens: TokenSetInit;
  customerId: string;
  sessionId: string;
  email: string | null;
  nonce: string | null;
  authTime: Date;
  scope: string;
}

/**
 * Exchanges a code (RFC 6749 §4.1.3, RFC 7636 §4.6): the client it was
 * issued to, the same redirect_uri, the verifier of its challenge, within
 * its minute, once. The session (refresh-token family) is written and the
 * code marked used in one transaction. A code used before is refused and
 * the session it issued revoked (TokensRevoked in the same transaction, RFC
 * 6749 §4.1.2).
 */
export async function exchangeAuthorizationCode(
  deps: AuthServiceDeps,
  code: { code: string; clientId: string; redirectUri: string | undefined; verifier: string | undefined },
): Promise<ExchangedCode | CodeRefusal> {
  const now = deps.now();
  // The signing key before anything is written: with none live, nothing is consumed.
  deps.keys.current();
  return deps.db.transaction(async (tx): Promise<ExchangedCode | CodeRefusal> => {
    const [row] = await tx
      .select()
      .from(authorizationRequests)
      .where(eq(authorizationRequests.codeHash, hashToken(code.code)))
      .for("update");
    if (!row?.customerId || !row.authTime) return "unknown";
    if (row.clientId !== code.clientId) return "other-client";
    if (row.stage === "used") {
      if (row.familyId) {
        await revokeSessions(
          tx,
          deps,
          { customerId: row.customerId, familyId: row.familyId },
          TokenRevocationReason.REVOKED,
          now,
        );
      }
      return "reused";
    }
    if (row.stage !== "code" || !row.codeExpiresAt || row.codeExpiresAt <= now) return "expired";
    if (code.redirectUri !== row.redirectUri) return "redirect-uri";
    if (code.verifier === undefined || !pkceMatches(code.verifier, row.codeChallenge)) return "pkce";
    const [identity] = await tx
      .select({ email: identities.email, emailVerifiedAt: identities.emailVerifiedAt, status: identities.status })
      .from(identities)
      .where(eq(identities.customerId, row.customerId));
    if (identity?.status !== "active") return "identity";
    const email = verifiedEmail(identity);
    const session = await newCustomerSession(deps, row.customerId, {
      audiences: row.audiences,
      email,
      clientId: row.clientId,
      scope: row.scope,
      client: { userAgent: row.userAgent, ipAddress: row.ipAddress },
    });
    await tx.insert(refreshTokens).values(session.row);
    await tx
      .update(authorizationRequests)
      .set({ stage: "used", familyId: session.row.familyId ?? session.row.id })
      .where(eq(authorizationRequests.id, row.id));
    return {
      tokens: session.tokens,
      customerId: row.customerId,
      sessionId: session.row.familyId ?? session.row.id,
      email,
      nonce: row.nonce,
      authTime: row.authTime,
      scope: row.scope,
    };
  });
}

/**
 * An OpenID Connect ID token (Core §2), signed with the access tokens' key
 * store: `typ` JWT, iss, sub, aud (the client), exp, iat, auth_time, sid,
 * nonce when the request had one, and email/email_verified when the scope
 * has `email` and the email is verified.
 */
export async function signIdToken(
  deps: Pick<AuthServiceDeps, "keys" | "tokens">,
  c: {
    customerId: string;
    clientId: string;
    sessionId: string;
    nonce: string | null;
    authTime: Date;
    email: string | null;
    scope: string;
  },
): Promise<string> {
  const key = deps.keys.current();
  const iat = Math.floor(deps.keys.now().getTime() / 1000);
  const withEmail = c.scope.split(" ").includes(SCOPE_EMAIL) && c.email !== null;
  return new SignJWT({
    auth_time: Math.floor(c.authTime.getTime() / 1000),
    sid: c.sessionId,
    ...(c.nonce !== null && { nonce: c.nonce }),
    ...(withEmail && { email: c.email, email_verified: true }),
  })
    .setProtectedHeader({ alg: key.alg, typ: "JWT", kid: key.kid })
    .setIssuer(deps.tokens.issuer)
    .setSubject(c.customerId)
    .setAudience(c.clientId)
    .setIssuedAt(iat)
    .setExpirationTime(iat + deps.tokens.accessTokenTtlSec)
    .sign(key.privateKey);
}
