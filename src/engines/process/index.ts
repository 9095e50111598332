import { spawn, type ChildProcess } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { StringDecoder } from "node:string_decoder";
import { systemClock, type Clock, type TimerHandle } from "../../clock.ts";
import type { Config, VariantConfig } from "../../config/index.ts";
import { CrashLoopSignal, EndpointSet, type Endpoint, type Engine, type EngineOptions } from "../types.ts";
import { PortAllocator, portIsFree } from "../ports.ts";
import { resolveCommand } from "./command.ts";
import { ProcessReaper, REGISTER_AND_EXEC } from "./reaper.ts";

interface Replica {
  variant: VariantConfig;
  index: number;
  port: number;
  child?: ChildProcess;
  running: boolean;
  restarts: number;
  /** tries since the last run ended that found its port held by another process (they grow the backoff, but are not crashes) */
  portWaits: number;
  startedAtMs: number;
  restartTimer?: TimerHandle;
  /** why the last spawn failed (a command that does not exist, no permission), until the next spawn */
  spawnError?: Error;
  /** last lines of output, shown when the replica crash-loops */
  tail: string[];
  /** lines of output of the current (or last) run: its exit line shows only this run's */
  runLines: number;
  /** the last line the run that ended last printed (undefined: none), for lastExit */
  lastExitOutput?: string;
  /** how its last run ended (code or signal, and how long it ran) */
  lastExit?: string;
}

export interface ProcessEngineOptions extends EngineOptions {
  clock?: Clock;
  /** first restart delay; doubles per consecutive crash up to maxBackoffMs */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** a replica that ran this long is considered recovered: its backoff starts over */
  stableAfterMs?: number;
  /** write every replica's output to our stderr, prefixed by its id */
  echoOutput?: boolean;
}

const TAIL_LINES = 20;
/**
 * abgate's environment, as a replica inherits it, without abgate's own secrets: the admin and ingest tokens, by
 * their usual names, by the names the config read them from (`token: ${MY_TOKEN}`), and (when at least
 * MIN_SECRET_CHARS long) by value, which also covers a token copied into another variable. A model server has no
 * use for the token that changes the experiment's weights. A variant's `env:` can still pass anything on explicitly.
 */
export function inheritedEnv(config: Config): NodeJS.ProcessEnv {
  // By value only for tokens long enough to be secrets: `token: "1"` stripped PYTHONUNBUFFERED=1, CI=1 and the like.
  const secrets = new Set([config.admin.token, config.admin.ingestToken].filter((t): t is string => typeof t === "string" && t.length >= MIN_SECRET_CHARS));
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k === "ABGATE_ADMIN_TOKEN" || k === "ABGATE_INGEST_TOKEN" || config.admin.tokenVariables.includes(k) || (v !== undefined && secrets.has(v))) continue;
    env[k] = v;
  }
  return env;
}

/** An environment variable name a POSIX shell passes on to what it execs. */
const SHELL_SAFE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/**
 * Variables dash sets itself, whatever it was given. (PWD too, but to the replica's real working folder, which is
 * what a replica should see: a direct spawn passes on abgate's own.)
 */
const SHELL_SET_NAMES = new Set(["IFS", "OPTIND", "PPID"]);

/** Tokens at least this long are also recognised by value in the environment replicas inherit. */
const MIN_SECRET_CHARS = 12;

/** How long after a replica's exit its output may still be read before the exit is handled. */
const OUTPUT_GRACE_MS = 100;
/** A longer line is kept cut to this many characters, with "…" (a replica may print megabytes without a newline). */
const MAX_LINE_CHARS = 4096;

/**
 * A stream's chunks as whole lines: a line split over two chunks (a pipe hands over 64 KiB at a time), or a UTF-8
 * character split over two, is joined before `onLine` sees it. Of a chunk with many lines only the last `last` are
 * handed on: the rest would only be pushed out of the tail again (a chatty replica cost the proxy's thread a third
 * of its time that way).
 */
