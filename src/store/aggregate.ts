import type { MetricConfig } from "../config/index.ts";
import { InvalidArgumentError } from "../errors.ts";
import { histogramQuantile, MINUTE_MS, minuteOf } from "./rollup.ts";
import type { AggregateOptions, CarriedTotals, ExperimentAggregates, MeanStats, MetricAggregate, MinuteBucket, ProportionStats, Query } from "./types.ts";

/**
 * The report's and the dashboard's queries, written once in the SQL both SQLite and PostgreSQL accept (`?`
 * placeholders; the PostgreSQL store numbers them). Both stores run exactly this code, so they agree by construction
 * and the shared conformance suite checks the dialect details.
 *
 * Semantics (intention to treat):
 * - a unit belongs to the variant of its first non-forced exposure (`units` rollup); forced exposures count only
 *   towards `forcedRequests`;
 * - an event counts for a unit when `firstTs <= event.ts <= firstTs + windowMs` (both ends inclusive; no window:
 *   any time at or after the first exposure). Events before the first exposure, and events of units never exposed,
 *   do not count;
 * - a `mean` metric is, per exposed unit, the sum of the values of its counting events; an event without a value
 *   adds 0; units without events count as 0;
 * - latency is over non-forced requests that the assigned variant answered itself (not fallbacks); error rate is
 *   over all non-forced requests assigned to the variant, an error being status 0 (no answer) or >= 500.
 */
export type { Query } from "./types.ts";

/** Stands in for "no window" in `e.ts <= u.first_ts + W`: 10^15 ms is about 31,700 years. */
const NO_WINDOW_MS = 1_000_000_000_000_000;

function windowOf(m: { windowMs?: number | undefined }): number {
  const w = m.windowMs ?? NO_WINDOW_MS;
  // Windows are inlined into the SQL as literals (so PostgreSQL needs no parameter type inference): integers only.
  if (!Number.isSafeInteger(w) || w < 0) throw new InvalidArgumentError(`windowMs must be a non-negative integer, got ${w}`);
  return w;
}

const num = (v: unknown): number => (v === null || v === undefined ? 0 : Number(v));

/*
 * Sums of doubles that cannot raise on PostgreSQL. IEEE 754 arithmetic (SQLite's, and JS's) rounds an overflowing
 * product or sum to ±Infinity and an underflowing product to 0; PostgreSQL's float8 operators, SUM's included, raise
 * "value out of range: overflow" / "underflow" instead (float8_pl and float8_mul in src/include/utils/float.h call
 * float_overflow_error when a result is infinite but no operand was, and float_underflow_error when a product of
 * non-zero operands is 0). Events are never deleted, so one such row would fail every report from then on. Hence:
 * - a square that would underflow is taken as 0 up front: |m| < 1e-160 gives 0. (1e-160)² = 1e-320 is still a
 *   subnormal above 0, so no larger |m| squares to exactly 0, the one case PostgreSQL raises on. Squares below
 *   1e-320 are all this drops;
 * - terms are split at a magnitude below which their sum cannot reach DBL_MAX (~2^1024) even over 2^63 rows, and
 *   the terms above it are summed scaled by 2^-600, which keeps them and their sum finite and normal (a row that is
 *   already Infinity stays so, and does not raise: PostgreSQL raises only when no operand was infinite). JS scales
 *   that sum back (`plainSum`, `sumOfSquares`): the product is Infinity exactly when the true sum overflows, as in
 *   IEEE arithmetic. Multiplying by a power of two is exact while values stay normal, which the band limits
 *   guarantee, so otherwise the figures are those of plain IEEE sums up to the order of the additions.
 * Both stores run this SQL, so they still agree by construction. The literals are the shortest decimals of the
 * exact powers of two, and both databases parse them to exactly those doubles (the tests check the results).
 */
/** 2^-600 */
const SCALE = "2.409919865102884e-181";
/** 2^600: applied twice to a scaled sum of squares, once to a scaled plain sum */
const SCALE_BACK = 2 ** 600;
/** 2^450: squares up to 2^900, summed over 2^63 rows, stay below 2^963; above it, (m·2^-600)² lies in (2^-300, 2^848] */
const SQUARE_SPLIT = "2.9073548971824276e+135";
/** 2^960: values up to it, summed over 2^63 rows, stay below 2^1023; above it, x·2^-600 lies in (2^360, 2^424] */
const SUM_SPLIT = "9.7453140114e+288";
/** squares of smaller magnitudes would underflow (see above) */
const SQUARE_ZERO_BELOW = "1e-160";

