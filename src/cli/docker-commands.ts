import { PassThrough } from "node:stream";
import type Docker from "dockerode";
import type { Config } from "../config/index.ts";
import { InvalidArgumentError } from "../errors.ts";
import { ownerAliveHere } from "../owner.ts";
import { LABEL, createDockerClient, demuxLogs, ensureReachable, listExperimentContainers, listExperimentServices, removeServices, statusOf } from "../engines/docker/client.ts";
import { configuredReplicas } from "../engines/index.ts";
import { check, CONNECT_CHECK, type CheckConfig } from "../health/index.ts";
import { textTable } from "./table.ts";

/**
 * `abgate ps`, `abgate logs` and `abgate down` for docker-engine experiments. They find the experiment's
 * containers by label only, so they work whether or not an `abgate up` is running, and never touch another
 * experiment's containers.
 */
export interface DockerCommandOptions {
  docker?: Docker;
  /** where lines go (default: stdout) */
  out?: (line: string) => void;
}

const stdout = (line: string): void => void process.stdout.write(`${line}\n`);

async function client(opts: DockerCommandOptions): Promise<Docker> {
  const docker = opts.docker ?? createDockerClient();
  await ensureReachable(docker);
  return docker;
}

function replicaId(c: Docker.ContainerInfo): string {
  return `${c.Labels[LABEL.variant]}-${c.Labels[LABEL.replica]}`;
}

function byReplica(a: Docker.ContainerInfo, b: Docker.ContainerInfo): number {
  const va = a.Labels[LABEL.variant] ?? "";
  const vb = b.Labels[LABEL.variant] ?? "";
  return va === vb ? Number(a.Labels[LABEL.replica]) - Number(b.Labels[LABEL.replica]) : va < vb ? -1 : 1;
}

/**
 * One container per replica: its running one, else (`newest`) its newest, or (`output`) its newest that has run,
 * whose output says why it stopped: in a crash loop swarm's newest task container has often only been created.
 * Swarm keeps the containers of a service's failed tasks beside the current one (ps showed three control-0 rows
 * after two crashes, logs printed all three), and an image build's passing containers carry the experiment's label
 * but no replica.
 */
function currentReplicas(containers: Docker.ContainerInfo[], prefer: "newest" | "output" = "newest"): Docker.ContainerInfo[] {
  const byId = new Map<string, Docker.ContainerInfo>();
  const rank = (x: Docker.ContainerInfo) => (x.State === "running" ? 2 : prefer === "output" && (x.State === "exited" || x.State === "dead") ? 1 : 0);
  for (const c of containers) {
    if (c.Labels[LABEL.replica] === undefined) continue;
    const id = replicaId(c);
    const kept = byId.get(id);
    if (kept === undefined || (rank(c) - rank(kept) || c.Created - kept.Created) > 0) byId.set(id, c);
  }
  return [...byId.values()].sort(byReplica);
}

export interface PsRow {
  replica: string;
  variant: string;
  container: string;
  state: string;
  status: string;
  port: number;
  image: string;
  /** the gateway's check of the replica right now (health path, else a TCP connect): healthy, unhealthy, or "-" when not running */
  health: "healthy" | "unhealthy" | "-";
}

/** The gateway's own check of a replica: its variant's health: when given, else a TCP connect (CONNECT_CHECK). */
async function probeReplica(variant: string, port: number, health: CheckConfig): Promise<"healthy" | "unhealthy"> {
  const result = await check({ id: `${variant}-ps`, variant, replica: 0, host: "127.0.0.1", port }, health.path, health.timeoutMs);
  return result.ok ? "healthy" : "unhealthy";
}

/** Format rows as an aligned text table. */
export function formatPsTable(rows: PsRow[]): string {
  const head = ["REPLICA", "CONTAINER", "PORT", "STATE", "HEALTH", "STATUS", "IMAGE"];
  return textTable(head, rows.map((r) => [r.replica, r.container, r.port > 0 ? String(r.port) : "-", r.state, r.health, r.status, r.image]));
}

