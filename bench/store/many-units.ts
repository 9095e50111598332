/**
 * The SQLite store's exposure writes when the experiment has more units than the unit cache remembers (100,000): a
 * million users, say, most of them seen before. Every exposure whose unit the cache forgot is upserted into `units`,
 * a B-tree keyed by the unit, so those upserts land on pages all over it; what each one costs, and how much WAL a
 * 1,000-row batch writes, is what this measures.
 *
 * It compares the work tree's SqliteStore with a git revision's ("ref", default HEAD), each on its own database
 * file, fed the same rows: first `--warmup` batches (default 1,500: every one of `--users` units is then seen, as in an
 * experiment that has run a while), then `--rounds` rounds of `--batches` batches, measured, the two stores
 * alternating within each round (order swapped every round). Printed: CPU µs per exposure and WAL KiB per batch,
 * medians over rounds, and their ratios work/ref.
 *
 *   node --import tsx bench/store/many-units.ts [--ref HEAD | --ref-dir DIR] [--users 300000] [--warmup 1500] [--rounds 8] [--batches 25]
 */
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import type { Exposure } from "../../src/store/types.ts";
import { refAndWorkStores, refSourcesOf } from "./ref-sources.ts";

const repo = resolve(fileURLToPath(new URL("../..", import.meta.url)));
const { values: opts } = parseArgs({
  options: {
    ref: { type: "string", default: "HEAD" },
    "ref-dir": { type: "string" },
    users: { type: "string", default: "300000" },
    warmup: { type: "string", default: "1500" },
    rounds: { type: "string", default: "8" },
    batches: { type: "string", default: "25" },
  },
});
const users = Number(opts.users);
const BATCH_ROWS = 1000;

const dir = mkdtempSync(join(tmpdir(), "abgate-bench-many-units-"));
try {
  const ref = refSourcesOf(opts.ref, opts["ref-dir"]);
  const stores = (await refAndWorkStores(ref.dir, dir)).map((s) => ({ ...s, cpuUsPerRow: [] as number[], walKiBPerBatch: [] as number[] }));
  console.log(`SqliteStore exposure writes over ${users.toLocaleString("en")} units, ${BATCH_ROWS}-row batches; ref = ${ref.label}, work = ${repo}`);

  let seq = 0;
  const batch = (): Exposure[] => {
    const ts = Date.now();
    return Array.from({ length: BATCH_ROWS }, () => {
      const k = Math.floor(Math.random() * users);
      const v = k % 2 === 0 ? "v0" : "v1";
      return { experiment: "bench", ts, requestId: `Zb7Qw1_x-${(++seq).toString(36)}`, unit: `user-${k}`, assigned: v, served: v, replica: `${v}#0`, status: 200, latencyMs: 1.5, forced: false };
    });
  };
  const walBytes = (path: string) => statSync(`${path}-wal`).size;

  const warmup = Number(opts.warmup);
  for (let b = 0; b < warmup; b++) {
    const rows = batch();
    for (const s of stores) await s.store.writeExposures(rows.map((e) => ({ ...e })));
  }
  for (let round = 0; round < Number(opts.rounds); round++) {
    const batches = Array.from({ length: Number(opts.batches) }, batch);
    for (const s of round % 2 === 0 ? stores : [...stores].reverse()) {
      const mine = batches.map((b) => b.map((e) => ({ ...e })));
      const wal0 = walBytes(s.path);
      const before = process.cpuUsage();
      for (const b of mine) await s.store.writeExposures(b);
      const used = process.cpuUsage(before);
      s.cpuUsPerRow.push((used.user + used.system) / (mine.length * BATCH_ROWS));
      s.walKiBPerBatch.push((walBytes(s.path) - wal0) / 1024 / mine.length);
    }
  }
  const [refR, workR] = stores as [(typeof stores)[0], (typeof stores)[0]];
  for (const s of stores) console.log(`${s.name.padEnd(4)} ${median(s.cpuUsPerRow).toFixed(2)} µs CPU per exposure, ${median(s.walKiBPerBatch).toFixed(0)} KiB of WAL per batch (medians over ${s.cpuUsPerRow.length} rounds)`);
  console.log(`work/ref: CPU ${median(workR.cpuUsPerRow.map((w, i) => w / refR.cpuUsPerRow[i]!)).toFixed(2)}, WAL ${(median(workR.walKiBPerBatch) / median(refR.walKiBPerBatch)).toFixed(2)}`);
  for (const s of stores) await s.store.close();
} finally {
  rmSync(dir, { recursive: true, force: true });
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)]!;
}