/**
 * Two columns, `${alias}_lo` and `${alias}_hi`, whose combination by `plainSum` is SUM(x), without raising. (A CASE
 * without ELSE gives NULL, which SUM skips; a column of NULLs sums to NULL, read as 0.)
 */
function safeSumSql(x: string, alias: string): string {
  return `SUM(CASE WHEN ABS(${x}) <= ${SUM_SPLIT} THEN ${x} END) AS ${alias}_lo,
          SUM(CASE WHEN ABS(${x}) > ${SUM_SPLIT} THEN ${x} * ${SCALE} END) AS ${alias}_hi`;
}
function plainSum(r: Record<string, unknown> | undefined, alias: string): number {
  return num(r?.[`${alias}_lo`]) + num(r?.[`${alias}_hi`]) * SCALE_BACK;
}

/** Two columns whose combination by `sumOfSquares` is SUM(m * m), without raising. */
function safeSumSquaresSql(m: string, alias: string): string {
  return `SUM(CASE WHEN ABS(${m}) BETWEEN ${SQUARE_ZERO_BELOW} AND ${SQUARE_SPLIT} THEN ${m} * ${m} END) AS ${alias}_lo,
          SUM(CASE WHEN ABS(${m}) > ${SQUARE_SPLIT} THEN (${m} * ${SCALE}) * (${m} * ${SCALE}) END) AS ${alias}_hi`;
}
function sumOfSquares(r: Record<string, unknown> | undefined, alias: string): number {
  return num(r?.[`${alias}_lo`]) + num(r?.[`${alias}_hi`]) * SCALE_BACK * SCALE_BACK;
}

type EventMetric = Extract<MetricConfig, { kind: "conversion" | "mean" }>;

/** Most period starts an aggregate takes (the report keeps 30 weight periods; each adds at most two starts, and the current one one). */
export const MAX_PERIOD_STARTS = 64;

/**
 * The period of a first-exposure time column, as SQL both databases run: 0 before the first start, i from the i-th
 * on. The starts are inlined as integer literals, as the windows are (checked: sorted, distinct, safe integers).
 */
function periodSql(column: string, starts: readonly number[]): string {
  if (starts.length === 0) return "0";
  return `CASE ${starts.map((t, i) => `WHEN ${column} < ${t} THEN ${i}`).join(" ")} ELSE ${starts.length} END`;
}

function checkPeriodStarts(starts: readonly number[]): void {
  if (starts.length > MAX_PERIOD_STARTS) throw new InvalidArgumentError(`periodStarts: at most ${MAX_PERIOD_STARTS}, got ${starts.length}`);
  starts.forEach((t, i) => {
    if (!Number.isSafeInteger(t) || (i > 0 && t <= starts[i - 1]!)) throw new InvalidArgumentError(`periodStarts must be sorted, distinct safe integers; got ${starts.join(", ")}`);
  });
}

