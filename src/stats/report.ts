import type { MetricConfig } from "../config/index.ts";
import type { ExperimentAggregates, MeanStats, MetricAggregate, ProportionStats } from "../store/types.ts";
import { fnv1a32 } from "../strategies/fnv.ts";
import { chanceToWin } from "./bayes.ts";
import { chiSquareSf, normalCdf } from "./distributions.ts";
import { meanAndVariance, meanTest, proportionOneSidedIncrease, proportionTest, srmTest, welchOneSidedIncrease } from "./frequentist.ts";
import { adjustPValues } from "./multiple.ts";
import { MIN_STRATUM_UNITS, stratifiedDifference, type StratifiedResult, type Stratum } from "./stratified.ts";
import { sequentialUnitsMore } from "./power.ts";
import { DEFAULT_TAU2_STANDARDIZED, meanIncreaseSequential, mixtureSprt, proportionIncreaseSequential, runningMinimum } from "./sequential.ts";
import type { Correction, Interval, StatsErrorCode } from "./types.ts";

/** SRM is not judged until every arm with weight > 0 has this many units: the χ² approximation needs them. */
export const SRM_MIN_UNITS_PER_VARIANT = 8;
/**
 * The mSPRT here uses each look's estimate of the arms' variances (see compare); with a handful of units that
 * estimate is too noisy to trust, so no sequential p-value is computed below this many units per arm.
 */
export const SEQUENTIAL_MIN_UNITS_PER_VARIANT = 30;
/** Power for the "units still needed" estimate. */
export const PLANNING_POWER = 0.8;

export interface ReportAnalysisConfig {
  alpha: number;
  srmThreshold: number;
  correction: Correction;
  /** mixing variance of the mSPRT in units of the metric's per-unit variance; default DEFAULT_TAU2_STANDARDIZED */
  tau2?: number;
}

export interface ReportInput {
  experiment: string;
  /** config order, the first is the control; `weight` is the current weight */
  variants: { name: string; weight: number }[];
  aggregates: ExperimentAggregates;
  metrics: MetricConfig[];
  analysis: ReportAnalysisConfig;
  /** ms since epoch */
  now: number;
  /**
   * `sequentialState` of the previous report: running minima of the sequential p-values keyed `${metric}/${variant}`,
   * and the running intersections of the always-valid intervals keyed `${metric}/${variant}#lower`, `#upper` and
   * `#alpha` (lower > upper: the intersection is empty), and the guardrails' running minima of their always-valid
   * one-sided p keyed `${metric}/${variant}#guardrail-relative=${limit}` / `#guardrail-absolute=${limit}`, and a
   * fingerprint of each metric's definition keyed `${metric}#definition` (when it changes, that metric's entries are
   * dropped). States saved before the intersections, the guardrail minima or the fingerprints were kept load too;
   * those start at the next look.
   */
  previousSequential?: Record<string, number>;
  /**
   * The assignment strategy. Under "bandit" the weights follow the data (Thompson sampling), so cumulative units are
   * not expected to match any fixed weights and the SRM check is skipped.
   */
  strategy?: string;
  /**
   * Units by variant (first exposure) since `since` (ms since epoch), a time from which the current weights are known
   * to have been in force. When given, the SRM check compares these units, not the cumulative ones, with the current
   * weights, so a weight change earlier in the experiment (a ramp-up) is not mistaken for a sample ratio mismatch.
   */
  srmWindow?: {
    since: number;
    units: Record<string, number>;
    /**
     * Earlier weight periods, each with the weights then in force (any scale) and the units first exposed from
     * `since` (null: the start) to `until` (ms since epoch): each is tested against its own weights too, and the
     * periods' χ² add up (independent units), so a mismatch before a weight change is not hidden by the change.
     */
    earlier?: { since: number | null; until: number; weights: Record<string, number>; units: Record<string, number> }[];
  };
  /**
   * The metric to decide on, when not the first conversion or mean metric: the bandit's `strategy.metric`, which its
   * weights follow (a report deciding on another metric would contradict the weights it shows).
   */
  primaryMetric?: string;
}

/** The running intersection of the always-valid intervals of one comparison; `ci` null: the intersection is empty. */
interface SequentialIntervalState {
  ci: [number, number] | null;
  /** the level the intervals were computed at; a different alpha starts a new intersection */
  alpha: number;
}

export interface VariantSummary {
  name: string;
  weight: number;
  units: number;
  requests: number;
  fallbackRequests: number;
}

export interface SrmSummary {
  pValue: number | null;
  mismatch: boolean;
  /** false while some weighted arm is expected (by its weight) to have fewer than SRM_MIN_UNITS_PER_VARIANT units, or there is one arm */
  judged: boolean;
  chiSquare: number | null;
  df: number | null;
  threshold: number;
  note: string;
  /** why the check was not judged or what it was run on: ADAPTIVE_ALLOCATION (bandit: skipped), SINCE_WEIGHT_CHANGE (units since `since` only) */
  reason?: "ADAPTIVE_ALLOCATION" | "SINCE_WEIGHT_CHANGE";
  /** SINCE_WEIGHT_CHANGE: the start of the units tested */
  since?: string;
  /** earlier weight periods that were tested too (their units against their weights), oldest first */
  periods?: { since: string | null; until: string; pValue: number | null; judged: boolean }[];
}

export type MetricRole = "primary" | "secondary" | "guardrail";

export interface Comparison {
  variant: string;
  units: number;
  value: number | null;
  absolute: Interval;
  relative: Interval;
  /** fixed-horizon two-sided p (pooled z-test or Welch); valid only at a horizon fixed in advance */
  pValue: number | null;
  /** pValue adjusted across variants and primary/secondary metrics; null for guardrail metrics */
  pValueAdjusted: number | null;
  /** always-valid mSPRT p-value: running minimum over every report so far */
  pValueSequential: number | null;
  pValueSequentialAdjusted: number | null;
  /**
   * always-valid (1 - alpha) interval of the absolute difference: the running intersection of every look's interval
   * (Howard, Ramdas, McAuliffe & Sekhon 2021, CI_n = ∩_{m≤n} I_m); null before the first look, or when the
   * intersection is empty (`sequentialError` NON_STATIONARY)
   */
  sequentialCi: [number, number] | null;
  /** NON_STATIONARY: the always-valid intervals of different looks do not overlap, so no single effect fits them all */
  sequentialError?: StatsErrorCode;
  /** P(treatment rate > control rate), Beta(1,1) priors; conversion and error-rate metrics only */
  chanceToWin: number | null;
  /**
   * pValueSequentialAdjusted < alpha and the running intersection `sequentialCi` excludes 0 (its side gives the
   * direction): the difference holds up however often the report is read
   */
  significant: boolean;
  error?: string;
  /**
   * When the weights changed during the experiment (periods of first exposure, from the store): the estimates and
   * tests above are post-stratified over the periods that have both arms (stats/stratified.ts), and these are the
   * arms' period-weighted means they compare, with the periods used, the units (requests, for latency and error
   * rate) of periods left out, and how the periods were weighted (by their units, or under the bandit by precision).
   */
  adjusted?: { control: number | null; value: number | null; periods: number; excludedUnits: number; weights?: "units" | "precision" };
}

export interface MetricReport {
  name: string;
  kind: MetricAggregate["kind"];
  role: MetricRole;
  control: { units: number; value: number | null };
  comparisons: Comparison[];
}

export interface GuardrailReport {
  name: string;
  kind: MetricAggregate["kind"];
  variant: string;
  ok: boolean;
  detail: string;
  control: number | null;
  value: number | null;
  limit: { maxRelativeIncrease?: number; maxAbsoluteIncrease?: number };
  /**
   * fixed-horizon one-sided p of "the increase exceeds the limit" at this look (the smaller one when both limits are
   * set): for information only, it is not valid when the report is read repeatedly and does not decide `ok`
   */
  pValue: number | null;
  /**
   * always-valid one-sided p of "the increase exceeds the limit": the running minimum over every report of the
   * one-sided mixture SPRT on the shifted contrast (the smaller one when both limits are set); `ok` is false when it
   * is below alpha. null before both arms have SEQUENTIAL_MIN_UNITS_PER_VARIANT units (requests for latency and rates).
   */
  pValueSequential: number | null;
}

