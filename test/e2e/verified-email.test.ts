/**
 * One verified email across both services, end to end with the real
 * identity and customer services: a profile registers with the address its
 * owner proved at sign-up; an email change confirmed by the mailed code
 * reaches the profile (a new version, a CustomerUpdated with mask [email]);
 * nobody can put another customer's address on their profile (squatting),
 * and no answer tells whether an address belongs to someone.
 */
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { bearer, failure } from "../support/clients.js";
import { mailedCode } from "../support/mailbox.js";
import { type Platform, startPlatform, uniqueEmail } from "../support/platform.js";

const PASSWORD = "correct horse battery staple";

let platform: Platform;

beforeAll(async () => {
  platform = await startPlatform();
});

afterAll(async () => {
  await platform?.close();
});

const customers = () => platform.customers();
const mailbox = () => platform.identity.env.IDENTITY_MAILBOX_DIR ?? "";

describe("one verified email across both services", () => {
  it("registers with the verified address and follows a confirmed email change", async () => {
    // A token for both the customer service and the identity service's own RPCs (StartEmailChange).
    const ada = await platform.signUp(PASSWORD, "ada", ["customer-service", platform.issuer]);
    const registered = await customers().registerCustomer(
      { givenName: "Ada", familyName: "Lovelace" },
      bearer(ada.accessToken),
    );
    expect(registered.customer).toMatchObject({ customerId: ada.customerId, email: ada.email, version: 1n });

    const next = uniqueEmail("ada-new");
    await platform.auth().startEmailChange({ newEmail: next, currentPassword: PASSWORD }, bearer(ada.accessToken));
    const code = await mailedCode(mailbox(), next);
    // Not before the code is confirmed.
    expect(
      (await customers().getCustomer({ customerId: ada.customerId }, bearer(ada.accessToken))).customer,
    ).toMatchObject({ email: ada.email, version: 1n });
    await platform.auth().completeEmailChange({ code }, bearer(ada.accessToken));
    await expect
      .poll(
        async () =>
          (await customers().getCustomer({ customerId: ada.customerId }, bearer(ada.accessToken))).customer?.email,
        { timeout: 15_000 },
      )
      .toBe(next);
    const after = await customers().getCustomer({ customerId: ada.customerId }, bearer(ada.accessToken));
    expect(after.customer).toMatchObject({ email: next, version: 2n, givenName: "Ada" });
  });

  it("refuses to put another customer's address on a profile, without telling whether it is taken", async () => {
    const victim = await platform.newCustomer(PASSWORD, "victim");
    const squatter = await platform.signUp(PASSWORD, "squatter");
    const asSquatter = bearer(squatter.accessToken);
    const taken = await failure(
      customers().registerCustomer({ email: victim.email, givenName: "Eve", familyName: "X" }, asSquatter),
    );
    const free = await failure(
      customers().registerCustomer({ email: uniqueEmail("nobody"), givenName: "Eve", familyName: "X" }, asSquatter),
    );
    expect(taken).toMatchObject({ code: Code.InvalidArgument });
    // The same answer for an address someone has and one nobody has.
    expect(taken?.rawMessage).toBe(free?.rawMessage);
    // A profile registered with the squatter's own verified address, whose email cannot be changed by UpdateCustomer.
    await customers().registerCustomer({ givenName: "Eve", familyName: "X" }, asSquatter);
    const update = await failure(
      customers().updateCustomer(
        { customer: { customerId: squatter.customerId, email: victim.email }, updateMask: { paths: ["email"] } },
        asSquatter,
      ),
    );
    expect(update).toMatchObject({ code: Code.InvalidArgument });
    const victimProfile = await customers().getCustomer({ customerId: victim.customerId }, bearer(victim.accessToken));
    expect(victimProfile.customer?.email).toBe(victim.email);
  });

  it("refuses a profile to an identity whose email is not verified", async () => {
    // The deprecated CreateCredentials (on in the test harness) makes an unverified identity.
    const legacy = await platform.auth().createCredentials({ email: uniqueEmail("legacy"), password: PASSWORD });
    const refused = await failure(
      customers().registerCustomer(
        { givenName: "Old", familyName: "Account" },
        bearer(legacy.tokens?.accessToken ?? ""),
      ),
    );
    expect(refused).toMatchObject({ code: Code.FailedPrecondition });
  });
});