/** Sufficient statistics for the report (see the module comment for what counts). */
export async function aggregateExperiment(
  query: Query,
  experiment: string,
  variants: string[],
  metrics: MetricConfig[],
  options: AggregateOptions = {},
): Promise<ExperimentAggregates> {
  const starts = options.periodStarts ?? [];
  checkPeriodStarts(starts);
  const stratified = starts.length > 0;
  const unitRows = await query(
    `SELECT first_variant AS variant, ${periodSql("first_ts", starts)} AS period, COUNT(*) AS units, SUM(multi) AS multi FROM units WHERE experiment = ? GROUP BY 1, 2`,
    [experiment],
  );
  const reqRows = await query(
    `SELECT variant, SUM(requests) AS requests, SUM(fallback) AS fallback, SUM(forced) AS forced, SUM(errors) AS errors,
            SUM(latency_n) AS latency_n, ${safeSumSql("latency_sum", "latency_sum")}, ${safeSumSql("latency_sum_sq", "latency_sum_sq")},
            MIN(min_ts) AS min_ts, MAX(max_ts) AS max_ts
       FROM minute_stats WHERE experiment = ? GROUP BY variant`,
    [experiment],
  );
  // Per period too, when asked: the per-request metrics by the minute of the request (a minute that a period starts
  // within counts for the period before), since a request's latency and errors are of the time it was served.
  const needRequestStrata = stratified && metrics.some((m) => m.kind === "latency" || m.kind === "error_rate");
  const reqPeriodRows = needRequestStrata
    ? await query(
        `SELECT variant, ${periodSql("minute", starts)} AS period, SUM(requests) AS requests, SUM(errors) AS errors,
                SUM(latency_n) AS latency_n, ${safeSumSql("latency_sum", "latency_sum")}, ${safeSumSql("latency_sum_sq", "latency_sum_sq")}
           FROM minute_stats WHERE experiment = ? GROUP BY 1, 2`,
        [experiment],
      )
    : [];
  /** request rows by period, then variant */
  const periodRequests = starts.map(() => new Map<string, Record<string, unknown>>()).concat([new Map<string, Record<string, unknown>>()]);
  for (const r of reqPeriodRows) periodRequests[num(r.period)]!.set(String(r.variant), r);
  const units = new Map<string, number>();
  /** units by period, then variant */
  const periodUnits = starts.map(() => new Map<string, number>()).concat([new Map<string, number>()]);
  let multiVariantUnits = 0;
  for (const r of unitRows) {
    const v = String(r.variant);
    units.set(v, (units.get(v) ?? 0) + num(r.units));
    periodUnits[num(r.period)]!.set(v, num(r.units));
    multiVariantUnits += num(r.multi);
  }
  const req = new Map<string, Record<string, unknown>>();
  let forcedRequests = 0;
  let firstExposureTs: number | null = null;
  let lastExposureTs: number | null = null;
  for (const r of reqRows) {
    req.set(String(r.variant), r);
    forcedRequests += num(r.forced);
    if (r.min_ts !== null && r.min_ts !== undefined) {
      const t = num(r.min_ts);
      if (firstExposureTs === null || t < firstExposureTs) firstExposureTs = t;
    }
    if (r.max_ts !== null && r.max_ts !== undefined) {
      const t = num(r.max_ts);
      if (lastExposureTs === null || t > lastExposureTs) lastExposureTs = t;
    }
  }

  const out: MetricAggregate[] = [];
  const eventResults = await eventMetricStats(query, experiment, metrics, starts);
  let histByVariant: Map<string, { bucket: number; count: number }[]> | null = null;
  for (const m of metrics) {
    switch (m.kind) {
      case "conversion": {
        const byVariant: Record<string, ProportionStats> = {};
        const res = eventResults.get(m.name)!;
        for (const v of variants) byVariant[v] = { units: units.get(v) ?? 0, conversions: res.byVariant.get(v)?.sum ?? 0 };
        out.push({ name: m.name, kind: "conversion", byVariant, unexposedUnits: res.unexposedUnits, earlyEventUnits: res.earlyEventUnits });
        break;
      }
      case "mean": {
        const byVariant: Record<string, MeanStats> = {};
        const res = eventResults.get(m.name)!;
        for (const v of variants) {
          const r = res.byVariant.get(v);
          byVariant[v] = { n: units.get(v) ?? 0, sum: r?.sum ?? 0, sumSquares: r?.sumSquares ?? 0 };
        }
        out.push({ name: m.name, kind: "mean", byVariant, unexposedUnits: res.unexposedUnits, earlyEventUnits: res.earlyEventUnits });
        break;
      }
      case "latency": {
        histByVariant ??= await latencyHistograms(query, experiment);
        const byVariant: Record<string, MeanStats & { p50: number; p99: number }> = {};
        for (const v of variants) {
          const r = req.get(v);
          const hist = histByVariant.get(v) ?? [];
          byVariant[v] = { ...latencyStats(r), p50: histogramQuantile(hist, 0.5), p99: histogramQuantile(hist, 0.99) };
        }
        out.push({ name: m.name, kind: "latency", byVariant });
        break;
      }
      case "error_rate": {
        const byVariant: Record<string, ProportionStats> = {};
        for (const v of variants) {
          byVariant[v] = errorStats(req.get(v));
        }
        out.push({ name: m.name, kind: "error_rate", byVariant });
        break;
      }
    }
  }

  // Nothing of this experiment, and it never ran here (a gateway saves its strategy's state when it starts): say
  // what the store does hold, since the likeliest cause is a renamed experiment or another experiment's store.
  // (An experiment that runs but has no exposures yet is not told so. Asked only then: two small lookups.)
  const neverRan =
    units.size === 0 && req.size === 0 && (await query(`SELECT experiment FROM state WHERE experiment = ? LIMIT 1`, [experiment])).length === 0;
  const otherExperiments = neverRan
    ? (await query(`SELECT experiment FROM counters WHERE experiment <> ? AND exposures > 0 ORDER BY experiment LIMIT 10`, [experiment])).map((r) => String(r.experiment))
    : [];
  const totals = (v: string) => ({ variant: v, units: units.get(v) ?? 0, requests: num(req.get(v)?.requests), fallbackRequests: num(req.get(v)?.fallback) });
  const named = new Set(variants);
  const others = [...new Set([...units.keys(), ...req.keys()])].filter((v) => !named.has(v)).sort();
  // Per period: the conversion and mean metrics over the units first exposed in it; latency and error rate over the
  // requests served in it (by minute).
  const strata = stratified
    ? periodUnits.map((inPeriod, period) => ({
        from: period === 0 ? null : starts[period - 1]!,
        metrics: metrics.flatMap((m): MetricAggregate[] => {
          const inPeriodRequests = periodRequests[period]!;
          if (m.kind === "latency") {
            // (quantiles are kept for the whole run only; a period's are not asked for)
            const byVariant = Object.fromEntries(variants.map((v) => [v, { ...latencyStats(inPeriodRequests.get(v)), p50: 0, p99: 0 }]));
            return [{ name: m.name, kind: "latency", byVariant }];
          }
          if (m.kind === "error_rate") {
            const byVariant = Object.fromEntries(variants.map((v) => [v, errorStats(inPeriodRequests.get(v))]));
            return [{ name: m.name, kind: "error_rate", byVariant }];
          }
          const res = eventResults.get(m.name)!;
          const stats = (v: string) => res.byPeriod[period]?.get(v);
          if (m.kind === "conversion") {
            const byVariant = Object.fromEntries(variants.map((v) => [v, { units: inPeriod.get(v) ?? 0, conversions: stats(v)?.sum ?? 0 }]));
            return [{ name: m.name, kind: "conversion", byVariant, unexposedUnits: 0, earlyEventUnits: 0 }];
          }
          const byVariant = Object.fromEntries(variants.map((v) => [v, { n: inPeriod.get(v) ?? 0, sum: stats(v)?.sum ?? 0, sumSquares: stats(v)?.sumSquares ?? 0 }]));
          return [{ name: m.name, kind: "mean", byVariant, unexposedUnits: 0, earlyEventUnits: 0 }];
        }),
      }))
    : undefined;
  return {
    experiment,
    variants: variants.map(totals),
    otherVariants: others.map(totals),
    otherExperiments,
    multiVariantUnits,
    forcedRequests,
    metrics: out,
    firstExposureTs,
    lastExposureTs,
    ...(strata ? { strata } : {}),
  };
}

