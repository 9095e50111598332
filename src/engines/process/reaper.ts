import { spawn, type ChildProcess } from "node:child_process";
import type { Writable } from "node:stream";

/**
 * What the reaper runs: a POSIX shell loop, about a megabyte of memory instead of another Node. Its standard input
 * is a pipe from abgate, which writes `+<pgid>` for each replica's process group it starts and `-<pgid>` for each
 * it has finished with. The pipe ends when abgate does, however it ends: after a clean stop the list is empty and
 * the reaper just exits; after a `kill -9` (or a crash that skipped the exit hooks) it signals every group still
 * listed, SIGTERM, then SIGKILL to what is left after the grace period (5 s by default, as a stop gives).
 *
 * Lines other than `+<digits>` and `-<digits>` are ignored. It runs in a session of its own, so that a signal to abgate's whole process group (a supervisor's or CI's
 * `kill -9 -<pgid>`, a terminal's Ctrl-C) does not end it with abgate; and it ignores INT, HUP, QUIT and TERM sent
 * to it alone: only the end of the pipe ends its watch.
 */
const script = (graceTenths: number) => `trap '' INT HUP QUIT TERM
groups=' '
while IFS= read -r line; do
  case $line in
    +*|-*) ;;
    *) continue ;;
  esac
  g=\${line#?}
  # (never 1 or a leading 0: \`kill -TERM -1\` signals every process there is)
  case $g in ''|*[!0-9]*|0*|1) continue ;; esac
  case $line in
    +*) case $groups in *" $g "*) ;; *) groups="$groups$g " ;; esac ;;
    # (parameter expansions, not a loop over the list: a stop of thousands of replicas removes them all)
    -*) case $groups in *" $g "*) groups="\${groups%% $g *} \${groups#* $g }" ;; esac ;;
  esac
done
[ "$groups" = ' ' ] && exit 0
for g in $groups; do kill -TERM -$g 2>/dev/null; done
i=0
while [ $i -lt ${graceTenths} ]; do
  alive=
  for g in $groups; do kill -0 -$g 2>/dev/null && alive=1; done
  [ -z "$alive" ] && exit 0
  sleep 0.1; i=$((i + 1))
done
for g in $groups; do kill -KILL -$g 2>/dev/null; done
`;

/**
 * What a replica starts as when there is a reaper: `sh -c REGISTER_AND_EXEC abgate-replica <command> <args>...`,
 * with the reaper's pipe as fd 3. It writes its pid, which is its process group's id (replicas start as group
 * leaders), closes the pipe so that the command does not hold it, and becomes the command, keeping its pid. A dead
 * reaper must not stop the replica: SIGPIPE is ignored for the write, then set back to the default the command
 * expects.
 */
export const REGISTER_AND_EXEC = `trap '' PIPE; printf '+%s\\n' "$$" >&3 2>/dev/null; trap - PIPE; exec 3>&-; exec "$@"`;

/** How many times a reaper that died is replaced before abgate gives up on it (something keeps killing it). */
export const MAX_REAPER_RESTARTS = 3;

/**
 * Keeps a process engine's replicas from outliving abgate. They run in process groups of their own (so that a stop
 * reaches what their command starts), which also means nothing stops them when abgate is killed without its exit
 * hooks running: they went on holding their ports, and the next `up` started new replicas beside them. A reaper
 * process, started with the first replica, learns each group through a pipe and signals those still listed when
 * the pipe closes. Nothing is written to disk, so no other process (another abgate of the same config, another
 * user) can add to the list; and the list lives only as long as the abgate that wrote it.
 *
 * Each replica also registers itself, before its command runs: it starts as a small shell (REGISTER_AND_EXEC) that
 * holds a copy of the pipe, writes its own pgid to it, closes it and execs the command. The pipe cannot end while a
 * replica still holds it, so a kill -9 of abgate while spawn() is under way (a fork of a large heap takes tens of
 * ms, during which the child exists but abgate does not know its pid) cannot leave that replica off the list.
 *
 * A pgid is only taken off the list once abgate has seen its group end or has killed it, so a group id reused by an
 * unrelated process can only be signalled in the moment between a group's last process being reaped and its id's
 * removal reaching the reaper.
 */