/** `abgate ps`: the experiment's replicas with their ports, container state and a live health probe. */
export async function ps(config: Config, opts: DockerCommandOptions = {}): Promise<PsRow[]> {
  const out = opts.out ?? stdout;
  const docker = await client(opts);
  const containers = currentReplicas(await listExperimentContainers(docker, config));
  const rows = await Promise.all(
    containers.map(async (c): Promise<PsRow> => {
      const variant = c.Labels[LABEL.variant] ?? "?";
      const port = Number(c.Labels[LABEL.port]);
      const health = config.variants.find((v) => v.name === variant)?.health;
      return {
        replica: replicaId(c),
        variant,
        container: (c.Names[0] ?? c.Id).replace(/^\//, ""),
        state: c.State,
        status: c.Status,
        port,
        image: c.Image,
        health: c.State === "running" ? await probeReplica(variant, port, health ?? CONNECT_CHECK) : "-",
      };
    }),
  );
  if (rows.length === 0) {
    out(`no containers of experiment ${config.experiment}`);
    return rows;
  }
  // The experiment runs: a configured replica without a container is shown too (a service removed by hand, a task
  // swarm rejected), not left out, as if the config had one replica fewer.
  const configured = configuredReplicas(config);
  const shown = new Set(rows.map((r) => r.replica));
  for (const r of configured) {
    if (shown.has(r.id)) continue;
    rows.push({ replica: r.id, variant: r.variant, container: "-", state: "missing", status: "no container: removed outside abgate, or not started (see abgate's log)", port: 0, image: "-", health: "-" });
  }
  const order = new Map(configured.map((r, i) => [r.id, i]));
  rows.sort((a, b) => (order.get(a.replica) ?? Infinity) - (order.get(b.replica) ?? Infinity));
  out(formatPsTable(rows));
  return rows;
}

/** `abgate down`: remove every container of the experiment (found by label), running or not. */
export async function down(config: Config, opts: DockerCommandOptions & { stopTimeoutS?: number } = {}): Promise<number> {
  const out = opts.out ?? stdout;
  const docker = await client(opts);
  // swarm would replace the task containers of a service that still exists: remove the services first
  const services = await listExperimentServices(docker, config).catch(() => []);
  await removeServices(docker, services);
  if (services.length) out(`removed ${services.length} swarm service(s) of experiment ${config.experiment}`);
  const containers = await listExperimentContainers(docker, config);
  await Promise.all(
    containers.map(async (c) => {
      const container = docker.getContainer(c.Id);
      // give the service its SIGTERM first, so that it can finish what it was doing
      if (c.State === "running") await container.stop({ t: opts.stopTimeoutS ?? 2 }).catch(() => {});
      await container.remove({ force: true, v: true }).catch((err: { statusCode?: number }) => {
        if (err.statusCode !== 404 && err.statusCode !== 409) throw err;
      });
    }),
  );
  out(containers.length ? `removed ${containers.length} container(s) of experiment ${config.experiment}` : `no containers of experiment ${config.experiment}`);
  return containers.length;
}

/** Split a stream of text into lines, keeping an unfinished last line until the next chunk. */
function lineSplitter(onLine: (line: string) => void): { push(text: string): void; end(): void } {
  let pending = "";
  return {
    push(text) {
      pending += text;
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const l of lines) onLine(l.replace(/\r$/, ""));
    },
    end() {
      if (pending) onLine(pending);
      pending = "";
    },
  };
}

/**
 * `abgate logs <variant>`: each replica's output, every line prefixed by the replica (`control-1 | ...`). Without
 * `follow`, the replicas' lines are merged in time order; with it, lines are printed as they come until the
 * containers stop (or the command is interrupted).
 */
export async function logs(
  config: Config,
  variant: string,
  options: { follow?: boolean; tail?: number } & DockerCommandOptions = {},
): Promise<void> {
  const out = options.out ?? stdout;
  if (!config.variants.some((v) => v.name === variant)) {
    throw new InvalidArgumentError(`unknown variant "${variant}" (the config has ${config.variants.map((v) => v.name).join(", ")})`);
  }
  const docker = await client(options);
  const containers = currentReplicas(await listExperimentContainers(docker, config), "output").filter((c) => c.Labels[LABEL.variant] === variant);
  if (containers.length === 0) {
    out(`no containers of variant ${variant} in experiment ${config.experiment}`);
    return;
  }
  const width = Math.max(...containers.map((c) => replicaId(c).length));
  const prefix = (c: Docker.ContainerInfo): string => `${replicaId(c).padEnd(width)} | `;
  const tail = options.tail === undefined ? "all" : Math.max(0, Math.floor(options.tail));

  if (!options.follow) {
    const merged: { ts: string; seq: number; line: string }[] = [];
    let seq = 0;
    for (const c of containers) {
      const raw = (await docker.getContainer(c.Id).logs({ stdout: true, stderr: true, timestamps: true, follow: false, tail: tail as number })) as unknown as Buffer;
      const text = demuxLogs(Buffer.isBuffer(raw) ? raw : Buffer.from(String(raw)));
      for (const l of text.split("\n")) {
        if (!l) continue;
        const sp = l.indexOf(" ");
        merged.push({ ts: l.slice(0, sp), seq: seq++, line: prefix(c) + l.slice(sp + 1).replace(/\r$/, "") });
      }
    }
    // RFC 3339 timestamps with nanoseconds from the daemon sort as strings; ties keep per-replica order
    merged.sort((a, b) => (a.ts < b.ts ? -1 : a.ts > b.ts ? 1 : a.seq - b.seq));
    for (const m of merged) out(m.line);
    return;
  }

  // Each replica until it is gone: a replica that stops while followed may come back (abgate restarts a crashed
  // container, swarm starts a new task container), and its lines go on from after the last one printed. Before,
  // the follow of a restarted replica ended silently while the others went on.
  await Promise.all(
    containers.map(async (first) => {
      let c: Docker.ContainerInfo | undefined = first;
      let since: string | undefined;
      while (c !== undefined) {
        const startedAt = await startedAtOf(docker, c);
        const last = await followOnce(docker, c, since === undefined ? { tail } : { since }, (l) => out(prefix(first) + l));
        if (last !== undefined) since = justAfter(last);
        // Not running when followed: something to wait for only while a live abgate owns it (it restarts crashed
        // replicas, after a backoff of up to 30 s): a crash loop is when its logs are followed.
        if (c.State !== "running" && !restartedByOwner(c)) break;
        c = await nextRun(docker, config, replicaId(first), c.Created, startedAt);
      }
    }),
  );
}

