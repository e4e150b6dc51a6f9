/**
 * Forged and tampered JWTs against the real platform, checked at both
 * services (the customer service verifying offline against the identity
 * service's JWKS, the identity service itself) and at introspection: alg
 * none, HS256 keyed with the public key (alg confusion), kid injection,
 * embedded jwk / jku / x5u, expired, not yet valid, wrong typ, missing
 * claims, modified payload. No key is ever fetched from a URL a token names,
 * and no token reaches a log or an error: after every test both servers' log
 * lines and every error received are scanned for every token, password and
 * secret sent or issued and every hash stored (test/support/secrets.ts).
 * (Credentials and token replay: credentials.test.ts.)
 */
import { createHmac, createPublicKey, sign as cryptoSign, generateKeyPairSync, randomUUID } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { Code } from "@connectrpc/connect";
import type { JWK } from "jose";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { bearer, rpcError } from "../support/clients.js";
import {
  b64url,
  customerClaims as claimsFor,
  jwt,
  nowSec,
  readSigningKey,
  expectRejectedEverywhere as rejectedEverywhere,
  type SigningKey,
} from "../support/jwt.js";
import { type Platform, type SignedUp, startPlatform } from "../support/platform.js";
import { createSecretScanner } from "../support/secrets.js";

const PASSWORD = "correct horse battery staple";

let platform: Platform;
/** A registered customer, and a service token allowed to introspect. */
let victim: SignedUp;
let introspector: string;

beforeAll(async () => {
  platform = await startPlatform();
  victim = await platform.newCustomer(PASSWORD, "victim");
  introspector = await platform.serviceToken("identity:introspect", platform.issuer);
});

afterAll(async () => {
  secrets.close();
  await platform?.close();
});

const secrets = createSecretScanner();

afterEach(async () => {
  await secrets.addStored(platform.identity.database.sql);
  secrets.expectClean({ identity: platform.identity.logs.lines, customer: platform.customer.logs.lines });
});

let realKeyCache: Promise<SigningKey> | undefined;
/** The identity service's signing key: tokens the real issuer could have signed. */
const realKey = () => {
  realKeyCache ??= readSigningKey(platform.identity.database.sql);
  return realKeyCache;
};
const realKid = async () => (await realKey()).kid;
const signReal = async () => (await realKey()).sign;
const customerClaims = (c: SignedUp, overrides?: Record<string, unknown>) =>
  claimsFor(platform.issuer, c.customerId, overrides);
/** Both services refuse the token as a bearer token, and introspection calls it inactive. */
const expectRejectedEverywhere = (token: string, message: string) =>
  rejectedEverywhere(platform, token, message, { customerId: victim.customerId, introspector });
const authA = () => platform.auth();

/** A JWKS server an attacker controls: counts how often anyone fetches from it. */
let attackerServer: Server;
let attackerFetches = 0;
let attackerUrl = "";
const attacker = generateKeyPairSync("ed25519");
const attackerJwk = { ...(attacker.publicKey.export({ format: "jwk" }) as JWK), kid: "attacker", alg: "EdDSA" };
const signAttacker = (input: Buffer) => cryptoSign(null, input, attacker.privateKey);

