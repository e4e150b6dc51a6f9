import { readMailbox } from "@customer-platform/runtime/mail";
import { decodeJwt } from "jose";
import * as oidc from "openid-client";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { outcome } from "../../test/support/clients.js";
import {
  authorizationUrl as authorizationUrlFor,
  openPage,
  type Page,
  type Pending,
  postPage,
  type RegisteredClient,
  registerClient,
} from "../../test/support/hosted-pages.js";
import { writtenEvents } from "../../test/support/identity-admin.js";
import { mailedCode } from "../../test/support/mailbox.js";
import { type Platform, startPlatform, uniqueEmail } from "../../test/support/platform.js";
import { createSecretScanner } from "../../test/support/secrets.js";
import { until } from "../../test/support/timing.js";

const PASSWORD = "correct horse battery staple";
const NEW_PASSWORD = "a new password for recovery";
const CALLBACK = "http://127.0.0.1:9/app/callback";

let platform: Platform;
let mailbox: string;
const secrets = createSecretScanner();

beforeAll(async () => {
  // Two sign-ups per address (the limits test); every other test starts one per address.
  platform = await startPlatform({ identityEnv: { LOG_LEVEL: "info", IDENTITY_SIGN_UP_EMAIL_LIMIT: "2" } });
  mailbox = platform.identity.env.IDENTITY_MAILBOX_DIR ?? "";
  expect(mailbox).not.toBe("");
  secrets.add("passwords", PASSWORD, NEW_PASSWORD);
}, 60_000);
afterAll(() => platform?.close());
afterEach(async () => {
  await secrets.addStored(platform.identity.database.sql);
  secrets.expectClean({ identity: platform.identity.logs.lines });
});

/** A public client registered with the CLI (third-party unless `--first-party`), and openid-client for it. */
const register = (...flags: string[]) =>
  registerClient(
    { issuer: platform.issuer, env: platform.identity.env },
    CALLBACK,
    "--public",
    "--description",
    "An app",
    ...flags,
  );

const authorizationUrl = (client: RegisteredClient) => authorizationUrlFor(client, CALLBACK);
/** GET a page, with the request's cookie when there is one. */
const open = openPage;

/** Follows a link of a page (by its id), as a browser does: same site, so the cookie goes along. */
function follow(page: Page, linkId: string, cookie = page.cookie): Promise<Page> {
  const href = new RegExp(`<a href="([^"]+)" id="${linkId}">`).exec(page.html)?.[1];
  if (!href) throw new Error(`no link ${linkId} on the page`);
  return open(new URL(href.replaceAll("&amp;", "&"), platform.issuer), cookie);
}

/** Posts a page's form back (its hidden fields, with the cookie) with more fields. */
const post = (page: Page, fields: Record<string, string>, cookie?: string) =>
  postPage(platform.issuer, page, fields, cookie);

/** The text of a page's error or notice line. */
const line = (page: Page, id: "error" | "notice") =>
  new RegExp(`<p class="[a-z]+" id="${id}" role="[a-z]+">([^<]*)</p>`).exec(page.html)?.[1];

/** Mails in the dev mailbox to `address`. */
const mailsTo = async (address: string) => (await readMailbox(mailbox)).filter((m) => m.to === address);

async function exchange(client: RegisteredClient, pending: Pending, location: string | null) {
  const tokens = await oidc.authorizationCodeGrant(client.config, new URL(location ?? ""), {
    pkceCodeVerifier: pending.verifier,
    expectedState: pending.state,
    expectedNonce: pending.nonce,
    idTokenExpected: true,
  });
  secrets.add("code flow tokens", tokens.access_token, tokens.refresh_token ?? "", tokens.id_token ?? "");
  return tokens;
}

/** Signs `email` up from an authorization request's sign-in page: the code page, answered with `password`. */
async function signUpPages(pending: Pending, email: string) {
  const signIn = await open(pending.url);
  expect(signIn.status).toBe(200);
  const emailPage = await follow(signIn, "sign-up-link");
  expect(emailPage.status).toBe(200);
  expect(emailPage.html).toContain('<label for="email">Email</label>');
  const codePage = await post(emailPage, { email, action: "sign_up_start" });
  expect(codePage.status).toBe(200);
  return codePage;
}