function readLines(stream: NodeJS.ReadableStream, onLine: (line: string) => void, last: number): void {
  const decoder = new StringDecoder("utf8");
  /** the unfinished last line, kept to MAX_LINE_CHARS + 1 characters (one more marks it as cut) */
  let partial = "";
  const cut = (line: string) => (line.length > MAX_LINE_CHARS ? `${line.slice(0, MAX_LINE_CHARS)}…` : line);
  stream.on("data", (chunk: Buffer) => {
    const lines = (partial + decoder.write(chunk)).split("\n");
    partial = lines.pop()!.slice(0, MAX_LINE_CHARS + 1);
    const kept = lines.filter((l) => l !== "");
    for (let i = Math.max(0, kept.length - last); i < kept.length; i++) onLine(cut(kept[i]!));
  });
  // A last line without a newline is often the one that matters: "fatal: cannot load model" before exit(1).
  stream.on("end", () => {
    const rest = (partial + decoder.end()).slice(0, MAX_LINE_CHARS + 1);
    if (rest !== "") onLine(cut(rest));
  });
}

/**
 * Whether any process of the group still runs. A killed member stays a zombie until its parent reaps it (for
 * orphans that is init, which some container inits do late), and a zombie holds no port: it does not count.
 */
function groupRuns(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
  if (process.platform !== "linux") return true;
  let pids: string[];
  try {
    pids = readdirSync("/proc").filter((n) => /^\d+$/.test(n));
  } catch {
    return true;
  }
  for (const pid of pids) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    } catch {
      continue;
    }
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so read after the last ")"
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (Number(pgrp) === pgid && state !== "Z" && state !== "X") return true;
  }
  return false;
}

/** Local processes, one per replica, each given its PORT; crashed ones restart with exponential backoff. */
export class ProcessEngine implements Engine {
  readonly kind = "process" as const;
  #config: Config;
  #opts: Required<Pick<ProcessEngineOptions, "backoffMs" | "maxBackoffMs" | "stableAfterMs">> & ProcessEngineOptions;
  #clock: Clock;
  #set = new EndpointSet();
  readonly #crashLoops = new CrashLoopSignal();
  #replicas: Replica[] = [];
  #stopping = false;
  /** start()'s run, which stop() lets finish (it ends at the next replica) before it collects the replicas */
  #starting: Promise<void> | null = null;
  #exitHook = () => {
    this.#killAll("SIGKILL");
    // Killed for certain: off the reaper's list, which would otherwise signal those groups again (or a reused id).
    for (const r of this.#replicas) if (r.child?.pid !== undefined) this.#reaper.remove(r.child.pid);
  };
  /** signals the replicas' groups if abgate dies without running any of its own code (kill -9) */
  readonly #reaper = new ProcessReaper((msg) => this.#log("warn", msg));

  constructor(config: Config, options: ProcessEngineOptions = {}) {
    this.#config = config;
    this.#opts = { backoffMs: 250, maxBackoffMs: 30_000, stableAfterMs: 10_000, ...options };
    this.#clock = options.clock ?? systemClock;
  }

  start(onProgress?: (line: string) => void): Promise<void> {
    this.#starting = this.#start(onProgress);
    return this.#starting;
  }

