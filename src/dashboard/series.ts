import type { MetricConfig } from "../config/index.ts";
import type { MinuteBucket } from "../store/types.ts";

export const MINUTE_MS = 60_000;

/** One variant's per-minute sums, aligned with `SeriesBody.minutes` (index i is minute i). */
export interface VariantSeries {
  name: string;
  requests: number[];
  errors: number[];
  latencySumMs: number[];
  /** the requests latencySumMs is over (fallbacks answered for the variant are in `requests`, not here) */
  latencyCount: number[];
  newUnits: number[];
  /** conversions by conversion metric name: units whose first counting event fell in the minute */
  conversions: Record<string, number[]>;
}

/**
 * The body of GET /v1/series: columnar so that a week of minutes (10,080 points) per variant stays a compact JSON
 * and maps straight onto uPlot's `[xs, ...ys]` data without reshaping. Sums, not rates, so that the page can merge
 * incremental fetches and compute cumulative rates itself.
 */
export interface SeriesBody {
  experiment: string;
  stepMs: number;
  /** start of each minute, ms since epoch, ascending, gaps filled */
  minutes: number[];
  variants: VariantSeries[];
  metrics: { name: string; kind: string }[];
  /** true when older minutes were left out to stay within `maxMinutes` */
  truncated: boolean;
  /** the server's clock when it answered: minutes up to this one without a bucket had no traffic */
  nowMs?: number;
  /** asked for with `carried=1`: per variant, the new units and conversions before the first minute asked for */
  carried?: Record<string, { newUnits: number; conversions: Record<string, number> }>;
}

/** Metric kinds whose per-minute `conversions` the store reports (see Store.minutes). */
const EVENT_KINDS = new Set(["conversion"]);

/**
 * Turns the store's sparse per-minute, per-variant buckets into dense columns. Minutes without a bucket from the
 * first one up to the current minute (`nowMs`) are filled with zeros: a minute with no bucket is a minute with no
 * traffic, and a dense x axis keeps uPlot's index-based cursor and gaps honest. Without the minutes after the last
 * bucket, traffic that stopped looked like traffic going on at its last rate. Only the newest `maxMinutes` are kept.
 */
export function toSeries(
  experiment: string,
  variantNames: readonly string[],
  metrics: readonly MetricConfig[],
  buckets: readonly MinuteBucket[],
  { maxMinutes = 20_160, nowMs }: { maxMinutes?: number; nowMs?: number } = {},
): SeriesBody {
  const eventMetrics = metrics.filter((m) => EVENT_KINDS.has(m.kind)).map((m) => m.name);
  const body: SeriesBody = {
    experiment,
    stepMs: MINUTE_MS,
    minutes: [],
    variants: [],
    metrics: metrics.map((m) => ({ name: m.name, kind: m.kind })),
    truncated: false,
    ...(nowMs !== undefined ? { nowMs } : {}),
  };
  // Minutes after the server's now (an event stamped by a client clock that runs ahead, up to an hour) are left for
  // later: on the axis they zero-filled the minutes up to them, and the page's next fetches, resuming from its last
  // minute, never asked for those minutes again (the charts looked as if traffic had stopped).
  if (nowMs !== undefined) {
    const nowMinute = floorMinute(nowMs);
    buckets = buckets.filter((b) => floorMinute(b.minute) <= nowMinute);
  }
  const names = [...variantNames];
  for (const b of buckets) if (!names.includes(b.variant)) names.push(b.variant);
  if (buckets.length === 0) {
    body.variants = names.map((name) => emptyVariant(name, eventMetrics, 0));
    return body;
  }

  let first = Infinity;
  let last = -Infinity;
  for (const b of buckets) {
    const m = floorMinute(b.minute);
    if (m < first) first = m;
    if (m > last) last = m;
  }
  // (not so far that it would truncate minutes with data: a page polling after weeks asleep still gets them)
  if (nowMs !== undefined && floorMinute(nowMs) > last) last = Math.min(floorMinute(nowMs), first + (maxMinutes - 1) * MINUTE_MS);
  if ((last - first) / MINUTE_MS + 1 > maxMinutes) {
    first = last - (maxMinutes - 1) * MINUTE_MS;
    body.truncated = true;
  }
  const length = (last - first) / MINUTE_MS + 1;
  body.minutes = Array.from({ length }, (_, i) => first + i * MINUTE_MS);
  const byName = new Map(names.map((name) => [name, emptyVariant(name, eventMetrics, length)]));

  for (const b of buckets) {
    const i = (floorMinute(b.minute) - first) / MINUTE_MS;
    if (i < 0) continue;
    const v = byName.get(b.variant)!;
    // The store gives one bucket per (minute, variant); adding rather than assigning keeps a duplicate harmless.
    v.requests[i] += b.requests;
    v.errors[i] += b.errors;
    v.latencySumMs[i] += b.latencySumMs;
    v.latencyCount[i] += b.latencyCount;
    v.newUnits[i] += b.newUnits;
    for (const metric of eventMetrics) v.conversions[metric]![i] += b.conversions[metric] ?? 0;
  }
  body.variants = [...byName.values()];
  return body;
}

/** A variant with no traffic yet: zeros in every column (the page uses it too). */
export function emptyVariant(name: string, eventMetrics: readonly string[], length: number): VariantSeries {
  const zeros = () => new Array<number>(length).fill(0);
  return {
    name,
    requests: zeros(),
    errors: zeros(),
    latencySumMs: zeros(),
    latencyCount: zeros(),
    newUnits: zeros(),
    conversions: Object.fromEntries(eventMetrics.map((m) => [m, zeros()])),
  };
}

function floorMinute(ms: number): number {
  return Math.floor(ms / MINUTE_MS) * MINUTE_MS;
}