export type DecisionAction = "promote" | "rollback" | "continue";

export interface Decision {
  action: DecisionAction;
  /** promote: the winner; rollback: the control that gets all traffic; continue: null */
  variant: string | null;
  reason: string;
  /** continue: more units (all variants together) the primary metric needs at the observed difference */
  unitsNeeded?: number | null;
}

export interface DataQuality {
  forcedRequests: number;
  multiVariantUnits: number;
  fallbackRequests: number;
  /**
   * by event name (of the configured metrics): units that sent it but have no non-forced exposure, so their events
   * count nowhere; usually events sent with another unit id than the proxy's
   */
  unexposedEventUnits: Record<string, number>;
  /**
   * by event name: exposed units that sent it before their first exposure; those events count nowhere (a conversion
   * counts from the first exposure on). Usually events whose `ts` comes from a client clock behind the server's.
   */
  earlyEventUnits: Record<string, number>;
  firstExposureAt: string | null;
  lastExposureAt: string | null;
  notes: string[];
}

/** The body of GET /v1/report and `abgate report --json` (the spec's Report section, plus fields). */
export interface Report {
  experiment: string;
  generatedAt: string;
  control: string | null;
  variants: VariantSummary[];
  srm: SrmSummary;
  metrics: MetricReport[];
  guardrails: GuardrailReport[];
  decision: Decision;
  dataQuality: DataQuality;
  analysis: { alpha: number; correction: Correction; srmThreshold: number; tau2: number; primaryMetric: string | null };
}

export interface ReportOutput {
  report: Report;
  /** running minima and interval intersections to pass back as `previousSequential` next time */
  sequentialState: Record<string, number>;
}

const EMPTY_PROPORTION: ProportionStats = { units: 0, conversions: 0 };
const EMPTY_MEAN: MeanStats = { n: 0, sum: 0, sumSquares: 0 };

function finite(x: number | null | undefined): number | null {
  return typeof x === "number" && Number.isFinite(x) ? x : null;
}

function isoOrNull(ms: number | null): string | null {
  return ms !== null && Number.isFinite(ms) ? new Date(ms).toISOString() : null;
}

/** Deep copy with every non-finite number replaced by null: the report is JSON and must never hold NaN/Infinity. */
function jsonSafe<T>(value: T): T {
  if (typeof value === "number") return (Number.isFinite(value) ? value : null) as T;
  if (Array.isArray(value)) return value.map(jsonSafe) as T;
  if (value && typeof value === "object") {
    // (defined, not assigned: a key "__proto__", an event's name, would set the copy's prototype)
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) if (v !== undefined) Object.defineProperty(out, k, { value: jsonSafe(v), enumerable: true, writable: true, configurable: true });
    return out as T;
  }
  return value;
}

/** Statistics of one metric in one arm, whatever its kind. */
interface ArmStats {
  units: number;
  value: number | null;
  proportion?: ProportionStats;
  mean?: MeanStats;
  variance: number;
}

function armStats(metric: MetricAggregate, variant: string): ArmStats {
  if (metric.kind === "conversion" || metric.kind === "error_rate") {
    const p = (metric.byVariant[variant] as ProportionStats | undefined) ?? EMPTY_PROPORTION;
    const rate = p.units > 0 ? p.conversions / p.units : null;
    return { units: p.units, value: rate, proportion: p, variance: rate === null ? 0 : rate * (1 - rate) };
  }
  const raw = metric.byVariant[variant] ?? EMPTY_MEAN;
  const m: MeanStats = { n: raw.n, sum: raw.sum, sumSquares: raw.sumSquares };
  const mv = m.n > 0 ? meanAndVariance(m) : null;
  return { units: m.n, value: mv ? mv.mean : null, mean: m, variance: mv ? mv.variance : 0 };
}

