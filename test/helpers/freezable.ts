import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * A small ext4 filesystem of its own, loop-mounted, that a test can freeze (fsfreeze): writes to it then block in
 * the kernel until it is thawed, as on a stalled disk. Needs root and a loop device; undefined when either is
 * missing, and with ABGATE_REQUIRE_FREEZE=1 (scripts/test-env.sh, so CI) that throws instead, as a skipped test
 * would pass.
 */
export interface Freezable {
  /** the mount point */
  dir: string;
  freeze(): void;
  thaw(): void;
  /** thaws, unmounts and removes everything (safe to call twice) */
  dispose(): void;
}

/** The longest a filesystem stays frozen, whatever the test does. */
const FREEZE_WATCHDOG_S = 60;

const run = (cmd: string, args: string[]) => spawnSync(cmd, args, { encoding: "utf8", timeout: 30_000 });

export function freezableFolder(): Freezable | undefined {
  const root = mkdtempSync(join(tmpdir(), "abgate-freeze-"));
  const image = join(root, "fs.img");
  const dir = join(root, "mnt");
  mkdirSync(dir);
  let mounted = false;
  let frozen = false;
  /** a process that thaws the filesystem after a while, whatever becomes of this one (see freeze) */
  let watchdog: ChildProcess | null = null;
  const stopWatchdog = () => {
    // (its group: the sh and its sleep; detached, it leads a group of its own)
    if (watchdog?.pid !== undefined) {
      try {
        process.kill(-watchdog.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    watchdog = null;
  };
  const dispose = () => {
    stopWatchdog();
    // (unconditionally: a thaw of a filesystem that is not frozen fails harmlessly)
    if (mounted) run("fsfreeze", ["-u", dir]);
    frozen = false;
    if (mounted) {
      // Busy (a process still has a file open there): detached now, unmounted when the last file closes.
      const r = run("umount", [dir]);
      if (r.status !== 0 && run("umount", ["-l", dir]).status !== 0) process.stderr.write(`freezableFolder: cannot unmount ${dir}: ${r.stderr.trim()}\n`);
    }
    mounted = false;
    rmSync(root, { recursive: true, force: true });
  };
  const steps: [string, string[]][] = [
    ["truncate", ["-s", "64M", image]],
    ["mkfs.ext4", ["-q", image]],
    ["mount", ["-o", "loop", image, dir]],
  ];
  for (const [cmd, args] of steps) {
    const r = run(cmd, args);
    if (r.status !== 0) {
      dispose();
      const why = `${cmd} ${args.join(" ")}: ${r.error?.message ?? r.stderr.trim()}`;
      if (process.env.ABGATE_REQUIRE_FREEZE === "1") throw new Error(`ABGATE_REQUIRE_FREEZE=1 but no freezable filesystem can be made (${why})`);
      return undefined;
    }
    if (cmd === "mount") mounted = true;
  }
  // A test that dies with the filesystem frozen must not leave it so: every later write to it would hang.
  process.once("exit", dispose);
  return {
    dir,
    freeze() {
      stopWatchdog();
      // A test killed while the filesystem is frozen (a timeout's SIGKILL) runs no exit handler, and every process
      // that then touches the filesystem hangs (ps too, reading their /proc): this thaws it within a minute anyway.
      watchdog = spawn("sh", ["-c", `sleep ${FREEZE_WATCHDOG_S}; fsfreeze -u "$0"`, dir], { detached: true, stdio: "ignore" });
      watchdog.unref();
      const r = run("fsfreeze", ["-f", dir]);
      if (r.status !== 0) throw new Error(`fsfreeze -f ${dir}: ${r.stderr.trim()}`);
      frozen = true;
    },
    thaw() {
      stopWatchdog();
      if (!frozen) return;
      const r = run("fsfreeze", ["-u", dir]);
      if (r.status !== 0) throw new Error(`fsfreeze -u ${dir}: ${r.stderr.trim()}`);
      frozen = false;
    },
    dispose,
  };
}
