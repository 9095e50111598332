import { StoreError } from "../errors.ts";
import { type ExposureBlock, UNIT_SLOT_CHARS } from "./exposure-block.ts";
import type { Exposure, OutcomeEvent } from "./types.ts";
import type { UnitCache } from "./unit-cache.ts";

/**
 * The rollups both stores maintain on write, computed in JS once per batch so that each store only applies a few
 * upserts: a batch of 1,000 exposures usually touches a handful of (minute, variant) rows and latency buckets, and
 * (thanks to UnitCache) only the units that are new or whose first exposure or variant set changes.
 */

export const MINUTE_MS = 60_000;

/** Start of the minute that holds `ts`. */
export function minuteOf(ts: number): number {
  return Math.floor(ts / MINUTE_MS) * MINUTE_MS;
}

/**
 * Latency histogram: bucket 0 holds latencies under 1 µs, bucket b >= 1 holds [γ^(b-1), γ^b) µs with γ = 1.05, so
 * the geometric midpoint of a bucket is within 2.5% of any latency in it (the same log-bucket idea as DDSketch,
 * Masson et al., VLDB 2019, with a fixed γ). 10 minutes is bucket ~416. γ trades accuracy for write cost: every
 * distinct bucket a batch touches is one upsert, and 1.02 made those upserts half the cost of a batch.
 */
const LATENCY_GAMMA = 1.05;
const LOG_GAMMA = Math.log(LATENCY_GAMMA);

/**
 * Largest absolute measurement the store takes: an exposure's latency (ms) and an event's value. The rollups sum
 * squares of them (latencies per minute row; mean metrics the squares of per-unit sums of values). With 1e300
 * allowed, a square could be Infinity (the metric lost for good, since nothing is deleted), and two latencies of
 * 1e154 in one minute row, written by separate batches, overflowed PostgreSQL's float8 addition, which raises
 * instead of giving Infinity: that batch failed on every retry. At 1e150 a square is at most 1e300, which leaves
 * room (doubles reach 1.8e308) for sums over many rows, units and minutes. No real request or outcome comes near it.
 */
export const MAX_ABS_MEASURE = 1e150;

/**
 * Largest |ts| (ms since the epoch) a row may carry: the JS Date range (year 275760). Beyond it, a ts is nonsense
 * (usually nanoseconds sent as ms), and past 2^63 it does not fit PostgreSQL's bigint at all, so the batch would fail
 * on every retry. Within it, every whole ms is exact in a double (8.64e15 < 2^53).
 */
export const MAX_ABS_TS_MS = 8.64e15;

/** Largest |status|: PostgreSQL stores it as int (32 bits). */
const MAX_ABS_STATUS = 2 ** 31 - 1;

/**
 * String.prototype.isWellFormed (ES2024, in Node 20, missing from the ES2023 lib this project compiles against):
 * false when the string holds a UTF-16 surrogate that is not half of a pair. PostgreSQL's driver encodes each such
 * surrogate as U+FFFD, so two distinct units would become one; the proxy never produces them (it reads units from
 * UTF-8 bytes). Cheap: V8 answers at once for a one-byte string, which nearly every unit is.
 */
function isWellFormed(s: string): boolean {
  return (s as string & { isWellFormed(): boolean }).isWellFormed();
}

/** Text PostgreSQL keeps as it is: no NUL (text cannot hold it) and no unpaired surrogate. */
export function storableText(s: string): boolean {
  return !s.includes("\u0000") && isWellFormed(s);
}

export function latencyBucket(latencyMs: number): number {
  const us = latencyMs * 1000;
  if (!(us >= 1)) return 0;
  return 1 + Math.floor(Math.log(us) / LOG_GAMMA);
}

/** Representative latency (ms) of a bucket: the geometric midpoint of its range. */
export function latencyBucketValueMs(bucket: number): number {
  if (bucket <= 0) return 0;
  return (Math.pow(LATENCY_GAMMA, bucket - 0.5)) / 1000;
}

/** Nearest-rank quantile from histogram rows sorted by bucket. */
export function histogramQuantile(rows: { bucket: number; count: number }[], q: number): number {
  let total = 0;
  for (const r of rows) total += r.count;
  if (total === 0) return 0;
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (const r of rows) {
    seen += r.count;
    if (seen >= rank) return latencyBucketValueMs(r.bucket);
  }
  return latencyBucketValueMs(rows[rows.length - 1]!.bucket);
}