/** Build the report from sufficient statistics. Pure: same input, same output; never throws on data problems. */
export function buildReport(input: ReportInput): ReportOutput {
  const alpha = input.analysis.alpha > 0 && input.analysis.alpha < 1 ? input.analysis.alpha : 0.05;
  const correction: Correction = input.analysis.correction ?? "holm";
  const srmThreshold = input.analysis.srmThreshold > 0 && input.analysis.srmThreshold < 1 ? input.analysis.srmThreshold : 0.001;
  const tau2Standardized = input.analysis.tau2 !== undefined && input.analysis.tau2 > 0 ? input.analysis.tau2 : DEFAULT_TAU2_STANDARDIZED;
  const previous = input.previousSequential ?? {};
  const agg = input.aggregates;
  const names = input.variants.map((v) => v.name);
  const control = names[0] ?? null;
  const treatments = names.slice(1);
  const totalsByName = new Map(agg.variants.map((v) => [v.variant, v]));

  const variants: VariantSummary[] = input.variants.map((v) => {
    const t = totalsByName.get(v.name);
    return { name: v.name, weight: v.weight, units: t?.units ?? 0, requests: t?.requests ?? 0, fallbackRequests: t?.fallbackRequests ?? 0 };
  });
  const totalUnits = variants.reduce((s, v) => s + v.units, 0);
  const totalWeight = variants.reduce((s, v) => s + Math.max(0, v.weight), 0);

  const srm = srmSummary(variants, srmThreshold, input.strategy === "bandit", input.srmWindow);

  // Metrics, in config order. The aggregate list is in config order too, but match by name to be safe.
  const aggByName = new Map(agg.metrics.map((m) => [m.name, m]));
  const decidable = (m: MetricConfig) => m.kind === "conversion" || m.kind === "mean";
  const primaryConfig = input.metrics.find((m) => m.name === input.primaryMetric && decidable(m)) ?? input.metrics.find(decidable);
  const primaryName = primaryConfig?.name ?? null;
  // Carry every finite entry over (also of metrics no longer configured); the state may come from JSON in the store.
  const sequentialState: Record<string, number> = {};
  for (const [k, v] of Object.entries(previous)) if (typeof v === "number" && Number.isFinite(v)) sequentialState[k] = v;

  const metrics: MetricReport[] = [];
  const guardrails: GuardrailReport[] = [];
  // (under the bandit, periods by precision: its later periods give the losing arm the floor; see StratumWeights)
  const stratumWeights = input.strategy === "bandit" ? "precision" : "units";
  for (const config of input.metrics) {
    const metric = aggByName.get(config.name) ?? emptyAggregate(config);
    const role: MetricRole = config.name === primaryName ? "primary" : config.kind === "latency" || config.kind === "error_rate" ? "guardrail" : "secondary";
    if (control === null) continue;
    // A metric whose definition changed (kind, event, window, or the mixture's τ²) tests another hypothesis: the
    // evidence gathered under the old one must not carry over, or a metric switched to another event would keep
    // the old event's running minimum p and interval.
    const definitionKey = `${config.name}#definition`;
    const { event, windowMs } = config as { event?: string; windowMs?: number };
    // Post-stratified comparisons (weights changed: see compare) test the period-weighted difference. Every look of
    // this version is of one period or post-stratified, so its evidence carries over when the first weight change
    // makes periods (a guardrail's breach among it); `${metric}#strata` marks a state written so. A state without the
    // mark is an older abgate's, which pooled across weight changes (the misleading looks of a ramp, or of latency
    // under the bandit): once this metric is post-stratified, that evidence does not carry over.
    // The metric's periods (conversion and mean metrics by first exposure, request metrics by minute), when the
    // weights changed
    const periods = (agg.strata ?? []).flatMap((p) => p.metrics.filter((m) => m.name === config.name && m.kind === metric.kind));
    const stratified = periods.length >= 2;
    const strataKey = `${config.name}#strata`;
    const definition = fnv1a32(JSON.stringify([config.kind, event ?? null, windowMs ?? null, tau2Standardized]));
    const redefined = typeof previous[definitionKey] === "number" && previous[definitionKey] !== definition;
    const pooledAcross = stratified && typeof previous[strataKey] !== "number" && Object.keys(previous).some((k) => k.startsWith(`${config.name}/`));
    const prior = redefined || pooledAcross ? {} : previous;
    if (redefined || pooledAcross) for (const k of Object.keys(sequentialState)) if (k.startsWith(`${config.name}/`)) delete sequentialState[k];
    sequentialState[definitionKey] = definition;
    sequentialState[strataKey] = 1;
    const c = armStats(metric, control);
    const comparisons: Comparison[] = [];
    for (const variant of treatments) {
      const t = armStats(metric, variant);
      const strata = stratified ? periods.map((m) => ({ control: armStats(m, control), treatment: armStats(m, variant) })) : undefined;
      // (once, for the comparison and its guardrail)
      const byPeriod = strata !== undefined ? { strata, result: stratifiedDifference(strataSamples(strata), { alpha, weights: stratumWeights }) } : undefined;
      const comparison = compare(metric, variant, c, t, alpha, tau2Standardized, byPeriod);
      const key = `${config.name}/${variant}`;
      comparison.pValueSequential = runningMinimum(storedP(prior, key), comparison.pValueSequential);
      if (comparison.pValueSequential !== null) sequentialState[key] = comparison.pValueSequential;
      // The running intersection of the always-valid intervals (Johari et al. 2017 §4; Howard et al. 2021): every
      // look's interval covers the true difference with probability 1 - alpha simultaneously over all looks, so their
      // intersection does too. It only shrinks: once it lies on one side of 0, the direction is settled for good, and
      // if it becomes empty no constant difference fits every look (a novelty effect, a fix deployed mid-experiment,
      // a drifting population): that is reported and nothing is decided on it.
      const previousCi = readInterval(prior, key);
      const running = intersect(previousCi !== undefined && previousCi.alpha === alpha ? previousCi : undefined, comparison.sequentialCi, alpha);
      if (running !== undefined) {
        writeInterval(sequentialState, key, running);
        comparison.sequentialCi = running.ci;
        if (running.ci === null) comparison.sequentialError = "NON_STATIONARY";
      }
      comparisons.push(comparison);
      if (config.guardrail) {
        // Across weight periods a guardrail judges the period-weighted arms too, not the pooled ones (the same Simpson's
        // paradox rolled back identical arms on a guardrail): each arm as a sample of its weighted mean and variance.
        // With one period that has both arms, that period's arms, as the comparison uses: the pooled ones rolled back
        // a promoted treatment whose latency rose with the whole load it then took, against the control's at half.
        const arms = byPeriod !== undefined ? (effectiveArms(byPeriod) ?? onlySharedPeriod(byPeriod)) : undefined;
        guardrails.push(guardrail(metric, config.guardrail, variant, arms?.control ?? c, arms?.treatment ?? t, alpha, tau2Standardized, prior, sequentialState));
      }
    }
    metrics.push({ name: config.name, kind: metric.kind, role, control: { units: c.units, value: c.value }, comparisons });
  }

  // One family for the correction: every treatment on every primary and secondary metric.
  const family = metrics.filter((m) => m.role !== "guardrail").flatMap((m) => m.comparisons);
  const method = correction === "none" ? "none" : correction;
  // The family's size is the config's, whatever has data yet: a comparison without a p-value counts as p = 1. Left
  // out (as R's p.adjust leaves out NA), it shrank m, and a metric's first events could turn a promotion back into
  // "continue" (Holm 1979 bounds the family-wise error for a fixed m).
  const fixed = adjustPValues(family.map((c) => c.pValue ?? 1), method);
  const sequential = adjustPValues(family.map((c) => c.pValueSequential ?? 1), method);
  family.forEach((c, i) => {
    c.pValueAdjusted = c.pValue === null ? null : (fixed[i] ?? null);
    c.pValueSequentialAdjusted = c.pValueSequential === null ? null : (sequential[i] ?? null);
  });
  for (const m of metrics) {
    for (const c of m.comparisons) {
      if (m.role === "guardrail") c.pValueSequentialAdjusted = c.pValueSequential;
      // Significant only while the running intersection excludes 0. The adjusted p < alpha alone is not enough: it
      // is a running minimum, so it remembers old evidence without its direction (a treatment significantly worse
      // at one look could otherwise be promoted later on a positive point estimate). When p_m ≤ alpha' ≤ alpha at
      // a look m, that look's interval excludes 0, so the intersection is on that side of 0 or empty.
      const ci = c.sequentialCi;
      c.significant = c.pValueSequentialAdjusted !== null && c.pValueSequentialAdjusted < alpha && ci !== null && (ci[0] > 0 || ci[1] < 0);
    }
  }

  const dataQuality = dataQualityOf(agg, variants, input.metrics);
  const decision = decide({ variants, control, totalUnits, totalWeight, srm, metrics, guardrails, primaryName, primaryEvent: (primaryConfig as { event?: string } | undefined)?.event ?? null, alpha, tau2Standardized, familySize: family.length, correction, aggregates: agg });

  const report: Report = {
    experiment: input.experiment,
    generatedAt: new Date(input.now).toISOString(),
    control,
    variants,
    srm,
    metrics,
    guardrails,
    decision,
    dataQuality,
    analysis: { alpha, correction, srmThreshold, tau2: tau2Standardized, primaryMetric: primaryName },
  };
  return { report: jsonSafe(report), sequentialState };
}

function emptyAggregate(config: MetricConfig): MetricAggregate {
  return { name: config.name, kind: config.kind, byVariant: {} } as MetricAggregate;
}

/**
 * The saved intersection of one comparison: `${key}#lower`, `${key}#upper`, `${key}#alpha`, numbers like the rest of
 * the state (so states saved before intersections were kept still load, and their intersection starts now).
 * lower > upper is the empty intersection. Undefined when absent or unreadable.
 */
function readInterval(state: Record<string, number>, key: string): SequentialIntervalState | undefined {
  const lower = state[`${key}#lower`];
  const upper = state[`${key}#upper`];
  const alpha = state[`${key}#alpha`];
  if (typeof lower !== "number" || typeof upper !== "number" || typeof alpha !== "number") return undefined;
  if (!Number.isFinite(lower) || !Number.isFinite(upper) || !(alpha > 0 && alpha < 1)) return undefined;
  return { ci: lower <= upper ? [lower, upper] : null, alpha };
}

function writeInterval(state: Record<string, number>, key: string, value: SequentialIntervalState): void {
  // An empty intersection is kept as [1, -1]: intersecting it with anything stays empty.
  state[`${key}#lower`] = value.ci === null ? 1 : value.ci[0];
  state[`${key}#upper`] = value.ci === null ? -1 : value.ci[1];
  state[`${key}#alpha`] = value.alpha;
}

/** A running minimum p from the previous report's state: null unless it is a probability (a state may be hand-edited or stale). */
function storedP(state: Readonly<Record<string, unknown>>, key: string): number | null {
  const p = state[key];
  return typeof p === "number" && p >= 0 && p <= 1 ? p : null;
}

/** The running intersection after one more look: I_1 ∩ … ∩ I_n; a look without an interval changes nothing. */
function intersect(previous: SequentialIntervalState | undefined, look: [number, number] | null, alpha: number): SequentialIntervalState | undefined {
  if (look === null) return previous;
  if (previous === undefined) return { ci: [look[0], look[1]], alpha };
  if (previous.ci === null) return previous;
  const lower = Math.max(previous.ci[0], look[0]);
  const upper = Math.min(previous.ci[1], look[1]);
  return { ci: lower <= upper ? [lower, upper] : null, alpha };
}

/**
 * Sample ratio mismatch: Pearson's χ² of units against the current weights.
 * - bandit: Thompson sampling moves the weights with the data, so no fixed weights describe the cumulative split
 *   (it is adaptive by design, not a mismatch); the check is skipped and says so.
 * - otherwise, with `window`: only units first exposed since `window.since`, when the current weights were already in
 *   force, are tested. The report has no history of weights, and cumulative units mix every weight the experiment
 *   ran at (a 90/10 → 50/50 ramp-up fails the test for good); units since the weights took effect do not.
 * - without `window`: cumulative units, so a weight change during the experiment shows up as a mismatch.
 */
