import { createHash } from "node:crypto";
import { lstatSync, readFileSync, readdirSync, readlinkSync } from "node:fs";
import { join, posix } from "node:path";
import { InvalidArgumentError } from "../../errors.ts";

/**
 * A build context read from disk: the files Docker would receive (after `.dockerignore`), packed as a tar
 * archive, and a content hash over those files plus the Dockerfile name and build arguments. The hash names
 * the image tag, so an image is rebuilt exactly when something that goes into it changed.
 */
export interface BuildContext {
  /** sha256 hex of the packed files, Dockerfile path and build args */
  hash: string;
  /** uncompressed tar archive of the context */
  tar: Buffer;
  /** paths (relative, `/`-separated) of the files in the archive, sorted */
  files: string[];
}

interface Entry {
  path: string;
  kind: "file" | "dir" | "symlink";
  mode: number;
  data?: Buffer;
  link?: string;
}

/**
 * One `.dockerignore` rule as Docker's pattern matcher reads it: Go `filepath.Match` syntax plus `**`, a
 * leading `!` re-includes, and a pattern that matches a directory excludes everything below it.
 */
interface IgnoreRule {
  negate: boolean;
  re: RegExp;
}

function globToRegExp(pattern: string): RegExp {
  let re = "";
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "*") {
      if (pattern[i + 1] === "*") {
        // `**/` matches zero or more directories; a trailing `**` matches everything below
        if (pattern[i + 2] === "/") {
          re += "(?:.*/)?";
          i += 2;
        } else {
          re += ".*";
          i += 1;
        }
      } else {
        re += "[^/]*";
      }
    } else if (c === "?") {
      re += "[^/]";
    } else if (c === "[") {
      const end = pattern.indexOf("]", i + 1);
      if (end < 0) {
        re += "\\[";
      } else {
        let cls = pattern.slice(i + 1, end);
        if (cls.startsWith("^") || cls.startsWith("!")) cls = "^" + cls.slice(1);
        re += `[${cls.replace(/\\/g, "\\\\")}]`;
        i = end;
      }
    } else if (c === "\\" && i + 1 < pattern.length) {
      re += "\\" + pattern[++i];
    } else {
      re += c.replace(/[.+^${}()|\\]/g, "\\$&");
    }
  }
  return new RegExp(`^${re}$`);
}

function cleanPattern(p: string): string {
  let out = p.trim().replace(/\\/g, "/");
  out = out.replace(/^\/+/, "").replace(/\/+$/, "").replace(/\/{2,}/g, "/");
  const parts: string[] = [];
  for (const seg of out.split("/")) {
    if (seg === "." || seg === "") continue;
    if (seg === ".." && parts.length && parts[parts.length - 1] !== "..") parts.pop();
    else parts.push(seg);
  }
  return parts.join("/");
}

/** Parse `.dockerignore` text into rules (comments and blank lines dropped). */
export function parseDockerignore(text: string): IgnoreRule[] {
  const rules: IgnoreRule[] = [];
  for (const raw of text.split(/\r?\n/)) {
    let line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const negate = line.startsWith("!");
    if (negate) line = line.slice(1);
    const pattern = cleanPattern(line);
    if (!pattern) continue;
    rules.push({ negate, re: globToRegExp(pattern) });
  }
  return rules;
}

/** Whether `path` (relative, `/`-separated) is excluded: the last rule that matches it or a parent decides. */
export function isIgnored(path: string, rules: IgnoreRule[]): boolean {
  const segments = path.split("/");
  let excluded = false;
  for (const rule of rules) {
    let hit = false;
    for (let n = segments.length; n >= 1 && !hit; n--) hit = rule.re.test(segments.slice(0, n).join("/"));
    if (hit) excluded = !rule.negate;
  }
  return excluded;
}