export interface UnitDelta {
  experiment: string;
  unit: string;
  firstTs: number;
  firstVariant: string;
  /** 1 when this batch alone already shows the unit in two variants */
  multi: number;
}

export interface MinuteDelta {
  experiment: string;
  minute: number;
  variant: string;
  requests: number;
  fallback: number;
  forced: number;
  errors: number;
  latencyN: number;
  latencySum: number;
  latencySumSq: number;
  minTs: number | null;
  maxTs: number | null;
}

export interface HistDelta {
  experiment: string;
  variant: string;
  bucket: number;
  count: number;
}

export interface ExposureRollup {
  units: UnitDelta[];
  minutes: MinuteDelta[];
  hist: HistDelta[];
  /** exposures per experiment (forced included) */
  counts: Map<string, number>;
}

/** A request failed when it has no HTTP status (0: the connection failed) or a 5xx. */
export function isError(status: number): boolean {
  return status === 0 || status >= 500;
}

/**
 * Why a database would store this exposure wrongly (NaN, fractional status, missing strings), or refuse it (a value
 * out of its column's range, text PostgreSQL cannot hold), or null if fine. The batcher drops such rows: a batch
 * with one of them would fail on every retry and block the rows after it. Runs once per exposure, that is per
 * proxied request, so only comparisons and scans of the two short strings.
 */
export function exposureProblem(e: Exposure): string | null {
  if (!Number.isFinite(e.ts) || !Number.isFinite(e.latencyMs) || !Number.isInteger(e.status)) {
    return "ts, latencyMs and status must be finite numbers (status an integer)";
  }
  if (Math.abs(e.ts) > MAX_ABS_TS_MS) return `ts must be within ±${MAX_ABS_TS_MS} ms of the epoch`;
  // Beyond this, the square of the latency (or the sum of a few of them) overflows to Infinity.
  if (Math.abs(e.latencyMs) > MAX_ABS_MEASURE) return `latencyMs must be at most ${MAX_ABS_MEASURE} in absolute value`;
  if (Math.abs(e.status) > MAX_ABS_STATUS) return `status must be within ±${MAX_ABS_STATUS}`;
  if (
    typeof e.experiment !== "string" ||
    typeof e.unit !== "string" ||
    typeof e.assigned !== "string" ||
    typeof e.served !== "string" ||
    typeof e.requestId !== "string" ||
    typeof e.replica !== "string"
  ) {
    return "experiment, requestId, unit, assigned, served and replica must be strings";
  }
  // Units and request ids come from clients; the other strings from the config, which allows neither.
  if (!storableText(e.unit) || !storableText(e.requestId)) return "unit and requestId must not contain NUL or unpaired surrogates";
  return null;
}

function checkExposure(e: Exposure, index: number): void {
  const problem = exposureProblem(e);
  if (problem !== null) throw new StoreError(`exposure ${index}: ${problem}`, { code: "ABGATE_ERR_STORE_INVALID_EXPOSURE" });
}

/** The checks of `exposureProblem`, for events: POST /v1/events refuses all of these first, with a 400. */
export function checkEvent(e: OutcomeEvent, index: number): void {
  if (!Number.isFinite(e.ts)) throw new StoreError(`event ${index}: ts must be a finite number, got ${String(e.ts)}`);
  if (Math.abs(e.ts) > MAX_ABS_TS_MS) throw new StoreError(`event ${index}: ts must be within ±${MAX_ABS_TS_MS} ms of the epoch, got ${e.ts}`);
  if (e.value !== null && !Number.isFinite(e.value)) throw new StoreError(`event ${index}: value must be a finite number or null`);
  if (e.value !== null && Math.abs(e.value) > MAX_ABS_MEASURE) throw new StoreError(`event ${index}: value must be at most ${MAX_ABS_MEASURE} in absolute value`);
  if (typeof e.experiment !== "string" || typeof e.unit !== "string" || typeof e.event !== "string" || (e.requestId !== null && typeof e.requestId !== "string")) {
    throw new StoreError(`event ${index}: experiment, unit and event must be strings, requestId a string or null`);
  }
  if (!storableText(e.unit) || !storableText(e.event) || (e.requestId !== null && !storableText(e.requestId))) {
    throw new StoreError(`event ${index}: unit, event and requestId must not contain NUL or unpaired surrogates`);
  }
}