function srmSummary(variants: VariantSummary[], threshold: number, adaptive = false, window?: NonNullable<ReportInput["srmWindow"]>): SrmSummary {
  if (adaptive) {
    return {
      pValue: null,
      mismatch: false,
      judged: false,
      chiSquare: null,
      df: null,
      threshold,
      reason: "ADAPTIVE_ALLOCATION",
      note: "not checked: the bandit strategy moves the weights with the data, so units are not expected to follow any fixed weights",
    };
  }
  const useWindow = window !== undefined && !Number.isNaN(window.since);
  const counted = useWindow ? variants.map((v) => ({ ...v, units: Math.max(0, window.units[v.name] ?? 0) })) : variants;
  const since = useWindow ? isoOrNull(window.since) : null;
  // `since` is the first whole minute after the weights were first seen in force (the store counts new units per
  // minute), so for a report made within a minute of a change it is still ahead of `generatedAt`.
  const scope = since !== null ? ` first exposed from ${since} on (the first whole minute under the current weights)` : "";
  const weighted = counted.filter((v) => v.weight > 0);
  const countedUnits = counted.map((v) => v.units);
  const countedWeights = counted.map((v) => Math.max(0, v.weight));
  const current = srmTest(countedUnits, countedWeights);
  const expected = expectedUnits(countedUnits, countedWeights);
  // By the units each arm should have had, not those it got (Cochran's rule for the χ² approximation is on expected
  // counts): gating on the observed ones exempted the worst failure, an arm the split starves.
  const small = counted.map((v, i) => ({ ...v, expected: expected[i]! })).filter((v) => v.weight > 0 && v.expected < SRM_MIN_UNITS_PER_VARIANT);
  const currentJudged = weighted.length >= 2 && small.length === 0 && current.chiSquare !== null && current.df !== null;
  // Earlier periods: each judged as the current one is (two weighted arms, enough units each); the judged ones' χ²
  // and df add to the current period's (Pearson's statistics of independent samples), one test over all of them.
  const periods = (useWindow ? (window.earlier ?? []) : []).map((p) => {
    const names = variants.map((v) => v.name);
    const units = names.map((n) => Math.max(0, p.units[n] ?? 0));
    const weights = names.map((n) => Math.max(0, p.weights[n] ?? 0));
    const armsOn = names.filter((_, i) => weights[i]! > 0);
    const result = srmTest(units, weights);
    const judged = armsOn.length >= 2 && expectedUnits(units, weights).every((e, i) => weights[i]! <= 0 || e >= SRM_MIN_UNITS_PER_VARIANT) && result.chiSquare !== null && result.df !== null;
    return { since: p.since === null ? null : isoOrNull(p.since), until: isoOrNull(p.until) ?? "", pValue: finite(result.pValue), judged, chiSquare: result.chiSquare, df: result.df };
  });
  const judgedEarlier = periods.filter((p) => p.judged);
  const periodsField = periods.length > 0 ? { periods: periods.map(({ since: s, until, pValue, judged }) => ({ since: s, until, pValue, judged })) } : {};
  const extra = since !== null ? { reason: "SINCE_WEIGHT_CHANGE" as const, since } : {};
  if (judgedEarlier.length === 0) {
    const base = { pValue: finite(current.pValue), chiSquare: finite(current.chiSquare), df: current.df, threshold, ...extra, ...periodsField };
    if (weighted.length < 2) return { ...base, mismatch: false, judged: false, note: "fewer than two variants with weight > 0: nothing to check" };
    if (small.length > 0) {
      return {
        ...base,
        mismatch: false,
        judged: false,
        note: `not judged until every variant is expected to have ${SRM_MIN_UNITS_PER_VARIANT} units${scope} (${small.map((v) => `${v.name}: ${v.units} of ${fmt(v.expected)} expected`).join(", ")})`,
      };
    }
  }
  const tested = [...judgedEarlier.map((p) => ({ chiSquare: p.chiSquare!, df: p.df! })), ...(currentJudged ? [{ chiSquare: current.chiSquare!, df: current.df! }] : [])];
  // No test ran (counts srmTest refuses, such as Infinity): nothing was judged, so nothing may be said to match.
  if (tested.length === 0) {
    const why = current.error !== undefined ? ` (${current.error})` : "";
    return { pValue: null, chiSquare: null, df: null, threshold, ...extra, ...periodsField, mismatch: false, judged: false, note: `not judged: the unit counts give no test${why}` };
  }
  const chiSquare = tested.reduce((sum, t) => sum + t.chiSquare, 0);
  const df = tested.reduce((sum, t) => sum + t.df, 0);
  const pValue = tested.length === 1 && currentJudged ? current.pValue : finite(chiSquareSf(chiSquare, df));
  const base = { pValue, chiSquare: finite(chiSquare), df, threshold, ...extra, ...periodsField };
  const mismatch = pValue !== null && pValue < threshold;
  const zeroWeightUnits = counted.filter((v) => v.weight <= 0 && v.units > 0);
  let note: string;
  if (judgedEarlier.length === 0) {
    note = mismatch
      ? `units${scope} are not split as the weights say (χ² = ${fmt(chiSquare)}, p = ${fmtP(pValue)} < ${threshold})`
      : `units${scope} match the weights (p = ${fmtP(pValue)})`;
    if (since === null) note += "; compared with the current weights, so a weight change during the experiment shows up here too";
  } else {
    const bad = judgedEarlier.filter((p) => p.pValue !== null && p.pValue < threshold);
    const span = (p: (typeof periods)[number]) => `${p.since ?? "the start"} to ${p.until} (p = ${fmtP(p.pValue)})`;
    const what = tested.length === 1 ? "1 weight period, against the weights then in force" : `${tested.length} weight periods, each against the weights then in force`;
    note = mismatch
      ? `units are not split as the weights say, over ${what} (χ² = ${fmt(chiSquare)}, df = ${df}, p = ${fmtP(pValue)} < ${threshold}${bad.length > 0 ? `, among them the units first exposed from ${bad.map(span).join(", and from ")}` : ""})`
      : `units match the weights over ${what} (p = ${fmtP(pValue)})`;
    if (!currentJudged && weighted.length >= 2) note += `; the current weights not judged until every variant is expected to have ${SRM_MIN_UNITS_PER_VARIANT} units${scope}`;
  }
  if (zeroWeightUnits.length > 0) note += `; variants at weight 0 left out: ${zeroWeightUnits.map((v) => v.name).join(", ")}`;
  return { ...base, mismatch, judged: true, note };
}

/**
 * The units each arm should have had under its weight: the total of the weighted arms times its share, as srmTest
 * counts them (0 for an arm of weight 0, and for all when no counts are usable).
 */
function expectedUnits(units: readonly number[], weights: readonly number[]): number[] {
  const weightSum = weights.reduce((s, w) => s + (w > 0 ? w : 0), 0);
  const total = units.reduce((s, u, i) => s + (weights[i]! > 0 && Number.isFinite(u) && u >= 0 ? u : 0), 0);
  return weights.map((w) => (w > 0 && weightSum > 0 && Number.isFinite(weightSum) ? (total * w) / weightSum : 0));
}

/** A comparison's arms per period of first exposure, and their post-stratified difference (stratifiedDifference). */
interface ByPeriod {
  strata: { control: ArmStats; treatment: ArmStats }[];
  result: StratifiedResult;
}

