/**
 * Password hashing with argon2id. Hashing runs on libuv's thread pool, so
 * the event loop never waits for it.
 */
import argon2 from "argon2";

/** argon2id cost parameters. */
export interface Argon2Params {
  /** Memory in KiB. */
  memoryCost: number;
  timeCost: number;
  parallelism: number;
}

/** OWASP's recommendation (Password Storage Cheat Sheet): m=19456 KiB, t=2, p=1. */
export const OWASP_ARGON2: Argon2Params = { memoryCost: 19_456, timeCost: 2, parallelism: 1 };

export interface PasswordHasher {
  hash(password: string): Promise<string>;
  /** Whether password matches hash; false for a malformed hash. */
  verify(hash: string, password: string): Promise<boolean>;
  /**
   * Spends the time of a verification without a stored hash, so an unknown
   * login answers as slowly as a known one.
   */
  verifyDummy(password: string): Promise<void>;
  /** Whether hash was made with other parameters than the current ones. */
  needsRehash(hash: string): boolean;
}

// NIST SP 800-63B: normalise Unicode so one password typed on two keyboards is one password.
const normalize = (password: string) => password.normalize("NFKC");

/** A hasher with the given parameters; resolves once its dummy hash is ready. */
export async function createPasswordHasher(params: Argon2Params = OWASP_ARGON2): Promise<PasswordHasher> {
  const options = { type: argon2.argon2id, ...params } as const;
  const dummy = await argon2.hash("dummy password for unknown logins", options);
  const verify = async (hash: string, password: string) => {
    try {
      return await argon2.verify(hash, normalize(password));
    } catch {
      return false;
    }
  };
  return {
    hash: (password) => argon2.hash(normalize(password), options),
    verify,
    async verifyDummy(password) {
      await verify(dummy, password);
    },
    needsRehash: (hash) => argon2.needsRehash(hash, params),
  };
}
