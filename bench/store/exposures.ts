/**
 * Exposure-logging microbenchmark: what recording one proxied request costs the proxy's process, and how long a
 * write blocks its event loop. Pushes exposures shaped like the proxy's (a random unit from a pool of users, sticky
 * over 2 variants, ts = Date.now(), latency 1-3 ms, status 200) through ExposureBatcher into a real SQLite file in
 * a temp dir, at a fixed rate, from a 1 ms timer (so the loop is mostly idle, like a proxy that is not saturated).
 *
 * It compares the sources of the work tree ("work") with those of a git revision ("ref", default HEAD, extracted
 * with `git archive` into $TMPDIR/abgate-bench-store-ref-<sha>/), and "none", the generator alone (a no-op
 * batcher): the floor under both. All three run in this one process, each with its own store and batcher, taking
 * turns in short phases (ref, work, none, then rotated). This machine's speed drifts by up to 2x over seconds
 * (shared cores), so separate runs, even separate processes one after the other, cannot be compared; phases a
 * fraction of a second long, interleaved, see the same machine. Each phase ends with a flush, so no write of one
 * implementation runs in another's phase.
 *
 *   node --import tsx bench/store/exposures.ts [--rate 30000] [--seconds 5] [--phase-ms 250] [--warmup 1]
 *                                              [--ref HEAD | --ref-dir DIR] [--impls ref,work,none] [--users 10000]
 *
 * `--ref-dir` takes "ref" from DIR/src instead of a git revision (a copy of an earlier version of the sources, with
 * DIR/node_modules linked to this repository's).
 *
 * `--impls` may also name `work:<ms>`: the work tree with the SQLite store's `writeSliceMs` set to that.
 *
 * `--seconds` is the measured time per implementation. Printed per implementation:
 *   cpu µs/row      process CPU (user+sys, all threads: the WAL checkpointers too) per row, over its phases;
 *                   "med" is the median over phases, less sensitive to a phase that the machine slowed down
 *   tick gap        the longest, 99.9th and 99th percentile gap between ticks of the 1 ms timer that drives the
 *                   load, during its phases: how long the event loop was held, by a write or anything else (the
 *                   machine's own hiccups show in "none"); a gap of 1 ms is no stall at all
 *   sync write      the longest and the 99th percentile time a writeExposures call ran before returning its
 *                   promise: the whole write for a store that writes a batch in one go (as the SQLite store did
 *                   before it wrote in slices), only the first slice or less for one that yields between slices
 *   rows/write      mean rows per writeExposures call
 *   max wait ms     the longest a row waited in the batcher before its write started (ms resolution)
 * For a CPU profile: `node --cpu-prof --cpu-prof-dir=bench/results/store-prof --import tsx bench/store/exposures.ts
 * --impls work`.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createHistogram, performance, type RecordableHistogram } from "node:perf_hooks";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import type { Exposure } from "../../src/store/types.ts";
import { refSourcesOf } from "./ref-sources.ts";

const repo = resolve(fileURLToPath(new URL("../..", import.meta.url)));

const { values: opts } = parseArgs({
  options: {
    rate: { type: "string", default: "30000" },
    seconds: { type: "string", default: "5" },
    "phase-ms": { type: "string", default: "250" },
    warmup: { type: "string", default: "1" },
    ref: { type: "string", default: "HEAD" },
    "ref-dir": { type: "string" },
    impls: { type: "string", default: "ref,work,none" },
    users: { type: "string", default: "10000" },
  },
});
const rate = Number(opts.rate);
const seconds = Number(opts.seconds);
const phaseMs = Number(opts["phase-ms"]);
const warmupS = Number(opts.warmup);
const users = Number(opts.users);
const implNames = opts.impls.split(",").map((s) => s.trim()).filter(Boolean);


interface BatcherLike {
  push(e: Exposure): void;
  flush(): Promise<void>;
  close(): Promise<void>;
}

interface StoreLike {
  init(): Promise<void>;
  writeExposures(rows: Exposure[]): Promise<void>;
  counts(experiment: string): Promise<{ exposures: number }>;
  close(): Promise<void>;
}

interface Impl {
  name: string;
  batcher: BatcherLike;
  store: StoreLike | null;
  rows: number;
  cpuUs: number;
  /** CPU µs per row of each measured phase */
  phaseCpu: number[];
  /** synchronous time of each writeExposures call, in µs */
  writeTimes: RecordableHistogram;
  writes: number;
  /** the longest a row waited in the batcher before its write started */
  maxWaitMs: number;
  /** gaps between ticks of the 1 ms timer that drives the load, in µs */
  gaps: RecordableHistogram;
}

