import type Docker from "dockerode";
import { systemClock, type Clock, type TimerHandle } from "../../clock.ts";
import { AbgateError } from "../../errors.ts";
import type { Config } from "../../config/index.ts";
import { CrashLoopSignal, EndpointSet, RemovalSignal, type Endpoint, type Engine, type EngineOptions } from "../types.ts";
import { resolveImage } from "./build.ts";
import {
  LABEL,
  containerName,
  createDockerClient,
  ensureReachable,
  experimentFilter,
  listExperimentContainers,
  listExperimentServices,
  nameTakenBy,
  ownerLabel,
  portsOfOtherExperiments,
  refuseIfOwned,
  removeServices,
  statusOf,
  stoppedWhileStarting,
  tailLogs,
} from "./client.ts";
import { allocatePorts, portIsFree } from "../ports.ts";

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

export interface DockerEngineOptions extends EngineOptions {
  /** a dockerode client; by default one for DOCKER_HOST or /var/run/docker.sock */
  docker?: Docker;
  clock?: Clock;
  /** delay before restarting a dead replica, doubling per consecutive death (default 500 ms .. 30 s) */
  restartBackoff?: BackoffOptions;
  /** delay before re-subscribing to Docker events after the stream broke (default 250 ms .. 10 s) */
  eventsBackoff?: BackoffOptions;
  /** this many deaths within `windowMs` count as a crash loop and are reported with the last log lines */
  crashLoop?: { deaths: number; windowMs: number; logLines: number };
  /** a replica that ran this long before dying starts its backoff from the beginning again */
  stableAfterMs?: number;
  /** seconds `docker stop` waits for SIGTERM before SIGKILL when removing replicas */
  stopTimeoutS?: number;
}

interface Replica {
  variant: string;
  replica: number;
  port: number;
  name: string;
  containerId?: string;
  running: boolean;
  /** removed outside abgate: nothing left to restart */
  gone: boolean;
  startedAtMs: number;
  deathsMs: number[];
  attempt: number;
  crashLoopReported: boolean;
  restartTimer?: TimerHandle;
  /**
   * deaths seen so far: a start call marks the replica running only if none came while it waited for the daemon's
   * reply (the events stream and the start call are two connections, so a container that dies at once can report its
   * death first; the late reply then listed a dead replica and cancelled its restart, for good)
   */
  deathsSeen: number;
}

const key = (variant: string, replica: number): string => `${variant}-${replica}`;

/** A replica's record before abgate has seen it run: no deaths, no restart attempts yet. */
function newReplica(variant: string, replica: number, port: number, name: string, containerId?: string): Replica {
  return {
    variant,
    replica,
    port,
    name,
    containerId,
    running: false,
    gone: false,
    startedAtMs: 0,
    deathsMs: [],
    attempt: 0,
    crashLoopReported: false,
    deathsSeen: 0,
  };
}

/**
 * Runs every replica of every variant as a container (host networking, one port each, labelled with the
 * experiment) and reports their endpoints. It watches the Docker events of its experiment's containers: a
 * replica that dies leaves the endpoint list at once and is restarted with exponential backoff; it returns
 * to the list when it runs again (the health checker decides when it takes traffic again).
 */
export class DockerEngine implements Engine {
  readonly kind = "docker" as const;
  readonly #config: Config;
  readonly #docker: Docker;
  readonly #clock: Clock;
  readonly #adopt: boolean;
  readonly #log: NonNullable<EngineOptions["log"]>;
  readonly #restartBackoff: BackoffOptions;
  readonly #eventsBackoff: BackoffOptions;
  readonly #crashLoop: { deaths: number; windowMs: number; logLines: number };
  readonly #stableAfterMs: number;
  readonly #stopTimeoutS: number;
  readonly #endpoints = new EndpointSet();
  readonly #replicas = new Map<string, Replica>();
  #images = new Map<string, string>();
  #stopping = false;
  /** start refused: another running abgate owns the experiment's containers, which stop must then leave alone */
  #refused = false;
  readonly #owner = ownerLabel();
  readonly #crashLoops = new CrashLoopSignal();
  /** the replicas' creation while `start` runs it (settled, never rejecting): `stop` waits for it before removing */
  #creating: Promise<void> | null = null;
  #events?: NodeJS.ReadableStream & { destroy?: () => void };
  #eventsAttempt = 0;
  #eventsTimer?: TimerHandle;
  #lastEventS = 0;
  /** the newest event handled, by the daemon's timeNano */
  #lastEventNs = 0;
  readonly #removed = new RemovalSignal();

