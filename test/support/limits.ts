/**
 * Limits of the identity service loose enough for tests that are not about
 * them: every test calls from 127.0.0.1, so the per-address limits
 * (sign-in, sign-up, the argon2 queue) would otherwise count every test in a
 * file as one client. Tests about the limits set their own values.
 */
export const IDENTITY_TEST_LIMITS: Readonly<Record<string, string>> = {
  IDENTITY_SIGN_IN_LIMIT: "1000000",
  IDENTITY_SIGN_UP_LIMIT: "1000000",
  IDENTITY_ARGON2_QUEUE_PER_ADDRESS: "10000",
  IDENTITY_ARGON2_QUEUE_MAX: "100000",
};
