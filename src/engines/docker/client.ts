import { hostname } from "node:os";
import Docker from "dockerode";
import { AbgateError, EngineUnavailableError } from "../../errors.ts";
import type { Config } from "../../config/index.ts";
import { ownerAliveHere, ownerLabel } from "../../owner.ts";

export { ownerLabel };

/** Container labels abgate sets and selects by. */
export const LABEL = {
  experiment: "abgate.experiment",
  variant: "abgate.variant",
  replica: "abgate.replica",
  port: "abgate.port",
  image: "abgate.image",
  /** the abgate process that runs the replica (ownerLabel): another `up` must not remove it while that one lives */
  owner: "abgate.owner",
} as const;

/**
 * Whether the abgate that labelled a replica `owner` (ownerLabel) still runs: on this host, its pid alive with the
 * same start time. Another host's cannot be checked from here, and counts as not running: most often it is this
 * machine under another name (abgate in a container that was recreated), whose leftovers would otherwise block every
 * `up` until `abgate down`. This process's own: not running (its leftovers are its to replace). No owner label (an
 * older abgate): not running.
 */
export function ownerRunning(owner: string | undefined): boolean {
  if (!owner) return false;
  const [host, pid] = owner.split("/");
  if (host === hostname() && Number(pid) === process.pid) return false;
  return ownerAliveHere(owner) === true;
}

/**
 * Refuses to start over replicas that another running abgate owns: removing them as leftovers (a second `up` of the
 * same experiment, say with other listen ports) silently stopped the first one's experiment.
 */
export function refuseIfOwned(config: Pick<Config, "experiment">, containers: readonly { Labels?: Record<string, string> }[], services: readonly ServiceInfo[]): void {
  const labels = [...containers.map((c) => c.Labels), ...services.map((x) => x.Spec?.Labels)];
  const owners = [...new Set(labels.map((l) => l?.[LABEL.owner]).filter((o): o is string => ownerRunning(o)))];
  if (owners.length === 0) return;
  const [host, pid] = owners[0]!.split("/");
  throw new AbgateError(
    `experiment ${config.experiment} is already running: its containers or services belong to another abgate (pid ${pid} on ${host}); stop that one (Ctrl-C, or abgate down) first. Nothing was started or removed.`,
    "ABGATE_ERR_ALREADY_RUNNING",
  );
}

/** Where the Docker client connects: `DOCKER_HOST` when set, else the default socket. */
export function dockerAddress(env: NodeJS.ProcessEnv = process.env): string {
  return env.DOCKER_HOST || "/var/run/docker.sock";
}

/** A dockerode client for `DOCKER_HOST` or the default socket (docker-modem reads the environment). */
export function createDockerClient(): Docker {
  return new Docker();
}

/**
 * The address a client really connects to, for messages. docker-modem 5 keeps `socketPath` as a function when
 * no DOCKER_HOST is set (it picks ~/.docker/run/docker.sock or /var/run/docker.sock on first use), so it is
 * resolved the way the modem resolves it rather than printed.
 */
export async function connectsTo(docker: Docker): Promise<string> {
  const modem = docker.modem as { socketPath?: unknown; getSocketPath?: () => Promise<unknown> | undefined; host?: string; port?: number | string; protocol?: string };
  if (modem.socketPath) {
    const path = await Promise.resolve(typeof modem.getSocketPath === "function" ? modem.getSocketPath() : modem.socketPath).catch(() => undefined);
    return typeof path === "string" && path ? path : dockerAddress();
  }
  if (modem.host) return `${modem.protocol ?? "http"}://${modem.host}:${modem.port ?? ""}`;
  return dockerAddress();
}

/**
 * Fail fast, with a useful message, when no engine answers: the user learns which socket was tried and how
 * to get an engine, instead of an ECONNREFUSED from deep inside a build.
 */
export async function ensureReachable(docker: Docker, timeoutMs = 5_000): Promise<void> {
  const where = await connectsTo(docker);
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      docker.ping(),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
  } catch (cause) {
    const why = (cause as Error)?.message ?? String(cause);
    throw new EngineUnavailableError(
      `No Docker engine answers on ${where} (${why}). Start one — \`sudo scripts/start-dockerd.sh\` ` +
        "(installs docker.io on Debian and starts dockerd), `sudo systemctl start docker`, or Docker Desktop — " +
        "or point DOCKER_HOST at a running engine.",
      { cause },
    );
  } finally {
    clearTimeout(timer);
  }
}

/** The name filter for one experiment's containers: only its label, never a name prefix. */
export function experimentFilter(config: Pick<Config, "experiment">): { label: string[] } {
  return { label: [`${LABEL.experiment}=${config.experiment}`] };
}

export function containerName(experiment: string, variant: string, replica: number): string {
  return `abgate-${experiment}-${variant}-${replica}`;
}

/** What abgate reads of a swarm service: its id and the labels it set. */
export interface ServiceInfo {
  ID: string;
  Spec?: { Labels?: Record<string, string> };
}

