import { spawnSync } from "node:child_process";
import { chmodSync } from "node:fs";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const NOBODY = 65534;

/**
 * Who a child process runs as so that it may not write a folder whose mode is r-x for all (see `unwritableFolder`):
 * the current user, or, as root (which file modes do not stop, and which the tests run as), nobody. undefined: as
 * root, when nobody cannot run this checkout's TypeScript (a checkout in a folder only root may read).
 */
export function unprivileged(): { uid?: number; gid?: number } | undefined {
  if (process.getuid?.() !== 0) return {};
  const as = { uid: NOBODY, gid: NOBODY };
  const probe = spawnSync(process.execPath, ["--import", "tsx", "-e", ""], { cwd: ROOT, ...as, stdio: "ignore", timeout: 30_000 });
  return probe.status === 0 ? as : undefined;
}

/** Runs `fn` while `dir` is r-x for all (files can be read, none made or removed), then makes it writable again. */
export async function unwritableFolder<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  chmodSync(dir, 0o555);
  try {
    return await fn();
  } finally {
    chmodSync(dir, 0o755);
  }
}