/** Checks a whole batch, naming the first bad row; the stores call it before touching the database. */
export function checkExposures(rows: Exposure[]): void {
  for (let i = 0; i < rows.length; i++) checkExposure(rows[i]!, i);
}

/** The rows of one (experiment, assigned variant) within a batch: its minutes and its latency buckets. */
interface VariantGroup {
  experiment: string;
  variant: string;
  minutes: Map<number, MinuteDelta>;
  /** the minute the previous row of this group fell in: consecutive rows nearly always share it */
  lastMinute: MinuteDelta | null;
  /** by bucket number (a few hundred at most: 10 minutes is bucket ~416) */
  hist: (HistDelta | undefined)[];
}

/**
 * What a batch of exposures changes in the rollups. Units the cache proves unchanged are left out. Timestamps are
 * truncated to whole milliseconds by the caller (`Math.trunc`) before they get here.
 */
export function rollupExposures(rows: Exposure[], cache: UnitCache): ExposureRollup {
  const b = new ExposureRollupBuilder(cache);
  b.add(rows, 0, rows.length);
  return b.result();
}

/**
 * `rollupExposures` for a batch that arrives in slices (the SQLite store takes a big batch a few hundred rows per
 * turn of the event loop): `add` each slice, then take the `result` of them all.
 *
 * This runs once per exposure on the proxy's thread, so it builds no per-row key strings: concatenating and hashing
 * `experiment + minute + variant` and friends was most of the cost of a row (1.4 µs of it in a tight loop, 0.3 µs
 * without). Rows are grouped by (experiment, variant) with a linear search over the few groups a batch has, then by
 * minute and bucket number, and units are looked up by their own string in a map per experiment. What is left is
 * mostly that lookup in the unit cache, a cache miss or several for a cache of 100,000 units. The arrays keep
 * first-seen order.
 */
export class ExposureRollupBuilder {
  readonly #cache: UnitCache;
  readonly #groups: VariantGroup[] = [];
  readonly #minutes: MinuteDelta[] = [];
  readonly #hist: HistDelta[] = [];
  readonly #units: UnitDelta[] = [];
  readonly #unitsByExperiment = new Map<string, Map<string, UnitDelta>>();

  constructor(cache: UnitCache) {
    this.#cache = cache;
  }

  /** the group of the previous row: consecutive rows nearly always share it */
  #group: VariantGroup | null = null;
  #unitExperiment: string | null = null;
  #unitMap: Map<string, UnitDelta> | null = null;

