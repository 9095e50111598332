/**
 * How long does the report's aggregation take on a big experiment?
 *
 *   node --import tsx bench/report-10m.ts [--exposures 10000000] [--units 200000] [--events 1000000]
 *                                         [--db /tmp/abgate-bench/abgate.db] [--keep]
 *
 * 1. Fills a SQLite store through the real `writeExposures` / `writeEvents` (so the write-time rollups are built
 *    the way production builds them), in batches of 100,000 rows per transaction: exposures spread evenly over
 *    7 days, units drawn at random (sticky variant by unit, 1% of units also see the other variant, 0.2% forced,
 *    0.5% fallbacks, 0.5% errors, log-normal latency), outcome events at random times in the same week.
 * 2. Starts a fresh process that opens the file and times `aggregate` (everything the report needs) and, for the
 *    dashboard, `minutes` over the whole week and over the last hour, printing seconds and the child's peak RSS.
 *
 * Target (issue 4): aggregate under 5 s, peak RSS under 500 MB.
 * Measured 2026-11-28 on the 2-core dev machine (load ~1.5): fill 74 s (exposures 166k/s); aggregate 1.31 s;
 * minutes over the week 1.10 s, over the last hour 0.06 s; report process peak RSS 161 MiB; file 912 MiB.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, rmSync, statSync } from "node:fs";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { seededRandom } from "../src/clock.ts";
import type { MetricConfig } from "../src/config/index.ts";
import { SqliteStore } from "../src/store/sqlite/index.ts";
import type { Exposure, OutcomeEvent } from "../src/store/types.ts";

const { values: args } = parseArgs({
  options: {
    exposures: { type: "string", default: "10000000" },
    units: { type: "string", default: "200000" },
    events: { type: "string", default: "1000000" },
    db: { type: "string", default: "/tmp/abgate-bench/abgate.db" },
    keep: { type: "boolean", default: false },
    "report-only": { type: "boolean", default: false },
  },
});

const EXPERIMENT = "bench";
const VARIANTS = ["control", "treatment"];
const WEEK_MS = 7 * 24 * 3_600_000;
const START_MS = Date.UTC(2026, 10, 1);
const METRICS: MetricConfig[] = [
  { name: "watched", kind: "conversion", event: "watched", windowMs: 3_600_000 },
  { name: "watch-minutes", kind: "mean", event: "watched" },
  { name: "purchased", kind: "conversion", event: "purchase" },
  { name: "latency", kind: "latency" },
  { name: "errors", kind: "error_rate" },
];

const mib = (kb: number) => (kb / 1024).toFixed(0);

async function report(dbPath: string): Promise<void> {
  const store = new SqliteStore(dbPath);
  await store.init();
  let t = performance.now();
  const agg = await store.aggregate(EXPERIMENT, VARIANTS, METRICS);
  const aggregateS = (performance.now() - t) / 1000;
  t = performance.now();
  const week = await store.minutes(EXPERIMENT, METRICS, START_MS);
  const weekS = (performance.now() - t) / 1000;
  t = performance.now();
  const hour = await store.minutes(EXPERIMENT, METRICS, START_MS + WEEK_MS - 3_600_000);
  const hourS = (performance.now() - t) / 1000;
  await store.close();
  const rssMiB = mib(process.resourceUsage().maxRSS);
  console.log(`aggregate: ${aggregateS.toFixed(2)} s`);
  console.log(`minutes (whole week, ${week.length} buckets): ${weekS.toFixed(2)} s`);
  console.log(`minutes (last hour, ${hour.length} buckets): ${hourS.toFixed(3)} s`);
  console.log(`report process peak RSS: ${rssMiB} MiB`);
  console.log(
    `check: units ${agg.variants.map((v) => `${v.variant}=${v.units}`).join(" ")}, requests ${agg.variants
      .map((v) => v.requests)
      .reduce((a, b) => a + b, 0)}, forced ${agg.forcedRequests}, multi-variant units ${agg.multiVariantUnits}`,
  );
  for (const m of agg.metrics) console.log(`  ${m.name}: ${JSON.stringify(m.byVariant)}`);
}

async function fill(dbPath: string, nExposures: number, nUnits: number, nEvents: number): Promise<void> {
  const rand = seededRandom(42);
  const store = new SqliteStore(dbPath, { unitCacheSize: nUnits });
  await store.init();
  const BATCH = 100_000;
  const stepMs = WEEK_MS / nExposures;
  const t0 = performance.now();
  for (let start = 0; start < nExposures; start += BATCH) {
    const n = Math.min(BATCH, nExposures - start);
    const rows = new Array<Exposure>(n);
    for (let j = 0; j < n; j++) {
      const i = start + j;
      const u = Math.floor(rand() * nUnits);
      // sticky: the unit's variant by its number; 1% of units (u % 100 === 7) sometimes land in the other one
      let v = u & 1;
      if (u % 100 === 7 && rand() < 0.3) v ^= 1;
      const forced = rand() < 0.002;
      const assigned = VARIANTS[v]!;
      const fallback = rand() < 0.005;
      // log-normal latency around 20 ms (treatment a little slower)
      const z = Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
      rows[j] = {
        experiment: EXPERIMENT,
        ts: Math.floor(START_MS + i * stepMs),
        requestId: `r${i}`,
        unit: `u${u}`,
        assigned,
        served: fallback ? VARIANTS[v ^ 1]! : assigned,
        replica: `${assigned}-${i & 1}`,
        status: rand() < 0.005 ? 503 : 200,
        latencyMs: Math.exp(3 + 0.1 * v + 0.5 * z),
        forced,
      };
    }
    await store.writeExposures(rows);
    if ((start / BATCH) % 10 === 9) {
      const s = (performance.now() - t0) / 1000;
      process.stdout.write(`  exposures ${start + n} (${((start + n) / s / 1000).toFixed(0)}k/s)\n`);
    }
  }
  const exposuresS = (performance.now() - t0) / 1000;
  const t1 = performance.now();
  for (let start = 0; start < nEvents; start += BATCH) {
    const n = Math.min(BATCH, nEvents - start);
    const rows = new Array<OutcomeEvent>(n);
    for (let j = 0; j < n; j++) {
      const u = Math.floor(rand() * nUnits);
      const purchase = rand() < 0.2;
      rows[j] = {
        experiment: EXPERIMENT,
        unit: `u${u}`,
        event: purchase ? "purchase" : "watched",
        value: purchase ? null : Math.round(rand() * 600) / 10,
        ts: Math.floor(START_MS + rand() * WEEK_MS),
        requestId: null,
      };
    }
    await store.writeEvents(rows);
  }
  const eventsS = (performance.now() - t1) / 1000;
  await store.close();
  console.log(
    `filled in ${(exposuresS + eventsS).toFixed(1)} s: ${nExposures} exposures in ${exposuresS.toFixed(1)} s ` +
      `(${(nExposures / exposuresS / 1000).toFixed(0)}k/s), ${nEvents} events in ${eventsS.toFixed(1)} s; ` +
      `file ${(statSync(dbPath).size / 2 ** 20).toFixed(0)} MiB; fill process peak RSS ${mib(process.resourceUsage().maxRSS)} MiB`,
  );
}

const dbPath = args.db;
/** Only the database's own files: --db may point into a directory that holds other things. */
const removeDb = () => {
  for (const suffix of ["", "-wal", "-shm"]) rmSync(dbPath + suffix, { force: true });
};
if (args["report-only"]) {
  await report(dbPath);
} else {
  const nExposures = Number(args.exposures);
  const nUnits = Number(args.units);
  const nEvents = Number(args.events);
  if (existsSync(dbPath)) removeDb();
  mkdirSync(dirname(dbPath), { recursive: true });
  console.log(`filling ${dbPath}: ${nExposures} exposures, ${nUnits} units, ${nEvents} events`);
  await fill(dbPath, nExposures, nUnits, nEvents);
  // A fresh process, so the report's peak RSS is not the fill's.
  const child = spawnSync(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), "--report-only", "--db", dbPath], {
    stdio: "inherit",
  });
  if (!args.keep) removeDb();
  process.exitCode = child.status ?? 1;
}
