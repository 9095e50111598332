import { spawn, type ChildProcess } from "node:child_process";
import { systemClock, type Clock, type TimerHandle } from "../../clock.ts";
import type { Config, VariantConfig } from "../../config/index.ts";
import { EndpointSet, type Endpoint, type Engine, type EngineOptions } from "../types.ts";
import { PortAllocator } from "../ports.ts";

interface Replica {
  variant: VariantConfig;
  index: number;
  port: number;
  child?: ChildProcess;
  running: boolean;
  restarts: number;
  startedAtMs: number;
  restartTimer?: TimerHandle;
  /** last lines of output, shown when the replica crash-loops */
  tail: string[];
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

/** Local processes, one per replica, each given its PORT; crashed ones restart with exponential backoff. */
export class ProcessEngine implements Engine {
  readonly kind = "process" as const;
  #config: Config;
  #opts: Required<Pick<ProcessEngineOptions, "backoffMs" | "maxBackoffMs" | "stableAfterMs">> & ProcessEngineOptions;
  #clock: Clock;
  #set = new EndpointSet();
  #replicas: Replica[] = [];
  #stopping = false;
  #ports: PortAllocator;
  #exitHook = () => this.#killAll("SIGKILL");

  constructor(config: Config, options: ProcessEngineOptions = {}) {
    this.#config = config;
    this.#opts = { backoffMs: 250, maxBackoffMs: 30_000, stableAfterMs: 10_000, ...options };
    this.#clock = options.clock ?? systemClock;
    this.#ports = new PortAllocator(config.ports.base);
  }

  async start(onProgress?: (line: string) => void): Promise<void> {
    // Children must not outlive us, even when we exit without stop() (uncaught error, process.exit()).
    process.once("exit", this.#exitHook);
    for (const v of this.#config.variants) {
      for (let i = 0; i < v.replicas; i++) {
        const port = await this.#ports.allocate(v.port !== undefined ? v.port + i : undefined);
        const r: Replica = { variant: v, index: i, port, running: false, restarts: 0, startedAtMs: 0, tail: [] };
        this.#replicas.push(r);
        this.#spawn(r);
        onProgress?.(`${v.name}-${i}: started ${v.command!.join(" ")} on port ${port} (pid ${r.child?.pid})`);
      }
    }
    this.#publish();
  }

  #log(level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) {
    this.#opts.log?.(level, msg, fields);
  }

  #spawn(r: Replica): void {
    const [cmd, ...args] = r.variant.command!;
    const id = `${r.variant.name}-${r.index}`;
    const child = spawn(cmd, args, {
      cwd: r.variant.cwd,
      env: { ...process.env, ...r.variant.env, PORT: String(r.port), ABGATE_VARIANT: r.variant.name, ABGATE_REPLICA: String(r.index) },
      stdio: ["ignore", "pipe", "pipe"],
    });
    r.child = child;
    r.running = true;
    r.startedAtMs = this.#clock.now();
    const onData = (buf: Buffer) => {
      for (const line of buf.toString("utf8").split("\n")) {
        if (!line) continue;
        r.tail.push(line);
        if (r.tail.length > TAIL_LINES) r.tail.shift();
        if (this.#opts.echoOutput) process.stderr.write(`[${id}] ${line}\n`);
      }
    };
    child.stdout!.on("data", onData);
    child.stderr!.on("data", onData);
    child.on("error", (err) => {
      r.tail.push(`spawn error: ${err.message}`);
      this.#exited(r, child, null, null);
    });
    child.on("exit", (code, signal) => this.#exited(r, child, code, signal));
  }

  #exited(r: Replica, child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void {
    if (r.child !== child || !r.running) return;
    r.running = false;
    this.#publish();
    if (this.#stopping) return;
    const id = `${r.variant.name}-${r.index}`;
    if (this.#clock.now() - r.startedAtMs >= this.#opts.stableAfterMs) r.restarts = 0;
    r.restarts++;
    const delayMs = Math.min(this.#opts.maxBackoffMs, this.#opts.backoffMs * 2 ** (r.restarts - 1));
    const fields = { replica: id, code, signal, restartInMs: delayMs, restarts: r.restarts };
    if (r.restarts >= 5) this.#log("error", `replica ${id} is crash-looping; last output:\n${r.tail.join("\n")}`, fields);
    else this.#log("warn", `replica ${id} exited`, fields);
    r.restartTimer = this.#clock.setTimeout(() => {
      r.restartTimer = undefined;
      if (!this.#stopping) {
        this.#spawn(r);
        this.#publish();
      }
    }, delayMs);
  }

  #publish(): void {
    this.#set.set(
      this.#replicas
        .filter((r) => r.running)
        .map((r) => ({ id: `${r.variant.name}-${r.index}`, variant: r.variant.name, replica: r.index, host: "127.0.0.1", port: r.port })),
    );
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

  #killAll(signal: NodeJS.Signals): void {
    for (const r of this.#replicas) {
      r.restartTimer?.cancel();
      if (r.running) r.child?.kill(signal);
    }
  }

  async stop(graceMs = 5000): Promise<void> {
    this.#stopping = true;
    const waits = this.#replicas
      .filter((r) => r.running && r.child)
      .map((r) => new Promise<void>((resolve) => r.child!.once("exit", () => resolve())));
    this.#killAll("SIGTERM");
    const timer = setTimeout(() => this.#killAll("SIGKILL"), graceMs);
    await Promise.all(waits);
    clearTimeout(timer);
    process.removeListener("exit", this.#exitHook);
    this.#publish();
  }
}
