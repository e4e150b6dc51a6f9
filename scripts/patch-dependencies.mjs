#!/usr/bin/env node
/**
 * Fixes to installed dependencies, applied after every install (the root
 * package's `postinstall`, also in the image's `npm ci --omit=dev`). Each one
 * says what it fixes, how it was found and where it stands upstream. Plain
 * JavaScript: it runs before anything is built, in the slim image too.
 *
 * A patch applies to one exact version. Another version, or a file that no
 * longer holds the original text, fails the install with a message: see
 * whether upstream fixed it, then update the patch or delete it.
 * `node scripts/patch-dependencies.mjs --check` exits 1 if any is not applied.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");

const PATCHES = [
  {
    name: "postgres: a pool queue that scans every query it ever held",
    package: "postgres",
    version: "3.4.9",
    // The same Queue in the ESM, CommonJS and Cloudflare builds.
    files: ["src/queue.js", "cjs/src/queue.js", "cf/src/queue.js"],
    // postgres.js keeps its connections in Queues (open, busy, full, …). shift() leaves a hole
    // and empties the array only when the queue runs empty; remove() scans from the start. With
    // every connection busy (queries pipelined on busy connections), each query shifts a busy
    // connection and moves it back to busy: remove() misses, scanning all the holes, and push()
    // adds one more. The array grows by one per query for as long as the pool stays busy, and so
    // does the scan: 6% of a GetCustomer's CPU after a 10 s bench window (the CPU profile's
    // `remove` in queue.js), 35 µs per query after 200,000 queries in isolation. Fix: remove()
    // searches from the head, shift() compacts once holes are over half the array. Reported
    // symptom upstream: porsager/postgres#747 ("speed dropped"); the fix is offered there.
    replacements: [
      [
        `    remove: (x) => {
      const index = xs.indexOf(x)
      return index === -1
        ? null
        : (xs.splice(index, 1), x)
    },`,
        `    remove: (x) => {
      const at = xs.indexOf(x, index)
      return at === -1
        ? null
        : (xs.splice(at, 1), x)
    },`,
      ],
      [
        `      } else {
        xs[index - 1] = undefined
      }`,
        `      } else {
        xs[index - 1] = undefined
        if (index > 1024 && index * 2 > xs.length) {
          xs = xs.slice(index)
          index = 0
        }
      }`,
      ],
    ],
  },
];

const checkOnly = process.argv.includes("--check");
let failed = false;
for (const patch of PATCHES) {
  const dir = join(ROOT, "node_modules", patch.package);
  let version;
  try {
    version = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")).version;
  } catch {
    // Not installed (e.g. a partial install): nothing to patch.
    continue;
  }
  if (version !== patch.version) {
    console.error(
      `patch-dependencies: "${patch.name}" is for ${patch.package} ${patch.version}, installed is ${version}: ` +
        "check whether upstream fixed it, then update or delete the patch in scripts/patch-dependencies.mjs",
    );
    failed = true;
    continue;
  }
  for (const file of patch.files) {
    const path = join(dir, file);
    const text = readFileSync(path, "utf8");
    let patched = text;
    for (const [original, replacement] of patch.replacements) {
      if (patched.includes(replacement)) continue;
      if (!patched.includes(original)) {
        console.error(`patch-dependencies: "${patch.name}": ${patch.package}/${file} does not hold the original text`);
        failed = true;
        continue;
      }
      patched = patched.replace(original, replacement);
    }
    if (patched === text) continue;
    if (checkOnly) {
      console.error(`patch-dependencies: "${patch.name}" is not applied to ${patch.package}/${file}`);
      failed = true;
    } else {
      writeFileSync(path, patched);
      console.log(`patch-dependencies: applied "${patch.name}" to ${patch.package}/${file}`);
    }
  }
}
process.exit(failed ? 1 : 0);
