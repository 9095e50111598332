import type Docker from "dockerode";
import { systemClock, type Clock, type TimerHandle } from "../../clock.ts";
import { AbgateError, EngineUnavailableError } from "../../errors.ts";
import type { Config } from "../../config/index.ts";
import { CrashLoopSignal, EndpointSet, RemovalSignal, type Endpoint, type Engine, type EngineOptions } from "../types.ts";
import { resolveImage } from "../docker/build.ts";
import {
  LABEL,
  containerName,
  createDockerClient,
  dockerAddress,
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
  type ServiceInfo,
} from "../docker/client.ts";
import { allocatePorts, portIsFree } from "../ports.ts";

export interface SwarmEngineOptions extends EngineOptions {
  docker?: Docker;
  clock?: Clock;
  /** swarm's own restart delay for a task that exited (default 500 ms) */
  restartDelayMs?: number;
  /** whether a port is free (tests replace it) */
  isPortFree?: (port: number) => Promise<boolean>;
  /** re-list even without events, in case one was missed (default 5 s) */
  resyncEveryMs?: number;
  /** delay before re-subscribing to events after the stream broke (default 250 ms .. 10 s, doubling) */
  eventsBackoff?: { initialMs: number; maxMs: number };
  crashLoop?: { deaths: number; windowMs: number; logLines: number };
  /** longest wait for swarm to remove the task containers on stop (default 30 s) */
  removeTimeoutMs?: number;
}

/** How long a replica's task must have run to be taken for the holder of its port (see #ownTaskHolds). */
const OWN_TASK_STABLE_S = 3;

/**
 * Docker Swarm: every replica is a one-task service (`abgate-<experiment>-<variant>-<n>`) on host networking
 * with its own PORT, so that the proxy, not the swarm's ingress, balances between replicas. Swarm restarts
 * dead tasks itself (restart condition `any`); this engine only follows their containers: the endpoint list
 * is the experiment's running task containers, re-listed on every Docker event of theirs (as Traefik's swarm
 * provider does) and every few seconds. Images are built locally, so this suits a single-node swarm (or
 * images that every node can pull).
 */
export class SwarmEngine implements Engine {
  readonly kind = "swarm" as const;
  readonly #config: Config;
  readonly #docker: Docker;
  readonly #clock: Clock;
  readonly #adopt: boolean;
  readonly #log: NonNullable<EngineOptions["log"]>;
  readonly #opts: Required<Pick<SwarmEngineOptions, "restartDelayMs" | "resyncEveryMs" | "eventsBackoff" | "crashLoop" | "removeTimeoutMs">>;
  readonly #endpoints = new EndpointSet();
  readonly #isPortFree: (port: number) => Promise<boolean>;
  readonly #deaths = new Map<string, number[]>();
  readonly #reported = new Set<string>();
  /** containers whose `die` we saw: the daemon may still list them as running for a moment */
  readonly #dead = new Set<string>();
  /**
   * Replicas (by id) whose port another process held when their task died: kept out of the list until the port is
   * seen free. Swarm restarts a task without asking; the new one then fails to bind, but while it ran it was listed,
   * its health checks found that other process healthy, and it was sent the variant's requests.
   */
  readonly #portHeld = new Map<string, { port: number; timer?: TimerHandle; delayMs: number }>();
  #images = new Map<string, string>();
  #stopping = false;
  /** start refused (another running abgate owns the experiment's services, or no swarm): stop leaves services alone */
  #refused = false;
  readonly #owner = ownerLabel();
  readonly #crashLoops = new CrashLoopSignal();
  /** replicas without a running task, and why (see #diagnoseMissing) */
  readonly #missingWhy = new Map<string, string>();
  /** how each replica's last task ended (its exit code), for lastExit */
  readonly #lastDeath = new Map<string, string>();
  /** the services' creation while `start` runs it (settled, never rejecting): `stop` waits for it */
  #creating: Promise<void> | null = null;
  #events?: NodeJS.ReadableStream & { destroy?: () => void };
  #eventsAttempt = 0;
  #timer?: TimerHandle;
  #resync?: TimerHandle;
  #refreshing: Promise<void> | null = null;
  #refreshAgain = false;
  /** set once start has seen every task run: from then on, no services at all means they were removed */
  #started = false;
  readonly #removed = new RemovalSignal();