/** A minute_stats sum's latency as MeanStats (over requests). */
function latencyStats(r: Record<string, unknown> | undefined): MeanStats {
  return { n: num(r?.latency_n), sum: plainSum(r, "latency_sum"), sumSquares: plainSum(r, "latency_sum_sq") };
}

/** A minute_stats sum's errors as ProportionStats (over requests). */
function errorStats(r: Record<string, unknown> | undefined): ProportionStats {
  return { units: num(r?.requests), conversions: num(r?.errors) };
}

async function latencyHistograms(query: Query, experiment: string): Promise<Map<string, { bucket: number; count: number }[]>> {
  const rows = await query(
    `SELECT variant, bucket, count FROM latency_hist WHERE experiment = ? ORDER BY variant, bucket`,
    [experiment],
  );
  const out = new Map<string, { bucket: number; count: number }[]>();
  for (const r of rows) {
    const v = String(r.variant);
    let list = out.get(v);
    if (list === undefined) out.set(v, (list = []));
    list.push({ bucket: num(r.bucket), count: num(r.count) });
  }
  return out;
}

interface EventMetricStats {
  byVariant: Map<string, { sum: number; sumSquares: number }>;
  /** the same by period of first exposure (one map when not stratified) */
  byPeriod: Map<string, { sum: number; sumSquares: number }>[];
  /** units that sent the metric's event but have no non-forced exposure */
  unexposedUnits: number;
  /** exposed units that sent the event before their first exposure: those events count nowhere */
  earlyEventUnits: number;
}

