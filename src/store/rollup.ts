import { StoreError } from "../errors.ts";
import type { Exposure, OutcomeEvent } from "./types.ts";

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

/** Why a database would store this exposure wrongly (NaN, fractional status, missing strings), or null if fine. */
export function exposureProblem(e: Exposure): string | null {
  if (!Number.isFinite(e.ts) || !Number.isFinite(e.latencyMs) || !Number.isInteger(e.status)) {
    return "ts, latencyMs and status must be finite numbers (status an integer)";
  }
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
  return null;
}

export function checkExposure(e: Exposure, index: number): void {
  const problem = exposureProblem(e);
  if (problem !== null) throw new StoreError(`exposure ${index}: ${problem}`);
}

export function checkEvent(e: OutcomeEvent, index: number): void {
  if (!Number.isFinite(e.ts)) throw new StoreError(`event ${index}: ts must be a finite number, got ${String(e.ts)}`);
  if (e.value !== null && !Number.isFinite(e.value)) throw new StoreError(`event ${index}: value must be a finite number or null`);
  if (typeof e.experiment !== "string" || typeof e.unit !== "string" || typeof e.event !== "string") {
    throw new StoreError(`event ${index}: experiment, unit and event must be strings`);
  }
}

/**
 * What a batch of exposures changes in the rollups. Units the cache proves unchanged are left out. Timestamps are
 * truncated to whole milliseconds by the caller (`Math.trunc`) before they get here.
 */
export function rollupExposures(rows: Exposure[], cache: UnitCache): ExposureRollup {
  const units = new Map<string, UnitDelta>();
  const minutes = new Map<string, MinuteDelta>();
  const hist = new Map<string, HistDelta>();
  const counts = new Map<string, number>();
  for (let i = 0; i < rows.length; i++) {
    const e = rows[i]!;
    const ts = Math.trunc(e.ts);
    counts.set(e.experiment, (counts.get(e.experiment) ?? 0) + 1);
    const minute = minuteOf(ts);
    const mkey = `${e.experiment}\u0000${minute}\u0000${e.assigned}`;
    let m = minutes.get(mkey);
    if (m === undefined) {
      m = {
        experiment: e.experiment,
        minute,
        variant: e.assigned,
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
      minutes.set(mkey, m);
    }
    if (e.forced) {
      m.forced++;
      continue;
    }
    m.requests++;
    if (e.served !== e.assigned) m.fallback++;
    if (isError(e.status)) m.errors++;
    if (m.minTs === null || ts < m.minTs) m.minTs = ts;
    if (m.maxTs === null || ts > m.maxTs) m.maxTs = ts;
    // Latency describes the assigned variant only when it answered itself; a fallback's latency is another model's.
    if (e.served === e.assigned) {
      m.latencyN++;
      m.latencySum += e.latencyMs;
      m.latencySumSq += e.latencyMs * e.latencyMs;
      const bucket = latencyBucket(e.latencyMs);
      const hkey = `${e.experiment}\u0000${e.assigned}\u0000${bucket}`;
      const h = hist.get(hkey);
      if (h === undefined) hist.set(hkey, { experiment: e.experiment, variant: e.assigned, bucket, count: 1 });
      else h.count++;
    }

    const ukey = `${e.experiment}\u0000${e.unit}`;
    const u = units.get(ukey);
    if (u === undefined) {
      if (cache.covers(ukey, ts, e.assigned)) continue;
      units.set(ukey, { experiment: e.experiment, unit: e.unit, firstTs: ts, firstVariant: e.assigned, multi: 0 });
    } else {
      // Same rule as the SQL upsert: compare with the current first variant, then move "first" only when strictly
      // earlier, so ties keep the exposure that arrived first.
      if (e.assigned !== u.firstVariant) u.multi = 1;
      if (ts < u.firstTs) {
        u.firstTs = ts;
        u.firstVariant = e.assigned;
      }
    }
  }
  return { units: [...units.values()], minutes: [...minutes.values()], hist: [...hist.values()], counts };
}

/**
 * Remembers, for recently seen units, what the database holds (first exposure time and variant, multi flag), so
 * that the common case — a known unit seen again later in the same variant — costs no database write at all.
 *
 * Safe with several writers on one database: the database row only ever moves its first exposure earlier and its
 * multi flag from 0 to 1, and an exposure is skipped only if it is no earlier than a first exposure the database
 * has held and its variant is one the database has seen for the unit (or the unit is already multi), so applying it
 * could not change the row. Entries are recorded only from rows a committed write returned.
 */
export class UnitCache {
  readonly #max: number;
  #map = new Map<string, { ts: number; variant: string; multi: boolean }>();
  constructor(maxEntries = 100_000) {
    this.#max = maxEntries;
  }
  covers(key: string, ts: number, variant: string): boolean {
    const c = this.#map.get(key);
    return c !== undefined && ts >= c.ts && (c.multi || c.variant === variant);
  }
  remember(experiment: string, unit: string, firstTs: number, firstVariant: string, multi: boolean): void {
    if (this.#max <= 0) return;
    const key = `${experiment}\u0000${unit}`;
    this.#map.delete(key);
    this.#map.set(key, { ts: firstTs, variant: firstVariant, multi });
    if (this.#map.size > this.#max) {
      // Maps iterate in insertion order: the first key is the least recently written one.
      const oldest = this.#map.keys().next().value as string;
      this.#map.delete(oldest);
    }
  }
  get size(): number {
    return this.#map.size;
  }
}

/** ON CONFLICT clauses shared by both dialects, so both stores apply exactly the same rule. */
export const UNIT_UPSERT_SET = `
  multi = CASE WHEN units.multi = 1 OR excluded.multi = 1 OR excluded.first_variant <> units.first_variant THEN 1 ELSE 0 END,
  first_variant = CASE WHEN excluded.first_ts < units.first_ts THEN excluded.first_variant ELSE units.first_variant END,
  first_ts = CASE WHEN excluded.first_ts < units.first_ts THEN excluded.first_ts ELSE units.first_ts END`;

export const MINUTE_UPSERT_SET = `
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

export const HIST_UPSERT_SET = `count = latency_hist.count + excluded.count`;
