/**
 * A token issuer for tests of resource servers: its own key pair, its JWKS
 * served over loopback, and access tokens shaped like the identity
 * provider's (RFC 9068). Verification against it is the real code path.
 */
import { randomUUID } from "node:crypto";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from "jose";

export interface TokenClaims {
  sub: string;
  clientId?: string;
  scope?: string;
  aud?: string;
  iss?: string;
  /** Seconds from now; negative for an expired token. */
  expiresIn?: number;
  /** Seconds from now for `nbf`. */
  notBefore?: number;
  typ?: string;
  kid?: string;
  /** The customer's verified login email: claims `email` and `email_verified: true`, as the identity service issues them. */
  email?: string;
}

/** The email `TestIssuer.customer` puts in a customer's token unless told another. */
export function customerEmail(customerId: string): string {
  return `customer.${customerId.slice(0, 8)}@example.com`;
}

export interface TestIssuer extends AsyncDisposable {
  readonly issuer: string;
  readonly audience: string;
  readonly jwksUrl: string;
  /** A signed access token for sub (a customer id, or a client id for a service). */
  issue(claims: TokenClaims): Promise<string>;
  /**
   * A customer token for customerId, with its verified `email` (default
   * `customerEmail(customerId)`). For a token without an email, `issue({ sub })`.
   */
  customer(customerId: string, email?: string): Promise<string>;
  /** A service token with the given scopes. */
  service(clientId: string, scope: string): Promise<string>;
  /** How many times the JWKS was fetched. */
  readonly jwksFetches: number;
  /** Adds a new signing key (rotation): later tokens use it. */
  rotate(): Promise<void>;
  close(): Promise<void>;
}

/** Starts a JWKS server on 127.0.0.1 and returns an issuer signing with EdDSA. */
export async function startTestIssuer(opts: { audience?: string } = {}): Promise<TestIssuer> {
  const keys: Array<{ kid: string; privateKey: CryptoKey; jwk: JWK }> = [];
  const addKey = async () => {
    const { privateKey, publicKey } = await generateKeyPair("EdDSA", { extractable: true });
    const kid = randomUUID();
    keys.push({ kid, privateKey, jwk: { ...(await exportJWK(publicKey)), kid, alg: "EdDSA", use: "sig" } });
  };
  await addKey();
  let fetches = 0;
  const server = createServer((req, res) => {
    if (req.url === "/.well-known/jwks.json") {
      fetches++;
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ keys: keys.map((k) => k.jwk) }));
      return;
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const audience = opts.audience ?? "customer-service";

  const issue = async (c: TokenClaims) => {
    const key = keys[keys.length - 1];
    if (!key) throw new Error("no key");
    const now = Math.floor(Date.now() / 1000);
    const jwt = new SignJWT({
      client_id: c.clientId ?? "first-party",
      scope: c.scope ?? "",
      ...(c.email !== undefined && { email: c.email, email_verified: true }),
    })
      .setProtectedHeader({ alg: "EdDSA", typ: c.typ ?? "at+jwt", kid: c.kid ?? key.kid })
      .setIssuer(c.iss ?? base)
      .setAudience(c.aud ?? audience)
      .setSubject(c.sub)
      .setJti(randomUUID())
      .setIssuedAt(now)
      .setExpirationTime(now + (c.expiresIn ?? 900));
    if (c.notBefore !== undefined) jwt.setNotBefore(now + c.notBefore);
    return jwt.sign(key.privateKey);
  };
  const close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return {
    issuer: base,
    audience,
    jwksUrl: `${base}/.well-known/jwks.json`,
    issue,
    customer: (customerId, email = customerEmail(customerId)) => issue({ sub: customerId, email }),
    service: (clientId, scope) => issue({ sub: clientId, clientId, scope }),
    get jwksFetches() {
      return fetches;
    },
    rotate: addKey,
    close,
    [Symbol.asyncDispose]: close,
  };
}
