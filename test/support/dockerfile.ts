/**
 * Reads the repository's Dockerfile and .dockerignore the way `docker build`
 * does, as far as this repository uses them (shell-form COPY with `--from`,
 * ENV, RUN, CMD and HEALTHCHECK in JSON form), so a test can rebuild an
 * image's file set without a Docker engine.
 */
import { cpSync, existsSync, lstatSync, mkdirSync, statSync } from "node:fs";
import { dirname, join, posix, relative, sep } from "node:path";

export type Instruction =
  | { kind: "COPY"; from?: string; sources: string[]; dest: string }
  | { kind: "ENV"; vars: Record<string, string> }
  | { kind: "RUN"; command: string }
  | { kind: "WORKDIR"; path: string }
  | { kind: "CMD"; args: string[] }
  | { kind: "HEALTHCHECK"; args: string[] }
  | { kind: "OTHER"; keyword: string; rest: string };

export interface Stage {
  readonly name: string;
  /** The image or the earlier stage this one starts from. */
  readonly from: string;
  readonly instructions: Instruction[];
}

/** The stages of a Dockerfile, in order. Throws on the forms it does not understand. */
export function parseDockerfile(text: string): Stage[] {
  // Continuation lines joined, comments and blank lines dropped.
  const lines = text
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  const stages: Stage[] = [];
  for (const line of lines) {
    const [, keyword = "", rest = ""] = /^(\S+)\s*(.*)$/.exec(line) ?? [];
    const kw = keyword.toUpperCase();
    if (kw === "FROM") {
      const m = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(rest);
      if (!m?.[1]) throw new Error(`cannot read FROM ${rest}`);
      stages.push({ from: m[1], name: m[2] ?? `#${stages.length}`, instructions: [] });
      continue;
    }
    const stage = stages[stages.length - 1];
    if (!stage) continue; // ARG before the first FROM
    stage.instructions.push(instruction(kw, rest));
  }
  return stages;
}

function instruction(kw: string, rest: string): Instruction {
  switch (kw) {
    case "COPY": {
      if (rest.startsWith("[")) throw new Error(`COPY in JSON form is not supported here: ${rest}`);
      const words = rest.split(/\s+/);
      let from: string | undefined;
      while (words[0]?.startsWith("--")) {
        const flag = words.shift() as string;
        if (flag.startsWith("--from=")) from = flag.slice("--from=".length);
        else if (!flag.startsWith("--chown=") && !flag.startsWith("--chmod=") && flag !== "--link") {
          throw new Error(`unknown COPY flag ${flag}`);
        }
      }
      const dest = words.pop();
      if (!dest || words.length === 0) throw new Error(`COPY needs a source and a destination: ${rest}`);
      return { kind: "COPY", ...(from !== undefined && { from }), sources: words, dest };
    }
    case "ENV": {
      const vars: Record<string, string> = {};
      for (const pair of rest.split(/\s+/)) {
        const eq = pair.indexOf("=");
        if (eq <= 0) throw new Error(`ENV without key=value: ${rest}`);
        vars[pair.slice(0, eq)] = pair.slice(eq + 1);
      }
      return { kind: "ENV", vars };
    }
    case "RUN":
      return { kind: "RUN", command: rest };
    case "WORKDIR":
      return { kind: "WORKDIR", path: rest };
    case "CMD":
      return { kind: "CMD", args: JSON.parse(rest) as string[] };
    case "HEALTHCHECK": {
      const at = rest.indexOf("CMD ");
      if (at < 0) throw new Error(`HEALTHCHECK without CMD: ${rest}`);
      return { kind: "HEALTHCHECK", args: JSON.parse(rest.slice(at + 4)) as string[] };
    }
    default:
      return { kind: "OTHER", keyword: kw, rest };
  }
}

/** The stage called name and the stages it builds on, the first one first. */
export function stageChain(stages: Stage[], name: string): Stage[] {
  const chain: Stage[] = [];
  for (let s = stages.find((x) => x.name === name); s; s = stages.find((x) => x.name === s?.from)) chain.unshift(s);
  if (chain.length === 0) throw new Error(`no stage ${name}`);
  return chain;
}

/**
 * The rules of a .dockerignore: true if a path of the build context (relative,
 * with `/`) is left out. As Docker does: a pattern also matches everything
 * under a matching directory, `**` spans directories, the last matching rule
 * wins, and `!` brings a path back. A directory counts as left out only if no
 * `!` rule names something inside it.
 */
export function dockerignore(text: string): (path: string, isDirectory?: boolean) => boolean {
  const rules = text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => {
      const include = l.startsWith("!");
      const pattern = posix.normalize((include ? l.slice(1) : l).replace(/^\/+/, ""));
      return { include, pattern, regex: globRegex(pattern) };
    });
  return (path, isDirectory = false) => {
    let excluded = false;
    for (const rule of rules) if (rule.regex.test(path)) excluded = !rule.include;
    if (excluded && isDirectory) return !rules.some((r) => r.include && r.pattern.startsWith(`${path}/`));
    return excluded;
  };
}