const dir = mkdtempSync(join(tmpdir(), "abgate-bench-exposures-"));
try {
  await main();
} finally {
  rmSync(dir, { recursive: true, force: true });
}

async function main(): Promise<void> {
  let refLabel = "-";
  const impls: Impl[] = [];
  for (const name of implNames) {
    if (name === "none") {
      impls.push(newImpl(name, { push() {}, flush: async () => {}, close: async () => {} }, null));
      continue;
    }
    let src = join(repo, "src");
    const [kind, sliceMs] = name.split(":");
    if (kind === "ref") {
      const ref = refSourcesOf(opts.ref, opts["ref-dir"]);
      refLabel = ref.label;
      src = join(ref.dir, "src");
    } else if (kind !== "work") {
      throw new Error(`unknown implementation ${name}: expected ref, work, work:<writeSliceMs> or none`);
    }
    impls.push(await openImpl(name, src, sliceMs === undefined ? {} : { writeSliceMs: Number(sliceMs) }));
  }
  console.log(
    `exposures through ExposureBatcher into SQLite: ${rate}/s, ${seconds} s per implementation in ${phaseMs} ms phases ` +
      `(+${warmupS} s warm-up each), ${users} users; ref = ${refLabel}, work = ${repo}`,
  );

  const prefix = Math.random().toString(36).slice(2, 10);
  let seq = 0;
  // Sticky like the proxy's strategy: a unit always gets the same variant. Variant and replica names are shared
  // strings (the proxy's come from its config), the unit is a new string each time (the proxy's comes from parsing a
  // cookie or header), as is the request id.
  const unitVariant = Array.from({ length: users }, (_, i) => (fnv1a(`user-${i}`) & 1 ? "v1" : "v0"));
  const replicaOf: Record<string, string> = { v0: "v0-0", v1: "v1-0" };
  const pushRows = (batcher: BatcherLike, n: number) => {
    const ts = Date.now();
    for (let i = 0; i < n; i++) {
      const k = (Math.random() * users) | 0;
      const v = unitVariant[k]!;
      batcher.push({
        experiment: "bench",
        ts,
        requestId: `${prefix}-${(++seq).toString(36)}`,
        unit: `user-${k}`,
        assigned: v,
        served: v,
        replica: replicaOf[v]!,
        status: 200,
        latencyMs: Math.round((1 + Math.random() * 2) * 1000) / 1000,
        forced: false,
      });
    }
  };
  /**
   * Pushes at `rate` for `ms` from a 1 ms timer, catching up after any stall, and records the gaps between its ticks
   * (a write, or anything else, that holds the loop shows as a long gap); resolves with the rows pushed.
   */
  const drive = (batcher: BatcherLike, ms: number, gaps: RecordableHistogram | null) =>
    new Promise<number>((done) => {
      const total = Math.round((rate * ms) / 1000);
      const start = performance.now();
      let last = start;
      let pushed = 0;
      const t = setInterval(() => {
        const now = performance.now();
        gaps?.record(Math.max(1, Math.round((now - last) * 1000)));
        last = now;
        const due = Math.min(total, Math.floor(((now - start) * rate) / 1000));
        if (due > pushed) {
          pushRows(batcher, due - pushed);
          pushed = due;
        }
        if (pushed >= total) {
          clearInterval(t);
          done(pushed);
        }
      }, 1);
    });

  // Warm-up (JIT, page cache, most units seen once): not measured.
  for (const impl of impls) {
    await drive(impl.batcher, warmupS * 1000, null);
    await impl.batcher.flush();
  }
  for (const impl of impls) {
    impl.writeTimes.reset();
    impl.writes = 0;
    impl.maxWaitMs = 0;
  }

  const phases = Math.max(1, Math.round((seconds * 1000) / phaseMs));
  for (let p = 0; p < phases; p++) {
    for (let k = 0; k < impls.length; k++) {
      // Rotate who goes first, so no implementation always follows the same one.
      const impl = impls[(k + p) % impls.length]!;
      const cpu0 = process.cpuUsage();
      const rows = await drive(impl.batcher, phaseMs, impl.gaps);
      await impl.batcher.flush();
      const cpu = process.cpuUsage(cpu0);
      impl.rows += rows;
      impl.cpuUs += cpu.user + cpu.system;
      impl.phaseCpu.push((cpu.user + cpu.system) / rows);
    }
  }

  console.log();
  console.log("impl      cpu µs/row (med)   tick gap ms: max  p99.9  p99   sync write ms: max  p99   rows/write  max wait ms  rows stored");
  for (const impl of impls) {
    await impl.batcher.close();
    let stored = "-";
    if (impl.store !== null) {
      stored = String((await impl.store.counts("bench")).exposures);
      await impl.store.close();
    }
    const total = Math.round(rate * warmupS) + impl.rows;
    console.log(
      `${impl.name.padEnd(9)} ${(impl.cpuUs / impl.rows).toFixed(2).padStart(6)} (${median(impl.phaseCpu).toFixed(2).padStart(5)})` +
        `  ${ms(impl.gaps.max).padStart(17)}  ${ms(impl.gaps.percentile(99.9)).padStart(5)}  ${ms(impl.gaps.percentile(99)).padStart(4)}` +
        `  ${ms(impl.writes > 0 ? impl.writeTimes.max : 0).padStart(19)}  ${ms(impl.writes > 0 ? impl.writeTimes.percentile(99) : 0).padStart(4)}` +
        `  ${(impl.writes > 0 ? impl.rows / impl.writes : 0).toFixed(0).padStart(10)}  ${String(impl.maxWaitMs).padStart(11)}` +
        `  ${impl.store === null ? "-" : `${stored}/${total}`}`,
    );
  }
  const by = (name: string) => impls.find((i) => i.name === name);
  const ref = by("ref");
  const work = by("work");
  const none = by("none");
  if (ref && work) {
    const per = (i: Impl) => i.cpuUs / i.rows;
    const floor = none ? per(none) : 0;
    console.log();
    console.log(
      `work/ref CPU per row: ${(per(work) / per(ref)).toFixed(2)} (medians ${(median(work.phaseCpu) / median(ref.phaseCpu)).toFixed(2)})` +
        (none
          ? `; above the generator's floor (${floor.toFixed(2)} µs/row): ref ${(per(ref) - floor).toFixed(2)}, work ${(per(work) - floor).toFixed(2)} µs/row, ` +
            `ratio ${((per(work) - floor) / (per(ref) - floor)).toFixed(2)}`
          : ""),
    );
    console.log(
      `longest gap between 1 ms ticks: ref ${ms(ref.gaps.max)} ms, work ${ms(work.gaps.max)} ms` +
        (none ? `, none ${ms(none.gaps.max)} ms` : "") +
        `; 99.9th percentile: ref ${ms(ref.gaps.percentile(99.9))}, work ${ms(work.gaps.percentile(99.9))}` +
        (none ? `, none ${ms(none.gaps.percentile(99.9))}` : ""),
    );
  }
}