function compare(metric: MetricAggregate, variant: string, c: ArmStats, t: ArmStats, alpha: number, tau2Standardized: number, byPeriod?: ByPeriod): Comparison {
  if (byPeriod !== undefined) {
    const r = byPeriod.result;
    if (r.periods >= 2) return stratifiedComparison(metric, variant, c, t, r, alpha, tau2Standardized);
    // One period with both arms: its plain comparison (the units of the others carry no contrast)
    const only = onlySharedPeriod(byPeriod);
    if (only !== undefined) {
      const plain = compare(metric, variant, only.control, only.treatment, alpha, tau2Standardized);
      return { ...plain, units: t.units, value: t.value, adjusted: { control: only.control.value, value: only.treatment.value, periods: 1, excludedUnits: r.excludedUnits } };
    }
  }
  const out: Comparison = emptyComparison(variant, t);
  const pooledVariance = pooledVarianceOf(c, t);
  if (c.proportion && t.proportion) {
    const r = proportionTest(c.proportion, t.proportion, { alpha });
    Object.assign(out, { absolute: r.absolute, relative: r.relative, pValue: r.pValue });
    if (r.error) out.error = r.error;
    // With no units in an arm its posterior is the Beta(1,1) prior: a number, but no evidence (an empty arm "won"
    // 99.7% against 0 of 388 conversions).
    if (metric.kind === "conversion" && c.units > 0 && t.units > 0) out.chanceToWin = chanceToWin(c.proportion, t.proportion);
  } else if (c.mean && t.mean) {
    const r = meanTest(c.mean, t.mean, { alpha });
    Object.assign(out, { absolute: r.absolute, relative: r.relative, pValue: r.pValue });
    if (r.error) out.error = r.error;
  }
  // mSPRT on the absolute difference (see sequential.ts) with the larger of two variances of this look: the arms'
  // pooled one, times 1/n_C + 1/n_T, and the sum of each arm's own over its units. With each arm's own alone, a small
  // arm with no conversions yet (0 of 124 against 19 of 1,076) has none, and a null difference read as certain: A/A
  // runs read every 400 units rolled back 7-25% of the time with a 90/10 split or delayed conversions (1-1.3% pooled;
  // a calibration audit by simulation). With the pooled one alone, a small arm with the larger spread (means with
  // unequal variances) has too little: 48.8% false decisions in a review's heavy-tailed A/A runs at 90/10 (0% with
  // the larger of the two), and the always-valid interval of rates far from H0 missed the truth in 23% of runs.
  if (
    c.units >= SEQUENTIAL_MIN_UNITS_PER_VARIANT &&
    t.units >= SEQUENTIAL_MIN_UNITS_PER_VARIANT &&
    c.value !== null &&
    t.value !== null &&
    pooledVariance > 0
  ) {
    const s = mixtureSprt({
      diff: t.value - c.value,
      varDiff: Math.max(pooledVariance * (1 / c.units + 1 / t.units), c.variance / c.units + t.variance / t.units),
      tau2: tau2Standardized * pooledVariance,
      alpha,
    });
    out.pValueSequential = s.pValue;
    out.sequentialCi = s.ci;
  }
  return out;
}

/**
 * The arms' pooled variance, what the mSPRT's τ² scales with and its look's variance under H0: p̄(1 − p̄) for rates,
 * the pooled within-arm sample variance for means; 0 without the units to estimate it.
 */
function pooledVarianceOf(c: ArmStats, t: ArmStats): number {
  if (c.proportion && t.proportion) {
    const n = c.proportion.units + t.proportion.units;
    const pooled = n > 0 ? (c.proportion.conversions + t.proportion.conversions) / n : 0;
    return pooled * (1 - pooled);
  }
  const dof = c.units + t.units - 2;
  return dof > 0 ? ((c.units - 1) * c.variance + (t.units - 1) * t.variance) / dof : 0;
}

/** A comparison of `t` with nothing computed yet. */
function emptyComparison(variant: string, t: ArmStats): Comparison {
  return {
    variant,
    units: t.units,
    value: t.value,
    absolute: { estimate: null, ci: null },
    relative: { estimate: null, ci: null },
    pValue: null,
    pValueAdjusted: null,
    pValueSequential: null,
    pValueSequentialAdjusted: null,
    sequentialCi: null,
    chanceToWin: null,
    significant: false,
  };
}

/** The strata's samples, for stratifiedDifference. */
function strataSamples(strata: readonly { control: ArmStats; treatment: ArmStats }[]): Stratum[] {
  return strata.flatMap((s): Stratum[] =>
    s.control.proportion && s.treatment.proportion
      ? [{ control: s.control.proportion, treatment: s.treatment.proportion }]
      : s.control.mean && s.treatment.mean
        ? [{ control: s.control.mean, treatment: s.treatment.mean }]
        : [],
  );
}

/**
 * The one period with both arms, when the others hold units of one arm only (a promotion, a ramp from 0): then that
 * period alone compares the arms, since pooling the others in would compare different times.
 */
function onlySharedPeriod({ strata, result: r }: ByPeriod): { control: ArmStats; treatment: ArmStats } | undefined {
  if (r.periods >= 2 || r.excludedUnits <= 0) return undefined;
  return strata.find((s) => s.control.units >= MIN_STRATUM_UNITS && s.treatment.units >= MIN_STRATUM_UNITS);
}

/**
 * Each arm as one sample with its period-weighted mean and that mean's variance (an effective sample size n =
 * v/Var(m̂), as in a design effect; a rate's counts rounded to whole units), for tests written for one sample per
 * arm (the guardrails'). Undefined unless two or more periods have both arms, or when an arm has no variance.
 */
function effectiveArms({ strata, result: r }: ByPeriod): { control: ArmStats; treatment: ArmStats } | undefined {
  if (r.periods < 2 || r.control === null || r.treatment === null || r.varControl === null || r.varTreatment === null) return undefined;
  const rates = strata[0]!.control.proportion !== undefined;
  const used = strata.filter((x) => x.control.units >= MIN_STRATUM_UNITS && x.treatment.units >= MIN_STRATUM_UNITS);
  const arm = (mean: number, varMean: number, units: number): ArmStats | undefined => {
    if (rates) {
      const n = varMean > 0 && mean > 0 && mean < 1 ? Math.max(1, Math.round((mean * (1 - mean)) / varMean)) : units;
      const p = { units: n, conversions: Math.min(n, Math.round(mean * n)) };
      return { units: n, value: p.conversions / n, proportion: p, variance: (p.conversions / n) * (1 - p.conversions / n) };
    }
    if (!(varMean > 0) || units < 2) return undefined;
    const n = units;
    const variance = varMean * n;
    const m: MeanStats = { n, sum: mean * n, sumSquares: (n - 1) * variance + n * mean * mean };
    return { units: n, value: mean, mean: m, variance };
  };
  const control = arm(r.control, r.varControl, used.reduce((sum, x) => sum + x.control.units, 0));
  const treatment = arm(r.treatment, r.varTreatment, used.reduce((sum, x) => sum + x.treatment.units, 0));
  return control && treatment ? { control, treatment } : undefined;
}

/**
 * A comparison post-stratified over periods of first exposure (stats/stratified.ts): its estimates, tests and mSPRT
 * look use the period-weighted difference and variance; the sequential test's τ² still scales with the pooled
 * variance of all units, as the plain comparison's does. Chance to win, for rates, is then the normal approximation
 * Φ(d / se) of P(p_T > p_C), the Beta posteriors having no closed form over weighted periods.
 */
function stratifiedComparison(metric: MetricAggregate, variant: string, c: ArmStats, t: ArmStats, r: StratifiedResult, alpha: number, tau2Standardized: number): Comparison {
  const out: Comparison = {
    ...emptyComparison(variant, t),
    absolute: r.absolute,
    relative: r.relative,
    pValue: r.pValue,
    adjusted: { control: r.control, value: r.treatment, periods: r.periods, excludedUnits: r.excludedUnits, weights: r.weights },
  };
  if (r.error) out.error = r.error;
  const pooledVariance = pooledVarianceOf(c, t);
  if (metric.kind === "conversion" && r.diff !== null && r.varDiffNull !== null && r.varDiffNull > 0) out.chanceToWin = normalCdf(r.diff / Math.sqrt(r.varDiffNull));
  // (the look's variance: the larger of the pooled one and the arms' own, as in compare)
  if (c.units >= SEQUENTIAL_MIN_UNITS_PER_VARIANT && t.units >= SEQUENTIAL_MIN_UNITS_PER_VARIANT && r.diff !== null && r.varDiffNull !== null && r.varDiffNull > 0 && pooledVariance > 0) {
    const s = mixtureSprt({ diff: r.diff, varDiff: Math.max(r.varDiffNull, r.varDiff ?? 0), tau2: tau2Standardized * pooledVariance, alpha });
    out.pValueSequential = s.pValue;
    out.sequentialCi = s.ci;
  }
  return out;
}

