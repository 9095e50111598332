import type { MetricConfig } from "../config/index.ts";
import type { ExposureBlock } from "./exposure-block.ts";

/** Longest unit id, in UTF-16 code units; the proxy refuses longer units too, so every exposed unit can report outcomes. */
export const MAX_UNIT_CHARS = 512;

/** One proxied request, as recorded for analysis. */
export interface Exposure {
  experiment: string;
  /** ms since epoch, when the request arrived */
  ts: number;
  requestId: string;
  /**
   * Optional, and only together: requestId is exactly `${requestIdPrefix}${requestSeq.toString(36)}`. The proxy,
   * which makes its ids so, says it, and the batcher then keeps the number without reading the id (which, made by
   * concatenation, it would first have to copy into one string).
   */
  requestSeq?: number;
  requestIdPrefix?: string;
  unit: string;
  /** variant the strategy chose */
  assigned: string;
  /** variant that answered (differs from `assigned` only under fallback) */
  served: string;
  /** replica id (`control-0`), or "" when none answered */
  replica: string;
  status: number;
  latencyMs: number;
  forced: boolean;
}

/** An outcome posted to POST /v1/events. */
export interface OutcomeEvent {
  experiment: string;
  unit: string;
  event: string;
  value: number | null;
  /** ms since epoch (the event's `ts`, or the time it was received) */
  ts: number;
  requestId: string | null;
}

export interface ProportionStats {
  units: number;
  conversions: number;
}

/** Sufficient statistics of a per-unit (or per-request) quantity. */
export interface MeanStats {
  n: number;
  sum: number;
  sumSquares: number;
}

export interface VariantTotals {
  variant: string;
  /** units whose first non-forced exposure was assigned to this variant (intention to treat) */
  units: number;
  /** non-forced requests assigned to this variant */
  requests: number;
  /** requests answered by another variant (fallback) */
  fallbackRequests: number;
}

/**
 * Everything the report needs, aggregated in SQL. Units are attributed to the variant of their first non-forced
 * exposure; forced exposures are left out of every figure but `forcedRequests`.
 */
export interface ExperimentAggregates {
  experiment: string;
  variants: VariantTotals[];
  /** variants the store has units or requests for that the caller did not name (renamed or removed from the config) */
  otherVariants?: VariantTotals[];
  /** when the store holds nothing of this experiment, which never ran on it: experiments it has exposures of (at most 10) */
  otherExperiments?: string[];
  /** units exposed (non-forced) to more than one assigned variant */
  multiVariantUnits: number;
  forcedRequests: number;
  /** one entry per configured metric, in config order */
  metrics: MetricAggregate[];
  firstExposureTs: number | null;
  lastExposureTs: number | null;
  /**
   * With `periodStarts`: per period, oldest first, from `from` (null: the start) to the next period's `from`, the
   * metrics (config order): conversion and mean over the units first exposed in it, latency and error rate over the
   * requests served in it (by minute; quantiles 0).
   */
  strata?: { from: number | null; metrics: MetricAggregate[] }[];
}

export interface AggregateOptions {
  /** sorted, distinct, safe integers (ms since epoch); at most MAX_PERIOD_STARTS */
  periodStarts?: readonly number[];
}

/** Conversion and mean aggregates also carry `unexposedUnits`: units that sent the metric's event but have no non-forced
 * exposure, whose events count nowhere; and `earlyEventUnits`: exposed units that sent it before their first
 * exposure, whose early events count nowhere (the stores always set both). */
export type MetricAggregate =
  /** units that sent the event within windowMs after their first exposure (no window: any time after) */
  | { name: string; kind: "conversion"; byVariant: Record<string, ProportionStats>; unexposedUnits?: number; earlyEventUnits?: number }
  /** per exposed unit: the sum of the event's values within the window (0 for units without events) */
  | { name: string; kind: "mean"; byVariant: Record<string, MeanStats>; unexposedUnits?: number; earlyEventUnits?: number }
  /** per request latency in ms, served by the assigned variant; p50/p99 are approximate */
  | { name: string; kind: "latency"; byVariant: Record<string, MeanStats & { p50: number; p99: number }> }
  /** per request: 1 when status >= 500 (or the request failed), else 0 */
  | { name: string; kind: "error_rate"; byVariant: Record<string, ProportionStats> };

