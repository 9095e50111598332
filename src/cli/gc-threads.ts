import { availableParallelism } from "node:os";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { capYoungGeneration } from "./young-generation.ts";

/**
 * V8's garbage collector does much of its work on helper threads: it marks the old generation concurrently with
 * JavaScript, sweeps concurrently, and scavenges, compacts and updates pointers in parallel. With more than one core
 * that work runs beside the proxy's thread. With one core (a container's `--cpuset-cpus`, `taskset`), the helpers
 * can only take turns with it: the kernel runs each for a scheduler slice of a few ms, and every request in flight
 * waits meanwhile. In `perf` with abgate pinned to one core under wrk, concurrent marking took the core for 12, 6 and
 * 6 ms in a row, sweeping for 3 ms more, and such gaps made most of abgate's p99 after the JIT had settled.
 *
 * Without the helpers, marking comes in V8's incremental steps of about a millisecond between requests, and
 * scavenges, compaction and sweeping run on the JavaScript thread in the pauses (and allocations) where V8 would
 * otherwise wait for its helpers: on one core the same work, without the scheduler's slices in the middle of it.
 * Measured in bench/README.md ("Garbage collection on one core").
 *
 * These are the flags of V8's `--single-threaded-gc` that can change once V8 runs: that flag itself, and
 * `--no-parallel-marking`, fail a CHECK at the next full collection when set at run time (Node 20, V8 11.3; cppgc's
 * marker reads them when the heap is set up), so marking inside the final pause may still use helpers. V8 reads
 * each of these when a collection starts.
 */
const MAIN_THREAD_GC_FLAGS = ["--no-concurrent-marking", "--no-concurrent-sweeping", "--no-parallel-scavenge", "--no-parallel-compaction", "--no-parallel-pointer-update"];

/**
 * A node flag by which a user chose how V8 collects on threads (theirs then stand), in any of V8's spellings:
 * `--no-foo`, `--no_foo`, `--nofoo`, with or without a value.
 */
const USER_GC_THREAD_FLAG =
  /^--?(no[-_]?)?(single[-_]threaded[-_]gc|single[-_]threaded|concurrent[-_]marking|concurrent[-_]sweeping|parallel[-_]scavenge|parallel[-_]compaction|parallel[-_]pointer[-_]update|parallel[-_]marking)(=.*)?$/;

export type GcThreads = "main-thread" | "parallel" | "user-set" | "unavailable";

/**
 * When this process may run on one core only, has V8 collect garbage on the JavaScript thread (see
 * MAIN_THREAD_GC_FLAGS). Returns what it did: "main-thread"; "parallel" when more cores are available or
 * `ABGATE_GC_THREADS=parallel` asks to keep V8's helpers (nothing changed: Node 20 refuses these V8 flags in
 * NODE_OPTIONS, so a container's user has no other way to say so); "user-set" when node was started with flags of
 * its own for this (kept as given); "unavailable" when no full collection could be run first (nothing changed).
 * The flags apply from the next collection on; call it before any worker thread starts.
 *
 * A full collection runs first, because a collection's marking may be under way (loading abgate's modules makes a
 * heap that starts one within the first 300 ms) and its concurrent marker must not run on while its flag changes:
 * a scavenge pauses that marker only when `concurrent_marking` says one runs. The collection ends the marking and
 * joins the marker. It costs a few ms, once.
 */
export function collectOnMainThreadWhenOneCore(
  cores = availableParallelism(),
  nodeFlags: readonly string[] = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? "").split(/\s+/)],
  choice = process.env.ABGATE_GC_THREADS,
): GcThreads {
  if (nodeFlags.some((f) => USER_GC_THREAD_FLAG.test(f))) return "user-set";
  if (cores > 1 || choice === "parallel") return "parallel";
  const gc = exposedGc(nodeFlags.some((f) => /^--expose[-_]gc$/.test(f)));
  if (gc === null) return "unavailable";
  gc();
  setFlagsFromString(MAIN_THREAD_GC_FLAGS.join(" "));
  return "main-thread";
}

/**
 * V8's `gc()` without `--expose-gc` on the command line: the flag gives each context made after it a `gc` global.
 * Set back afterwards unless the process had it (contexts made later, a `vm` user's, get none).
 */
function exposedGc(exposedAlready: boolean): (() => void) | null {
  setFlagsFromString("--expose-gc");
  try {
    const gc: unknown = runInNewContext("typeof gc === 'function' ? gc : null");
    return typeof gc === "function" ? (gc as () => void) : null;
  } finally {
    if (!exposedAlready) setFlagsFromString("--no-expose-gc");
  }
}

/**
 * The collector's settings of a serving process (serve, up, demo): the young generation's cap, and collection on the
 * proxy's thread on one core. Call it before the store starts its threads.
 */
export function tuneGcForServing(): void {
  capYoungGeneration();
  collectOnMainThreadWhenOneCore();
}