/**
 * Follows one container's output until it stops, printing each line without its timestamp; returns the timestamp
 * of the last line (RFC 3339 with nanoseconds), if any.
 */
async function followOnce(docker: Docker, c: Docker.ContainerInfo, from: { tail: number | "all" } | { since: string }, print: (line: string) => void): Promise<string | undefined> {
  let stream: NodeJS.ReadableStream;
  try {
    stream = (await docker.getContainer(c.Id).logs({ stdout: true, stderr: true, follow: true, timestamps: true, ...from } as Docker.ContainerLogsOptions & { follow: true })) as NodeJS.ReadableStream;
  } catch (err) {
    // Listed as running a moment ago, and now gone (404) or being removed (409: "dead or marked for removal",
    // as when down runs): nothing more to follow from it. The caller looks again after a pause.
    const status = statusOf(err);
    if (status === 404 || status === 409) {
      await new Promise((r) => setTimeout(r, 250));
      return undefined;
    }
    throw err;
  }
  let last: string | undefined;
  const split = lineSplitter((l) => {
    const sp = l.indexOf(" ");
    last = l.slice(0, sp);
    print(l.slice(sp + 1).replace(/\r$/, ""));
  });
  const sink = new PassThrough();
  sink.on("data", (chunk: Buffer) => split.push(chunk.toString("utf8")));
  docker.modem.demuxStream(stream, sink, sink);
  await new Promise<void>((resolve) => {
    stream.on("end", resolve);
    stream.on("close", resolve);
    stream.on("error", resolve);
  });
  split.end();
  return last;
}

/** Docker's `since` for the instant 1 ns after an RFC 3339 timestamp: "seconds.nanoseconds". */
function justAfter(timestamp: string): string | undefined {
  const m = /^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/.exec(timestamp);
  if (m === null) return undefined;
  const seconds = Date.parse(`${m[1]}${m[3]}`) / 1000;
  if (!Number.isFinite(seconds)) return undefined;
  const nanos = Number((m[2] ?? "").padEnd(9, "0")) + 1;
  return nanos >= 1e9 ? `${seconds + 1}.000000000` : `${seconds}.${String(nanos).padStart(9, "0")}`;
}

/**
 * How long a follow waits for a stopped replica to run again: past abgate's longest restart backoff (30 s). A
 * replica nothing restarts (no abgate serving it) would otherwise keep the command waiting in silence.
 */
const RESTART_WAIT_MS = 45_000;

/** Whether a stopped container's owner (the abgate that started it, this process too) runs, or may: another host's. */
function restartedByOwner(c: Docker.ContainerInfo): boolean {
  const owner = c.Labels[LABEL.owner];
  return owner !== undefined && ownerAliveHere(owner) !== false;
}

/**
 * The replica's container once it ran again: the same one restarted (another start time than `startedAt`), or a newer
 * one (swarm), running or already stopped again (a crash-looping replica's runs are shorter than the polls, and
 * waiting to see one running missed them). Undefined once the replica has no container left (removed: `down`, or
 * the experiment stopped), or none ran within RESTART_WAIT_MS.
 */
async function nextRun(docker: Docker, config: Config, replica: string, afterCreated: number, startedAt: string | undefined): Promise<Docker.ContainerInfo | undefined> {
  const until = Date.now() + RESTART_WAIT_MS;
  while (Date.now() < until) {
    const current = currentReplicas(await listExperimentContainers(docker, config)).find((x) => replicaId(x) === replica);
    if (current === undefined) return undefined;
    if (current.Created > afterCreated) return current;
    if (current.Created === afterCreated) {
      const now = await startedAtOf(docker, current);
      if (now !== undefined && now !== startedAt) return current;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return undefined;
}

/** When the container's latest run started (Docker's State.StartedAt); undefined if it cannot be inspected. */
async function startedAtOf(docker: Docker, c: Docker.ContainerInfo): Promise<string | undefined> {
  return ((await docker.getContainer(c.Id).inspect().catch(() => undefined)) as { State?: { StartedAt?: string } } | undefined)?.State?.StartedAt;
}
