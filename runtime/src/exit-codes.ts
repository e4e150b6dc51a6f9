/**
 * Process exit codes for failures an operator can fix, from BSD's
 * sysexits.h, so a process manager (or a person) can tell them apart.
 */

/** A service it needs cannot be reached (e.g. PostgreSQL is down). */
export const EXIT_UNAVAILABLE = 69;
/** Try again later: e.g. the embedded database is held by another process. */
export const EXIT_TEMPFAIL = 75;
/** The configuration must change: a bad variable, a missing database, a refused login, unsafe permissions. */
export const EXIT_CONFIG = 78;
