/**
 * `npm run build [-- --clean]`: the production build.
 *
 * `tsc -b tsconfig.build.json` compiles every package the services run from
 * (sdk, runtime, customer-service, identity-service), each `src/` to its
 * `dist/`, in dependency order. Then everything under `src/` that is not
 * TypeScript (the SQL migrations and their journal, which the servers find
 * next to themselves through `import.meta.url`) is mirrored into `dist/`.
 * The result runs with plain `node customer-service/dist/main.js`: workspace
 * packages resolve to their `dist/` through the `default` condition of their
 * exports maps. `--clean` deletes every `dist/` first (stale files of deleted
 * sources go with it).
 */
import { execFileSync } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** The packages `tsconfig.build.json` references, in build order; each compiles `<pkg>/src` to `<pkg>/dist`. */
export const BUILT_PACKAGES = ["sdk", "runtime", "customer-service", "identity-service"] as const;

/** Where tsc records a package's last build (inside dist/, so deleting dist/ forces a full build). */
const BUILD_INFO = "dist/.tsbuildinfo";

/** True for what tsc compiles (and so does not copy). */
const isTypeScript = (path: string) => path.endsWith(".ts");

/** True for what tsc writes into dist/. */
const isCompiled = (path: string) => path.endsWith(".js") || path.endsWith(".d.ts") || path.endsWith(".tsbuildinfo");

/** Every file under dir, as paths relative to it ([] if dir does not exist). */
function filesUnder(dir: string, base: string = dir): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const path = join(dir, e.name);
    if (e.isDirectory()) return filesUnder(path, base);
    return e.isFile() ? [relative(base, path)] : [];
  });
}

/**
 * Mirrors the files under `<pkg>/src` that tsc does not compile into
 * `<pkg>/dist` (same relative path) and deletes such files in dist/ whose
 * source is gone, so a removed migration is not applied.
 */
export function copyAssets(root: string = ROOT): string[] {
  const copied: string[] = [];
  for (const pkg of BUILT_PACKAGES) {
    const src = join(root, pkg, "src");
    const dist = join(root, pkg, "dist");
    const assets = filesUnder(src).filter((f) => !isTypeScript(f));
    for (const file of assets) {
      const from = join(src, file);
      const to = join(dist, file);
      mkdirSync(dirname(to), { recursive: true });
      copyFileSync(from, to);
      copied.push(relative(root, to));
    }
    const wanted = new Set(assets);
    for (const file of filesUnder(dist)) {
      if (!isCompiled(file) && !wanted.has(file)) rmSync(join(dist, file));
    }
  }
  return copied;
}

/**
 * Why the compiled build cannot be used as it is (missing, or older than a
 * source file), as a message that names the fix; undefined if it is current.
 * Tests and the bench that run `dist/` call this first, so they never run
 * stale code or skip silently.
 */
export function buildProblem(root: string = ROOT): string | undefined {
  for (const pkg of BUILT_PACKAGES) {
    const info = join(root, pkg, BUILD_INFO);
    if (!existsSync(info)) return `${pkg}/dist is missing: run \`npm run build\` first`;
    const builtAt = statSync(info).mtimeMs;
    for (const file of filesUnder(join(root, pkg, "src"))) {
      const from = join(root, pkg, "src", file);
      if (isTypeScript(file)) {
        if (statSync(from).mtimeMs > builtAt) {
          return `${pkg}/src/${file} changed after the last build: run \`npm run build\``;
        }
        continue;
      }
      const to = join(root, pkg, "dist", file);
      if (!existsSync(to) || !readFileSync(to).equals(readFileSync(from))) {
        return `${pkg}/dist/${file} is missing or differs from its source: run \`npm run build\``;
      }
    }
  }
  return undefined;
}

/** Compiles with `tsc -b` and copies the assets; throws if tsc fails (its errors are on stderr). */
export function build(opts: { root?: string; clean?: boolean } = {}): void {
  const root = opts.root ?? ROOT;
  if (opts.clean) for (const pkg of BUILT_PACKAGES) rmSync(join(root, pkg, "dist"), { recursive: true, force: true });
  const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-b", "tsconfig.build.json"], { cwd: root, stdio: "inherit" });
  copyAssets(root);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const unknown = args.filter((a) => a !== "--clean");
  if (unknown.length > 0) {
    console.error(`build: unknown argument ${unknown.join(" ")} (only --clean)`);
    process.exit(2);
  }
  try {
    build({ clean: args.includes("--clean") });
  } catch {
    // tsc has printed the errors.
    console.error("build: tsc failed");
    process.exit(1);
  }
}
