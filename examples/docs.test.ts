/**
 * Every TypeScript snippet of docs/integrate.md and sdk/README.md is a
 * complete module that compiles against the SDK and the generated code:
 * each is written to its own file in a directory inside the repository (so
 * packages resolve as for the examples) and checked by tsc with the
 * project's strict options. A deliberately broken file in the same run
 * shows that the snippets really are checked.
 */
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, describe, expect, it } from "vitest";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const DOCS = ["docs/integrate.md", "sdk/README.md"];

mkdirSync(join(ROOT, ".tmp"), { recursive: true });
const dir = mkdtempSync(join(ROOT, ".tmp", "doc-snippets-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The ```ts blocks of a markdown file, in order. */
function tsBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map((m) => m[1] ?? "");
}

describe("documentation snippets", () => {
  it("compile with the project's strict options", async () => {
    const files: string[] = [];
    for (const doc of DOCS) {
      const blocks = tsBlocks(readFileSync(join(ROOT, doc), "utf8"));
      expect(blocks.length, doc).toBeGreaterThanOrEqual(3);
      blocks.forEach((code, i) => {
        const name = `${doc.replace(/[/.]/g, "-")}-${i + 1}.ts`;
        writeFileSync(join(dir, name), code);
        files.push(name);
      });
    }
    writeFileSync(join(dir, "broken.ts"), 'export const n: number = "not a number";\n');
    writeFileSync(
      join(dir, "tsconfig.json"),
      JSON.stringify({
        extends: "../../tsconfig.json",
        // A snippet may import a name only to show where it lives.
        compilerOptions: { noUnusedLocals: false, noUnusedParameters: false },
        include: ["*.ts"],
      }),
    );
    const tsc = join(ROOT, "node_modules/typescript/bin/tsc");
    const out = await promisify(execFile)(process.execPath, [tsc, "--noEmit", "-p", join(dir, "tsconfig.json")], {
      cwd: ROOT,
    }).then(
      (r) => r.stdout,
      (err: { stdout?: string }) => err.stdout ?? String(err),
    );
    const errors = out.split("\n").filter((l) => /error TS\d+/.test(l));
    expect(errors).toEqual([expect.stringMatching(/broken\.ts\(1,14\): error TS2322/)]);
    expect(files.length).toBeGreaterThanOrEqual(8);
  }, 60_000);

  it("tell readers to install the SDK, never to copy a file", () => {
    const doc = readFileSync(join(ROOT, "docs/integrate.md"), "utf8");
    expect(doc).toContain("npm install @customer-platform/sdk @customer-platform/gen");
    expect(doc).not.toMatch(/\bcopy (it|this file|runtime)/i);
    expect(doc).not.toMatch(/runtime\/(events|revocations|auth)\.ts/);
  });
});