/**
 * The `sequentialState` key of a guardrail's running minimum always-valid p: `${metric}/${variant}#guardrail-relative=${r}`
 * or `#guardrail-absolute=${a}`. Metric and variant names are [a-z0-9_-] (config schema), so no key of a primary or
 * secondary comparison (`${metric}/${variant}`, `#lower`, `#upper`, `#alpha`) can look like one; the limit is part of
 * the key because a changed limit is a different hypothesis, whose running minimum starts afresh.
 */
export function guardrailStateKey(metric: string, variant: string, kind: "relative" | "absolute", limit: number): string {
  return `${metric}/${variant}#guardrail-${kind}=${limit}`;
}

/**
 * A guardrail: is the treatment's increase over the control beyond the configured limit? Decided by an always-valid
 * one-sided test of H0 "within the limit" on the shifted contrast D = m_T − k·m_C − c (k = 1 + maxRelativeIncrease, or
 * k = 1 and c = maxAbsoluteIncrease): the half-normal mixture SPRT of sequential.ts (Robbins 1970; Johari et al. 2017;
 * Howard et al. 2021), with the Farrington–Manning restricted-MLE variance for rates. Its running minimum p over every
 * report is kept in `state`, so reading the report at every request does not raise the chance of a false rollback
 * above alpha (the fixed-horizon one-sided tests, re-run at every read, did: 27% at alpha = 0.05 over 50 reads). The
 * fixed-horizon p is still reported (`pValue`), for information only.
 */
function guardrail(
  metric: MetricAggregate,
  limit: { maxRelativeIncrease?: number; maxAbsoluteIncrease?: number },
  variant: string,
  c: ArmStats,
  t: ArmStats,
  alpha: number,
  tau2Standardized: number,
  previous: Record<string, number>,
  state: Record<string, number>,
): GuardrailReport {
  const what = metric.kind === "latency" ? "mean latency" : metric.kind === "error_rate" ? "error rate" : metric.kind === "conversion" ? "rate" : "mean";
  const show = (x: number | null): string => (x === null ? "n/a" : metric.kind === "latency" ? `${fmt(x)} ms` : metric.kind === "mean" ? fmt(x) : fmtPct(x));
  const base = { name: metric.name, kind: metric.kind, variant, control: c.value, value: t.value, limit: { ...limit } };
  const enough = c.units >= SEQUENTIAL_MIN_UNITS_PER_VARIANT && t.units >= SEQUENTIAL_MIN_UNITS_PER_VARIANT;
  const tests: { label: string; pValue: number | null; pValueSequential: number | null; estimate: number | null }[] = [];
  const run = (kind: "relative" | "absolute", value: number, k: number, add: number): void => {
    const fixed = c.mean && t.mean ? welchOneSidedIncrease(c.mean, t.mean, k, add) : proportionOneSidedIncrease(c.proportion ?? EMPTY_PROPORTION, t.proportion ?? EMPTY_PROPORTION, k, add);
    // One look of the always-valid test, then the running minimum over looks (Johari et al. 2017); like the primary
    // metrics' mSPRT, no look below SEQUENTIAL_MIN_UNITS_PER_VARIANT (the look's variance is too noisy there).
    let look: number | null = null;
    if (enough) {
      const s = c.mean && t.mean
        ? meanIncreaseSequential(c.mean, t.mean, k, add, tau2Standardized)
        : proportionIncreaseSequential(c.proportion ?? EMPTY_PROPORTION, t.proportion ?? EMPTY_PROPORTION, k, add, tau2Standardized);
      look = s.pValue;
    }
    const key = guardrailStateKey(metric.name, variant, kind, value);
    const running = runningMinimum(storedP(previous, key), look);
    if (running !== null) state[key] = running;
    const label =
      kind === "relative"
        ? `+${fmtPct(value)} relative`
        : `${metric.kind === "latency" ? `+${fmt(value)} ms` : metric.kind === "mean" ? `+${fmt(value)}` : `+${fmt(value * 100)} percentage points`} absolute`;
    tests.push({ label, pValue: fixed.pValue, pValueSequential: running, estimate: fixed.estimate });
  };
  if (limit.maxRelativeIncrease !== undefined) run("relative", limit.maxRelativeIncrease, 1 + limit.maxRelativeIncrease, 0);
  if (limit.maxAbsoluteIncrease !== undefined) run("absolute", limit.maxAbsoluteIncrease, 1, limit.maxAbsoluteIncrease);
  const smallest = (pick: (x: (typeof tests)[number]) => number | null): (typeof tests)[number] | null =>
    tests.reduce<(typeof tests)[number] | null>((w, x) => (pick(x) === null ? w : w === null || pick(x)! < pick(w)! ? x : w), null);
  const worst = smallest((x) => x.pValueSequential);
  const worstFixed = smallest((x) => x.pValue);
  const pValues = { pValue: worstFixed?.pValue ?? null, pValueSequential: worst?.pValueSequential ?? null };
  const minUnits = metric.kind === "latency" || metric.kind === "mean" ? 2 : 1;
  if (c.units < minUnits || t.units < minUnits || c.value === null || t.value === null) {
    // A running minimum from earlier looks still counts (cumulative data never shrinks, but a state may outlive it).
    if (worst && worst.pValueSequential! < alpha) {
      return { ...base, ok: false, ...pValues, detail: `significantly above the limit ${worst.label} at an earlier report (always-valid one-sided p = ${fmtP(worst.pValueSequential)} < ${alpha})` };
    }
    return { ...base, ok: true, ...pValues, detail: `not enough data yet (${c.units} control, ${t.units} ${variant})` };
  }
  const change = c.value !== 0 ? ` (${fmtSignedPct(t.value / c.value - 1)})` : "";
  const observed = `${what} ${show(t.value)} vs ${show(c.value)} for the control${change}`;
  const limits = tests.map((x) => x.label).join(" and ");
  if (worst && worst.pValueSequential! < alpha) {
    // The p is a running minimum: the breach may have been seen at an earlier report while the value now is within
    // the limit ("-63.4%: significantly above the limit +20%" read as a contradiction).
    const when = worst.estimate !== null && worst.estimate > 0 ? "" : ", within it now but significantly above it at an earlier report";
    return {
      ...base,
      ok: false,
      ...pValues,
      detail: `${observed}: ${when ? `limit ${worst.label}${when}` : `significantly above the limit ${worst.label}`} (always-valid one-sided p = ${fmtP(worst.pValueSequential)} < ${alpha}, valid however often the report is read)`,
    };
  }
  const over = tests.some((x) => x.estimate !== null && x.estimate > 0);
  const test = worst === null ? `the always-valid test starts at ${SEQUENTIAL_MIN_UNITS_PER_VARIANT} per arm` : `always-valid one-sided p = ${fmtP(worst.pValueSequential)}`;
  const detail = over ? `${observed}: above the limit ${limits}, but not significantly yet (${test})` : `${observed}: within the limit ${limits} (${test})`;
  return { ...base, ok: true, ...pValues, detail };
}

/** Each configured event once (metrics on one event share its count), in config order; stores that do not count give none. */
function countByEvent(agg: ExperimentAggregates, metrics: readonly MetricConfig[], which: "unexposedUnits" | "earlyEventUnits"): Record<string, number> {
  // A Map, then own properties: event names are the config's strings, and `{}[event] ??=` skipped "constructor" or
  // "toString" (inherited, so already set) and made "__proto__" the object's prototype.
  const out = new Map<string, number>();
  for (const m of metrics) {
    if (m.kind !== "conversion" && m.kind !== "mean") continue;
    const a = agg.metrics.find((x) => x.name === m.name);
    if ((a?.kind === "conversion" || a?.kind === "mean") && a[which] !== undefined && !out.has(m.event)) out.set(m.event, a[which]);
  }
  return Object.fromEntries(out);
}