function newImpl(name: string, batcher: BatcherLike, store: StoreLike | null): Impl {
  return {
    name,
    batcher,
    store,
    rows: 0,
    cpuUs: 0,
    phaseCpu: [],
    writeTimes: createHistogram(),
    writes: 0,
    maxWaitMs: 0,
    gaps: createHistogram(),
  };
}

async function openImpl(name: string, src: string, storeOptions: object): Promise<Impl> {
  const { ExposureBatcher } = (await import(pathToFileURL(join(src, "store", "batcher.ts")).href)) as {
    ExposureBatcher: new (s: unknown, o?: object) => BatcherLike;
  };
  const { SqliteStore } = (await import(pathToFileURL(join(src, "store", "sqlite", "sqlite-store.ts")).href)) as {
    SqliteStore: new (path: string, options?: object) => StoreLike;
  };
  const store = new SqliteStore(join(dir, `${name}.db`), storeOptions);
  await store.init();
  const impl = newImpl(name, null as unknown as BatcherLike, store);
  // Time the synchronous part of each write on the instance itself, so whatever else the store offers the batcher
  // (and its private fields) stays as it is.
  const write = store.writeExposures.bind(store);
  store.writeExposures = (rows: Exposure[]) => {
    // Rows carry their push time (Date.now()) and leave the batcher oldest first.
    const waitMs = Date.now() - rows[0]!.ts;
    if (waitMs > impl.maxWaitMs) impl.maxWaitMs = waitMs;
    const t0 = performance.now();
    const p = write(rows);
    const dt = performance.now() - t0;
    impl.writeTimes.record(Math.max(1, Math.round(dt * 1000)));
    impl.writes++;
    return p;
  };
  impl.batcher = new ExposureBatcher(store, { log: () => {} });
  return impl;
}

/** µs (as the histograms hold them) to ms, for printing */
function ms(us: number): string {
  return (us / 1000).toFixed(2);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? 0 : s[Math.floor(s.length / 2)]!;
}

function fnv1a(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h >>> 0;
}
