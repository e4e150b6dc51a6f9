/**
 * A customer signs in to a web app through the hosted sign-in page, in a real
 * browser (Debian's chromium, driven by playwright-core): the web app is a
 * relying party built on openid-client, unmodified, configured from our
 * discovery document; it sends the browser to the authorization endpoint
 * (code flow with PKCE, state and nonce), the customer signs in on the
 * server-rendered page and consents, the app exchanges the code and calls
 * userinfo. A new customer signs up from the same page (the mailed code from
 * the dev mailbox) and lands signed in at the app. And the failure paths: a wrong password, a tampered `state`, a
 * redirect URI that was never registered, and a code used twice.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import * as oidc from "openid-client";
import type { Browser } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runCli } from "../../identity-service/src/cli.js";
import { launchBrowser, newContext } from "../support/browser.js";
import { mailedCode } from "../support/mailbox.js";
import { type Platform, type SignedUp, startPlatform, uniqueEmail } from "../support/platform.js";

const PASSWORD = "correct horse battery staple";

let platform: Platform;
let browser: Browser;
let app: WebApp;
let customer: SignedUp;

/**
 * A web app as another team would write it: `/login` starts the code flow,
 * `/callback` finishes it and shows who signed in, or the error. It remembers
 * each callback URL it was given, so a test can replay one.
 */
interface WebApp {
  readonly url: string;
  readonly callbacks: URL[];
  close(): Promise<void>;
}

async function startWebApp(issuer: string, clientId: string, port: number): Promise<WebApp> {
  const redirectUri = `http://127.0.0.1:${port}/callback`;
  const config = await oidc.discovery(new URL(issuer), clientId, undefined, oidc.None(), {
    execute: [oidc.allowInsecureRequests],
  });
  // One pending sign-in at a time is all a test needs.
  let pending: { verifier: string; state: string; nonce: string } | undefined;
  const callbacks: URL[] = [];
  const page = (status: number, body: string) =>
    `<!doctype html><html lang="en"><title>web app</title><p id="result" data-status="${status}">${body}</p></html>`;
  const server: Server = createServer(async (req, res) => {
    const url = new URL(req.url ?? "/", `http://127.0.0.1:${port}`);
    res.setHeader("content-type", "text/html; charset=utf-8");
    try {
      if (url.pathname === "/login") {
        const verifier = oidc.randomPKCECodeVerifier();
        pending = { verifier, state: oidc.randomState(), nonce: oidc.randomNonce() };
        const target = oidc.buildAuthorizationUrl(config, {
          redirect_uri: redirectUri,
          scope: "openid email",
          code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
          code_challenge_method: "S256",
          state: pending.state,
          nonce: pending.nonce,
        });
        res.writeHead(302, { location: target.href });
        res.end();
        return;
      }
      if (url.pathname === "/callback") {
        callbacks.push(url);
        if (!pending) throw new Error("no sign-in pending");
        const tokens = await oidc.authorizationCodeGrant(config, url, {
          pkceCodeVerifier: pending.verifier,
          expectedState: pending.state,
          expectedNonce: pending.nonce,
          idTokenExpected: true,
        });
        const claims = tokens.claims();
        const info = await oidc.fetchUserInfo(config, tokens.access_token, claims?.sub ?? oidc.skipSubjectCheck);
        res.end(page(200, `Signed in as ${String(info.email)}`));
        return;
      }
      res.statusCode = 404;
      res.end(page(404, "not found"));
    } catch (err) {
      res.statusCode = 400;
      const e = err as { code?: string; error?: string; message?: string };
      res.end(page(400, `Sign-in failed: ${e.error ?? e.code ?? ""} ${e.message ?? ""}`));
    }
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${port}`,
    callbacks,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A free port, so the redirect URI is known before the client is registered. */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, "127.0.0.1", resolve));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

beforeAll(async () => {
  platform = await startPlatform();
  browser = await launchBrowser();
  const port = await freePort();
  // A third-party public client (a single-page or server-side app without a secret): consent is asked.
  const code = await runCli(
    [
      "clients",
      "create",
      "web-app",
      "--scopes",
      "openid email",
      "--redirect-uris",
      `http://127.0.0.1:${port}/callback`,
      "--grant-types",
      "authorization_code refresh_token",
      "--public",
      "--description",
      "The web app",
    ],
    platform.identity.env,
    () => {},
  );
  expect(code).toBe(0);
  app = await startWebApp(platform.issuer, "web-app", port);
  customer = await platform.newCustomer(PASSWORD, "browser");
}, 60_000);

afterAll(async () => {
  await browser?.close();
  await app?.close();
  await platform?.close();
});