  constructor(config: Config, options: DockerEngineOptions = {}) {
    this.#config = config;
    this.#docker = options.docker ?? createDockerClient();
    this.#clock = options.clock ?? systemClock;
    this.#adopt = options.adopt ?? false;
    this.#log =
      options.log ??
      ((level, msg, fields) => {
        if (level !== "info") console.error(`[abgate] ${level}: ${msg}${fields ? ` ${JSON.stringify(fields)}` : ""}`);
      });
    this.#restartBackoff = options.restartBackoff ?? { initialMs: 500, maxMs: 30_000 };
    this.#eventsBackoff = options.eventsBackoff ?? { initialMs: 250, maxMs: 10_000 };
    this.#crashLoop = options.crashLoop ?? { deaths: 5, windowMs: 60_000, logLines: 20 };
    this.#stableAfterMs = options.stableAfterMs ?? 30_000;
    this.#stopTimeoutS = options.stopTimeoutS ?? 2;
  }

  /** The image each variant runs (known after `start`). */
  images(): Map<string, string> {
    return new Map(this.#images);
  }

  async start(onProgress: (line: string) => void = () => {}): Promise<void> {
    // Before the first await: a stop() while the daemon is pinged must stand (cleared after it, the start went on to
    // create every container).
    this.#stopping = false;
    await ensureReachable(this.#docker);
    if (this.#stopping) return;
    if (this.#adopt) {
      await this.#adoptRunning(onProgress);
      this.#watchEvents();
      return;
    }
    const variants = this.#config.variants;
    // one build at a time: parallel builds on a small machine only interleave their output and take as long
    for (const v of variants) {
      this.#images.set(v.name, (await resolveImage(this.#docker, this.#config.experiment, v, onProgress)).image);
      this.#throwIfStopped();
    }
    // An `up` with engine: swarm may have left services (killed): swarm would restart their tasks on the replicas'
    // ports. (No swarm here: none.)
    const services = await listExperimentServices(this.#docker, this.#config).catch(() => []);
    try {
      refuseIfOwned(this.#config, await listExperimentContainers(this.#docker, this.#config), services);
    } catch (err) {
      // (and `stop`, which removes the experiment's containers by label, leaves that abgate's alone)
      this.#refused = true;
      throw err;
    }
    if (services.length) {
      onProgress(`removing ${services.length} swarm service(s) of experiment ${this.#config.experiment} (left by engine: swarm)`);
      await removeServices(this.#docker, services);
    }
    const stale = await listExperimentContainers(this.#docker, this.#config);
    if (stale.length) {
      onProgress(`removing ${stale.length} stale container(s) of experiment ${this.#config.experiment}`);
      await Promise.all(stale.map((c) => this.#remove(c.Id, 0)));
    }
    const held = await portsOfOtherExperiments(this.#docker, this.#config);
    const ports = await allocatePorts(variants, this.#config.ports.base, [this.#config.listen.port, this.#config.admin.listen.port, ...held]);
    this.#throwIfStopped();
    for (const v of variants) {
      ports.get(v.name)!.forEach((port, i) => {
        this.#replicas.set(key(v.name, i), newReplica(v.name, i, port, containerName(this.#config.experiment, v.name, i)));
      });
    }
    // watch before starting, so that a replica dying during start-up is not missed
    this.#watchEvents();
    // Every creation settles before this goes on: with Promise.all, the first failure let `stop` list the
    // containers while the others were still being created, and those then ran on.
    const creating = Promise.allSettled([...this.#replicas.values()].map((r) => this.#createAndStart(r, onProgress)));
    this.#creating = creating.then(() => {});
    let failed: PromiseRejectedResult | undefined;
    try {
      failed = (await creating).find((r): r is PromiseRejectedResult => r.status === "rejected");
    } finally {
      this.#creating = null;
    }
    if (failed !== undefined) {
      await this.stop().catch(() => {});
      throw failed.reason;
    }
    this.#throwIfStopped();
  }

  /**
   * `stop` during `start` (Ctrl-C while `up` starts): `start` goes on in the background, so at each step it checks,
   * and creates nothing once stopped. (Otherwise containers created after `stop` listed them were left behind.)
   */
  #throwIfStopped(): void {
    if (this.#stopping) throw stoppedWhileStarting(this.#config);
  }

  endpoints(): Endpoint[] {
    return this.#endpoints.get();
  }

  onChange(listener: (endpoints: Endpoint[]) => void): () => void {
    return this.#endpoints.onChange(listener);
  }

  onRemoved(listener: (why: string) => void): () => void {
    return this.#removed.on(listener);
  }

  /** A replica whose container was removed outside abgate: it is not restarted; once every one is, say so. */
  #markGone(r: Replica): void {
    r.gone = true;
    r.restartTimer?.cancel();
    if (r.running) {
      r.running = false;
      this.#publish();
    }
    this.#log("warn", `replica ${key(r.variant, r.replica)} (${r.name}) was removed outside abgate; not restarting it`);
    if (this.#stopping || [...this.#replicas.values()].some((x) => !x.gone)) return;
    this.#removed.fire(`every container of experiment ${this.#config.experiment} was removed outside abgate (abgate down?)`);
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    this.#eventsTimer?.cancel();
    this.#events?.destroy?.();
    this.#events = undefined;
    for (const r of this.#replicas.values()) {
      r.restartTimer?.cancel();
      r.running = false;
    }
    this.#endpoints.set([]);
    if (this.#adopt || this.#refused) return;
    // Containers being created now would be missed by the listing below and outlive the experiment.
    if (this.#creating) await this.#creating;
    // by label, not by what we remember: this also removes replicas a crashed earlier run left behind
    const containers = await listExperimentContainers(this.#docker, this.#config).catch(() => [] as Docker.ContainerInfo[]);
    await Promise.all(containers.map((c) => this.#remove(c.Id, c.State === "running" ? this.#stopTimeoutS : 0)));
    this.#replicas.clear();
  }

  async #remove(id: string, stopTimeoutS: number): Promise<void> {
    const c = this.#docker.getContainer(id);
    if (stopTimeoutS > 0) await c.stop({ t: stopTimeoutS }).catch(() => {});
    try {
      await c.remove({ force: true, v: true });
    } catch (err) {
      // 404: already gone; 409: removal already in progress
      if (statusOf(err) !== 404 && statusOf(err) !== 409) throw err;
    }
  }

  async #createAndStart(r: Replica, onProgress: (line: string) => void): Promise<void> {
    const v = this.#config.variants.find((x) => x.name === r.variant)!;
    const image = this.#images.get(v.name)!;
    const bridge = this.#config.network === "bridge";
    const portKey = `${r.port}/tcp`;
    const spec: Docker.ContainerCreateOptions = {
      name: r.name,
      Image: image,
      // HOST first so that the variant's env may override it; PORT last because the engine owns it
      Env: [`HOST=${bridge ? "0.0.0.0" : "127.0.0.1"}`, ...Object.entries(v.env).map(([k, val]) => `${k}=${val}`), `PORT=${r.port}`],
      Labels: {
        [LABEL.experiment]: this.#config.experiment,
        [LABEL.variant]: v.name,
        [LABEL.replica]: String(r.replica),
        [LABEL.port]: String(r.port),
        [LABEL.image]: image,
        [LABEL.owner]: this.#owner,
      },
      ExposedPorts: bridge ? { [portKey]: {} } : undefined,
      HostConfig: {
        NetworkMode: bridge ? "bridge" : "host",
        PortBindings: bridge ? { [portKey]: [{ HostIp: "127.0.0.1", HostPort: String(r.port) }] } : undefined,
        // restarts are ours (with backoff and crash-loop reports), not the daemon's
        RestartPolicy: { Name: "no" },
      },
      StopTimeout: this.#stopTimeoutS,
    };
    let container: Docker.Container;
    try {
      container = await this.#docker.createContainer(spec);
    } catch (err) {
      if (statusOf(err) !== 409) throw err;
      // A container of that name: this experiment's (from a run still being removed) is replaced; anything else is
      // someone else's, and removing it stopped another experiment's replica.
      const holder = (await this.#docker.getContainer(r.name).inspect().catch(() => undefined)) as { Config?: { Labels?: Record<string, string> } } | undefined;
      const taken = holder === undefined ? undefined : nameTakenBy(this.#config, "container", r.name, holder.Config?.Labels ?? {});
      if (taken) throw taken;
      await this.#remove(r.name, 0);
      container = await this.#docker.createContainer(spec);
    }
    r.containerId = container.id;
    const deaths = r.deathsSeen;
    await container.start();
    if (r.deathsSeen === deaths) this.#markRunning(r);
    onProgress(`[${key(r.variant, r.replica)}] started ${r.name} on 127.0.0.1:${r.port}`);
  }

  async #adoptRunning(onProgress: (line: string) => void): Promise<void> {
    const found = await listExperimentContainers(this.#docker, this.#config);
    for (const c of found) {
      const variant = c.Labels[LABEL.variant];
      const replica = Number(c.Labels[LABEL.replica]);
      const port = Number(c.Labels[LABEL.port]);
      if (!variant || !Number.isInteger(replica) || !Number.isInteger(port)) continue;
      if (!this.#config.variants.some((v) => v.name === variant)) {
        this.#log("warn", `container ${c.Names[0]} belongs to variant ${variant}, which the config does not have; ignored`);
        continue;
      }
      const name = c.Names[0]?.replace(/^\//, "") ?? containerName(this.#config.experiment, variant, replica);
      const r = newReplica(variant, replica, port, name, c.Id);
      this.#replicas.set(key(variant, replica), r);
      if (c.State === "running") {
        this.#markRunning(r);
        onProgress(`[${key(variant, replica)}] found ${r.name} on 127.0.0.1:${port}`);
      } else {
        onProgress(`[${key(variant, replica)}] found ${r.name} (${c.State}); restarting it`);
        this.#scheduleRestart(r);
      }
    }
    if (this.#replicas.size === 0) {
      throw new AbgateError(
        `no containers of experiment ${this.#config.experiment} found (label ${LABEL.experiment}=${this.#config.experiment}); start them with \`abgate up\``,
        "ABGATE_ERR_NO_REPLICAS",
      );
    }
  }

  #publish(): void {
    const list: Endpoint[] = [];
    for (const r of this.#replicas.values()) {
      if (r.running) list.push({ id: key(r.variant, r.replica), variant: r.variant, replica: r.replica, host: "127.0.0.1", port: r.port });
    }
    this.#endpoints.set(list);
  }

  #markRunning(r: Replica): void {
    if (this.#stopping || r.running) return;
    r.running = true;
    r.gone = false;
    r.startedAtMs = this.#clock.now();
    r.restartTimer?.cancel();
    r.restartTimer = undefined;
    this.#publish();
  }

  #onDie(r: Replica, exitCode: string | undefined): void {
    if (this.#stopping) return;
    r.deathsSeen++;
    const wasRunning = r.running;
    r.running = false;
    this.#publish();
    if (!wasRunning && r.restartTimer) return;
    const now = this.#clock.now();
    if (now - r.startedAtMs >= this.#stableAfterMs) r.attempt = 0;
    r.deathsMs = r.deathsMs.filter((t) => now - t < this.#crashLoop.windowMs);
    r.deathsMs.push(now);
    this.#log("warn", `replica ${key(r.variant, r.replica)} (${r.name}) died`, { exitCode, deathsInWindow: r.deathsMs.length });
    if (r.deathsMs.length >= this.#crashLoop.deaths) {
      if (!r.crashLoopReported) {
        r.crashLoopReported = true;
        void this.#reportCrashLoop(r);
      }
    } else {
      r.crashLoopReported = false;
    }
    this.#scheduleRestart(r);
  }

  async #reportCrashLoop(r: Replica): Promise<void> {
    const logs = r.containerId ? await tailLogs(this.#docker, r.containerId, this.#crashLoop.logLines) : "(no container)";
    const what = `${r.deathsMs.length} deaths within ${Math.round(this.#crashLoop.windowMs / 1000)} s`;
    this.#log(
      "error",
      `replica ${key(r.variant, r.replica)} (${r.name}) is crash-looping: ${what}; ` + `last ${this.#crashLoop.logLines} log lines:\n${logs}`,
      { variant: r.variant, replica: r.replica, logs },
    );
    this.#crashLoops.fire(key(r.variant, r.replica), `${what}; last log lines:\n${logs}`);
  }

  onCrashLoop(listener: (replica: string, detail: string) => void): () => void {
    return this.#crashLoops.on(listener);
  }

  /** Exponential backoff: initial * 2^attempt, capped. */
  #backoffMs(b: BackoffOptions, attempt: number): number {
    return Math.min(b.maxMs, b.initialMs * 2 ** Math.min(attempt, 30));
  }

  #scheduleRestart(r: Replica): void {
    if (this.#stopping || r.gone) return;
    r.restartTimer?.cancel();
    const delayMs = this.#backoffMs(this.#restartBackoff, r.attempt);
    r.attempt++;
    r.restartTimer = this.#clock.setTimeout(() => {
      r.restartTimer = undefined;
      void this.#restart(r);
    }, delayMs);
  }

  async #restart(r: Replica): Promise<void> {
    if (this.#stopping || r.running || r.gone) return;
    // Another process on the replica's port (it took it while the container was down): started and listed anyway,
    // the container failed to bind, but for its short life the health checks found that process healthy and it was
    // sent the variant's requests, recorded as the replica's. So the replica waits, unlisted, until the port is free.
    const free = await portIsFree(r.port);
    if (this.#stopping || r.running || r.gone) return;
    if (!free) {
      this.#log("warn", `port ${r.port} of replica ${key(r.variant, r.replica)} is in use by another process; the replica starts once it is free`, { port: r.port });
      return this.#scheduleRestart(r);
    }
    try {
      const deaths = r.deathsSeen;
      await this.#docker.getContainer(r.containerId ?? r.name).start();
      this.#log("info", `replica ${key(r.variant, r.replica)} restarted`, { port: r.port });
      if (r.deathsSeen === deaths) this.#markRunning(r);
    } catch (err) {
      const status = statusOf(err);
      if (status === 304) {
        this.#markRunning(r); // already running
      } else if (status === 404) {
        this.#markGone(r);
      } else {
        this.#log("warn", `restarting replica ${key(r.variant, r.replica)} failed: ${(err as Error).message}`);
        this.#scheduleRestart(r);
      }
    }
  }

  #replicaOf(attrs: Record<string, string> | undefined): Replica | undefined {
    if (!attrs) return undefined;
    return this.#replicas.get(key(attrs[LABEL.variant], Number(attrs[LABEL.replica])));
  }

  #watchEvents(): void {
    if (this.#stopping || this.#events) return;
    const opts: { filters: Record<string, string[]>; since?: number } = {
      filters: { type: ["container"], ...experimentFilter(this.#config) },
    };
    if (this.#lastEventS) opts.since = this.#lastEventS;
    this.#docker.getEvents(opts).then(
      (stream) => {
        if (this.#stopping) {
          (stream as { destroy?: () => void }).destroy?.();
          return;
        }
        this.#events = stream as NodeJS.ReadableStream & { destroy?: () => void };
        let pending = "";
        stream.on("data", (chunk: Buffer) => {
          this.#eventsAttempt = 0;
          pending += chunk.toString();
          let nl: number;
          while ((nl = pending.indexOf("\n")) >= 0) {
            const line = pending.slice(0, nl).trim();
            pending = pending.slice(nl + 1);
            if (line) this.#onEvent(line);
          }
        });
        const broken = (why: string): void => {
          if (this.#events !== stream) return;
          this.#events = undefined;
          if (!this.#stopping) this.#resubscribe(why);
        };
        stream.on("error", (err: Error) => broken(err.message));
        stream.on("end", () => broken("stream ended"));
        stream.on("close", () => broken("stream closed"));
        // a re-subscription may have missed changes: look at what really runs now
        if (this.#lastEventS) void this.#reconcile();
      },
      (err: Error) => this.#resubscribe(err.message),
    );
  }

  #resubscribe(why: string): void {
    if (this.#stopping) return;
    const delayMs = this.#backoffMs(this.#eventsBackoff, this.#eventsAttempt++);
    this.#log("warn", `docker events stream broke (${why}); re-subscribing in ${delayMs} ms`);
    if (!this.#lastEventS) this.#lastEventS = Math.floor(this.#clock.now() / 1000);
    this.#eventsTimer = this.#clock.setTimeout(() => this.#watchEvents(), delayMs);
  }

  async #reconcile(): Promise<void> {
    // Only replicas whose container existed before the listing can be missing from it: one whose creation returns
    // meanwhile is not gone.
    const created = [...this.#replicas.values()].filter((r) => r.containerId !== undefined);
    const list = await listExperimentContainers(this.#docker, this.#config).catch(() => undefined);
    if (!list || this.#stopping) return;
    const listed = new Set<Replica>();
    for (const c of list) {
      const r = this.#replicaOf(c.Labels);
      if (!r) continue;
      listed.add(r);
      if (c.State === "running") this.#markRunning(r);
      else if (r.running) this.#onDie(r, undefined);
    }
    // Removed while the events stream was down: the daemon's replay of missed events is bounded, so a destroy may
    // not come. (A replica never created has no container to miss.)
    for (const r of created) if (!listed.has(r) && !r.gone) this.#markGone(r);
  }

  #onEvent(line: string): void {
    let ev: { Action?: string; status?: string; time?: number; timeNano?: number; Actor?: { ID?: string; Attributes?: Record<string, string> } };
    try {
      ev = JSON.parse(line);
    } catch {
      return;
    }
    // A re-subscription asks for events since a whole second, so the daemon sends that second's again: those already
    // handled are skipped (a replayed die unlisted a running replica and counted a death that never happened).
    if (typeof ev.timeNano === "number") {
      if (ev.timeNano <= this.#lastEventNs) return;
      this.#lastEventNs = ev.timeNano;
    }
    if (ev.time) this.#lastEventS = ev.time;
    const r = this.#replicaOf(ev.Actor?.Attributes);
    if (!r || this.#stopping) return;
    // only events of the container this engine knows under that name (a replaced one may still report)
    if (r.containerId && ev.Actor?.ID && ev.Actor.ID !== r.containerId) return;
    switch (ev.Action ?? ev.status) {
      case "start":
        this.#markRunning(r);
        break;
      case "die":
        this.#onDie(r, ev.Actor?.Attributes?.exitCode);
        break;
      case "destroy":
        this.#markGone(r);
        break;
    }
  }
}
