import { PerformanceObserver } from "node:perf_hooks";
import { getHeapSpaceStatistics, setFlagsFromString } from "node:v8";
import type { Worker } from "node:worker_threads";

/**
 * The most V8's young generation (its "new space": two semi-spaces) may grow to in a gateway process: 16 MB, where
 * Node 20's default lets it reach 32 MB.
 *
 * Why: V8 doubles the young generation each time as many bytes as it holds have survived collections since it last
 * grew. A burst of connections is exactly that: each keeps about 2 KB of objects (its socket, their streams' states,
 * abgate's connection), so 5,000 clients arriving at once took it from 16 to 32 MB, and it stays there while they idle.
 * With the SQLite writer thread beside it, 5,000 idle connections then held 149.8-150.8 MB RSS (three runs of
 * bench/memory/idle-connections.ts), against the 150 MB that issue 2 allows; with the cap, 136.6-137.2 MB.
 *
 * What it costs: about 1% of CPU per request, within the noise of the harness (same-core pairs against Node's own
 * sizing, bench/proxy/ab.sh -r 8: 0.992 req/s, 0.990 per CPU-second). Proxying at saturation with the limit set on
 * the command line (bench/proxy/rounds.sh -r 8, medians): default 26,231 req/s (p99 7.72 ms), 16 MB
 * (`--max-semi-space-size=8`) 26,648 (7.78 ms), 8 MB 26,890 (7.96 ms); 4 MB had a worse p99 (10.27 ms).
 */
export const YOUNG_GENERATION_CAP_BYTES = 16 * 2 ** 20;

/** Node flags by which a user sizes the young generation; when given, theirs stand and no cap is set. */
const USER_SIZING = /--(max|min)[-_]semi[-_]space[-_]size|--semi[-_]space[-_]growth[-_]factor/;

export type YoungGenerationCap = "watching" | "user-sized";

/**
 * Keeps the young generation from growing past `capBytes`, for the rest of the process.
 *
 * Node offers no way to set its maximum size once the process runs (`--max-semi-space-size` is read when V8 starts,
 * and a bin script cannot pass node flags portably), but V8 reads its growth factor each time it grows the space.
 * So after every collection this looks at the space's size: at the cap, it sets that factor to 1 (the space then no
 * longer grows), below it back to V8's 2 (V8 shrinks the space when allocation slows down, and it may grow again).
 * It sets the factor again after every collection at the cap, and when a worker thread comes online, because every
 * new isolate sets it back to 2 (V8's Heap::ConfigureHeap): a worker started later (the store's reader) would
 * otherwise lift the cap for good. A collection between the worker's start and either of those may still grow the
 * space, by one step (to 32 MB, Node's own maximum).
 *
 * A collection that grows the space is seen in the next turn of the event loop at the latest, and one growth step
 * needs as many surviving bytes as the space holds, so the cap is not passed by more than one step. The cost: a
 * look at the heap's spaces and a flag parsed, about 10 µs, once per collection (every few tens of ms under load).
 *
 * Watches once per process: later calls change nothing. Returns "watching", or "user-sized" when the process was
 * started with flags of its own for this (kept as given).
 */
export function capYoungGeneration(capBytes = YOUNG_GENERATION_CAP_BYTES, nodeOptions = `${process.execArgv.join(" ")} ${process.env.NODE_OPTIONS ?? ""}`): YoungGenerationCap {
  if (USER_SIZING.test(nodeOptions)) return "user-sized";
  // Once per process (the tests run the demo twice in one): a second watcher would only repeat the first.
  if (watching) return "watching";
  watching = true;
  let stopped = false;
  const check = () => {
    const atCap = youngGenerationBytes() >= capBytes;
    if (atCap || stopped) setFlagsFromString(`--semi-space-growth-factor=${atCap ? 1 : V8_GROWTH_FACTOR}`);
    stopped = atCap;
  };
  check();
  new PerformanceObserver(check).observe({ entryTypes: ["gc"] });
  // A worker's isolate exists once it runs JavaScript ("online"): the factor it set back is set again then, if no
  // collection came first.
  process.on("worker", (worker: Worker) => worker.once("online", check));
  return "watching";
}

let watching = false;

/** V8's default growth factor of the young generation (its flag's default, and the least Heap::ConfigureHeap allows). */
const V8_GROWTH_FACTOR = 2;

export function youngGenerationBytes(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === "new_space")?.space_size ?? 0;
}