  async #start(onProgress?: (line: string) => void): Promise<void> {
    // Children must not outlive us, even when we exit without stop() (uncaught error, process.exit()).
    process.once("exit", this.#exitHook);
    // The engine starts before the proxy and admin listeners bind, so their ports still look free then: without
    // reserving them a replica could take one (ports.base at or below listen's port) and abgate would fail to listen.
    const reserved = [this.#config.listen, this.#config.admin.listen].filter((at) => at.port !== 0).map((at) => at.port);
    const ports = new PortAllocator(this.#config.ports.base, { reserved });
    // Every fixed port is claimed before any replica starts: a taken one fails the start with nothing to undo, and
    // a variant listed earlier without `port` cannot then take one from base upward. The others are taken one by
    // one, as their replica starts; a replica that restarts keeps its port.
    const fixed = await ports.claimFixed(this.#config.variants);
    for (const v of this.#config.variants) {
      for (let i = 0; i < v.replicas; i++) {
        // A turn of the event loop per replica: port checks and spawns alone never let timers or signal handlers
        // run (Ctrl-C went unanswered for seconds while hundreds of replicas started). And stop() may have begun.
        await new Promise((resolve) => setImmediate(resolve));
        if (this.#stopping) return;
        const port = fixed.get(v.name)?.[i] ?? (await ports.allocate(`${v.name}-${i}`));
        const r: Replica = { variant: v, index: i, port, running: false, restarts: 0, portWaits: 0, startedAtMs: 0, tail: [], runLines: 0 };
        this.#replicas.push(r);
        // Wait for the outcome of the spawn so that a missing command is reported as such, not as a pid
        const err = await this.#spawn(r);
        if (err) onProgress?.(`${v.name}-${i}: could not start ${v.command!.join(" ")}: ${err.message} (retrying with backoff)`);
        else onProgress?.(`${v.name}-${i}: started ${v.command!.join(" ")} on port ${port} (pid ${r.child?.pid})`);
      }
    }
    this.#publish();
  }

  #log(level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) {
    this.#opts.log?.(level, msg, fields);
  }

  /** Start a replica; resolves once it runs (undefined) or could not be started (the error). */
  #spawn(r: Replica): Promise<Error | undefined> {
    const [cmd, ...args] = r.variant.command!;
    const id = `${r.variant.name}-${r.index}`;
    const env: NodeJS.ProcessEnv = { ...inheritedEnv(this.#config), ...r.variant.env, PORT: String(r.port), ABGATE_VARIANT: r.variant.name, ABGATE_REPLICA: String(r.index) };
    const cwd = r.variant.cwd ?? process.cwd();
    // Through the registering shell when there is a reaper to register with (see REGISTER_AND_EXEC); a command
    // that cannot be found is spawned as it is, so that its failure is spawn's own error (ENOENT), as without. So
    // is a replica whose environment a POSIX shell would not pass on whole (dash drops names that are not shell
    // identifiers, such as spring.profiles.active or BASH_FUNC_module%%, and resets IFS, OPTIND and PPID): abgate
    // then lists it itself once spawn returns, which leaves only spawn's own moment unguarded.
    const wrappable = resolveCommand(cmd, cwd, env.PATH) !== undefined && Object.keys(env).every((k) => SHELL_SAFE_NAME.test(k) && !SHELL_SET_NAMES.has(k));
    const pipe = wrappable ? this.#reaper.pipe() : null;
    const child = spawn(pipe ? "/bin/sh" : cmd, pipe ? ["-c", REGISTER_AND_EXEC, "abgate-replica", cmd, ...args] : args, {
      cwd: r.variant.cwd,
      env,
      stdio: pipe ? ["ignore", "pipe", "pipe", pipe] : ["ignore", "pipe", "pipe"],
      // Its own process group, so that signals reach what the command starts too (`sh -c "a & b & wait"`,
      // npm scripts): killing only the direct child would leave those running, holding the replica's port.
      detached: true,
    });
    r.child = child;
    r.running = true;
    r.spawnError = undefined;
    // The pid is known now, when the spawn worked: listed before anything else can happen to us.
    if (child.pid !== undefined) this.#reaper.add(child.pid);
    r.startedAtMs = this.#clock.now();
    // (readLines hands on no empty line)
    r.runLines = 0;
    const keep = (line: string) => {
      r.runLines++;
      r.tail.push(line);
      if (r.tail.length > TAIL_LINES) r.tail.shift();
      if (this.#opts.echoOutput) process.stderr.write(`[${id}] ${line}\n`);
    };
    readLines(child.stdout!, keep, this.#opts.echoOutput ? Infinity : TAIL_LINES);
    readLines(child.stderr!, keep, this.#opts.echoOutput ? Infinity : TAIL_LINES);
    const spawned = new Promise<Error | undefined>((resolve) => {
      child.once("spawn", () => resolve(undefined));
      child.on("error", (err) => {
        // Only a failed spawn leaves no pid; later errors (a failed kill) do not mean the replica stopped
        if (child.pid !== undefined) return;
        r.spawnError = err;
        r.tail.push(`spawn error: ${err.message}`);
        this.#exited(r, child, null, null);
        resolve(err);
      });
    });
    // 'exit' can come before the last of the output has been read; wait for both streams' end (which a grandchild
    // holding them open may delay: at most OUTPUT_GRACE_MS), so that the crash report has the last line.
    const ended = [child.stdout!, child.stderr!].map((s) => new Promise<void>((resolve) => (s.readableEnded ? resolve() : s.once("close", resolve))));
    child.on("exit", (code, signal) => {
      const grace = new Promise<void>((resolve) => setTimeout(resolve, OUTPUT_GRACE_MS).unref());
      void Promise.race([Promise.all(ended), grace]).then(() => this.#exited(r, child, code, signal));
    });
    return spawned;
  }

  /** Signal a replica's whole process group; false when the group is gone. */
  #signalGroup(child: ChildProcess | undefined, signal: NodeJS.Signals): boolean {
    if (child?.pid === undefined) return false;
    try {
      process.kill(-child.pid, signal);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ESRCH") return false;
      // EPERM: the group is there but not ours to signal (a member changed its uid); nothing more to do here
      return (err as NodeJS.ErrnoException).code === "EPERM";
    }
  }

  #exited(r: Replica, child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (r.child !== child || !r.running) return;
    r.running = false;
    this.#publish();
    // stop() gives what is left of the group its grace period itself
    if (this.#stopping) return;
    // What the replica started may outlive it and keep its port: the restart would then fail to bind. The
    // child is then forgotten, so that no later kill aims at its pid once the system has reused it.
    this.#signalGroup(child, "SIGKILL");
    if (child.pid !== undefined) this.#reaper.remove(child.pid);
    r.child = undefined;
    const id = `${r.variant.name}-${r.index}`;
    const ranMs = this.#clock.now() - r.startedAtMs;
    r.lastExit = r.spawnError
      ? `could not start: ${r.spawnError.message}`
      : `${signal ? `killed by ${signal}` : `exited with code ${code}`} after ${(ranMs / 1000).toFixed(1)} s`;
    // What this run said last is usually why (a stack trace's message, "cannot load weights"); not an earlier run's.
    const runTail = r.runLines === 0 ? [] : r.tail.slice(-Math.min(3, r.runLines));
    r.lastExitOutput = runTail.at(-1);
    if (ranMs >= this.#opts.stableAfterMs) r.restarts = 0;
    r.restarts++;
    const delayMs = this.#backoffMs(r);
    const fields = { replica: id, code, signal, restartInMs: delayMs, restarts: r.restarts, ...(r.spawnError ? { error: r.spawnError.message } : {}) };
    if (r.restarts >= 5) {
      const output = r.tail.length ? `last output:\n${r.tail.join("\n")}` : "no output";
      this.#log("error", `replica ${id} is crash-looping${r.tail.length ? `; ${output}` : ` (${output})`}`, fields);
      this.#crashLoops.fire(id, `${r.restarts} quick exits in a row, the last ${r.lastExit}; ${output}`);
    }
    else if (r.spawnError) this.#log("warn", `replica ${id} could not start: ${r.spawnError.message}`, fields);
    // (with its own output: a replica that crashes now and then never reaches the crash-loop line that shows it)
    else this.#log("warn", `replica ${id} ${r.lastExit}${runTail.length ? `; last output:\n${runTail.join("\n")}` : " (no output)"}`, fields);
    this.#restartLater(r, id, delayMs);
  }

  /** The wait before the next start: backoffMs, doubling per consecutive failed run or try, up to maxBackoffMs. */
  #backoffMs(r: Replica): number {
    return Math.min(this.#opts.maxBackoffMs, this.#opts.backoffMs * 2 ** (r.restarts - 1 + r.portWaits));
  }

  #restartLater(r: Replica, id: string, delayMs: number): void {
    r.restartTimer = this.#clock.setTimeout(() => {
      r.restartTimer = undefined;
      if (this.#stopping) return;
      // Its whole group was killed at its exit: a port still held is held by a process that left the group (a
      // daemon: setsid, a double fork) or by another program, which abgate neither stops nor sees. Started and
      // listed anyway, the replica failed to bind, but for its short life its health checks found that process
      // "healthy", and it was sent the replica's requests (recorded as the replica's). So it waits, unlisted.
      void portIsFree(r.port).then((free) => {
        if (this.#stopping || r.restartTimer !== undefined || r.running) return;
        if (!free) {
          // Not a crash: counted apart, so that a replica kept waiting is not called crash-looping at its next exit.
          r.portWaits++;
          const retryMs = this.#backoffMs(r);
          this.#log(
            "warn",
            `port ${r.port} of replica ${id} is still in use after its process group ended: a process it started outside its group (a daemon, setsid), or another program, holds it; the replica starts once the port is free (next try in ${retryMs} ms): stop that process`,
            { replica: id, port: r.port, restartInMs: retryMs },
          );
          return this.#restartLater(r, id, retryMs);
        }
        r.portWaits = 0;
        void this.#spawn(r);
        this.#publish();
      });
    }, delayMs);
  }

  #publish(): void {
    this.#set.set(
      this.#replicas
        .filter((r) => r.running)
        .map((r) => ({ id: `${r.variant.name}-${r.index}`, variant: r.variant.name, replica: r.index, host: "127.0.0.1", port: r.port })),
    );
  }

  onCrashLoop(listener: (replica: string, detail: string) => void): () => void {
    return this.#crashLoops.on(listener);
  }

  /**
   * How a replica's last run ended, for `up`'s health-wait failure, and its last line of output (a model's "cannot
   * load weights" is usually there); also while a crash-looping replica is between two runs. Undefined before it
   * ever ended.
   */
  lastExit(id: string): string | undefined {
    const r = this.#replicas.find((x) => `${x.variant.name}-${x.index}` === id);
    if (r === undefined || r.lastExit === undefined) return undefined;
    return r.lastExitOutput !== undefined ? `${r.lastExit}; last output: ${r.lastExitOutput}` : r.lastExit;
  }

  /** Last output lines of a replica (for crash reports and tests). */
  tail(id: string): string[] {
    return this.#replicas.find((r) => `${r.variant.name}-${r.index}` === id)?.tail ?? [];
  }

  /** pids of running replicas by id (tests kill them to simulate crashes). */
  pids(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const r of this.#replicas) if (r.running && r.child?.pid) out[`${r.variant.name}-${r.index}`] = r.child.pid;
    return out;
  }

  endpoints(): Endpoint[] {
    return this.#set.get();
  }
  onChange(listener: (e: Endpoint[]) => void): () => void {
    return this.#set.onChange(listener);
  }

  /** Signal every replica's process group, including what is left of one whose direct child already exited. */
  #killAll(signal: NodeJS.Signals): void {
    for (const r of this.#replicas) {
      r.restartTimer?.cancel();
      this.#signalGroup(r.child, signal);
    }
  }

  async stop(graceMs = 5000): Promise<void> {
    this.#stopping = true;
    // A replica whose spawn start() is waiting on must be in the list below, or it would outlive us.
    await this.#starting?.catch(() => undefined);
    const children = this.#replicas.filter((r) => r.child?.pid !== undefined).map((r) => ({ r, child: r.child! }));
    this.#killAll("SIGTERM");
    const deadline = Date.now() + graceMs;
    // Past this, what is left cannot be killed by us (another user's process, one stuck in the kernel): waiting
    // longer would only hang the shutdown
    const giveUpAt = deadline + 2000;
    let killed = false;
    // Done when every direct child has exited (so its exit is recorded) and every group is empty: a grandchild
    // that ignores SIGTERM would otherwise survive us.
    for (;;) {
      const left = children.filter(({ r, child }) => (r.child === child && r.running) || groupRuns(child.pid!));
      if (left.length === 0 || Date.now() >= giveUpAt) break;
      if (!killed && Date.now() >= deadline) {
        killed = true;
        const ids = left.map(({ r }) => `${r.variant.name}-${r.index}`);
        this.#log("warn", `${ids.join(", ")} did not stop within ${graceMs} ms of SIGTERM: killing ${ids.length === 1 ? "it" : "them"} (SIGKILL)`, { replicas: ids });
        for (const { child } of left) this.#signalGroup(child, "SIGKILL");
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    process.removeListener("exit", this.#exitHook);
    for (const { child } of children) if (!groupRuns(child.pid!)) this.#reaper.remove(child.pid!);
    this.#reaper.close();
    this.#publish();
  }
}
