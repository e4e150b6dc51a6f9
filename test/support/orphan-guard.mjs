/**
 * Preloaded into every service child processes.ts spawns
 * (`node --import …/orphan-guard.mjs`), so nothing in src/ knows about it: a
 * child whose test process is gone (a hook that timed out, a worker torn
 * down before its afterAll ran) ends itself within a second, rather than
 * living on and loading the machine for every test and benchmark after it.
 */
const parent = process.ppid;
setInterval(() => {
  if (process.ppid !== parent) process.kill(process.pid, "SIGKILL");
}, 1_000).unref();
