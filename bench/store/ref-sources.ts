import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { Exposure } from "../../src/store/types.ts";

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

/** What the store benchmarks use of a SqliteStore, the work tree's or a revision's. */
export interface BenchStore {
  init(): Promise<void>;
  writeExposures(rows: Exposure[]): Promise<void>;
  close(): Promise<void>;
}

/**
 * The SqliteStore of `refDir`'s sources and the work tree's, each opened (init) on its own file in `dir`, ref first.
 * Checkpoints are left out: their thread's CPU (process.cpuUsage counts every thread) would land in whichever store's
 * round it ran in. With a checkpointer thread (the writer's automatic checkpoints are then off) on an interval longer
 * than the run, none runs; both stores are alike in that, so no comparison changes, and the WAL grows by exactly what
 * the writes append (about 100 MB in a default write-cpu.ts run).
 */
export async function refAndWorkStores(refDir: string, dir: string): Promise<{ name: "ref" | "work"; path: string; store: BenchStore }[]> {
  const opened: { name: "ref" | "work"; path: string; store: BenchStore }[] = [];
  for (const [name, root] of [["ref", refDir], ["work", repo]] as const) {
    const mod = (await import(pathToFileURL(join(root, "src/store/sqlite/sqlite-store.ts")).href)) as {
      SqliteStore: new (path: string, options?: object) => BenchStore;
    };
    const path = join(dir, `${name}.db`);
    const store = new mod.SqliteStore(path, { checkpointIntervalMs: 3_600_000 });
    await store.init();
    opened.push({ name, path, store });
  }
  return opened;
}
