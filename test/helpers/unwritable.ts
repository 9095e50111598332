import { spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
export const NOBODY = 65534;

/** How to start a child that may not write a folder whose mode is r-x for all: as `uid`/`gid`, behind `prefix`. */
export interface Unprivileged {
  uid?: number;
  gid?: number;
  /** a command that runs the child's command line (empty: run it directly) */
  prefix: string[];
  /** the child runs as another user than root (the tests' files' owner) */
  otherUser: boolean;
}

/**
 * Who a child process runs as so that it may not write a folder whose mode is r-x for all (see `unwritableFolder`):
 * the current user; as root (which file modes do not stop, and which the tests run as), preferably (setpriv, from
 * util-linux) effective user nobody, with real user root and the one capability to read and search any file: the
 * files it makes are nobody's, its writes obey file modes, and it reads this checkout wherever it is, also through
 * access(2), which takes the real user's capabilities (tsx and better-sqlite3's loader look files up with it).
 * Else plain nobody, else root without the capabilities that override file modes. undefined when none works; with
 * ABGATE_REQUIRE_UNPRIVILEGED=1 (scripts/test-env.sh, so CI) that throws instead, as a skipped test would pass.
 * `mustRun`: what the child must be able to run (default: open an SQLite database through this checkout's driver).
 */
export function unprivileged(
  mustRun: string[] = [process.execPath, "--import", "tsx", "-e", `new (require("better-sqlite3"))(":memory:").close()`],
): Unprivileged | undefined {
  if (process.getuid?.() !== 0) return { prefix: [], otherUser: true };
  // It must run `mustRun` (this checkout's code: tsx, for one, looks for package.json with access(2), which for
  // another user than root ignores the capability to read any file), and fail to make a file in an r-x folder.
  const folder = mkdtempSync(join(tmpdir(), "abgate-unwritable-"));
  chmodSync(folder, 0o555);
  const write = `try { require("node:fs").writeFileSync(${JSON.stringify(join(folder, "probe"))}, ""); process.exit(3); } catch { process.exit(0); }`;
  const runs = (as: Unprivileged) =>
    [mustRun, [process.execPath, "-e", write]].every((command) => {
      const [file, args] = unprivilegedArgv(as, command);
      return spawnSync(file, args, { cwd: ROOT, uid: as.uid, gid: as.gid, stdio: "ignore", timeout: 30_000 }).status === 0;
    });
  try {
    for (const as of [
      {
        prefix: [
          "setpriv", "--ruid", "0", "--euid", String(NOBODY), "--rgid", "0", "--egid", String(NOBODY), "--clear-groups",
          "--inh-caps", "-all,+dac_read_search", "--ambient-caps", "-all,+dac_read_search", "--bounding-set", "-all,+dac_read_search", "--",
        ],
        otherUser: true,
      },
      { uid: NOBODY, gid: NOBODY, prefix: [], otherUser: true },
      // (dropping the inheritable set drops the ambient one too, and needs no --ambient-caps, which older setpriv lacks)
      { prefix: ["setpriv", "--inh-caps", "-all", "--bounding-set", "-dac_override,-dac_read_search", "--"], otherUser: false },
    ]) {
      if (runs(as)) return as;
    }
  } finally {
    chmodSync(folder, 0o755);
    rmSync(folder, { recursive: true, force: true });
  }
  if (process.env.ABGATE_REQUIRE_UNPRIVILEGED === "1") {
    throw new Error("ABGATE_REQUIRE_UNPRIVILEGED=1, but neither setpriv (util-linux) nor user nobody can run this checkout's code unprivileged");
  }
  return undefined;
}

/** The argv of `argv` run as `as` (its prefix first). */
export function unprivilegedArgv(as: Unprivileged, argv: string[]): [string, string[]] {
  const all = [...as.prefix, ...argv];
  return [all[0]!, all.slice(1)];
}

/** Runs `fn` while `dir` is r-x for all (files can be read, none made or removed), then makes it 0755 again. */
export function unwritableFolder<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  return inFolderMode(dir, 0o555, fn);
}

/** Runs `fn` while `dir` may be written by anyone (as a shared folder), then makes it 0755 again. */
export function writableByAll<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  return inFolderMode(dir, 0o777, fn);
}

async function inFolderMode<T>(dir: string, mode: number, fn: () => Promise<T>): Promise<T> {
  chmodSync(dir, mode);
  try {
    return await fn();
  } finally {
    chmodSync(dir, 0o755);
  }
}