describe("the hosted sign-in page in a real browser", () => {
  it.each([true, false])(
    "signs a customer in: authorize, sign in, consent, code, tokens, userinfo (JavaScript %s)",
    async (javaScript) => {
      const context = await newContext(browser, { javaScript });
      const page = await context.newPage();
      await page.goto(`${app.url}/login`);
      await page.getByLabel("Email").fill(customer.email);
      await page.getByLabel("Password").fill(PASSWORD);
      await page.getByRole("button", { name: /sign in/i }).click();
      await page.getByRole("button", { name: /allow/i }).click();
      await expect.poll(() => page.locator("#result").textContent()).toBe(`Signed in as ${customer.email}`);
      await context.close();
    },
  );

  it("signs a new customer up from the sign-in page, without JavaScript, and lands signed in at the app", async () => {
    const context = await newContext(browser, { javaScript: false });
    const page = await context.newPage();
    const email = uniqueEmail("browser-sign-up");
    await page.goto(`${app.url}/login`);
    await page.getByRole("link", { name: "Create an account" }).click();
    await page.getByLabel("Email").fill(email);
    await page.getByRole("button", { name: /send code/i }).click();
    const code = await mailedCode(platform.identity.env.IDENTITY_MAILBOX_DIR ?? "", email);
    await page.getByLabel("Code from the mail").fill(code);
    await page.getByLabel("Choose a password").fill(PASSWORD);
    await page.getByRole("button", { name: /create account/i }).click();
    await page.getByRole("button", { name: /allow/i }).click();
    await expect.poll(() => page.locator("#result").textContent()).toBe(`Signed in as ${email}`);
    await context.close();
  });

  it("keeps a wrong password on the sign-in page, with no code issued", async () => {
    const context = await newContext(browser);
    const page = await context.newPage();
    const before = app.callbacks.length;
    await page.goto(`${app.url}/login`);
    await page.getByLabel("Email").fill(customer.email);
    await page.getByLabel("Password").fill("not the password");
    await page.getByRole("button", { name: /sign in/i }).click();
    expect(await page.getByLabel("Password").isVisible()).toBe(true);
    expect(await page.content()).toMatch(/invalid email or password/i);
    expect(app.callbacks.length).toBe(before);
    await context.close();
  });

  it("refuses a tampered state at the web app, and a code used twice", async () => {
    const context = await newContext(browser);
    const page = await context.newPage();
    // The identity service's redirect back to the app, with the state changed on the way (the
    // callback is reached through a 303, which page.route cannot rewrite: the answer is).
    const authorize = `${platform.issuer}/oauth2/authorize*`;
    await page.route(authorize, async (route) => {
      if (route.request().method() !== "POST") return route.continue();
      const response = await route.fetch({ maxRedirects: 0 });
      const location = response.headers().location;
      if (!location?.startsWith(`${app.url}/callback`)) return route.fulfill({ response });
      const tampered = new URL(location);
      tampered.searchParams.set("state", "tampered");
      return route.fulfill({ response, headers: { ...response.headers(), location: tampered.href } });
    });
    await page.goto(`${app.url}/login`);
    await page.getByLabel("Email").fill(customer.email);
    await page.getByLabel("Password").fill(PASSWORD);
    await page.getByRole("button", { name: /sign in/i }).click();
    await page.getByRole("button", { name: /allow/i }).click();
    await expect.poll(() => page.locator("#result").textContent()).toMatch(/^Sign-in failed/);
    await page.unroute(authorize);

    // A good sign-in, then its callback replayed: the code works once.
    await page.goto(`${app.url}/login`);
    // Already signed in at the identity service? The page may skip the form; sign in if it is shown.
    if (await page.getByLabel("Email").isVisible()) {
      await page.getByLabel("Email").fill(customer.email);
      await page.getByLabel("Password").fill(PASSWORD);
      await page.getByRole("button", { name: /sign in/i }).click();
    }
    if (await page.getByRole("button", { name: /allow/i }).isVisible()) {
      await page.getByRole("button", { name: /allow/i }).click();
    }
    await expect.poll(() => page.locator("#result").textContent()).toBe(`Signed in as ${customer.email}`);
    const used = app.callbacks.at(-1);
    await page.goto(used?.href ?? "");
    await expect.poll(() => page.locator("#result").textContent()).toMatch(/^Sign-in failed.*invalid_grant/);
    await context.close();
  });

  it("shows an error page, and never redirects, for a redirect URI that was not registered", async () => {
    const context = await newContext(browser);
    const page = await context.newPage();
    const evil = "http://127.0.0.1:9/steal";
    const authorize = new URL(`${platform.issuer}/oauth2/authorize`);
    authorize.search = new URLSearchParams({
      response_type: "code",
      client_id: "web-app",
      redirect_uri: evil,
      scope: "openid",
      code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
      code_challenge_method: "S256",
      state: "s",
    }).toString();
    const response = await page.goto(authorize.href);
    expect(response?.status()).toBe(400);
    expect(page.url().startsWith(evil)).toBe(false);
    expect(await page.content()).toMatch(/redirect/i);
    await context.close();
  });
});
