import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

export const CLI = fileURLToPath(new URL("../../src/cli/main.ts", import.meta.url));

/** Run the CLI from source (through tsx) to completion. */
export function runCli(
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; uid?: number; gid?: number; prefix?: string[] } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // prefix: a command that runs the CLI's command line (setpriv, see helpers/unwritable.ts)
    const argv = [...(opts.prefix ?? []), process.execPath, "--import", "tsx", CLI, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: opts.cwd,
      env: { ...process.env, ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
      uid: opts.uid,
      gid: opts.gid,
    });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => (stdout += c));
    child.stderr.on("data", (c) => (stderr += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * Start a long-running CLI command; resolves once stdout contains `readyPattern`. `detached`: in a process group of
 * its own, as a shell's job or a supervisor's child is, which `process.kill(-child.pid, signal)` then signals whole.
 */
export function startCli(
  args: string[],
  readyPattern: RegExp,
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; detached?: boolean } = {},
): Promise<{ child: ChildProcess; stdout: () => string; stderr: () => string; exited: Promise<number | null> }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", CLI, ...args], { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ["ignore", "pipe", "pipe"], detached: opts.detached });
    let stdout = "";
    let stderr = "";
    const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`CLI did not get ready in time\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, opts.timeoutMs ?? 30_000);
    child.stdout!.on("data", (c) => {
      stdout += c;
      if (readyPattern.test(stdout)) {
        clearTimeout(timer);
        resolve({ child, stdout: () => stdout, stderr: () => stderr, exited });
      }
    });
    child.stderr!.on("data", (c) => (stderr += c));
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`CLI exited before ready\nstdout: ${stdout}\nstderr: ${stderr}`));
    });
  });
}
