/**
 * The directory of an embedded PGlite database, kept private and used by
 * one process at a time.
 *
 * Private: created 0700, and checked at every open: if the directory or
 * anything in it is open to group or others, opening is refused (the fix is
 * one chmod). PGlite itself writes the files of a new database 0666 (its
 * in-memory file system copies them out with that mode whatever the umask)
 * and PostgreSQL's relcache init files 0644; makePrivate() takes those bits
 * off after PGlite has opened the directory. Files PostgreSQL creates later
 * (relations, WAL segments) are 0600 on their own.
 *
 * One process at a time: a second PGlite on the same directory, in another
 * process or this one, corrupts it (a row the CLI "created" next to a running
 * service was gone after a restart). The holder takes a lock file inside the
 * directory, created atomically with its pid, host, process start time and
 * name; as with PostgreSQL's postmaster.pid, a lock whose process is gone is
 * stale and taken over.
 */
import { randomUUID } from "node:crypto";
import {
  chmodSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  type Stats,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { hostname } from "node:os";
import { join, resolve } from "node:path";
import { EXIT_CONFIG, EXIT_TEMPFAIL } from "./exit-codes.js";
import { StartupError } from "./main.js";

/** The lock file's name inside the data directory. */
export const LOCK_FILE = "pglite.lock";

/** What the lock file says about its holder. */
export interface LockHolder {
  pid: number;
  host: string;
  /** Who holds it, e.g. "identity-service". */
  name: string;
  /** When it was taken (ISO 8601). */
  since: string;
  /** The holder's start time from /proc (Linux), to tell a reused pid from the holder. */
  procStart?: string;
  /** Identifies this taking of the lock, so release() removes only its own. */
  token: string;
}

/** An embedded database directory this process holds. */
export interface EmbeddedDirectory {
  /** Absolute path. */
  readonly path: string;
  /** Takes group and other permissions off everything in the directory. */
  makePrivate(): void;
  /** Gives the directory up: removes the lock if it is still this one's. */
  release(): void;
}

/**
 * Creates `dir` (0700) or checks it, and takes it for this process. Throws a
 * StartupError naming `variable` when another process holds it (75) or when
 * it is open to other users (78).
 */
export function openEmbeddedDirectory(dir: string, opts: { variable: string; name: string }): EmbeddedDirectory {
  const path = resolve(dir);
  const { variable } = opts;
  createPrivate(path, variable);
  const lock = takeLock(path, opts);
  try {
    const entries = readdirSync(path).filter((e) => e !== LOCK_FILE);
    if (entries.length === 0) {
      // Nothing to expose yet (e.g. a volume mounted there): just make it private.
      chmodSync(path, 0o700);
    } else {
      const open = firstOpenToOthers(path);
      if (open) {
        throw new StartupError(
          `${variable}: the embedded database ${path} is open to other users (${open.path} has mode ${octal(open.mode)}); run chmod -R go-rwx ${shellQuote(path)} and start again`,
          EXIT_CONFIG,
        );
      }
    }
  } catch (err) {
    lock.release();
    throw err;
  }
  return { path, makePrivate: () => makePrivate(path), release: lock.release };
}

function createPrivate(path: string, variable: string): void {
  let stats: Stats | undefined;
  try {
    stats = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  if (stats && !stats.isDirectory()) {
    throw new StartupError(`${variable}: ${path} is not a directory`, EXIT_CONFIG);
  }
  if (stats) return;
  try {
    mkdirSync(path, { recursive: true, mode: 0o700 });
    // mkdir's mode passes through the umask; the directory must be exactly 0700.
    chmodSync(path, 0o700);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EPERM" || code === "EROFS" || code === "ENOTDIR") {
      throw new StartupError(`${variable}: cannot create the directory ${path} (${code})`, EXIT_CONFIG, {
        cause: err,
      });
    }
    throw err;
  }
}

function takeLock(dir: string, opts: { variable: string; name: string }): { release(): void } {
  const path = join(dir, LOCK_FILE);
  const mine: LockHolder = {
    pid: process.pid,
    host: hostname(),
    name: opts.name,
    since: new Date().toISOString(),
    ...procStartOf(process.pid),
    token: randomUUID(),
  };
  const release = () => {
    if (readLock(path)?.token === mine.token) rmSync(path, { force: true });
  };
  // Written whole under a temporary name, then linked into place: link() fails if
  // the lock exists, so no process ever reads a half-written lock.
  const temp = join(dir, `${LOCK_FILE}.${mine.token}`);
  writeFileSync(temp, `${JSON.stringify(mine)}\n`, { mode: 0o600 });
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        linkSync(temp, path);
        return { release };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
      }
      const holder = readLock(path);
      if (holder && isAlive(holder)) {
        const where = holder.host === mine.host ? "" : ` on ${holder.host}`;
        throw new StartupError(
          `${opts.variable}: the embedded database ${dir} is in use by ${holder.name} (pid ${holder.pid}${where}, since ${holder.since}); stop it first, or use PostgreSQL (${opts.variable}=postgres://…)`,
          EXIT_TEMPFAIL,
        );
      }
      // Its process is gone (or it is unreadable, which a lock written whole never is).
      rmSync(path, { force: true });
    }
    throw new StartupError(
      `${opts.variable}: could not lock the embedded database ${dir} (${path} keeps coming back); try again`,
      EXIT_TEMPFAIL,
    );
  } finally {
    unlinkSync(temp);
  }
}

