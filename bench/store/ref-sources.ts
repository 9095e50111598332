import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repo = resolve(fileURLToPath(new URL("../..", import.meta.url)));

/**
 * The sources of a git revision, extracted once into $TMPDIR/abgate-bench-store-ref-<sha>/, outside the repository
 * (tsconfig type-checks everything under bench/), with a node_modules link so that `better-sqlite3` resolves from
 * them as it does from the work tree: a benchmark can load them beside the work tree's in one process.
 */
export function refSources(sha: string): string {
  const refDir = join(tmpdir(), `abgate-bench-store-ref-${sha.slice(0, 12)}`);
  if (!existsSync(join(refDir, "src"))) {
    rmSync(refDir, { recursive: true, force: true });
    mkdirSync(refDir, { recursive: true });
    symlinkSync(join(repo, "node_modules"), join(refDir, "node_modules"));
    execFileSync("sh", ["-c", `git archive ${sha} src package.json | tar -x -C '${refDir}'`], { cwd: repo });
  }
  return refDir;
}

/** `ref` as a full sha and a label, or `refDir` as given. */
export function refSourcesOf(ref: string, refDir: string | undefined): { dir: string; label: string } {
  if (refDir !== undefined) return { dir: resolve(refDir), label: resolve(refDir) };
  const sha = execFileSync("git", ["rev-parse", ref], { cwd: repo, encoding: "utf8" }).trim();
  return { dir: refSources(sha), label: `${ref} (${sha.slice(0, 12)})` };
}