function walk(root: string, rules: IgnoreRule[], always: Set<string>): Entry[] {
  const out: Entry[] = [];
  const visit = (rel: string): void => {
    const abs = rel ? join(root, rel) : root;
    const names = readdirSync(abs).sort();
    for (const name of names) {
      const path = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(root, path));
      const ignored = isIgnored(path, rules) && !always.has(path);
      if (st.isDirectory()) {
        // a directory may be excluded while a `!` rule re-includes something inside it, so we still descend
        if (!ignored) out.push({ path, kind: "dir", mode: st.mode & 0o7777 });
        visit(path);
      } else if (ignored) {
        continue;
      } else if (st.isSymbolicLink()) {
        out.push({ path, kind: "symlink", mode: 0o777, link: readlinkSync(join(root, path)) });
      } else if (st.isFile()) {
        out.push({ path, kind: "file", mode: st.mode & 0o7777, data: readFileSync(join(root, path)) });
      }
    }
  };
  visit("");
  return out;
}

function octal(value: number, width: number): string {
  return value.toString(8).padStart(width - 1, "0") + "\0";
}

function header(name: string, opts: { size: number; mode: number; type: string; link?: string }): Buffer {
  const h = Buffer.alloc(512);
  h.write(name, 0, 100, "utf8");
  h.write(octal(opts.mode, 8), 100, "ascii");
  h.write(octal(0, 8), 108, "ascii");
  h.write(octal(0, 8), 116, "ascii");
  h.write(octal(opts.size, 12), 124, "ascii");
  // a fixed mtime keeps the archive (and the builder's cache keys) independent of checkout times
  h.write(octal(0, 12), 136, "ascii");
  h.write("        ", 148, "ascii");
  h.write(opts.type, 156, "ascii");
  if (opts.link) h.write(opts.link, 157, 100, "utf8");
  h.write("ustar\0", 257, "ascii");
  h.write("00", 263, "ascii");
  let sum = 0;
  for (const b of h) sum += b;
  h.write(octal(sum, 7) + " ", 148, "ascii");
  return h;
}

function pad(size: number): Buffer {
  return Buffer.alloc((512 - (size % 512)) % 512);
}

/** A PAX extended header carrying names longer than the 100 bytes a ustar header holds. */
function paxRecords(records: Record<string, string>): Buffer {
  let body = "";
  for (const [k, v] of Object.entries(records)) {
    const rest = ` ${k}=${v}\n`;
    let len = Buffer.byteLength(rest) + 1;
    while (String(len).length + Buffer.byteLength(rest) !== len) len = String(len).length + Buffer.byteLength(rest);
    body += `${len}${rest}`;
  }
  const data = Buffer.from(body, "utf8");
  return Buffer.concat([header("PaxHeader", { size: data.length, mode: 0o644, type: "x" }), data, pad(data.length)]);
}

function pack(entries: Entry[]): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const name = e.kind === "dir" ? `${e.path}/` : e.path;
    const pax: Record<string, string> = {};
    if (Buffer.byteLength(name) > 99) pax.path = name;
    if (e.link && Buffer.byteLength(e.link) > 99) pax.linkpath = e.link;
    if (Object.keys(pax).length) parts.push(paxRecords(pax));
    const size = e.data?.length ?? 0;
    const type = e.kind === "dir" ? "5" : e.kind === "symlink" ? "2" : "0";
    parts.push(header(name.slice(0, 99), { size, mode: e.mode, type, link: e.link?.slice(0, 99) }));
    if (e.data) parts.push(e.data, pad(size));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