/** A variant's new units and conversions (by metric) before some minute: see Store.totalsBefore. */
export interface CarriedTotals {
  newUnits: number;
  conversions: Record<string, number>;
}

/** One minute of one variant, for the dashboard's charts. */
export interface MinuteBucket {
  /** ms since epoch, start of the minute */
  minute: number;
  variant: string;
  requests: number;
  errors: number;
  latencySumMs: number;
  /** the requests latencySumMs is over: those the assigned variant answered itself (not fallbacks, not forced) */
  latencyCount: number;
  /** new units (first exposure in this minute) */
  newUnits: number;
  /** conversions by metric name (units converting in this minute, attributed to their first variant) */
  conversions: Record<string, number>;
}

/** A read in the stores' shared SQL (`?` placeholders), as the report's aggregation runs them: the result's rows. */
export type Query = (sql: string, params: unknown[]) => Promise<Record<string, unknown>[]>;

export interface Store {
  /** Create or upgrade the schema (versioned migrations). */
  init(): Promise<void>;
  /** After an init that upgraded an existing store: the schema version it had (the gateway says so at start). */
  readonly migratedFrom?: number;
  /**
   * Append exposures, all or nothing; the caller batches. A batch with a row `exposureProblem` refuses is refused
   * whole, before anything is written, with a StoreError coded ABGATE_ERR_STORE_INVALID_EXPOSURE (the batcher then
   * drops that row and writes the rest).
   */
  writeExposures(rows: Exposure[]): Promise<void>;
  /**
   * `writeExposures` for rows by column, without an object each (optional: a store without it is handed objects).
   * The block is the caller's again once the promise settles.
   */
  writeExposureBlock?(block: ExposureBlock): Promise<void>;
  /** Append outcome events in one transaction; resolves only once they are durable (fsync'd / committed). */
  writeEvents(rows: OutcomeEvent[]): Promise<void>;
  /** Small key/value state per experiment (strategy ranges and weights) that must survive restarts. */
  getState(experiment: string, key: string): Promise<string | null>;
  setState(experiment: string, key: string, value: string): Promise<void>;
  /** Sufficient statistics for the report. */
  /**
   * `periodStarts`: times (ms since epoch) that cut the experiment into periods by the units' first exposure (a weight
   * change starts one); the conversion and mean metrics then come per period too, in `strata`.
   */
  aggregate(experiment: string, variants: string[], metrics: MetricConfig[], options?: AggregateOptions): Promise<ExperimentAggregates>;
  /** Per-minute series for the dashboard, from `sinceMs` on. */
  minutes(experiment: string, metrics: MetricConfig[], sinceMs: number): Promise<MinuteBucket[]>;
  /**
   * Per variant, what `minutes` leaves out before `beforeMs` (its minute): the units first exposed before it, and
   * for each conversion metric the units whose first counting event came before it. With a window's buckets they add
   * up to the whole experiment's, so the dashboard's cumulative rates start where the experiment was.
   */
  totalsBefore(experiment: string, metrics: MetricConfig[], beforeMs: number): Promise<Record<string, CarriedTotals>>;
  /**
   * Runs `fn`'s queries on one snapshot of the store, as `aggregate` and `minutes` do theirs: a write that commits
   * meanwhile is seen by none of them (so their figures agree: no variant with more conversions than units). `fn`
   * must not wait for a write of this store: on some stores the snapshot holds the writes back.
   */
  snapshot<T>(fn: (query: Query) => Promise<T>): Promise<T>;
  /** Counts so far for GET /v1/experiment. */
  counts(experiment: string): Promise<{ exposures: number; events: number }>;
  /**
   * The `limit` units first exposed most recently (forced requests aside), oldest first, each with the variant it
   * was first assigned: the bandit's memory of seen units, reloaded at start.
   */
  recentUnits(experiment: string, limit: number): Promise<[unit: string, variant: string][]>;
  close(): Promise<void>;
}