describe("sign-up from the hosted sign-in page", () => {
  it.each([
    ["a third-party client (consent asked)", [] as string[]],
    ["a first-party client", ["--first-party"]],
  ])(
    "signs a new customer in for the request: %s gets a code and an ID token with the verified email",
    async (_what, flags) => {
      const client = await register(...flags);
      const pending = await authorizationUrl(client);
      const email = uniqueEmail("page-sign-up");
      const codePage = await signUpPages(pending, email);
      expect(codePage.fields.email).toBe(email);
      expect(codePage.html).toContain('<input type="text" name="code" id="code"');
      expect(codePage.html).toContain('<input type="password" name="password" id="password"');
      const code = await mailedCode(mailbox, email);

      // A weak password and a wrong code answer as CompleteSignUp does, as form errors; the code stays usable.
      const weak = await post(codePage, { code, password: "password", action: "sign_up_complete" });
      expect(weak.status).toBe(400);
      expect(line(weak, "error")).toBe("Password must not be a commonly used or breached password.");
      const wrong = String((Number(code) + 1) % 1e8).padStart(8, "0");
      const refused = await post(codePage, { code: wrong, password: PASSWORD, action: "sign_up_complete" });
      expect(refused.status).toBe(400);
      expect(line(refused, "error")).toBe("Invalid or expired code.");
      expect(await platform.identity.database.sql`select 1 from identities where email = ${email}`).toHaveLength(0);

      let page = await post(codePage, { code, password: PASSWORD, action: "sign_up_complete" });
      if (flags.length === 0) {
        expect(page.status).toBe(200);
        expect(page.html).toContain('value="allow"');
        page = await post(page, { action: "allow" });
      }
      expect(page.status).toBe(303);
      const tokens = await exchange(client, pending, page.location);
      const claims = tokens.claims();
      expect(claims).toMatchObject({ email, email_verified: true, aud: client.clientId });
      const [identity] = await platform.identity.database.sql<{ customer_id: string; verified: boolean }[]>`
      select customer_id, email_verified_at is not null as verified from identities where email = ${email}`;
      expect(identity).toEqual({ customer_id: claims?.sub, verified: true });
      expect(decodeJwt(tokens.access_token)).toMatchObject({ sub: claims?.sub, client_id: client.clientId, email });
      const types = (await writtenEvents(platform.identity.database.sql, claims?.sub ?? "")).map((e) => e.type);
      expect(types).toEqual(["identity.v1.CustomerEmailVerified", "identity.v1.CustomerAuthenticated"]);

      // The code and the request are used up: the form posted again is the expired page.
      const again = await post(codePage, { code, password: PASSWORD, action: "sign_up_complete" });
      expect(again.status).toBe(400);
      expect(again.html).toContain("Sign-in expired");
    },
  );

  it("answers an address that has an account with the same page, mails its owner no code, and creates nothing", async () => {
    const existing = await platform.signUp(PASSWORD, "page-existing");
    const client = await register();
    const fresh = uniqueEmail("page-fresh");
    const forNew = await signUpPages(await authorizationUrl(client), fresh);
    const mailsBefore = (await mailsTo(existing.email)).length;
    const signUpCodes = async () =>
      (
        await platform.identity.database.sql`
          select count(*)::int as n from one_time_codes where email = ${existing.email} and purpose = 'sign-up'`
      )[0];
    const codesBefore = await signUpCodes();
    const forExisting = await signUpPages(await authorizationUrl(client), existing.email);
    const same = (page: Page, email: string) =>
      page.html
        .replaceAll(page.fields.request_id ?? "-", "ID")
        .replaceAll(page.fields.csrf_token ?? "-", "CSRF")
        .replaceAll(email, "EMAIL");
    expect(same(forExisting, existing.email)).toBe(same(forNew, fresh));

    // StartSignUp's answer to the owner: a "someone tried to sign up" mail, without a code.
    await until("the sign-up attempt mail", async () => (await mailsTo(existing.email)).length > mailsBefore);
    const newMails = (await mailsTo(existing.email)).slice(mailsBefore);
    expect(newMails.map((m) => m.template)).toEqual(["sign-up-attempt"]);
    expect(newMails[0]?.text).not.toMatch(/\b\d{8}\b/);
    expect(await signUpCodes()).toEqual(codesBefore);
    // Any code is refused as the RPC refuses it.
    const refused = await post(forExisting, { code: "12345678", password: PASSWORD, action: "sign_up_complete" });
    expect(refused.status).toBe(400);
    expect(line(refused, "error")).toBe("Invalid or expired code.");
  });

  it("refuses a form without the request's cookie or with another token (403), and sends nothing", async () => {
    const client = await register();
    const signIn = await open((await authorizationUrl(client)).url);
    const emailPage = await follow(signIn, "sign-up-link");
    const email = uniqueEmail("page-csrf");

    const noCookie = await post(emailPage, { email, action: "sign_up_start" }, "");
    expect(noCookie.status).toBe(403);
    const forged = await post(emailPage, { email, action: "sign_up_start", csrf_token: "forged" }, "");
    expect(forged.status).toBe(403);
    const [name] = emailPage.cookie.split("=");
    const wrongBoth = await post(emailPage, { email, action: "recover_start", csrf_token: "forged" }, `${name}=forged`);
    expect(wrongBoth.status).toBe(403);
    // The pages are not shown without the cookie either (a link followed from another site sends none).
    expect((await follow(signIn, "sign-up-link", "")).status).toBe(403);
    expect((await follow(signIn, "recovery-link", "")).status).toBe(403);

    // The same form with its cookie works: the refusals were about the token. Its one mail and code are the only ones.
    expect((await post(emailPage, { email, action: "sign_up_start" })).status).toBe(200);
    await mailedCode(mailbox, email);
    expect((await mailsTo(email)).map((m) => m.template)).toEqual(["verification-code"]);
    const [stored] = await platform.identity.database.sql`
      select count(*)::int as n from one_time_codes where email = ${email}`;
    expect(stored).toEqual({ n: 1 });
  });
});