/** The Dockerfile's path in the context as Docker names it (forward slashes, no leading "./"). */
function dockerfileIn(dockerfile: string | undefined): string {
  return (dockerfile ?? "Dockerfile").replace(/\\/g, "/").replace(/^\.\//, "");
}

/**
 * Why a build context cannot be read, or null: the one check behind both `readBuildContext` (when it builds) and
 * `buildContextIssues` (`validate` and `up`, before anything runs), so that the two cannot disagree.
 */
function contextProblem(dir: string, dockerfile: string): { kind: "missing" | "not-folder" | "no-dockerfile" | "outside"; cause?: unknown } | null {
  // The daemon reads the Dockerfile from the context it is sent ("forbidden path outside the build context"):
  // `docker build -f` outside it works only because the CLI sends such a file specially.
  const inside = posix.normalize(dockerfile);
  if (posix.isAbsolute(inside) || inside === ".." || inside.startsWith("../")) return { kind: "outside" };
  let st;
  try {
    st = lstatSync(dir);
  } catch (cause) {
    return { kind: "missing", cause };
  }
  if (!st.isDirectory()) return { kind: "not-folder" };
  try {
    lstatSync(join(dir, dockerfile));
  } catch (cause) {
    return { kind: "no-dockerfile", cause };
  }
  return null;
}

/**
 * The variants whose build context cannot be read, as config issues naming the key (`variants[1].build`): `validate`
 * and `up` report them before anything runs, where the build would fail only after the images before it.
 */
export function buildContextIssues(variants: readonly { build?: string; dockerfile?: string }[]): { path: string; message: string }[] {
  const issues: { path: string; message: string }[] = [];
  variants.forEach((v, i) => {
    if (v.build === undefined) return;
    const dockerfile = dockerfileIn(v.dockerfile);
    const problem = contextProblem(v.build, dockerfile);
    if (problem?.kind === "missing") issues.push({ path: `variants[${i}].build`, message: `a folder with a ${dockerfile}; ${v.build} does not exist` });
    else if (problem?.kind === "not-folder") issues.push({ path: `variants[${i}].build`, message: `a folder with a ${dockerfile}; ${v.build} is not a folder` });
    else if (problem?.kind === "outside") issues.push({ path: `variants[${i}].dockerfile`, message: `a path inside the build context ${v.build} (relative to it); ${v.dockerfile} is outside it` });
    else if (problem?.kind === "no-dockerfile") {
      issues.push({ path: v.dockerfile === undefined ? `variants[${i}].build` : `variants[${i}].dockerfile`, message: `a ${dockerfile} in ${v.build}; there is none` });
    }
  });
  return issues;
}

/**
 * Read a build context as `docker build` would send it. The Dockerfile and `.dockerignore` are always
 * included (Docker sends them even when ignored). Throws InvalidArgumentError when the context or the
 * Dockerfile is missing.
 */
export function readBuildContext(dir: string, opts: { dockerfile?: string; buildArgs?: Record<string, string> } = {}): BuildContext {
  const dockerfile = dockerfileIn(opts.dockerfile);
  const problem = contextProblem(dir, dockerfile);
  if (problem?.kind === "missing") throw new InvalidArgumentError(`build context ${dir} does not exist`, { cause: problem.cause });
  if (problem?.kind === "not-folder") throw new InvalidArgumentError(`build context ${dir} is not a directory`);
  if (problem?.kind === "no-dockerfile") throw new InvalidArgumentError(`no ${dockerfile} in build context ${dir}`, { cause: problem.cause });
  if (problem?.kind === "outside") throw new InvalidArgumentError(`the Dockerfile ${dockerfile} is outside build context ${dir}: give its path inside the context`);
  let ignoreText = "";
  try {
    ignoreText = readFileSync(join(dir, ".dockerignore"), "utf8");
  } catch {
    // no .dockerignore: everything is sent
  }
  const entries = walk(dir, parseDockerignore(ignoreText), new Set([dockerfile, ".dockerignore"]));
  const hash = createHash("sha256");
  for (const e of entries) {
    // only what changes the image: path, kind, executable bits and content
    hash.update(`${e.kind}\0${e.path}\0${(e.mode & 0o111).toString(8)}\0${e.link ?? ""}\0${e.data?.length ?? 0}\0`);
    if (e.data) hash.update(e.data);
  }
  hash.update(`dockerfile\0${dockerfile}\0`);
  const args = Object.entries(opts.buildArgs ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  hash.update(`args\0${JSON.stringify(args)}`);
  return {
    hash: hash.digest("hex"),
    tar: pack(entries),
    files: entries.filter((e) => e.kind !== "dir").map((e) => e.path),
  };
}
