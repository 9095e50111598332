/**
 * Which process, on which host, did something: abgate labels the replicas it runs with it (the docker and swarm
 * engines), and notes it in the store while a gateway serves (the second-gateway warning). Host, pid and the pid's
 * start time: a pid the system reused names another process.
 */
import { readFileSync } from "node:fs";
import { hostname } from "node:os";

/** A process's start time since boot (clock ticks, /proc/<pid>/stat field 22), or null where it cannot be read. */
function startTicks(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // the command name (field 2) may hold spaces and parentheses: fields are counted after its closing ")"
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

/** This process: `host/pid/start ticks` ("?" for the ticks where /proc cannot be read). */
export function ownerLabel(): string {
  return `${hostname()}/${process.pid}/${startTicks(process.pid) ?? "?"}`;
}

/**
 * Whether `owner` (an ownerLabel) names a process of this host that runs: its pid alive with the same start time
 * (ticks "?": the pid alive). Undefined for another host's, which cannot be checked from here.
 */
export function ownerAliveHere(owner: string): boolean | undefined {
  const [host, pidText, ticks] = owner.split("/");
  if (host !== hostname()) return undefined;
  const pid = Number(pidText);
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  if (ticks === undefined) return false;
  if (ticks === "?") {
    try {
      process.kill(pid, 0);
      return true;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === "EPERM";
    }
  }
  const now = startTicks(pid);
  return now !== null && now === ticks;
}