/**
 * One pass over the events of each event name serves every conversion and mean metric on that event: per unit the
 * inner query computes a 0/1 flag (conversion) or a windowed sum (mean) for each metric; the outer query sums those
 * per first variant. Result: metric name -> variant -> {sum, sumSquares} of the per-unit column (sumSquares for
 * mean metrics only; 0 for conversions, whose report needs none).
 */
async function eventMetricStats(
  query: Query,
  experiment: string,
  metrics: MetricConfig[],
  starts: readonly number[],
): Promise<Map<string, EventMetricStats>> {
  const byEvent = new Map<string, EventMetric[]>();
  for (const m of metrics) {
    if (m.kind !== "conversion" && m.kind !== "mean") continue;
    let list = byEvent.get(m.event);
    if (list === undefined) byEvent.set(m.event, (list = []));
    list.push(m);
  }
  const result = new Map<string, EventMetricStats>();
  for (const [event, list] of byEvent) {
    const inner: string[] = [];
    const outer: string[] = [];
    list.forEach((m, i) => {
      const w = windowOf(m);
      const inWindow = w === NO_WINDOW_MS ? "e.ts >= u.first_ts" : `e.ts >= u.first_ts AND e.ts <= u.first_ts + ${w}`;
      // A conversion's flag needs no squares: its variance follows from the count. A mean's SUM(m) needs no guard:
      // the API caps |value| at 1e150 (admin/events.ts), so even 2^63 events sum to under 2^562.
      if (m.kind === "conversion") {
        inner.push(`MAX(CASE WHEN ${inWindow} THEN 1 ELSE 0 END) AS m${i}`);
        outer.push(`SUM(m${i}) AS s${i}`);
      } else {
        inner.push(`SUM(CASE WHEN ${inWindow} THEN COALESCE(e.value, 0) ELSE 0 END) AS m${i}`);
        outer.push(`SUM(m${i}) AS s${i}`, safeSumSquaresSql(`m${i}`, `q${i}`));
      }
    });
    const rows = await query(
      // Grouping by the unit alone (the variant is the same on all its rows, hence MAX) lets SQLite aggregate in
      // the covering index's order instead of sorting every event into a temporary B-tree. The LEFT JOIN keeps the
      // units that were never exposed, as one row of variant NULL: each of their columns is 0 (e.ts >= NULL is not
      // true), and its count is what dataQuality reports. It visits no more events than the inner join did, which
      // had to look every event's unit up too.
      // (the period, from the unit's first exposure: one group per variant when there are no period starts)
      `SELECT variant, ${periodSql("first_ts", starts)} AS period, COUNT(*) AS units, SUM(early) AS early_units, ${outer.join(", ")} FROM (
         SELECT MAX(u.first_variant) AS variant, MAX(u.first_ts) AS first_ts, MAX(CASE WHEN e.ts < u.first_ts THEN 1 ELSE 0 END) AS early, ${inner.join(", ")}
           FROM events e LEFT JOIN units u ON u.experiment = ? AND u.unit = e.unit
          WHERE e.experiment = ? AND e.event = ?
          GROUP BY e.unit
       ) pu GROUP BY 1, 2`,
      [experiment, experiment, event],
    );
    const unexposed = num(rows.find((r) => r.variant === null || r.variant === undefined)?.units);
    // (a client clock behind the server's, when events carry their own ts: each such unit may lose a conversion)
    const early = rows.reduce((sum, r) => sum + (r.variant === null || r.variant === undefined ? 0 : num(r.early_units)), 0);
    list.forEach((m, i) => {
      const perVariant = new Map<string, { sum: number; sumSquares: number }>();
      const byPeriod = starts.map(() => new Map<string, { sum: number; sumSquares: number }>()).concat([new Map()]);
      for (const r of rows) {
        if (r.variant === null || r.variant === undefined) continue;
        const v = String(r.variant);
        const stats = { sum: num(r[`s${i}`]), sumSquares: m.kind === "mean" ? sumOfSquares(r, `q${i}`) : 0 };
        byPeriod[num(r.period)]!.set(v, stats);
        const total = perVariant.get(v);
        perVariant.set(v, total === undefined ? { ...stats } : { sum: total.sum + stats.sum, sumSquares: total.sumSquares + stats.sumSquares });
      }
      result.set(m.name, { byVariant: perVariant, byPeriod, unexposedUnits: unexposed, earlyEventUnits: early });
    });
  }
  return result;
}

