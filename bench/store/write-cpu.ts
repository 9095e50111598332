/**
 * What a saturated proxy pays per exposure for the SQLite store: CPU per row of `writeExposures`, called back to
 * back on 1,000-row batches shaped like the proxy's (a random unit of 10,000, sticky over 2 variants, a request id
 * made the proxy's way, latency 1-3 ms in whole µs, status 200), in a tight loop: no timers, no idle time between
 * writes, as when the proxy has no idle time either. bench/store/exposures.ts measures the other case, a proxy
 * that is not saturated, and how long writes hold the event loop.
 *
 * It compares the work tree's SqliteStore with a git revision's ("ref", default HEAD), both loaded in this one
 * process, each with its own database file, in alternating rounds (order swapped every round) on the same rows,
 * and prints the median over rounds of work/ref. This machine's speed drifts over seconds; a round is a few tens
 * of ms per store, so each pair sees the same machine. `--ref-dir DIR` takes ref from DIR/src instead (with an A/A
 * run, `--ref-dir .`, giving the harness's own bias: about 1.0).
 *
 *   node --expose-gc --import tsx bench/store/write-cpu.ts [--ref HEAD | --ref-dir DIR] [--rounds 40] [--batches 30]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { Exposure } from "../../src/store/types.ts";
import { refAndWorkStores, refSourcesOf } from "./ref-sources.ts";

const gc = (globalThis as { gc?: () => void }).gc;
const repo = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const { values: opts } = parseArgs({
  options: {
    ref: { type: "string", default: "HEAD" },
    "ref-dir": { type: "string" },
    rounds: { type: "string", default: "40" },
    batches: { type: "string", default: "30" },
  },
});
const rounds = Number(opts.rounds);
const batchesPerRound = Number(opts.batches);
const BATCH_ROWS = 1000;
const USERS = 10_000;
const WARMUP_ROUNDS = 4;

const dir = mkdtempSync(join(tmpdir(), "abgate-bench-write-cpu-"));
try {
  const ref = refSourcesOf(opts.ref, opts["ref-dir"]);
  const stores = (await refAndWorkStores(ref.dir, dir)).map((s) => ({ ...s, cpuUsPerRow: [] as number[] }));
  if (gc === undefined) console.log("(run with node --expose-gc for steadier numbers: a full GC before each measurement)");
  console.log(`SqliteStore.writeExposures CPU per row, ${BATCH_ROWS}-row batches back to back; ref = ${ref.label}, work = ${repo}`);

  // Units as the proxy has them: strings made fresh from the request's bytes, not literals.
  const unitBytes = Array.from({ length: USERS }, (_, k) => Buffer.from(`user-${k}`));
  const prefix = "Zb7Qw1_x";
  let seq = 0;
  const batch = (): Exposure[] => {
    const ts = Date.now();
    return Array.from({ length: BATCH_ROWS }, () => {
      const k = Math.floor(Math.random() * USERS);
      const v = k % 2 === 0 ? "v0" : "v1";
      return {
        experiment: "bench",
        ts,
        requestId: `${prefix}-${(++seq).toString(36)}`,
        unit: unitBytes[k]!.toString("latin1"),
        assigned: v,
        served: v,
        replica: `${v}#0`,
        status: 200,
        latencyMs: Math.round(1000 + Math.random() * 2000) / 1000,
        forced: false,
      };
    });
  };

  for (let round = 0; round < WARMUP_ROUNDS + rounds; round++) {
    const batches = Array.from({ length: batchesPerRound }, batch);
    for (const s of round % 2 === 0 ? stores : [...stores].reverse()) {
      // Each store gets its own copies (rows are not shared between the two), made before the clock starts.
      const mine = batches.map((b) => b.map((e) => ({ ...e })));
      // A full GC first, so that collecting the garbage of making rows (and of the other store) is not billed here.
      gc?.();
      const before = process.cpuUsage();
      for (const b of mine) await s.store.writeExposures(b);
      const used = process.cpuUsage(before);
      if (round >= WARMUP_ROUNDS) s.cpuUsPerRow.push((used.user + used.system) / (batchesPerRound * BATCH_ROWS));
    }
  }
  const [refR, workR] = stores as [(typeof stores)[0], (typeof stores)[0]];
  const ratios = workR.cpuUsPerRow.map((w, i) => w / refR.cpuUsPerRow[i]!);
  console.log(`ref ${median(refR.cpuUsPerRow).toFixed(2)} µs/row, work ${median(workR.cpuUsPerRow).toFixed(2)} µs/row (medians over ${rounds} rounds)`);
  console.log(`work/ref, median of same-round pairs: ${median(ratios).toFixed(3)} (quartiles ${quantile(ratios, 0.25).toFixed(2)}-${quantile(ratios, 0.75).toFixed(2)})`);
  for (const s of stores) await s.store.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
}

function median(xs: number[]): number {
  return quantile(xs, 0.5);
}