function dataQualityOf(agg: ExperimentAggregates, variants: VariantSummary[], metrics: readonly MetricConfig[]): DataQuality {
  const fallbackRequests = variants.reduce((s, v) => s + v.fallbackRequests, 0);
  const notes: string[] = [];
  if (agg.forcedRequests > 0) notes.push(`${agg.forcedRequests} forced request${agg.forcedRequests === 1 ? "" : "s"} (x-abgate-force-variant) ${agg.forcedRequests === 1 ? "is" : "are"} left out of the analysis`);
  if (agg.multiVariantUnits > 0) {
    notes.push(`${agg.multiVariantUnits} units were assigned to more than one variant; each counts for its first variant only (intention to treat)`);
  }
  if (fallbackRequests > 0) notes.push(`${fallbackRequests} requests were answered by another variant (fallback); they count for the assigned variant`);
  // A variant renamed or removed in the config: its units are still in the store, and must not vanish silently.
  const gone = (agg.otherVariants ?? []).filter((v) => v.units > 0 || v.requests > 0);
  if (gone.length > 0) {
    const list = gone.map((v) => `${v.variant} (${v.units} units, ${v.requests} requests)`).join(", ");
    notes.push(`units first assigned to variants no longer in the config are left out of the analysis: ${list}`);
  }
  const unexposedEventUnits = countByEvent(agg, metrics, "unexposedUnits");
  for (const [event, n] of Object.entries(unexposedEventUnits)) {
    if (n === 0) continue;
    notes.push(
      `${n} unit${n === 1 ? "" : "s"} sent "${event}" events but ${n === 1 ? "was" : "were"} never exposed (forced requests aside), so ${n === 1 ? "its" : "their"} events count nowhere: do the events carry the unit the proxy assigns by?`,
    );
  }
  const earlyEventUnits = countByEvent(agg, metrics, "earlyEventUnits");
  for (const [event, n] of Object.entries(earlyEventUnits)) {
    if (n === 0) continue;
    notes.push(
      `${n} unit${n === 1 ? "" : "s"} sent "${event}" events before ${n === 1 ? "its" : "their"} first exposure; those events count nowhere (a unit converts from its first exposure on): if the events carry a ts from the client, is its clock behind the server's?`,
    );
  }
  const elsewhere = agg.otherExperiments ?? [];
  if (elsewhere.length > 0) {
    notes.push(`this store has no exposures of experiment ${agg.experiment}, but has some of ${elsewhere.join(", ")}: is the config's experiment: (or store:) the one meant?`);
  }
  return {
    forcedRequests: agg.forcedRequests,
    multiVariantUnits: agg.multiVariantUnits,
    fallbackRequests,
    unexposedEventUnits,
    earlyEventUnits,
    firstExposureAt: isoOrNull(agg.firstExposureTs),
    lastExposureAt: isoOrNull(agg.lastExposureTs),
    notes,
  };
}

interface DecisionInput {
  variants: VariantSummary[];
  control: string | null;
  totalUnits: number;
  totalWeight: number;
  srm: SrmSummary;
  metrics: MetricReport[];
  guardrails: GuardrailReport[];
  primaryName: string | null;
  /** the event the primary metric counts */
  primaryEvent: string | null;
  alpha: number;
  tau2Standardized: number;
  familySize: number;
  correction: Correction;
  aggregates: ExperimentAggregates;
}

/**
 * The verdict, in this order: nothing to analyse → continue; a guardrail significantly broken → rollback (safety
 * first, even under SRM); SRM → continue (the split itself is suspect); the primary metric (first conversion or
 * mean metric) won by a treatment with the sequential test at alpha after correction → promote; every treatment
 * significantly worse → rollback; otherwise continue, with the units the best treatment still needs. Guardrails and
 * "every treatment worse" count only the treatments in the split (weight > 0), unless none is.
 */
function decide(d: DecisionInput): Decision {
  const cont = (reason: string, unitsNeeded?: number | null): Decision => ({ action: "continue", variant: null, reason, ...(unitsNeeded !== undefined ? { unitsNeeded } : {}) });
  if (d.control === null) return cont("No variants are configured: there is nothing to analyse.");
  if (d.variants.length < 2) return cont(`Only one variant (${d.control}) is configured: there is nothing to compare it with.`);
  if (d.totalUnits === 0) return cont("No exposures yet: no unit has been routed to any variant, so there is nothing to analyse.");

  // The treatments in the split: a variant set to weight 0 is out of it, and its results no longer decide what to do
  // with the others (its broken guardrail would otherwise ask for a rollback for good, since the always-valid p keeps
  // its running minimum). With every treatment off, all of them count, as before the split changed.
  const inSplit = new Set(d.variants.filter((v) => v.name !== d.control && v.weight > 0).map((v) => v.name));
  const decides = (variant: string) => inSplit.size === 0 || inSplit.has(variant);
  const broken = d.guardrails.filter((g) => !g.ok && decides(g.variant));
  if (broken.length > 0) {
    const list = broken.map((g) => `${g.variant} breaks the ${g.name} guardrail: ${g.detail}`).join("; ");
    const brokenVariants = new Set(broken.map((g) => g.variant));
    const others = [...inSplit].filter((v) => !brokenVariants.has(v));
    const alternative =
      others.length > 0
        ? ` Or set ${[...brokenVariants].join(" and ")} to weight 0 to go on with ${others.join(", ")}.`
        : "";
    return { action: "rollback", variant: d.control, reason: `Roll back to ${d.control}: ${list}.${alternative}` };
  }
  // Past the check above, every variant that broke a guardrail is out of the split (weight 0). It is never
  // recommended, and a promotion's reason names it.
  const guardBroken = new Set(d.guardrails.filter((g) => !g.ok).map((g) => g.variant));
  if (d.srm.mismatch) {
    return cont(
      `Sample ratio mismatch: ${d.srm.note.split(";")[0]}. The split itself is suspect, so no result can be trusted; check assignment, fallback and weight changes before deciding.`,
    );
  }
  if (d.primaryName === null) return cont("No conversion or mean metric is configured, so there is no primary metric to decide on.");
  const primary = d.metrics.find((m) => m.name === d.primaryName)!;
  const primaryAgg = d.aggregates.metrics.find((m) => m.name === d.primaryName);
  if (!hasOutcomes(primaryAgg)) {
    const what = primary.kind === "mean" ? `no "${d.primaryEvent}" events with a value other than 0` : `no "${d.primaryEvent}" events`;
    return cont(`No outcomes for the primary metric "${d.primaryName}" yet: units are being exposed, but ${what} have been attributed to them.`);
  }
  const drifting = primary.comparisons.filter((c) => c.sequentialError === "NON_STATIONARY" && decides(c.variant));
  if (drifting.length > 0) {
    return cont(
      `The effect on ${primary.name} is not stable over time: the always-valid intervals of earlier reports and of now do not overlap for ${drifting.map((c) => c.variant).join(", ")} (NON_STATIONARY), so no single difference describes the data. Nothing is decided; find out what changed (a novelty effect, a deployment, a shift in traffic) and restart the experiment to measure the current effect.`,
      null,
    );
  }

  const corrected = d.correction === "none" ? "" : `, ${d.correction}-adjusted over ${d.familySize} comparison${d.familySize === 1 ? "" : "s"}`;
  // The direction is the side of 0 the running intersection of the always-valid intervals lies on, not the sign of
  // the current estimate (significance may rest on earlier looks).
  const winners = primary.comparisons.filter((c) => c.significant && c.sequentialCi !== null && c.sequentialCi[0] > 0 && !guardBroken.has(c.variant));
  if (winners.length > 0) {
    const best = winners.reduce((a, b) => ((b.absolute.estimate ?? 0) > (a.absolute.estimate ?? 0) ? b : a));
    const others = winners.filter((w) => w !== best).map((w) => w.variant);
    return {
      action: "promote",
      variant: best.variant,
      reason:
        `${best.variant} beats ${d.control} on ${primary.name}: ${versus(primary, best)}` +
        `${describeLift(best)}, always-valid p = ${fmtP(best.pValueSequentialAdjusted)}${corrected} < ${d.alpha}. ` +
        `Guardrails hold${guardBroken.size > 0 ? ` for the variants in the split (${[...guardBroken].join(", ")}, at weight 0, broke one)` : ""}${splitClause(d)}.` +
        (others.length > 0 ? ` ${others.join(", ")} also beat${others.length === 1 ? "s" : ""} the control; ${best.variant} has the larger difference.` : ""),
    };
  }
  const deciding = primary.comparisons.filter((c) => decides(c.variant));
  const losers = deciding.filter((c) => c.significant && c.sequentialCi !== null && c.sequentialCi[1] < 0);
  if (losers.length > 0 && losers.length === deciding.length) {
    return {
      action: "rollback",
      variant: d.control,
      reason: `Roll back to ${d.control}: ${losers.map((c) => `${c.variant} is significantly worse on ${primary.name} (${versus(primary, c)}, always-valid p = ${fmtP(c.pValueSequentialAdjusted)})`).join("; ")}.`,
    };
  }
  return continueWithEstimate(d, primary, guardBroken);
}