function readLock(path: string): LockHolder | undefined {
  try {
    const holder = JSON.parse(readFileSync(path, "utf8")) as Partial<LockHolder>;
    return typeof holder.pid === "number" && typeof holder.token === "string" ? (holder as LockHolder) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether the lock's process still runs. A lock from another host cannot be
 * checked from here and counts as held; on this host the pid must exist and,
 * where /proc tells, have started when the holder did (pids are reused).
 */
function isAlive(holder: LockHolder): boolean {
  if (holder.host !== hostname()) return true;
  try {
    process.kill(holder.pid, 0);
  } catch (err) {
    // EPERM: it exists, under another user.
    if ((err as NodeJS.ErrnoException).code !== "EPERM") return false;
  }
  const now = procStartOf(holder.pid).procStart;
  return holder.procStart === undefined || now === undefined || now === holder.procStart;
}

/** Field 22 of /proc/<pid>/stat, the process's start time since boot; nothing where there is no /proc. */
function procStartOf(pid: number): { procStart?: string } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) is in parentheses and may hold spaces.
    const start = stat
      .slice(stat.lastIndexOf(")") + 2)
      .split(" ")
      .at(19);
    return start ? { procStart: start } : {};
  } catch {
    return {};
  }
}

/** Every entry under root (root first), with its lstat; entries that vanish meanwhile are skipped. */
function* walk(root: string): Generator<{ path: string; stats: Stats }> {
  for (const rel of ["", ...readdirSync(root, { recursive: true, encoding: "utf8" })]) {
    const path = rel ? join(root, rel) : root;
    try {
      yield { path, stats: lstatSync(path) };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
}

function firstOpenToOthers(root: string): { path: string; mode: number } | undefined {
  for (const { path, stats } of walk(root)) {
    if (!stats.isSymbolicLink() && (stats.mode & 0o077) !== 0) return { path, mode: stats.mode & 0o7777 };
  }
  return undefined;
}

function makePrivate(root: string): void {
  for (const { path, stats } of walk(root)) {
    if (stats.isSymbolicLink() || (stats.mode & 0o077) === 0) continue;
    try {
      chmodSync(path, stats.mode & 0o7700);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
  }
}

const octal = (mode: number) => `0${mode.toString(8).padStart(3, "0")}`;

/** `s` as one shell word. */
function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}