export class ProcessReaper {
  readonly #log: (msg: string) => void;
  readonly #graceTenths: number;
  #child: ChildProcess | null = null;
  #broken = false;
  /**
   * The groups added and not removed: a reaper that dies (kill -9 of it alone) takes its list along, so its
   * replacement is given them again. (Groups a replica registered itself have been added by the engine once it
   * had their pid.)
   */
  readonly #groups = new Set<number>();
  #restarts = 0;

  constructor(log: (msg: string) => void = () => {}, graceMs = 5000) {
    this.#log = log;
    this.#graceTenths = Math.max(0, Math.ceil(graceMs / 100));
  }

  /** The reaper process's pid, while it runs. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  add(pgid: number): void {
    this.#groups.add(pgid);
    this.#send(`+${pgid}\n`);
  }

  /**
   * The pipe's writing end, for a replica to register itself through (as its fd 3, see REGISTER_AND_EXEC), starting
   * the reaper if needed; null when there is no reaper (it failed, or on Windows).
   */
  pipe(): Writable | null {
    if (this.#broken || process.platform === "win32") return null;
    return (this.#child ?? this.#start())?.stdin ?? null;
  }

  remove(pgid: number): void {
    this.#groups.delete(pgid);
    if (this.#child !== null) this.#send(`-${pgid}\n`);
  }

  /** Ends the list: the reaper signals the groups still on it (none after a clean stop) and exits. */
  close(): void {
    const child = this.#child;
    this.#child = null;
    child?.stdin?.end();
  }

  #send(line: string): void {
    if (this.#broken || process.platform === "win32") return;
    const child = this.#child ?? this.#start();
    if (child === null) return;
    child.stdin!.write(line);
  }

  #start(): ChildProcess | null {
    let child: ChildProcess;
    try {
      child = spawn("/bin/sh", ["-c", script(this.#graceTenths), "abgate-reaper"], { stdio: ["pipe", "ignore", "ignore"], detached: true });
    } catch (err) {
      this.#fail((err as Error).message);
      return null;
    }
    child.on("error", (err) => this.#fail(err.message));
    // A failed spawn (EMFILE, EAGAIN) gives no pid and no pipe; its error event comes later.
    if (child.pid === undefined || child.stdin === null) {
      this.#fail("/bin/sh could not be started");
      return null;
    }
    // Neither the process nor its pipe may keep abgate's event loop alive: it ends when abgate would.
    child.unref();
    (child.stdin as unknown as { unref?: () => void }).unref?.();
    child.stdin.on("error", (err) => this.#fail(err.message));
    child.on("exit", (code, signal) => {
      if (this.#child !== child) return;
      // Not closed by us: killed on its own. Another one takes over the list, a few times.
      if (this.#restarts >= MAX_REAPER_RESTARTS) return this.#fail(`it exited (${signal ?? `code ${code}`}), ${MAX_REAPER_RESTARTS} times`);
      this.#restarts++;
      this.#child = null;
      const next = this.#start();
      if (next === null) return;
      for (const pgid of this.#groups) next.stdin!.write(`+${pgid}\n`);
      this.#log(`the process reaper exited (${signal ?? `code ${code}`}); another took over its list of ${this.#groups.size} replica group${this.#groups.size === 1 ? "" : "s"}`);
    });
    this.#child = child;
    return child;
  }

  #fail(why: string): void {
    if (this.#broken) return;
    this.#broken = true;
    this.#child = null;
    this.#log(`the process reaper failed (${why}): replicas will outlive abgate if it is killed with SIGKILL`);
  }
}