/**
 * "treatment's value vs the control's", as the comparison compares them: the period-weighted means when it is
 * post-stratified (the plain rates of arms whose periods differ are what misled), else the plain ones.
 */
function versus(primary: MetricReport, c: Comparison): string {
  if (c.adjusted === undefined) return `${describeValue(primary, c.value)} vs ${describeValue(primary, primary.control.value)}`;
  const over = c.adjusted.periods === 1 ? "in the one weight period that has both" : `weighted over ${c.adjusted.periods} weight periods`;
  return `${describeValue(primary, c.adjusted.value)} vs ${describeValue(primary, c.adjusted.control)} (${over})`;
}

/** What a promotion's reason says of the split, after "Guardrails hold". */
function splitClause(d: DecisionInput): string {
  if (d.srm.reason === "ADAPTIVE_ALLOCATION") return "; the split is not checked under the bandit's moving weights";
  if (d.srm.judged) return " and the split matches the weights";
  if (d.variants.filter((v) => v.weight > 0).length < 2) return " (one variant takes all traffic: no split to check)";
  return " (the split is not judged yet)";
}

function continueWithEstimate(d: DecisionInput, primary: MetricReport, guardBroken: ReadonlySet<string>): Decision {
  const ahead = primary.comparisons.filter((c) => (c.absolute.estimate ?? 0) > 0 && !c.significant && !guardBroken.has(c.variant));
  if (ahead.length === 0) {
    return {
      action: "continue",
      variant: null,
      reason: `No treatment is ahead of ${d.control} on ${primary.name} so far; keep collecting data, or stop the experiment if no difference is worth waiting for.`,
      unitsNeeded: null,
    };
  }
  const best = ahead.reduce((a, b) => ((b.absolute.estimate ?? 0) > (a.absolute.estimate ?? 0) ? b : a));
  const needed = unitsStillNeeded(d, primary, best);
  const lift = `${versus(primary, best)}${describeLift(best)}`;
  const p = best.pValueSequentialAdjusted === null ? "no sequential p-value yet" : `always-valid p = ${fmtP(best.pValueSequentialAdjusted)}`;
  const more =
    needed === null
      ? "the number of units still needed cannot be estimated yet"
      : needed === 0
        ? "the data should be close to enough; keep going"
        : `about ${needed.toLocaleString("en-US")} more units (all variants together) would show it with ${PLANNING_POWER * 100}% power if the difference holds`;
  return {
    action: "continue",
    variant: null,
    reason: `${best.variant} leads on ${primary.name} (${lift}) but not significantly yet (${p}, needs < ${d.alpha}); ${more}.`,
    unitsNeeded: needed,
  };
}

/**
 * Units (all variants together) still needed before the mSPRT would detect the observed difference with 80% power,
 * at alpha divided by the family size (Bonferroni, the worst case of Holm) when a correction is on.
 */
function unitsStillNeeded(d: DecisionInput, primary: MetricReport, best: Comparison): number | null {
  const metric = d.aggregates.metrics.find((m) => m.name === primary.name);
  if (!metric || d.control === null || d.totalWeight <= 0) return null;
  const c = armStats(metric, d.control);
  const t = armStats(metric, best.variant);
  const wC = d.variants.find((v) => v.name === d.control)?.weight ?? 0;
  const wT = d.variants.find((v) => v.name === best.variant)?.weight ?? 0;
  if (wC <= 0 || wT <= 0 || best.absolute.estimate === null) return null;
  const dof = c.units + t.units - 2;
  const pooledVariance = dof > 0 ? ((c.units - 1) * c.variance + (t.units - 1) * t.variance) / dof : 0;
  const varianceControl = c.variance > 0 ? c.variance : pooledVariance;
  const varianceTreatment = t.variance > 0 ? t.variance : pooledVariance;
  const alpha = d.correction === "none" ? d.alpha : d.alpha / Math.max(1, d.familySize);
  return sequentialUnitsMore({
    effect: best.absolute.estimate,
    varianceControl,
    varianceTreatment,
    shareControl: wC / d.totalWeight,
    shareTreatment: wT / d.totalWeight,
    alpha,
    power: PLANNING_POWER,
    tau2: d.tau2Standardized * (pooledVariance > 0 ? pooledVariance : Math.max(varianceControl, varianceTreatment)),
    unitsControl: c.units,
    unitsTreatment: t.units,
  });
}

function hasOutcomes(metric: MetricAggregate | undefined): boolean {
  if (!metric) return false;
  if (metric.kind === "conversion" || metric.kind === "error_rate") {
    return Object.values(metric.byVariant).some((p) => p.conversions > 0);
  }
  return Object.values(metric.byVariant).some((m) => m.sum !== 0 || m.sumSquares !== 0);
}

function describeValue(metric: MetricReport, value: number | null): string {
  if (value === null) return "n/a";
  return metric.kind === "conversion" || metric.kind === "error_rate" ? fmtPct(value) : metric.kind === "latency" ? `${fmt(value)} ms` : fmt(value);
}

function describeLift(c: Comparison): string {
  const r = c.relative;
  if (r.estimate === null) return "";
  return r.ci ? `, ${fmtSignedPct(r.estimate)} [${fmtSignedPct(r.ci[0])}, ${fmtSignedPct(r.ci[1])}]` : `, ${fmtSignedPct(r.estimate)}`;
}

/** 4 significant digits, no exponent for ordinary magnitudes. */
export function fmt(x: number | null): string {
  if (x === null || !Number.isFinite(x)) return "n/a";
  if (x === 0) return "0";
  const a = Math.abs(x);
  if (a >= 1e6 || a < 1e-3) return x.toExponential(2);
  return Number(x.toPrecision(4)).toString();
}

/** p-values: 3 significant digits, exponent below 1e-4. */
export function fmtP(p: number | null): string {
  if (p === null || !Number.isFinite(p)) return "n/a";
  if (p === 0) return "0";
  if (p < 1e-4) return p.toExponential(1);
  return Number(p.toPrecision(3)).toString();
}

export function fmtPct(x: number | null): string {
  if (x === null || !Number.isFinite(x * 100)) return "n/a";
  const percent = x * 100;
  return Math.abs(percent) >= 1e6 ? `${percent.toExponential(2)}%` : `${Number(percent.toPrecision(3))}%`;
}

export function fmtSignedPct(x: number | null): string {
  if (x === null || !Number.isFinite(x)) return "n/a";
  return `${x >= 0 ? "+" : ""}${fmtPct(x)}`;
}
