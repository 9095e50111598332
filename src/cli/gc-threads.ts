import { availableParallelism } from "node:os";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

/**
 * V8's garbage collector does much of its work on helper threads: it marks the old generation concurrently with
 * JavaScript, sweeps concurrently, and scavenges, compacts and updates pointers in parallel. With more than one core
 * that work runs beside the proxy's thread. With one core (a container's `--cpuset-cpus`, `taskset`), the helpers
 * can only take turns with it: the kernel runs each for a scheduler slice of a few ms, and every request in flight
 * waits meanwhile. In `perf` with abgate pinned to one core under wrk, concurrent marking took the core for 12, 6 and
 * 6 ms in a row, sweeping for 3 ms more, and such gaps made most of abgate's p99 after the JIT had settled.
 *
 * On the proxy's thread the same work comes in V8's incremental steps instead, about a millisecond each, between
 * requests. Measured as bench/proxy/run.sh does (proxy on core 0, wrk -c64 and the backends on core 1, two warm-up
 * spells, exposure logging on), by hand with these flags given by a preload: p99 4.05-4.99 ms, median 4.24 (9 runs),
 * against 3.89-7.31 ms, median 5.7 (6 runs), without; p99.9 6.7-19 ms against 14-26 ms; req/s within the noise.
 *
 * These are the flags of V8's `--single-threaded-gc` that can change once V8 runs: that flag itself, and
 * `--no-parallel-marking`, fail a CHECK at the next full collection when set at run time (Node 20, V8 11.3), so
 * marking inside the final pause may still use helpers. Each of these is read when a collection starts.
 */
export const MAIN_THREAD_GC_FLAGS = ["--no-concurrent-marking", "--no-concurrent-sweeping", "--no-parallel-scavenge", "--no-parallel-compaction", "--no-parallel-pointer-update"];

/** Node flags by which a user chose how V8 collects on threads; when given, theirs stand. */
const USER_CHOICE = /--(no[-_])?(single[-_]threaded[-_]gc|single[-_]threaded|concurrent[-_]marking|concurrent[-_]sweeping|parallel[-_]scavenge|parallel[-_]compaction|parallel[-_]pointer[-_]update|parallel[-_]marking)\b/;

export type GcThreads = "main-thread" | "parallel" | "user-set" | "unavailable";

/**
 * When this process may run on one core only, has V8 collect garbage on the JavaScript thread (see
 * MAIN_THREAD_GC_FLAGS). Returns what it did: "main-thread"; "parallel" when more cores are available (nothing
 * changed); "user-set" when node was started with flags of its own for this (kept as given); "unavailable" when
 * no full collection could be run first (nothing changed). The flags apply from the next collection on.
 *
 * A full collection runs first, because a collection's marking may be under way (loading abgate's modules makes a
 * heap that starts one within the first 300 ms) and its concurrent marker must not run on while its flag changes:
 * a scavenge pauses that marker only when `concurrent_marking` says one runs. The collection ends the marking and
 * joins the marker. It costs a few ms, once.
 */
export function collectOnMainThreadWhenOneCore(
  cores = availableParallelism(),
  nodeOptions = `${process.execArgv.join(" ")} ${process.env.NODE_OPTIONS ?? ""}`,
): GcThreads {
  if (USER_CHOICE.test(nodeOptions)) return "user-set";
  if (cores > 1) return "parallel";
  const collect = fullCollection(/--expose[-_]gc\b/.test(nodeOptions));
  if (collect === null) return "unavailable";
  collect();
  setFlagsFromString(MAIN_THREAD_GC_FLAGS.join(" "));
  return "main-thread";
}

/**
 * V8's `gc()` without `--expose-gc` on the command line: the flag gives each context made after it a `gc` global.
 * Set back afterwards unless the process had it (contexts made later, a `vm` user's, get none).
 */
function fullCollection(exposedAlready: boolean): (() => void) | null {
  setFlagsFromString("--expose-gc");
  try {
    const gc: unknown = runInNewContext("typeof gc === 'function' ? gc : null");
    return typeof gc === "function" ? (gc as () => void) : null;
  } finally {
    if (!exposedAlready) setFlagsFromString("--no-expose-gc");
  }
}
