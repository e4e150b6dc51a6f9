/**
 * Driving the identity service's hosted pages (the authorization endpoint's
 * sign-in, sign-up, recovery and consent pages) with fetch, as a browser
 * without JavaScript does, with openid-client as the relying party: clients
 * registered with the identity CLI, authorization URLs with PKCE, state and
 * nonce, the pages' hidden fields and cookie carried from one to the next.
 * (The same flows in a real browser: test/e2e/browser-sign-in.test.ts.)
 */
import { randomUUID } from "node:crypto";
import * as oidc from "openid-client";
import { identityCli } from "./identity-admin.js";

export interface RegisteredClient {
  clientId: string;
  /** Printed once by the CLI for a confidential client; none for a public one. */
  secret?: string;
  config: oidc.Configuration;
}

/**
 * A client registered with the CLI (`clients create … --redirect-uris <redirectUri>`, scopes
 * "openid email customer:self", plus `flags`), and openid-client configured for it from discovery.
 */
export async function registerClient(
  identity: { issuer: string; env: Record<string, string> },
  redirectUri: string,
  ...flags: string[]
): Promise<RegisteredClient> {
  const clientId = `app-${randomUUID().slice(0, 8)}`;
  const { code, out } = await identityCli(
    identity.env,
    "clients",
    "create",
    clientId,
    "--scopes",
    "openid email customer:self",
    "--redirect-uris",
    redirectUri,
    ...flags,
  );
  if (code !== 0) throw new Error(`clients create exited ${code}`);
  const secret = (JSON.parse(out[0] ?? "{}") as { client_secret?: string }).client_secret;
  const auth = secret ? oidc.ClientSecretBasic(secret) : oidc.None();
  const config = await oidc.discovery(new URL(identity.issuer), clientId, undefined, auth, {
    execute: [oidc.allowInsecureRequests],
  });
  return { clientId, ...(secret && { secret }), config };
}

/** What the relying party keeps between the redirect and the callback. */
export interface Pending {
  url: URL;
  verifier: string;
  state: string;
  nonce: string;
}

/** The authorization URL openid-client builds, with PKCE S256, state and nonce. */
export async function authorizationUrl(
  client: RegisteredClient,
  redirectUri: string,
  scope = "openid email",
): Promise<Pending> {
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const nonce = oidc.randomNonce();
  const url = oidc.buildAuthorizationUrl(client.config, {
    redirect_uri: redirectUri,
    scope,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: "S256",
    state,
    nonce,
  });
  return { url, verifier, state, nonce };
}

/** A page of the flow: its status, HTML, the hidden fields of its form, where it redirects, the request's cookie. */
export interface Page {
  status: number;
  html: string;
  fields: Record<string, string>;
  location: string | null;
  cookie: string;
}

function hiddenFields(html: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const m of html.matchAll(/<input type="hidden" name="([^"]+)" id="[^"]+" value="([^"]*)">/g)) {
    fields[m[1] ?? ""] = m[2] ?? "";
  }
  return fields;
}

/** A response as a Page; the cookie it sets, or the one the request carried. */
export async function readPage(res: Response, cookie: string): Promise<Page> {
  const html = await res.text();
  const set = res.headers.get("set-cookie");
  return {
    status: res.status,
    html,
    fields: hiddenFields(html),
    location: res.headers.get("location"),
    cookie: set ? (set.split(";")[0] ?? "") : cookie,
  };
}

/** GET a page without following redirects, with the request's cookie when there is one. */
export async function openPage(url: URL | string, cookie = ""): Promise<Page> {
  return readPage(await fetch(url, { redirect: "manual", headers: cookie ? { cookie } : {} }), cookie);
}

/** Posts a page's form back to the authorization endpoint (its hidden fields, with the cookie) with more fields. */
export async function postPage(
  issuer: string,
  page: Page,
  fields: Record<string, string>,
  cookie = page.cookie,
): Promise<Page> {
  const res = await fetch(`${issuer}/oauth2/authorize`, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded", ...(cookie && { cookie }) },
    body: new URLSearchParams({ ...page.fields, ...fields }),
  });
  return readPage(res, page.cookie);
}
