import type { ServiceImpl } from "@connectrpc/connect";
import type { AuthService } from "@customer-platform/gen/identity/v1/auth_service_pb.js";
import { pgConstraint, pgErrorCode } from "@customer-platform/runtime/db";
import { uuidv7 } from "@customer-platform/runtime/ids";
import { addressLimitKey } from "@customer-platform/runtime/interceptors";
import { and, desc, eq, isNull } from "drizzle-orm";
import { invalidCode, redeemCode, storedCodeColumns, useCode } from "../codes.js";
import { identities, oneTimeCodes } from "../db/schema.js";
import type { AuthServiceDeps } from "../deps.js";
import { emitCustomerEmailVerified } from "../events.js";
import { checkNewPassword } from "../passwords.js";
import { grantAudiences, issueCustomerTokens, sessionClient } from "../sessions.js";
import { normalizeEmail } from "./credentials.js";

/**
 * CompleteSignUp: the request's own checks first (audiences, the password's
 * rules: a weak password leaves the code usable), then the email's newest
 * live sign-up code (codes.ts redeemCode: constant-time, wrong guesses
 * counted). The password is hashed before the transaction, which uses the
 * code up, creates the identity with its email verified (version 1), emits
 * CustomerEmailVerified and issues the first tokens. An address that got an
 * account since the code was sent (a parallel sign-up) answers as a wrong
 * code does, and the code is used up.
 */
export function completeSignUp(deps: AuthServiceDeps): Pick<ServiceImpl<typeof AuthService>, "completeSignUp"> {
  const complete = signUpCompleter(deps);
  return {
    async completeSignUp(req, ctx) {
      const audiences = grantAudiences(req.audience, deps.firstPartyAudiences);
      const { customerId, signedIn: tokens } = await complete(req, deps.clientAddress(ctx), (tx, customerId, email) =>
        issueCustomerTokens(deps, tx, customerId, { audiences, email, client: sessionClient(deps, ctx) }),
      );
      return { customerId, tokens };
    },
  };
}

/** The transaction CompleteSignUp creates the identity in. */
type Tx = Parameters<Parameters<AuthServiceDeps["db"]["transaction"]>[0]>[0];

/**
 * CompleteSignUp's core, for the RPC and the hosted sign-up page: `client`
 * is the caller's address (deps.clientAddress); `signIn` runs in the
 * transaction that creates the identity and signs it in the caller's way
 * (the RPC issues tokens, the page moves its authorization request on); if
 * it throws, nothing is written and the code stays usable.
 */
export function signUpCompleter(
  deps: AuthServiceDeps,
): <T>(
  req: { email: string; code: string; password: string },
  client: string,
  signIn: (tx: Tx, customerId: string, email: string) => Promise<T>,
) => Promise<{ customerId: string; signedIn: T }> {
  return async (req, client, signIn) => {
    const email = normalizeEmail(req.email);
    await deps.rateLimits.signUp.consume(addressLimitKey(client));
    checkNewPassword(req.password, req.email, "password");
    const now = deps.now();
    const [stored] = await deps.db
      .select(storedCodeColumns)
      .from(oneTimeCodes)
      .where(and(eq(oneTimeCodes.email, email), eq(oneTimeCodes.purpose, "sign-up"), isNull(oneTimeCodes.consumedAt)))
      .orderBy(desc(oneTimeCodes.createdAt))
      .limit(1);
    const code = await redeemCode(deps.db, stored, req.code, now);
    const passwordHash = await deps.passwords.hash(req.password, client);
    const customerId = uuidv7();
    try {
      const signedIn = await deps.db.transaction(async (tx) => {
        await useCode(tx, code.id, now);
        await tx.insert(identities).values({
          customerId,
          email,
          passwordHash,
          createdAt: now,
          updatedAt: now,
          passwordChangedAt: now,
          emailVerifiedAt: now,
          emailVersion: 1,
        });
        await emitCustomerEmailVerified(tx, deps.events, { customerId, email, version: 1 }, now);
        return signIn(tx, customerId, email);
      });
      return { customerId, signedIn };
    } catch (err) {
      if (pgErrorCode(err) === "23505" && pgConstraint(err) === "identities_email_key") {
        await useCode(deps.db, code.id, now).catch(() => {});
        throw invalidCode();
      }
      throw err;
    }
  };
}