/**
 * Per-minute series from `sinceMs` on (whole minutes: the minute holding `sinceMs` is included). Request figures
 * come from the `minute_stats` rollup; new units from the `units` rollup by first exposure; conversions are units
 * whose first counting event falls in the minute. For a range that starts after the first exposure, the conversion
 * query only visits units with an event since `sinceMs` (index on (experiment, event, ts)), so the usual dashboard
 * view of the last minutes or hours stays cheap however long the experiment has run.
 */
export async function minuteSeries(
  query: Query,
  experiment: string,
  metrics: MetricConfig[],
  sinceMs: number,
): Promise<MinuteBucket[]> {
  const since = minuteOf(sinceMs);
  const buckets = new Map<string, MinuteBucket>();
  const conversionMetrics = metrics.filter((m): m is Extract<MetricConfig, { kind: "conversion" }> => m.kind === "conversion");
  const bucket = (minute: number, variant: string): MinuteBucket => {
    const key = `${minute}\u0000${variant}`;
    let b = buckets.get(key);
    if (b === undefined) {
      const conversions: Record<string, number> = {};
      for (const m of conversionMetrics) conversions[m.name] = 0;
      b = { minute, variant, requests: 0, errors: 0, latencySumMs: 0, latencyCount: 0, newUnits: 0, conversions };
      buckets.set(key, b);
    }
    return b;
  };

  const reqRows = await query(
    `SELECT minute, variant, requests, errors, latency_n, latency_sum FROM minute_stats
      WHERE experiment = ? AND minute >= ? AND requests > 0`,
    [experiment, since],
  );
  for (const r of reqRows) {
    const b = bucket(num(r.minute), String(r.variant));
    b.requests += num(r.requests);
    b.errors += num(r.errors);
    b.latencySumMs += num(r.latency_sum);
    b.latencyCount += num(r.latency_n);
  }
  const unitRows = await query(
    `SELECT (first_ts / ${MINUTE_MS}) * ${MINUTE_MS} AS minute, first_variant AS variant, COUNT(*) AS n
       FROM units WHERE experiment = ? AND first_ts >= ? GROUP BY 1, 2`,
    [experiment, since],
  );
  for (const r of unitRows) bucket(num(r.minute), String(r.variant)).newUnits += num(r.n);

  // A range that starts before the first exposure covers every unit: one pass over the events in unit order is
  // then cheaper than first collecting candidate units.
  let wholeExperiment = true;
  if (conversionMetrics.length > 0) {
    const first = await query(`SELECT MIN(first_ts) AS t FROM units WHERE experiment = ?`, [experiment]);
    const t = first[0]?.t;
    wholeExperiment = t === null || t === undefined || since <= num(t);
  }
  for (const m of conversionMetrics) {
    const w = windowOf(m);
    const rows = wholeExperiment
      ? await query(
          `SELECT (t / ${MINUTE_MS}) * ${MINUTE_MS} AS minute, variant, COUNT(*) AS n FROM (${firstConversionsSql(w)}) x WHERE t >= ? GROUP BY 1, 2`,
          [experiment, experiment, m.event, since],
        )
      : await query(
          `SELECT (t / ${MINUTE_MS}) * ${MINUTE_MS} AS minute, variant, COUNT(*) AS n FROM (
             SELECT u.first_variant AS variant, MIN(e.ts) AS t
               FROM (SELECT DISTINCT unit FROM events WHERE experiment = ? AND event = ? AND ts >= ?) c
               JOIN units u ON u.experiment = ? AND u.unit = c.unit
               JOIN events e ON e.experiment = ? AND e.event = ? AND e.unit = c.unit
                            AND e.ts >= u.first_ts AND e.ts <= u.first_ts + ${w}
              GROUP BY c.unit, u.first_variant
           ) x WHERE t >= ? GROUP BY 1, 2`,
          [experiment, m.event, since, experiment, experiment, m.event, since],
        );
    for (const r of rows) bucket(num(r.minute), String(r.variant)).conversions[m.name]! += num(r.n);
  }

  return [...buckets.values()].sort((a, b) => a.minute - b.minute || (a.variant < b.variant ? -1 : a.variant > b.variant ? 1 : 0));
}

