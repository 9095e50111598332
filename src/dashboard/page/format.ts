/** Display helpers: every figure on the page goes through one of these so that missing data reads "—". */
import { LIVE_LATENCY_BOUNDS_MS } from "../../proxy/live.ts";
import { normalQuantile } from "../../stats/distributions.ts";
import type { Comparison } from "./types.ts";

const DASH = "—";

const finite = (x: number | null | undefined): x is number => typeof x === "number" && Number.isFinite(x);

export function fmtPct(x: number | null | undefined, digits = 1): string {
  return finite(x) ? `${(x * 100).toFixed(digits)}%` : DASH;
}

/**
 * A traffic share: whole percents when exact ("50%"), else one decimal ("11.1%", "33.3%"), so that nine shares of
 * 11.1% do not read as 11% each, summing to 99.
 */
export function fmtShare(x: number | null | undefined): string {
  if (!finite(x)) return DASH;
  const pct = x * 100;
  return Math.abs(pct - Math.round(pct)) < 1e-9 ? `${Math.round(pct)}%` : `${pct.toFixed(1)}%`;
}

/** A signed percentage, for lifts and differences. */
export function fmtSignedPct(x: number | null | undefined, digits = 1): string {
  return finite(x) ? `${signed(x * 100, digits)}%` : DASH;
}

export function fmtMs(x: number | null | undefined): string {
  if (!finite(x)) return DASH;
  return x >= 100 ? `${Math.round(x)} ms` : `${x.toFixed(1)} ms`;
}

/** The live histogram's last finite edge, and the one before it. */
const LIVE_LAST_BOUND_MS = LIVE_LATENCY_BOUNDS_MS.at(-2)!;
const LIVE_BOUND_BEFORE_LAST_MS = LIVE_LATENCY_BOUNDS_MS.at(-3)!;

/**
 * A live percentile, which is the upper edge of a histogram bucket (src/proxy/live.ts), not a measured time: "≤ 5.0 ms".
 * The last finite edge is also what a percentile past it reads as, so there the honest text is "> 5000 ms".
 */
export function fmtBucketMs(x: number | null | undefined): string {
  if (!finite(x)) return DASH;
  if (x >= LIVE_LAST_BOUND_MS) return `> ${fmtMs(LIVE_BOUND_BEFORE_LAST_MS)}`;
  // (the edges under 1 ms are 0.25 and 0.5: two decimals, or 0.25 would read as 0.3)
  return x < 1 ? `≤ ${x.toFixed(2)} ms` : `≤ ${fmtMs(x)}`;
}

export function fmtNum(x: number | null | undefined, digits = 0): string {
  return finite(x) ? x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : DASH;
}

/** Enough digits to compare against alpha, without pretending precision below 0.001. */
export function fmtP(x: number | null | undefined): string {
  if (!finite(x)) return DASH;
  return x < 0.001 ? "< 0.001" : x.toFixed(3);
}

/** A metric value in its own unit: rates as percentages, latency in ms, means as plain numbers. */
export function fmtValue(kind: string, x: number | null | undefined): string {
  if (kind === "conversion" || kind === "error_rate") return fmtPct(x, 2);
  if (kind === "latency") return fmtMs(x);
  return fmtNum(x, 3);
}

/** A difference in the metric's own unit (percentage points for rates). */
export function fmtDiff(kind: string, x: number | null | undefined): string {
  if (!finite(x)) return DASH;
  const [scaled, digits, unit] = kind === "conversion" || kind === "error_rate" ? [x * 100, 2, " pp"] : kind === "latency" ? [x, 1, " ms"] : [x, 3, ""];
  return `${signed(scaled, digits)}${unit}`;
}

/** "+1.20", "-0.40", and "0.00" rather than "-0.00" for what rounds to zero. */
function signed(x: number, digits: number): string {
  const text = x.toFixed(digits);
  if (Number(text) === 0) return (0).toFixed(digits);
  return x > 0 ? `+${text}` : text;
}

export function fmtCi(ci: readonly (number | null)[] | null | undefined, f: (x: number | null) => string): string {
  if (!ci || ci.length < 2 || !finite(ci[0]) || !finite(ci[1])) return DASH;
  return `[${f(ci[0])}, ${f(ci[1])}]`;
}

export function fmtTime(ms: number | string | null | undefined): string {
  if (ms === null || ms === undefined) return DASH;
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? DASH : d.toLocaleString();
}

/**
 * The (1 − alpha) Wilson score interval of a proportion: the per-variant interval for rate metrics, which the report
 * gives only for differences. Wilson (1927); Agresti & Coull 1998, eq. 2:
 *   (p + z²/2n ± z·sqrt(p(1 − p)/n + z²/4n²)) / (1 + z²/n).
 * Not the Wald interval p ± z·sqrt(p(1 − p)/n), which collapses to [0, 0] for a rate of 0 (no errors yet is not
 * proof of an error rate of exactly 0) and undercovers near 0 and 1, where error rates live.
 */
export function wilsonInterval(p: number | null | undefined, n: number | null | undefined, alpha: number): [number, number] | null {
  if (!finite(p) || !finite(n) || n <= 0 || p < 0 || p > 1) return null;
  const z = -normalQuantile(alpha / 2);
  const z2n = (z * z) / n;
  const center = (p + z2n / 2) / (1 + z2n);
  const half = (z * Math.sqrt((p * (1 - p)) / n + z2n / (4 * n))) / (1 + z2n);
  return [Math.max(0, center - half), Math.min(1, center + half)];
}

/**
 * Which way a significant difference goes for the user: higher is better for conversions and means, lower for
 * latency and errors, and for any metric with a guardrail. The report's `significant` says only that the always-valid interval excludes 0 (green for a
 * treatment significantly slower read as good news).
 */
export function significance(kind: string, c: Pick<Comparison, "significant" | "sequentialCi"> | undefined, guardrailed = false): "better" | "worse" | undefined {
  if (!c?.significant || !c.sequentialCi) return undefined;
  const higher = c.sequentialCi[0] > 0;
  // (a guardrail's limits are on increases: a metric with one is watched for going up, whatever its kind)
  const lowerIsBetter = guardrailed || kind === "latency" || kind === "error_rate";
  return higher !== lowerIsBetter ? "better" : "worse";
}

/**
 * What the x axis covers, for screen readers: the points and the clock times of the first and last. Not "over N
 * minutes": a chart of the report's values has a point per report, not per minute.
 */
export function spanText(xs: readonly number[]): string {
  if (xs.length === 0) return "no points yet";
  const first = xs[0]!;
  const last = xs[xs.length - 1]!;
  // (with the day when the span crosses one: a week of minutes would otherwise read "from 10:13 to 10:12")
  const days = new Date(first * 1000).toDateString() !== new Date(last * 1000).toDateString();
  const at = (s: number) =>
    days
      ? new Date(s * 1000).toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })
      : new Date(s * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  return xs.length === 1 ? `1 point, at ${at(first)}` : `${xs.length} points from ${at(first)} to ${at(last)}`;
}