  constructor(config: Config, options: SwarmEngineOptions = {}) {
    this.#config = config;
    this.#docker = options.docker ?? createDockerClient();
    this.#clock = options.clock ?? systemClock;
    this.#adopt = options.adopt ?? false;
    this.#isPortFree = options.isPortFree ?? portIsFree;
    this.#log = options.log ?? ((level, msg) => void (level !== "info" && console.error(`[abgate] ${level}: ${msg}`)));
    this.#opts = {
      restartDelayMs: options.restartDelayMs ?? 500,
      resyncEveryMs: options.resyncEveryMs ?? 5_000,
      eventsBackoff: options.eventsBackoff ?? { initialMs: 250, maxMs: 10_000 },
      crashLoop: options.crashLoop ?? { deaths: 5, windowMs: 60_000, logLines: 20 },
      removeTimeoutMs: options.removeTimeoutMs ?? 30_000,
    };
  }

  images(): Map<string, string> {
    return new Map(this.#images);
  }

  async start(onProgress: (line: string) => void = () => {}): Promise<void> {
    // Before the first await: a stop() while the daemon is asked must stand (cleared after, the start went on).
    this.#stopping = false;
    await ensureReachable(this.#docker);
    const info = (await this.#docker.info()) as { Swarm?: { LocalNodeState?: string; ControlAvailable?: boolean } };
    if (info.Swarm?.LocalNodeState !== "active" || !info.Swarm.ControlAvailable) {
      // (and `stop` lists no services: on a node outside a swarm that fails, and its raw daemon error replaced this)
      this.#refused = true;
      throw new EngineUnavailableError(
        `the Docker engine on ${dockerAddress()} is not a swarm manager (swarm state: ${info.Swarm?.LocalNodeState ?? "unknown"}); ` +
          "run `docker swarm init --advertise-addr 127.0.0.1` (or use engine: docker)",
      );
    }
    if (this.#stopping) return;
    if (this.#adopt) {
      const found = await this.#services();
      if (found.length === 0) {
        throw new AbgateError(`no swarm services of experiment ${this.#config.experiment} found; start them with \`abgate up\``, "ABGATE_ERR_NO_REPLICAS");
      }
      onProgress(`found ${found.length} service(s) of experiment ${this.#config.experiment}`);
    } else {
      for (const v of this.#config.variants) {
        this.#images.set(v.name, (await resolveImage(this.#docker, this.#config.experiment, v, onProgress)).image);
        this.#throwIfStopped();
      }
      try {
        refuseIfOwned(this.#config, await listExperimentContainers(this.#docker, this.#config), await this.#services());
      } catch (err) {
        // (and `stop`, which removes the experiment's services by label, leaves that abgate's alone)
        this.#refused = true;
        throw err;
      }
      await this.#removeServices(onProgress);
      const held = await portsOfOtherExperiments(this.#docker, this.#config);
      const ports = await allocatePorts(this.#config.variants, this.#config.ports.base, [this.#config.listen.port, this.#config.admin.listen.port, ...held]);
      // `stop` during `start` (Ctrl-C while `up` starts): `start` goes on in the background, so it checks before each
      // service, and `stop` waits for the one being created before it removes them all by label.
      const creating = (async () => {
        for (const v of this.#config.variants) {
          const list = ports.get(v.name)!;
          for (let i = 0; i < list.length; i++) {
            this.#throwIfStopped();
            const spec = this.#serviceSpec(v.name, i, list[i]!);
            const name = containerName(this.#config.experiment, v.name, i);
            await this.#docker.createService(spec).catch(async (err: unknown) => {
              // This experiment's services were all removed above: a service of that name is someone else's.
              if (statusOf(err) !== 409) throw err;
              const holder = (await this.#docker.getService(name).inspect().catch(() => undefined)) as { Spec?: { Labels?: Record<string, string> } } | undefined;
              throw (holder && nameTakenBy(this.#config, "service", name, holder.Spec?.Labels ?? {})) ?? err;
            });
            onProgress(`[${v.name}-${i}] created service ${name} on 127.0.0.1:${list[i]}`);
          }
        }
      })();
      this.#creating = creating.then(() => {}, () => {});
      try {
        await creating;
      } finally {
        this.#creating = null;
      }
    }
    this.#watchEvents();
    this.#scheduleResync();
    // resolve once every replica's task runs (the Engine contract: started, not necessarily healthy)
    const want = this.#adopt ? 1 : this.#config.variants.reduce((n, v) => n + v.replicas, 0);
    const until = Date.now() + 60_000;
    for (;;) {
      this.#throwIfStopped();
      await this.#refresh();
      if (this.#endpoints.get().length >= want) break;
      if (Date.now() > until) throw new AbgateError(`swarm did not start every task of experiment ${this.#config.experiment} within 60 s`, "ABGATE_ERR_SWARM");
      await new Promise((r) => setTimeout(r, 100));
    }
    this.#started = true;
  }

  onCrashLoop(listener: (replica: string, detail: string) => void): () => void {
    return this.#crashLoops.on(listener);
  }

  onRemoved(listener: (why: string) => void): () => void {
    return this.#removed.on(listener);
  }

  /** With no task running, whether the services are gone too (`abgate down`): swarm brings nothing back then. */
  async #checkRemoved(): Promise<void> {
    if (!this.#started || this.#removed.fired || this.#stopping) return;
    const services = await this.#services().catch(() => undefined);
    if (services === undefined || services.length > 0 || this.#stopping || this.#removed.fired) return;
    const why = `every service of experiment ${this.#config.experiment} was removed outside abgate (abgate down?)`;
    this.#log("warn", why);
    this.#removed.fire(why);
  }

  /**
   * Says why replicas that have no running task have none, once per change of reason: swarm rejects a task without a
   * container (an image missing on the node: no `die` event comes), and a service removed by hand is not brought back.
   * Before, the one line was "died; swarm restarts it", also for those.
   */
  async #diagnoseMissing(running: ReadonlySet<string>): Promise<void> {
    const services = await this.#services().catch(() => undefined);
    if (services === undefined || this.#stopping) return;
    for (const v of this.#config.variants) {
      for (let i = 0; i < v.replicas; i++) {
        const id = `${v.name}-${i}`;
        if (running.has(id) || this.#portHeld.has(id)) {
          this.#missingWhy.delete(id);
          continue;
        }
        const service = services.find((x) => x.Spec?.Labels?.[LABEL.variant] === v.name && x.Spec?.Labels?.[LABEL.replica] === String(i));
        let why: string | undefined;
        if (service === undefined) {
          why = `replica ${id}: its service was removed outside abgate, and swarm does not bring it back (run abgate up again, or abgate down)`;
        } else {
          const tasks = (await this.#docker.listTasks({ filters: { service: [service.ID] } }).catch(() => [])) as { CreatedAt?: string; Status?: { State?: string; Err?: string } }[];
          const last = tasks.sort((a, b) => String(b.CreatedAt).localeCompare(String(a.CreatedAt)))[0];
          if (last?.Status?.State === "rejected" || (last?.Status?.State === "failed" && last.Status.Err)) {
            why = `replica ${id}: swarm cannot run its task (${last.Status.State}: ${last.Status.Err ?? "no reason given"})`;
          }
        }
        if (why !== undefined && this.#missingWhy.get(id) !== why) this.#log("error", why, { replica: id });
        if (why === undefined) this.#missingWhy.delete(id);
        else this.#missingWhy.set(id, why);
      }
    }
  }

  /**
   * How a replica's last run ended, or why it has none running (see #diagnoseMissing): for up's health-wait failure.
   * Undefined before it ever ended.
   */
  lastExit(id: string): string | undefined {
    return this.#missingWhy.get(id) ?? this.#lastDeath.get(id);
  }

  endpoints(): Endpoint[] {
    return this.#endpoints.get();
  }

  onChange(listener: (endpoints: Endpoint[]) => void): () => void {
    return this.#endpoints.onChange(listener);
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    this.#timer?.cancel();
    this.#resync?.cancel();
    for (const held of this.#portHeld.values()) held.timer?.cancel();
    this.#portHeld.clear();
    this.#events?.destroy?.();
    this.#events = undefined;
    this.#endpoints.set([]);
    if (this.#creating) await this.#creating;
    if (!this.#adopt && !this.#refused) await this.#removeServices(() => {});
  }

  /** `stop` during `start`: see stoppedWhileStarting. */
  #throwIfStopped(): void {
    if (this.#stopping) throw stoppedWhileStarting(this.#config);
  }

  #serviceSpec(variant: string, replica: number, port: number): Docker.CreateServiceOptions {
    const v = this.#config.variants.find((x) => x.name === variant)!;
    const labels = {
      [LABEL.experiment]: this.#config.experiment,
      [LABEL.variant]: variant,
      [LABEL.replica]: String(replica),
      [LABEL.port]: String(port),
      [LABEL.owner]: this.#owner,
    };
    return {
      Name: containerName(this.#config.experiment, variant, replica),
      Labels: labels,
      TaskTemplate: {
        ContainerSpec: {
          Image: this.#images.get(variant)!,
          Env: ["HOST=127.0.0.1", ...Object.entries(v.env).map(([k, val]) => `${k}=${val}`), `PORT=${port}`],
          Labels: labels,
          StopGracePeriod: 2_000_000_000,
        },
        Networks: [{ Target: "host" }],
        RestartPolicy: { Condition: "any", Delay: this.#opts.restartDelayMs * 1_000_000, MaxAttempts: 0 },
      },
      Mode: { Replicated: { Replicas: 1 } },
    } as Docker.CreateServiceOptions;
  }

  #services(): Promise<ServiceInfo[]> {
    return listExperimentServices(this.#docker, this.#config);
  }

  /** Remove the experiment's services and wait until swarm has removed their containers too. */
  async #removeServices(onProgress: (line: string) => void): Promise<void> {
    const services = await this.#services();
    if (services.length) onProgress(`removing ${services.length} service(s) of experiment ${this.#config.experiment}`);
    await removeServices(this.#docker, services);
    // Containers of no service: an `up` with engine: docker left them (killed), and swarm removes only its tasks'.
    // They held the replicas' ports, and this waited 30 s for swarm to remove them.
    const plain = (await listExperimentContainers(this.#docker, this.#config)).filter((c) => !c.Labels?.["com.docker.swarm.service.id"]);
    if (plain.length) onProgress(`removing ${plain.length} container(s) of experiment ${this.#config.experiment} not run by swarm (left by engine: docker)`);
    await Promise.all(plain.map((c) => this.#docker.getContainer(c.Id).remove({ force: true, v: true }).catch(() => {})));
    const until = Date.now() + this.#opts.removeTimeoutMs;
    while (Date.now() < until) {
      const left = await this.#docker.listContainers({ all: true, filters: experimentFilter(this.#config) });
      if (left.length === 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    this.#log("warn", `swarm left containers of experiment ${this.#config.experiment} behind after ${this.#opts.removeTimeoutMs} ms`);
  }

  /** Re-list running task containers into endpoints; concurrent calls coalesce into one more run. */
  #refresh(): Promise<void> {
    if (this.#refreshing) {
      this.#refreshAgain = true;
      return this.#refreshing;
    }
    this.#refreshing = (async () => {
      do {
        this.#refreshAgain = false;
        try {
          const running = await this.#docker.listContainers({ filters: { ...experimentFilter(this.#config), status: ["running"] } });
          if (this.#stopping) return;
          const list: Endpoint[] = [];
          const seen = new Set<string>();
          const listed = new Set(running.map((c) => c.Id));
          for (const id of this.#dead) if (!listed.has(id)) this.#dead.delete(id);
          for (const c of running) {
            if (this.#dead.has(c.Id)) continue;
            const variant = c.Labels[LABEL.variant];
            const replica = Number(c.Labels[LABEL.replica]);
            const port = Number(c.Labels[LABEL.port]);
            const id = `${variant}-${replica}`;
            // a restarting task may briefly overlap its predecessor: one endpoint per replica
            if (!variant || seen.has(id) || !this.#config.variants.some((v) => v.name === variant)) continue;
            if (this.#portHeld.has(id)) continue;
            seen.add(id);
            list.push({ id, variant, replica, host: "127.0.0.1", port });
          }
          this.#endpoints.set(list);
          if (list.length === 0) await this.#checkRemoved();
          if (this.#started && !this.#adopt && list.length < this.#config.variants.reduce((n, v) => n + v.replicas, 0)) await this.#diagnoseMissing(seen);
        } catch (err) {
          this.#log("warn", `listing swarm containers failed: ${(err as Error).message}`);
        }
      } while (this.#refreshAgain && !this.#stopping);
    })().finally(() => {
      this.#refreshing = null;
    });
    return this.#refreshing;
  }

  #scheduleResync(): void {
    if (this.#stopping) return;
    this.#resync = this.#clock.setTimeout(() => {
      void this.#refresh().finally(() => this.#scheduleResync());
    }, this.#opts.resyncEveryMs);
  }

  #onDie(attrs: Record<string, string>, containerId: string): void {
    const id = `${attrs[LABEL.variant]}-${attrs[LABEL.replica]}`;
    if (containerId) this.#dead.add(containerId);
    // out of rotation at once, before the re-list confirms it
    this.#endpoints.set(this.#endpoints.get().filter((e) => e.id !== id));
    const now = this.#clock.now();
    const deaths = (this.#deaths.get(id) ?? []).filter((t) => now - t < this.#opts.crashLoop.windowMs);
    deaths.push(now);
    this.#deaths.set(id, deaths);
    this.#log("warn", `replica ${id} died; swarm restarts it`, { exitCode: attrs.exitCode, deathsInWindow: deaths.length });
    this.#lastDeath.set(id, `its task exited with code ${attrs.exitCode ?? "unknown"}`);
    const port = Number(attrs[LABEL.port]);
    // At once, while the dead task's port is free and swarm has not yet started the next (restartDelayMs later).
    if (Number.isInteger(port) && port > 0 && !this.#portHeld.has(id)) void this.#checkPort(id, port);
    if (deaths.length >= this.#opts.crashLoop.deaths && !this.#reported.has(id)) {
      this.#reported.add(id);
      void tailLogs(this.#docker, containerId, this.#opts.crashLoop.logLines).then((logs) => {
        const what = `${deaths.length} deaths within ${Math.round(this.#opts.crashLoop.windowMs / 1000)} s`;
        this.#log("error", `replica ${id} is crash-looping: ${what}; last log lines:\n${logs}`, { logs });
        this.#crashLoops.fire(id, `${what}; last log lines:\n${logs}`);
      });
    } else if (deaths.length < this.#opts.crashLoop.deaths) {
      this.#reported.delete(id);
    }
  }

  /** After a death: if another process holds the replica's port, keep the replica out until the port is free. */
  async #checkPort(id: string, port: number): Promise<void> {
    if (await this.#isPortFree(port)) return;
    if (this.#stopping || this.#portHeld.has(id)) return;
    const held = { port, delayMs: 250 } as { port: number; timer?: TimerHandle; delayMs: number };
    this.#portHeld.set(id, held);
    this.#endpoints.set(this.#endpoints.get().filter((e) => e.id !== id));
    this.#log("warn", `port ${port} of replica ${id} is in use by another process; the replica is kept out of rotation until the port is free: stop that process`, { replica: id, port });
    const retry = (): void => {
      held.timer = this.#clock.setTimeout(() => {
        void this.#isPortFree(port).then(async (free) => {
          if (this.#stopping || this.#portHeld.get(id) !== held) return;
          if (!free && !(await this.#ownTaskHolds(id))) {
            held.delayMs = Math.min(5_000, held.delayMs * 2);
            return retry();
          }
          this.#portHeld.delete(id);
          this.#log("info", `port ${port} of replica ${id} is free again; swarm's next task for it is listed`, { replica: id, port });
          void this.#refresh();
        });
      }, held.delayMs);
    };
    retry();
  }

  /**
   * Whether the port is held by the replica's own task after all: one that has run OWN_TASK_STABLE_S (a task that
   * finds its port taken dies within a second). The death may be handled late (a stalled event loop, a slow daemon),
   * after swarm's next task bound the port; without this, that healthy task stayed out until it died.
   */
  async #ownTaskHolds(id: string): Promise<boolean> {
    const [variant, replica] = [id.slice(0, id.lastIndexOf("-")), id.slice(id.lastIndexOf("-") + 1)];
    const running = await this.#docker
      .listContainers({ filters: { label: [...experimentFilter(this.#config).label, `${LABEL.variant}=${variant}`, `${LABEL.replica}=${replica}`], status: ["running"] } })
      .catch(() => []);
    const nowS = this.#clock.now() / 1000;
    const stable = running.some((c) => !this.#dead.has(c.Id) && nowS - c.Created >= OWN_TASK_STABLE_S);
    if (stable) this.#log("info", `the port of replica ${id} is held by its own task, running for ${OWN_TASK_STABLE_S} s or more: listed again`, { replica: id });
    return stable;
  }

  #watchEvents(): void {
    if (this.#stopping || this.#events) return;
    this.#docker.getEvents({ filters: { type: ["container"], ...experimentFilter(this.#config) } }).then(
      (stream) => {
        if (this.#stopping) return void (stream as { destroy?: () => void }).destroy?.();
        this.#events = stream as NodeJS.ReadableStream & { destroy?: () => void };
        let pending = "";
        stream.on("data", (chunk: Buffer) => {
          this.#eventsAttempt = 0;
          pending += chunk.toString();
          let nl: number;
          while ((nl = pending.indexOf("\n")) >= 0) {
            const line = pending.slice(0, nl).trim();
            pending = pending.slice(nl + 1);
            if (!line || this.#stopping) continue;
            try {
              const ev = JSON.parse(line) as { Action?: string; Actor?: { ID?: string; Attributes?: Record<string, string> } };
              if (ev.Action === "die" && ev.Actor?.Attributes) this.#onDie(ev.Actor.Attributes, ev.Actor.ID ?? "");
              if (ev.Action === "start" || ev.Action === "die" || ev.Action === "destroy") void this.#refresh();
            } catch {
              // not JSON: ignore the line
            }
          }
        });
        const broken = (why: string): void => {
          if (this.#events !== stream) return;
          this.#events = undefined;
          if (this.#stopping) return;
          const delayMs = Math.min(this.#opts.eventsBackoff.maxMs, this.#opts.eventsBackoff.initialMs * 2 ** this.#eventsAttempt++);
          this.#log("warn", `docker events stream broke (${why}); re-subscribing in ${delayMs} ms`);
          this.#timer = this.#clock.setTimeout(() => {
            this.#watchEvents();
            void this.#refresh();
          }, delayMs);
        };
        stream.on("error", (err: Error) => broken(err.message));
        stream.on("end", () => broken("stream ended"));
        stream.on("close", () => broken("stream closed"));
      },
      (err: Error) => {
        if (this.#stopping) return;
        this.#log("warn", `subscribing to docker events failed: ${err.message}`);
        this.#timer = this.#clock.setTimeout(() => this.#watchEvents(), this.#opts.eventsBackoff.maxMs);
      },
    );
  }
}