  /** Folds rows[from] to rows[to - 1] in. */
  add(rows: readonly Exposure[], from: number, to: number): void {
    const cache = this.#cache;
    for (let i = from; i < to; i++) {
      const e = rows[i]!;
      const ts = Math.trunc(e.ts);
      if (!this.#count(e.experiment, e.assigned, e.served, ts, e.status, e.latencyMs, e.forced)) continue;
      // A row the cache covers changes nothing, whether or not the batch already has a delta for its unit: the
      // database row it was checked against only moves its first exposure earlier and multi to 1, and the delta's
      // upsert is applied on top of that row. So the one map lookup most rows need is this one.
      if (cache.covers(e.experiment, e.unit, ts, e.assigned)) continue;
      this.#unit(e.experiment, e.unit, ts, e.assigned);
    }
  }

  /** `add` of a block's rows from to to - 1; a unit's string is made only when the cache does not cover it. */
  addBlock(block: ExposureBlock, from: number, to: number): void {
    const cache = this.#cache;
    const names = block.names;
    for (let i = from; i < to; i++) {
      const experiment = names[block.experiment[i]!]!;
      const assigned = names[block.assigned[i]!]!;
      const ts = Math.trunc(block.ts[i]!);
      if (!this.#count(experiment, assigned, names[block.served[i]!]!, ts, block.status[i]!, block.latencyMs[i]!, block.forced[i] === 1)) continue;
      if (cache.coversBytes(experiment, block.unitBytes, i * UNIT_SLOT_CHARS, block.unitLength[i]!, ts, assigned)) continue;
      this.#unit(experiment, block.unit(i), ts, assigned);
    }
  }

  /** Counts a row in its minute and latency bucket; whether it is one whose unit counts (not forced). */
  #count(experiment: string, assigned: string, served: string, ts: number, status: number, latencyMs: number, forced: boolean): boolean {
    let g = this.#group;
    if (g === null || g.variant !== assigned || g.experiment !== experiment) this.#group = g = variantGroup(this.#groups, experiment, assigned);
    const minute = minuteOf(ts);
    let m = g.lastMinute;
    if (m === null || m.minute !== minute) {
      m = g.minutes.get(minute) ?? null;
      if (m === null) {
        m = {
          experiment,
          minute,
          variant: assigned,
          requests: 0,
          fallback: 0,
          forced: 0,
          errors: 0,
          latencyN: 0,
          latencySum: 0,
          latencySumSq: 0,
          minTs: null,
          maxTs: null,
        };
        g.minutes.set(minute, m);
        this.#minutes.push(m);
      }
      g.lastMinute = m;
    }
    if (forced) {
      m.forced++;
      return false;
    }
    m.requests++;
    if (served !== assigned) m.fallback++;
    if (isError(status)) m.errors++;
    if (m.minTs === null || ts < m.minTs) m.minTs = ts;
    if (m.maxTs === null || ts > m.maxTs) m.maxTs = ts;
    // Latency describes the assigned variant only when it answered itself; a fallback's latency is another model's.
    if (served === assigned) {
      m.latencyN++;
      m.latencySum += latencyMs;
      m.latencySumSq += latencyMs * latencyMs;
      const bucket = latencyBucket(latencyMs);
      const h = g.hist[bucket];
      if (h === undefined) {
        const nh = { experiment, variant: assigned, bucket, count: 1 };
        g.hist[bucket] = nh;
        this.#hist.push(nh);
      } else {
        h.count++;
      }
    }
    return true;
  }

  /** Folds in an exposure of a unit the cache does not cover. */
  #unit(experiment: string, unit: string, ts: number, assigned: string): void {
    let unitMap = this.#unitMap;
    if (unitMap === null || this.#unitExperiment !== experiment) {
      this.#unitExperiment = experiment;
      unitMap = this.#unitsByExperiment.get(experiment) ?? null;
      if (unitMap === null) {
        unitMap = new Map();
        this.#unitsByExperiment.set(experiment, unitMap);
      }
      this.#unitMap = unitMap;
    }
    const u = unitMap.get(unit);
    if (u === undefined) {
      const nu = { experiment, unit, firstTs: ts, firstVariant: assigned, multi: 0 };
      unitMap.set(unit, nu);
      this.#units.push(nu);
    } else {
      // Same rule as the SQL upsert: compare with the current first variant, then move "first" only when strictly
      // earlier, so ties keep the exposure that arrived first.
      if (assigned !== u.firstVariant) u.multi = 1;
      if (ts < u.firstTs) {
        u.firstTs = ts;
        u.firstVariant = assigned;
      }
    }
  }

