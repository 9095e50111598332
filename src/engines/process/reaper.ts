import { spawn, type ChildProcess } from "node:child_process";

/**
 * What the reaper runs: a POSIX shell loop, about a megabyte of memory instead of another Node. Its standard input
 * is a pipe from abgate, which writes `+<pgid>` for each replica's process group it starts and `-<pgid>` for each
 * it has finished with. The pipe ends when abgate does, however it ends: after a clean stop the list is empty and
 * the reaper just exits; after a `kill -9` (or a crash that skipped the exit hooks) it signals every group still
 * listed, SIGTERM, then SIGKILL to what is left after the grace period (5 s by default, as a stop gives).
 *
 * It ignores the terminal's signals (INT, HUP, QUIT, TERM) because it shares abgate's process group: a Ctrl-C is
 * abgate's to handle, and a reaper killed with abgate's group would leave the replicas it exists for.
 */
const script = (graceTenths: number) => `trap '' INT HUP QUIT TERM
groups=' '
while IFS= read -r line; do
  case $line in
    +*) groups="$groups\${line#?} " ;;
    -*) g=\${line#?}; rest=' '
        for x in $groups; do [ "$x" = "$g" ] || rest="$rest$x "; done
        groups=$rest ;;
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
 * Keeps a process engine's replicas from outliving abgate. They run in process groups of their own (so that a stop
 * reaches what their command starts), which also means nothing stops them when abgate is killed without its exit
 * hooks running: they went on holding their ports, and the next `up` started new replicas beside them. A reaper
 * process, started with the first replica, learns each group through a pipe and signals those still listed when
 * the pipe closes. Nothing is written to disk, so no other process (another abgate of the same config, another
 * user) can add to the list; and the list lives only as long as the abgate that wrote it.
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

  constructor(log: (msg: string) => void = () => {}, graceMs = 5000) {
    this.#log = log;
    this.#graceTenths = Math.max(0, Math.ceil(graceMs / 100));
  }

  /** The reaper process's pid, while it runs. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  add(pgid: number): void {
    this.#send(`+${pgid}\n`);
  }

  remove(pgid: number): void {
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
      child = spawn("/bin/sh", ["-c", script(this.#graceTenths), "abgate-reaper"], { stdio: ["pipe", "ignore", "ignore"] });
    } catch (err) {
      this.#fail((err as Error).message);
      return null;
    }
    // Neither the process nor its pipe may keep abgate's event loop alive: it ends when abgate would.
    child.unref();
    (child.stdin as unknown as { unref?: () => void }).unref?.();
    child.on("error", (err) => this.#fail(err.message));
    child.stdin!.on("error", (err) => this.#fail(err.message));
    child.on("exit", () => {
      if (this.#child === child) this.#fail("it exited");
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