function globRegex(pattern: string): RegExp {
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i] as string;
    if (c === "*" && pattern[i + 1] === "*") {
      // "**/" matches any number of directories, including none.
      if (pattern[i + 2] === "/") {
        re += "(?:.*/)?";
        i += 2;
      } else {
        re += ".*";
        i += 1;
      }
    } else if (c === "*") re += "[^/]*";
    else if (c === "?") re += "[^/]";
    else re += c.replace(/[.+^${}()|[\]\\]/g, "\\$&");
  }
  // The path itself or anything under it.
  return new RegExp(`^${re}(?:/.*)?$`);
}

/** Where a stage's files come from: the build context, or a directory standing for an earlier stage's WORKDIR. */
export interface StageSources {
  /** The build context (the repository root). */
  readonly context: string;
  readonly ignored: (path: string, isDirectory?: boolean) => boolean;
  /** Per earlier stage named by `--from`: the local directory that holds what its WORKDIR holds. */
  readonly stages: Readonly<Record<string, string>>;
}

/** What a stage (with the ones it builds on) sets besides its files. */
export interface StageConfig {
  env: Record<string, string>;
  workdir: string;
  cmd: string[] | undefined;
  healthcheck: string[] | undefined;
  run: string[];
}

/**
 * Copies what the COPY lines of the stages put into their WORKDIR into `into`,
 * and returns their ENV, CMD, HEALTHCHECK and RUN lines (RUN is not executed).
 */
export function applyStages(chain: Stage[], sources: StageSources, into: string): StageConfig {
  const config: StageConfig = { env: {}, workdir: "/", cmd: undefined, healthcheck: undefined, run: [] };
  for (const stage of chain) {
    for (const ins of stage.instructions) {
      switch (ins.kind) {
        case "WORKDIR":
          config.workdir = posix.resolve(config.workdir, ins.path);
          break;
        case "ENV":
          Object.assign(config.env, ins.vars);
          break;
        case "RUN":
          config.run.push(ins.command);
          break;
        case "CMD":
          config.cmd = ins.args;
          break;
        case "HEALTHCHECK":
          config.healthcheck = ins.args;
          break;
        case "COPY":
          copy(ins, config.workdir, sources, into);
          break;
        case "OTHER":
          break;
      }
    }
  }
  return config;
}

function copy(ins: Extract<Instruction, { kind: "COPY" }>, workdir: string, sources: StageSources, into: string) {
  const destInImage = posix.resolve(workdir, ins.dest);
  if (!destInImage.startsWith(`${workdir}/`) && destInImage !== workdir) {
    throw new Error(`COPY outside WORKDIR ${workdir}: ${ins.dest}`);
  }
  const dest = join(into, posix.relative(workdir, destInImage));
  const intoDir = ins.dest.endsWith("/") || ins.sources.length > 1;
  for (const source of ins.sources) {
    let from: string;
    let filter: (rel: string, isDirectory: boolean) => boolean = () => true;
    if (ins.from === undefined) {
      const rel = posix.normalize(source).replace(/\/+$/, "");
      from = join(sources.context, rel);
      // Paths relative to the context root, as .dockerignore sees them.
      filter = (p, isDirectory) => !sources.ignored(posix.join(rel === "." ? "" : rel, p), isDirectory);
      if (rel !== "." && existsSync(from) && sources.ignored(rel, statSync(from).isDirectory())) {
        throw new Error(`COPY ${source}: excluded by .dockerignore`);
      }
    } else {
      const stageDir = sources.stages[ins.from];
      if (stageDir === undefined) throw new Error(`COPY --from=${ins.from}: no directory stands for that stage`);
      // Absolute paths in an earlier stage are under its WORKDIR (/app for every stage here).
      from = join(stageDir, posix.relative("/app", posix.resolve("/app", source)));
    }
    if (!existsSync(from)) throw new Error(`COPY ${ins.from ? `--from=${ins.from} ` : ""}${source}: not found`);
    if (statSync(from).isDirectory()) {
      // A directory's contents are copied, not the directory itself.
      copyTree(from, dest, filter);
    } else {
      const to = intoDir ? join(dest, posix.basename(source)) : dest;
      mkdirSync(dirname(to), { recursive: true });
      cpSync(from, to);
    }
  }
}

/** Copies a directory's contents (symlinks as they are), leaving out what filter rejects. */
function copyTree(from: string, to: string, filter: (rel: string, isDirectory: boolean) => boolean): void {
  mkdirSync(to, { recursive: true });
  cpSync(from, to, {
    recursive: true,
    verbatimSymlinks: true,
    filter: (src) => src === from || filter(relative(from, src).split(sep).join("/"), lstatSync(src).isDirectory()),
  });
}