  result(): ExposureRollup {
    // Every row counted once in its minute, as a request or as forced.
    const counts = new Map<string, number>();
    for (const m of this.#minutes) counts.set(m.experiment, (counts.get(m.experiment) ?? 0) + m.requests + m.forced);
    return { units: this.#units, minutes: this.#minutes, hist: this.#hist, counts };
  }
}

function variantGroup(groups: VariantGroup[], experiment: string, variant: string): VariantGroup {
  for (const g of groups) if (g.variant === variant && g.experiment === experiment) return g;
  const g: VariantGroup = { experiment, variant, minutes: new Map(), lastMinute: null, hist: [] };
  groups.push(g);
  return g;
}

/**
 * ON CONFLICT clauses shared by both dialects, so both stores apply exactly the same rule.
 *
 * The units upsert changes a row only when the exposure changes it (an earlier first exposure, or a second variant
 * of a unit not yet multi), and its WHERE says so: without it every upsert of a known unit rewrote the row as it
 * was, and with it the page (SQLite), or made a new row version (PostgreSQL). Those are most of the upserts once an
 * experiment has more units than the unit cache remembers, each on a page of its own in a table keyed by unit: over
 * 300,000 units seen before, 1,061 KiB of WAL per 1,000 exposures instead of 105 KiB, and 7.9 µs of CPU per exposure
 * instead of 4.0 (bench/store/many-units.ts).
 */
const UNIT_UPSERT_SET = `
  multi = CASE WHEN units.multi = 1 OR excluded.multi = 1 OR excluded.first_variant <> units.first_variant THEN 1 ELSE 0 END,
  first_variant = CASE WHEN excluded.first_ts < units.first_ts THEN excluded.first_variant ELSE units.first_variant END,
  first_ts = CASE WHEN excluded.first_ts < units.first_ts THEN excluded.first_ts ELSE units.first_ts END
  WHERE excluded.first_ts < units.first_ts
     OR (units.multi = 0 AND (excluded.multi = 1 OR excluded.first_variant <> units.first_variant))`;

const MINUTE_UPSERT_SET = `
  requests = minute_stats.requests + excluded.requests,
  fallback = minute_stats.fallback + excluded.fallback,
  forced = minute_stats.forced + excluded.forced,
  errors = minute_stats.errors + excluded.errors,
  latency_n = minute_stats.latency_n + excluded.latency_n,
  latency_sum = minute_stats.latency_sum + excluded.latency_sum,
  latency_sum_sq = minute_stats.latency_sum_sq + excluded.latency_sum_sq,
  min_ts = CASE WHEN excluded.min_ts IS NULL THEN minute_stats.min_ts
                WHEN minute_stats.min_ts IS NULL OR excluded.min_ts < minute_stats.min_ts THEN excluded.min_ts
                ELSE minute_stats.min_ts END,
  max_ts = CASE WHEN excluded.max_ts IS NULL THEN minute_stats.max_ts
                WHEN minute_stats.max_ts IS NULL OR excluded.max_ts > minute_stats.max_ts THEN excluded.max_ts
                ELSE minute_stats.max_ts END`;

const HIST_UPSERT_SET = `count = latency_hist.count + excluded.count`;

/**
 * A rollup table as both stores upsert it: its columns in order, each with the delta field it takes and its
 * PostgreSQL type (for the `unnest` arrays), the conflict key and the update, so the two stores cannot disagree on
 * what goes where.
 */
export interface RollupUpsert<T> {
  columns: readonly (readonly [column: string, field: keyof T & string, postgresType: string])[];
  /** `INSERT INTO table (columns...)` */
  head: string;
  /** `ON CONFLICT (key) DO UPDATE SET ...` */
  tail: string;
}

function rollupUpsert<T>(table: string, columns: RollupUpsert<T>["columns"], key: string, set: string): RollupUpsert<T> {
  return { columns, head: `INSERT INTO ${table} (${columns.map(([c]) => c).join(", ")})`, tail: `ON CONFLICT (${key}) DO UPDATE SET ${set}` };
}

export const UNIT_UPSERT = rollupUpsert<UnitDelta>(
  "units",
  [
    ["experiment", "experiment", "text"],
    ["unit", "unit", "text"],
    ["first_ts", "firstTs", "bigint"],
    ["first_variant", "firstVariant", "text"],
    ["multi", "multi", "smallint"],
  ],
  "experiment, unit",
  UNIT_UPSERT_SET,
);

export const MINUTE_UPSERT = rollupUpsert<MinuteDelta>(
  "minute_stats",
  [
    ["experiment", "experiment", "text"],
    ["minute", "minute", "bigint"],
    ["variant", "variant", "text"],
    ["requests", "requests", "bigint"],
    ["fallback", "fallback", "bigint"],
    ["forced", "forced", "bigint"],
    ["errors", "errors", "bigint"],
    ["latency_n", "latencyN", "bigint"],
    ["latency_sum", "latencySum", "float8"],
    ["latency_sum_sq", "latencySumSq", "float8"],
    ["min_ts", "minTs", "bigint"],
    ["max_ts", "maxTs", "bigint"],
  ],
  "experiment, minute, variant",
  MINUTE_UPSERT_SET,
);

export const HIST_UPSERT = rollupUpsert<HistDelta>(
  "latency_hist",
  [
    ["experiment", "experiment", "text"],
    ["variant", "variant", "text"],
    ["bucket", "bucket", "int"],
    ["count", "count", "bigint"],
  ],
  "experiment, variant, bucket",
  HIST_UPSERT_SET,
);
