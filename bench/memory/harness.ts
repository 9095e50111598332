/**
 * Process plumbing shared by the benchmarks: free ports in the bench range, child processes that are always
 * stopped on exit, waiting for a port to answer, reading a process's resident memory, and launching abgate
 * from a generated config.
 */
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from "node:child_process";
import { existsSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from "node:fs";
import { createServer as createHttpServer, type Server as HttpServer } from "node:http";
import { createServer, connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository root (bench/memory/ is two levels down). */
export const repoRoot = fileURLToPath(new URL("../../", import.meta.url));

/** Ports the benchmarks may use; the team agreed on this range so that parallel work does not collide. */
const PORT_MIN = 21000;
const PORT_MAX = 21999;
let nextPortCandidate = PORT_MIN + Math.floor(Math.random() * 500);

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** A port in 21000-21999 that nothing listens on right now (and that this process has not handed out before). */
export async function freePort(): Promise<number> {
  for (let tries = 0; tries < PORT_MAX - PORT_MIN; tries++) {
    const port = nextPortCandidate;
    nextPortCandidate = nextPortCandidate >= PORT_MAX ? PORT_MIN : nextPortCandidate + 1;
    if (await canListen(port)) return port;
  }
  throw new Error(`no free port in ${PORT_MIN}-${PORT_MAX}`);
}

/** A backend on a port of the bench range that answers every request 200 "ok" (its body read and dropped). */
export async function okBackend(): Promise<{ server: HttpServer; url: string }> {
  const port = await freePort();
  const server = createHttpServer((req, res) => {
    req.resume();
    res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
    res.end("ok");
  });
  server.keepAliveTimeout = 120_000;
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${port}` };
}


const children = new Set<ChildProcess>();

function killAll(signal: NodeJS.Signals): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      try {
        // Children are started in their own process group so that helpers they fork (nginx workers) go too.
        process.kill(-child.pid, signal);
      } catch {
        try {
          child.kill(signal);
        } catch {
          // already gone
        }
      }
    }
  }
}

// The equivalent of a shell `trap`: whatever way this process ends, nothing it started keeps running.
process.on("exit", () => killAll("SIGKILL"));
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(signal, () => {
    killAll("SIGTERM");
    process.exit(130);
  });
}

/** A child process that is stopped when this process exits. Output goes to `logFile` when given. */
export interface Managed {
  child: ChildProcess;
  pid: number;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  stop(graceMs?: number): Promise<void>;
  /** Everything it wrote to stdout/stderr so far (kept in memory, capped). */
  output(): string;
}

/** Start `command` (optionally pinned to one CPU core with taskset) as a managed child. */
export function startProcess(
  command: string,
  args: string[],
  options: { core?: number; env?: NodeJS.ProcessEnv; cwd?: string; shell?: boolean } = {},
): Managed {
  const [file, argv] = options.core === undefined ? [command, args] : ["taskset", ["-c", String(options.core), command, ...args]];
  const spawnOptions: SpawnOptions = {
    cwd: options.cwd ?? repoRoot,
    env: options.env ?? process.env,
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  };
  const child = spawn(file, argv, spawnOptions);
  if (child.pid === undefined) throw new Error(`could not start ${command}`);
  children.add(child);
  let captured = "";
  const keep = (chunk: Buffer) => {
    if (captured.length < 64 * 1024) captured += chunk.toString();
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.once("exit", () => children.delete(child));
  return {
    child,
    pid: child.pid,
    output: () => captured,
    async stop(graceMs = 3000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      try {
        process.kill(-child.pid!, "SIGTERM");
      } catch {
        child.kill("SIGTERM");
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid!, "SIGKILL");
        } catch {
          child.kill("SIGKILL");
        }
      }, graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Resolves once a TCP connection to 127.0.0.1:port succeeds; rejects after `timeoutMs` or when `proc` dies. */
export async function waitForPort(port: number, timeoutMs: number, proc?: Managed): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (proc && (proc.child.exitCode !== null || proc.child.signalCode !== null)) {
      throw new Error(`process exited (code ${proc.child.exitCode}, signal ${proc.child.signalCode}) before port ${port} answered:\n${proc.output()}`);
    }
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`port ${port} did not answer within ${timeoutMs} ms${proc ? `:\n${proc.output()}` : ""}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Resolves once `GET http://127.0.0.1:port{path}` answers 200 (with `headers`), or rejects after `timeoutMs`. */
export async function waitForOk(port: number, path: string, timeoutMs: number, headers: Record<string, string> = {}, proc?: Managed): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = "";
  for (;;) {
    if (proc && (proc.child.exitCode !== null || proc.child.signalCode !== null)) {
      throw new Error(`process exited (code ${proc.child.exitCode}, signal ${proc.child.signalCode}):\n${proc.output()}`);
    }
    try {
      const response = await fetch(`http://127.0.0.1:${port}${path}`, { headers, signal: AbortSignal.timeout(1000) });
      await response.arrayBuffer();
      if (response.status === 200) return;
      last = `status ${response.status}`;
    } catch (error) {
      last = String(error);
    }
    if (Date.now() > deadline) throw new Error(`GET :${port}${path} gave no 200 within ${timeoutMs} ms (last: ${last})${proc ? `\n${proc.output()}` : ""}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Resident set size of a process in bytes, from /proc/<pid>/status (VmRSS); `hwm` gives the peak (VmHWM). */
export function rssBytes(pid: number, field: "VmRSS" | "VmHWM" = "VmRSS"): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
  if (!match) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

/** A scratch directory removed when this process exits. */
export function scratchDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

let chosenBin: { path: string; note: string } | undefined;

/**
 * Which abgate CLI the benchmarks run. ABGATE_BIN wins when set. Otherwise the sources are bundled with tsup (the
 * CLI, and the SQLite writer thread's entry beside it, where the store looks for it) into bench/results/abgate-build/
 * (git-ignored; deliberately not dist/, because bin/abgate.js prefers a dist/ that exists and a stale one would change
 * what everybody else's tests run). A failed build falls back to
 * bin/abgate.js, which runs the sources through tsx: same code, but more memory for the loader.
 */
export function abgateBin(): { path: string; note: string } {
  if (chosenBin) return chosenBin;
  const head = spawnSync("git", ["rev-parse", "--short", "HEAD"], { cwd: repoRoot, encoding: "utf8" }).stdout?.trim() || "?";
  const dirty = spawnSync("git", ["status", "--porcelain", "--", "src"], { cwd: repoRoot, encoding: "utf8" }).stdout?.trim() ? " + uncommitted changes in src/" : "";
  const source = `sources at ${head}${dirty}`;
  if (process.env.ABGATE_BIN) return (chosenBin = { path: process.env.ABGATE_BIN, note: `ABGATE_BIN=${process.env.ABGATE_BIN}` });
  const outDir = join(repoRoot, "bench/results/abgate-build");
  const built = join(outDir, "main.js");
  // A module that is imported lazily but not written yet (an engine still in the works) must not stop the
  // bundle: it is left external, and only a config that uses it would fail at run time.
  const external: string[] = [];
  let firstError = "";
  for (let attempt = 0; attempt < 4; attempt++) {
    rmSync(outDir, { recursive: true, force: true });
    const build = spawnSync(
      "npx",
      ["tsup", "--entry.main", "src/cli/main.ts", "--entry.sqlite-writer", "src/store/sqlite/writer-worker.ts", "--no-config", "--format", "esm", "--target", "node20", "--out-dir", outDir, "--silent", ...external.flatMap((e) => ["--external", e])],
      { cwd: repoRoot, encoding: "utf8", timeout: 120_000 },
    );
    if (build.status === 0 && existsSync(built)) {
      const extra = external.length > 0 ? ` (left external, not found: ${external.join(", ")})` : "";
      return (chosenBin = { path: built, note: `${source}, bundled by tsup into bench/results/abgate-build/main.js${extra}` });
    }
    const output = `${build.stderr ?? ""}${build.stdout ?? ""}`;
    firstError = output.split("\n").find((l) => /ERROR|error/.test(l))?.trim() ?? `exit ${build.status}`;
    const missing = /Could not resolve "(\.{1,2}\/[^"]+)"/.exec(output)?.[1];
    if (!missing || external.includes(missing)) break;
    external.push(missing);
  }
  return (chosenBin = { path: "bin/abgate.js", note: `${source}, bin/abgate.js through tsx (the tsup bundle failed: ${firstError})` });
}

/** How abgate was started, so callers can read its memory and stop it. */
export interface AbgateHandle extends Managed {
  port: number;
  adminPort: number;
  configPath: string;
}

/**
 * Start `node bin/abgate.js serve` on a generated config: static engine, sticky strategy, one variant per
 * backend URL, SQLite store in `dir`. `exposures: false` sets ABGATE_EXPOSURES=off (exposure logging off).
 * The process is pinned to `core` when given, and started from a shell that raises its fd limit first.
 */
export async function startAbgate(options: {
  dir: string;
  backends: string[];
  exposures?: boolean;
  core?: number;
  extraYaml?: string;
  name?: string;
}): Promise<AbgateHandle> {
  const port = await freePort();
  const adminPort = await freePort();
  const name = options.name ?? "abgate";
  const configPath = join(options.dir, `${name}.yaml`);
  const variants = options.backends
    .map((url, i) => `  - name: v${i}\n    weight: 1\n    url: ${url}\n`)
    .join("");
  writeFileSync(
    configPath,
    `experiment: bench\n` +
      `engine: static\n` +
      `listen: 127.0.0.1:${port}\n` +
      `admin:\n  listen: 127.0.0.1:${adminPort}\n  token: bench-token\n` +
      `store: sqlite:${join(options.dir, `${name}.db`)}\n` +
      `strategy:\n  kind: sticky\n` +
      `logLevel: warn\n` +
      (options.extraYaml ?? "") +
      `variants:\n${variants}`,
  );
  const env = { ...process.env, ABGATE_EXPOSURES: options.exposures === false ? "off" : "on" };
  // ulimit in the launching shell: 5,000 client sockets plus their upstream sockets exceed the usual 1,024.
  const bin = abgateBin().path;
  const shellArgs = ["-c", `ulimit -n 20000 2>/dev/null || ulimit -n $(ulimit -Hn); exec node "$1" serve -c "$0"`, configPath, bin];
  const proc = startProcess("bash", shellArgs, { core: options.core, env });
  await waitForPort(port, 30_000, proc);
  // The port answering is not enough: wait until a request is actually proxied (health checks may gate replicas).
  await waitForOk(port, "/", 30_000, { "x-user-id": "warmup" }, proc);
  return { ...proc, port, adminPort, configPath };
}

/** Bytes as MB (10^6, the unit the targets are given in) with one decimal. */
export function mb(bytes: number): string {
  return (bytes / 1e6).toFixed(1);
}