/** The experiment's swarm services (found by label); the daemon's error when it is no swarm manager. */
export async function listExperimentServices(docker: Docker, config: Pick<Config, "experiment">): Promise<ServiceInfo[]> {
  return (await docker.listServices({ filters: experimentFilter(config) })) as unknown as ServiceInfo[];
}

/** Removes these services; one already gone (or going) is no error. */
export async function removeServices(docker: Docker, services: readonly ServiceInfo[]): Promise<void> {
  await Promise.all(services.map((s) => docker.getService(s.ID).remove().catch(() => {})));
}

/** Every container of the experiment (running or not), found by label. */
export async function listExperimentContainers(docker: Docker, config: Pick<Config, "experiment">, all = true): Promise<Docker.ContainerInfo[]> {
  return docker.listContainers({ all, filters: experimentFilter(config) });
}

/**
 * Ports that other experiments' replicas hold by label, whatever their state: a replica waiting out its restart
 * backoff has released its port, and an experiment starting beside this one may not have bound its ports yet, so
 * probing what listens misses both (two experiments on the default ports.base then shared ports). Containers and,
 * on a swarm manager, services.
 */
export async function portsOfOtherExperiments(docker: Docker, config: Pick<Config, "experiment">): Promise<number[]> {
  const filters = { label: [LABEL.port] };
  const labelled: { Labels?: Record<string, string> }[] = [
    ...(await docker.listContainers({ all: true, filters })),
    ...((await docker.listServices({ filters }).catch(() => [])) as { Spec?: { Labels?: Record<string, string> } }[]).map((s) => ({ Labels: s.Spec?.Labels })),
  ];
  return labelled
    .filter((x) => x.Labels !== undefined && x.Labels[LABEL.experiment] !== config.experiment)
    .map((x) => Number(x.Labels![LABEL.port]))
    .filter((p) => Number.isInteger(p) && p > 0 && p <= 65535);
}

/**
 * What `start` throws at its next step once `stop` has begun (Ctrl-C while `up` starts): `start` goes on in the
 * background, and must create nothing more. The docker and swarm engines both throw it.
 */
export function stoppedWhileStarting(config: Pick<Config, "experiment">): AbgateError {
  return new AbgateError(`experiment ${config.experiment} was stopped while starting`, "ABGATE_ERR_INTERRUPTED");
}

/**
 * Why a container or service name this experiment needs is taken by something that is not its own: another
 * experiment's replica (names join experiment and variant with '-', which both may contain: experiment `x-a` with
 * variant `b` and experiment `x` with variant `a-b` give the same names), or something abgate did not make. Those
 * are left alone; undefined when the holder is this experiment's (a leftover, or one being removed: replace it).
 */
export function nameTakenBy(config: Pick<Config, "experiment">, kind: "container" | "service", name: string, labels: Record<string, string> | undefined): AbgateError | undefined {
  const owner = labels?.[LABEL.experiment];
  if (owner === config.experiment) return undefined;
  const holder =
    owner === undefined
      ? `a ${kind} that abgate did not make`
      : `experiment ${owner}'s replica ${labels?.[LABEL.variant] ?? "?"}-${labels?.[LABEL.replica] ?? "?"}`;
  return new AbgateError(
    `the ${kind} name ${name} is taken by ${holder}; abgate leaves it alone. Rename the experiment or the variant so that their names do not join to the same one${owner === undefined ? `, or remove that ${kind} yourself` : ""}`,
    "ABGATE_ERR_NAME_TAKEN",
  );
}

/** HTTP status of a dockerode error, when it has one. */
export function statusOf(err: unknown): number | undefined {
  const s = (err as { statusCode?: unknown })?.statusCode;
  return typeof s === "number" ? s : undefined;
}

/**
 * Split Docker's multiplexed log format (8-byte frame headers: stream, 0, 0, 0, big-endian size) into text.
 * Containers created with a TTY have no frames; their bytes are returned as they are.
 */
export function demuxLogs(buf: Buffer): string {
  const parts: Buffer[] = [];
  let i = 0;
  while (i + 8 <= buf.length) {
    const stream = buf[i];
    if (stream > 2 || buf[i + 1] !== 0 || buf[i + 2] !== 0 || buf[i + 3] !== 0) return buf.toString("utf8");
    const size = buf.readUInt32BE(i + 4);
    parts.push(buf.subarray(i + 8, i + 8 + size));
    i += 8 + size;
  }
  if (i === 0 && buf.length) return buf.toString("utf8");
  return Buffer.concat(parts).toString("utf8");
}

/** Last lines of a container's output (stdout and stderr), or a note saying why there are none. */
export async function tailLogs(docker: Docker, containerId: string, lines: number): Promise<string> {
  try {
    const raw = (await docker.getContainer(containerId).logs({ stdout: true, stderr: true, tail: lines, follow: false })) as unknown as Buffer;
    return demuxLogs(Buffer.isBuffer(raw) ? raw : Buffer.from(String(raw))).trimEnd();
  } catch (err) {
    return `(logs unavailable: ${(err as Error).message})`;
  }
}

export class ImageNotFoundError extends AbgateError {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, "ABGATE_ERR_IMAGE_NOT_FOUND", options);
    this.name = "ImageNotFoundError";
  }
}