describe("password recovery from the hosted sign-in page", () => {
  it("mails a code, sets the new password, and goes back to sign-in where only the new password works", async () => {
    const customer = await platform.signUp(PASSWORD, "page-recovery");
    const codesBefore = (await mailsTo(customer.email)).filter((m) => /\b\d{8}\b/.test(m.text)).length;
    const client = await register();
    const pending = await authorizationUrl(client);
    const signIn = await open(pending.url);
    const emailPage = await follow(signIn, "recovery-link");
    expect(emailPage.status).toBe(200);
    const codePage = await post(emailPage, { email: customer.email, action: "recover_start" });
    expect(codePage.status).toBe(200);
    const code = await mailedCode(mailbox, customer.email, codesBefore + 1);

    const wrong = String((Number(code) + 1) % 1e8).padStart(8, "0");
    const refused = await post(codePage, { code: wrong, password: NEW_PASSWORD, action: "recover_complete" });
    expect(refused.status).toBe(400);
    expect(line(refused, "error")).toBe("Invalid or expired code.");

    const back = await post(codePage, { code, password: NEW_PASSWORD, action: "recover_complete" });
    expect(back.status).toBe(200);
    expect(line(back, "notice")).toBe("Password changed, sign in.");
    expect(back.html).toContain('name="action" value="sign_in"');
    const types = (await writtenEvents(platform.identity.database.sql, customer.customerId)).map((e) => e.type);
    expect(types).toContain("identity.v1.PasswordChanged");

    const old = await post(back, { email: customer.email, password: PASSWORD, action: "sign_in" });
    expect(old.status).toBe(401);
    let page = await post(back, { email: customer.email, password: NEW_PASSWORD, action: "sign_in" });
    expect(page.status).toBe(200);
    page = await post(page, { action: "allow" });
    expect(page.status).toBe(303);
    const tokens = await exchange(client, pending, page.location);
    expect(tokens.claims()).toMatchObject({ sub: customer.customerId, email: customer.email.toLowerCase() });
  });

  it("answers an address without an account with the same page, and mails nothing", async () => {
    const customer = await platform.signUp(PASSWORD, "page-recovery-known");
    const unknown = uniqueEmail("page-recovery-unknown");
    const client = await register();
    const start = async (email: string) => {
      const emailPage = await follow(await open((await authorizationUrl(client)).url), "recovery-link");
      const page = await post(emailPage, { email, action: "recover_start" });
      expect(page.status).toBe(200);
      return page.html
        .replaceAll(page.fields.request_id ?? "-", "ID")
        .replaceAll(page.fields.csrf_token ?? "-", "CSRF")
        .replaceAll(email, "EMAIL");
    };
    expect(await start(unknown)).toBe(await start(customer.email));
    const [stored] = await platform.identity.database.sql`
      select count(*)::int as n from one_time_codes
      where purpose = 'recovery' and customer_id = ${customer.customerId}`;
    expect(stored).toEqual({ n: 1 });
    // Mails go out in order: once the known address's code is delivered, one to the unknown would have been.
    await mailedCode(mailbox, customer.email, 2);
    expect(await mailsTo(unknown)).toEqual([]);
  });
});

describe("limits", () => {
  it("counts the pages and the RPCs in the same per-email buckets (429 on the page)", async () => {
    const client = await register();
    const emailPage = async (link: string) => follow(await open((await authorizationUrl(client)).url), link);
    // Sign-up: two per address (this file's IDENTITY_SIGN_UP_EMAIL_LIMIT), the page's and the RPC's together.
    const email = uniqueEmail("page-limit");
    expect((await post(await emailPage("sign-up-link"), { email, action: "sign_up_start" })).status).toBe(200);
    expect(await outcome(platform.auth().startSignUp({ email }))).toBe("OK");
    const limited = await post(await emailPage("sign-up-link"), { email, action: "sign_up_start" });
    expect(limited.status).toBe(429);
    expect(line(limited, "error")).toBe("Too many attempts. Wait a moment and try again.");
    expect(limited.html).toContain('value="sign_up_start"');

    // Recovery: five per address (the default), an address without an account alike.
    const unknown = uniqueEmail("page-limit-unknown");
    for (let i = 0; i < 5; i++) expect(await outcome(platform.auth().startRecovery({ email: unknown }))).toBe("OK");
    const refused = await post(await emailPage("recovery-link"), { email: unknown, action: "recover_start" });
    expect(refused.status).toBe(429);
    expect(line(refused, "error")).toBe("Too many attempts. Wait a moment and try again.");
  });
});