describe("JWT tampering, at the customer service and the identity service", () => {
  beforeAll(async () => {
    attackerServer = createServer((_req, res) => {
      attackerFetches++;
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ keys: [attackerJwk] }));
    });
    await new Promise<void>((resolve) => attackerServer.listen(0, "127.0.0.1", resolve));
    attackerUrl = `http://127.0.0.1:${(attackerServer.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    attackerServer?.closeAllConnections();
    await new Promise<void>((resolve) => (attackerServer ? attackerServer.close(() => resolve()) : resolve()));
  });

  it("control: a token minted here with the real key and proper claims is accepted by both", async () => {
    const token = jwt({ alg: "EdDSA", typ: "at+jwt", kid: await realKid() }, customerClaims(victim), await signReal());
    await expect(
      platform.customers().getCustomer({ customerId: victim.customerId }, bearer(token)),
    ).resolves.toMatchObject({ customer: { customerId: victim.customerId } });
    // Authenticated at the identity service: refused only because a customer may not introspect.
    await expect(authA().introspectToken({ token: "x" }, bearer(token))).rejects.toMatchObject(
      rpcError("only a service token may introspect tokens", Code.PermissionDenied),
    );
    await expect(authA().introspectToken({ token }, bearer(introspector))).resolves.toMatchObject({
      active: true,
      sub: victim.customerId,
    });
  });

  type Case = [name: string, make: () => Promise<string>, message?: string];
  const cases: Case[] = [
    [
      "alg none",
      async () => jwt({ alg: "none", typ: "at+jwt", kid: await realKid() }, customerClaims(victim), () => ""),
    ],
    ["alg NONE", async () => jwt({ alg: "NONE", typ: "at+jwt" }, customerClaims(victim), () => "")],
    [
      "alg none with the real signature kept",
      async () => {
        const real = jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: await realKid() },
          customerClaims(victim),
          await signReal(),
        );
        const [, payload, signature] = real.split(".");
        return `${b64url({ alg: "none", typ: "at+jwt", kid: await realKid() })}.${payload}.${signature}`;
      },
    ],
    ...(["raw key bytes", "JWK JSON", "SPKI PEM", "SPKI DER", "x as text"] as const).map(
      (form): Case => [
        `alg HS256 keyed with the public key (${form})`,
        async () => {
          const { publicJwk, kid } = await realKey();
          const pub = createPublicKey({ key: publicJwk as never, format: "jwk" });
          const secret = {
            "raw key bytes": Buffer.from(String(publicJwk.x), "base64url"),
            "JWK JSON": Buffer.from(JSON.stringify(publicJwk)),
            "SPKI PEM": Buffer.from(pub.export({ type: "spki", format: "pem" })),
            "SPKI DER": pub.export({ type: "spki", format: "der" }),
            "x as text": Buffer.from(String(publicJwk.x)),
          }[form];
          return jwt({ alg: "HS256", typ: "at+jwt", kid }, customerClaims(victim), (i) =>
            createHmac("sha256", secret).update(i).digest(),
          );
        },
      ],
    ),
    [
      "kid of no key, signed by the attacker",
      async () => jwt({ alg: "EdDSA", typ: "at+jwt", kid: randomUUID() }, customerClaims(victim), signAttacker),
    ],
    ...["../../../../etc/passwd", "' or '1'='1", "x' union select private_jwk from signing_keys --", "*", ""].map(
      (kid): Case => [
        `kid injection ${JSON.stringify(kid)}, signed by the real key`,
        async () => jwt({ alg: "EdDSA", typ: "at+jwt", kid }, customerClaims(victim), await signReal()),
      ],
    ),
    [
      "real kid, signed by the attacker",
      async () => jwt({ alg: "EdDSA", typ: "at+jwt", kid: await realKid() }, customerClaims(victim), signAttacker),
    ],
    [
      "embedded jwk of the attacker's key",
      async () => jwt({ alg: "EdDSA", typ: "at+jwt", jwk: attackerJwk }, customerClaims(victim), signAttacker),
    ],
    [
      "embedded jwk of the attacker's key with the real kid",
      async () =>
        jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: await realKid(), jwk: attackerJwk },
          customerClaims(victim),
          signAttacker,
        ),
    ],
    [
      "jku pointing at the attacker's JWKS",
      async () =>
        jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: "attacker", jku: `${attackerUrl}/jwks.json` },
          customerClaims(victim),
          signAttacker,
        ),
    ],
    [
      "x5u pointing at the attacker",
      async () =>
        jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: "attacker", x5u: `${attackerUrl}/cert.pem` },
          customerClaims(victim),
          signAttacker,
        ),
    ],
    [
      "expired (beyond the clock tolerance)",
      async () =>
        jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: await realKid() },
          customerClaims(victim, { iat: nowSec() - 1000, exp: nowSec() - 60 }),
          await signReal(),
        ),
      "access token expired",
    ],
    [
      "not yet valid (nbf in an hour)",
      async () =>
        jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: await realKid() },
          customerClaims(victim, { nbf: nowSec() + 3600 }),
          await signReal(),
        ),
    ],
    ...["JWT", "id+jwt", "application/jwt", undefined].map(
      (typ): Case => [
        `typ ${typ ?? "missing"}`,
        async () =>
          jwt({ alg: "EdDSA", kid: await realKid(), ...(typ && { typ }) }, customerClaims(victim), await signReal()),
      ],
    ),
    ...["jti", "client_id", "exp", "sub", "iss"].map(
      (claim): Case => [
        `claim ${claim} missing`,
        async () =>
          jwt(
            { alg: "EdDSA", typ: "at+jwt", kid: await realKid() },
            customerClaims(victim, { [claim]: undefined }),
            await signReal(),
          ),
      ],
    ),
    [
      "another issuer",
      async () =>
        jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: await realKid() },
          customerClaims(victim, { iss: "http://evil.test" }),
          await signReal(),
        ),
    ],
    [
      "unknown critical header",
      async () =>
        jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: await realKid(), crit: ["exp-ext"], "exp-ext": 1 },
          customerClaims(victim),
          await signReal(),
        ),
    ],
    [
      "alg ES256 over an EdDSA signature",
      async () => jwt({ alg: "ES256", typ: "at+jwt", kid: await realKid() }, customerClaims(victim), await signReal()),
    ],
    [
      "payload modified (sub of another customer)",
      async () => {
        const real = jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: await realKid() },
          customerClaims(victim),
          await signReal(),
        );
        const [header, , signature] = real.split(".");
        return `${header}.${b64url(customerClaims(victim, { sub: randomUUID() }))}.${signature}`;
      },
    ],
    [
      "service token with scopes added to its payload",
      async () => {
        const [header, payload, signature] = introspector.split(".");
        const claims = JSON.parse(Buffer.from(payload ?? "", "base64url").toString()) as Record<string, unknown>;
        return `${header}.${b64url({ ...claims, scope: "customer:read customer:write" })}.${signature}`;
      },
    ],
    [
      "signature stripped",
      async () => {
        const real = jwt(
          { alg: "EdDSA", typ: "at+jwt", kid: await realKid() },
          customerClaims(victim),
          await signReal(),
        );
        return `${real.slice(0, real.lastIndexOf("."))}.`;
      },
    ],
  ];

  it.each(cases)("rejects %s", async (_name, make, message = "invalid access token") => {
    await expectRejectedEverywhere(await make(), message);
  });

  it("never fetched a key from a URL named in a token", () => {
    expect(attackerFetches).toBe(0);
  });
});

describe("logs and errors under attack", () => {
  it("the scan after each test knows the forged tokens and the real ones, and saw their errors", async () => {
    const errorsBefore = secrets.errors.length;
    const forged = jwt({ alg: "none", typ: "at+jwt" }, customerClaims(victim), () => "");
    const real = jwt({ alg: "EdDSA", typ: "at+jwt", kid: await realKid() }, customerClaims(victim), await signReal());
    await expect(
      platform.customers().getCustomer({ customerId: victim.customerId }, bearer(forged)),
    ).rejects.toMatchObject(rpcError("invalid access token", Code.Unauthenticated));
    await expect(authA().introspectToken({ token: "x" }, bearer(real))).rejects.toMatchObject(
      rpcError("only a service token may introspect tokens", Code.PermissionDenied),
    );
    expect(secrets.errors.length - errorsBefore).toBe(2);
    // Known as what the calls carried, not only by the shape of a JWT.
    for (const token of [forged, real, introspector]) {
      expect(secrets.find(`"x":"${token}"`).filter((hit) => !hit.startsWith("a JWT ("))).not.toEqual([]);
    }
    expect(secrets.find(`"x":"${victim.refreshToken}"`)).toContainEqual(expect.stringMatching(/refreshToken/));
  });
});