/**
 * Each converting unit's first counting event (within `windowMs` of its first exposure) and its first variant, as
 * `variant, t`; parameters: experiment, experiment, event. Shared by minuteSeries and totalsBefore, whose counts must
 * add up.
 */
function firstConversionsSql(windowMs: number): string {
  return `SELECT MAX(u.first_variant) AS variant, MIN(e.ts) AS t
            FROM events e JOIN units u ON u.experiment = ? AND u.unit = e.unit
           WHERE e.experiment = ? AND e.event = ? AND e.ts >= u.first_ts AND e.ts <= u.first_ts + ${windowMs}
           GROUP BY e.unit`;
}

/** Store.totalsBefore through a Query: the complement of minuteSeries(since = beforeMs), by the same rules. */
export async function totalsBefore(query: Query, experiment: string, metrics: MetricConfig[], beforeMs: number): Promise<Record<string, CarriedTotals>> {
  const before = minuteOf(beforeMs);
  const conversionMetrics = metrics.filter((m): m is Extract<MetricConfig, { kind: "conversion" }> => m.kind === "conversion");
  const out: Record<string, CarriedTotals> = {};
  // (own keys only: a variant may be named "constructor"; none can be "__proto__", which starts with "_")
  const of = (variant: string): CarriedTotals =>
    Object.hasOwn(out, variant) ? out[variant]! : (out[variant] = { newUnits: 0, conversions: Object.fromEntries(conversionMetrics.map((m) => [m.name, 0])) });
  const units = await query(`SELECT first_variant AS variant, COUNT(*) AS n FROM units WHERE experiment = ? AND first_ts < ? GROUP BY 1`, [experiment, before]);
  for (const r of units) of(String(r.variant)).newUnits += num(r.n);
  for (const m of conversionMetrics) {
    const w = windowOf(m);
    // (minuteSeries' whole-experiment query, the other side of its cut)
    const rows = await query(`SELECT variant, COUNT(*) AS n FROM (${firstConversionsSql(w)}) x WHERE t < ? GROUP BY 1`, [experiment, experiment, m.event, before]);
    for (const r of rows) of(String(r.variant)).conversions[m.name]! += num(r.n);
  }
  return out;
}

/** Counts for GET /v1/experiment, from the counters maintained on write. */
export async function experimentCounts(query: Query, experiment: string): Promise<{ exposures: number; events: number }> {
  const rows = await query(`SELECT exposures, events FROM counters WHERE experiment = ?`, [experiment]);
  return { exposures: num(rows[0]?.exposures), events: num(rows[0]?.events) };
}

/**
 * Store.recentUnits' query: newest first from the (experiment, first_ts) index, which covers the unit too. Ties on
 * first_ts go by the unit's bytes, as SQLite compares text; PostgreSQL compares by the database's collation unless
 * told `COLLATE "C"` (RECENT_UNITS_SQL_PG), and picked other units than SQLite at the limit (en_US puts "a" before "B").
 */
export const RECENT_UNITS_SQL = `SELECT unit, first_variant FROM units WHERE experiment = ? ORDER BY first_ts DESC, unit DESC LIMIT ?`;
export const RECENT_UNITS_SQL_PG = `SELECT unit, first_variant FROM units WHERE experiment = ? ORDER BY first_ts DESC, unit COLLATE "C" DESC LIMIT ?`;

export function checkRecentUnitsLimit(limit: number): void {
  if (!(Number.isSafeInteger(limit) && limit >= 0)) throw new InvalidArgumentError(`recentUnits: limit must be an integer >= 0, got ${limit}`);
}

/** Store.recentUnits through a Query: the rows, oldest first, as [unit, variant]. */
export async function recentUnits(query: Query, experiment: string, limit: number, sql = RECENT_UNITS_SQL): Promise<[string, string][]> {
  checkRecentUnitsLimit(limit);
  if (limit === 0) return [];
  const rows = await query(sql, [experiment, limit]);
  return rows.reverse().map((r) => [String(r.unit), String(r.first_variant)]);
}

export { MINUTE_MS };
