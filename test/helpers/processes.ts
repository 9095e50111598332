import { readFileSync } from "node:fs";

/** Whether `pid` still runs. A killed orphan is a zombie until init reaps it (late, in some containers): that no longer runs. */
export function alive(pid: number): boolean {
  // kill(0 or -n, 0) asks about process groups, our own for 0: always "alive"
  if (!(Number.isInteger(pid) && pid > 0)) throw new Error(`alive: not a process id: ${pid}`);
  try {
    process.kill(pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
    return false;
  }
  try {
    return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.[0] !== "Z";
  } catch {
    return true;
  }
}

/** Polls `fn` every 25 ms until it gives a value; throws naming `what` after `timeoutMs`. */
export async function until<T>(what: string, fn: () => T | undefined, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
