/**
 * Why a statistic could not be computed (or was computed on degenerate data). Results carry the code instead of
 * NaN or an exception, so JSON output never holds NaN or Infinity.
 * - ZERO_UNITS: an arm has no units
 * - TOO_FEW_UNITS: a mean needs at least 2 units per arm for a variance
 * - ZERO_VARIANCE: no spread in either arm (all 0, all 1, or constant values)
 * - CONTROL_RATE_ZERO / CONTROL_MEAN_ZERO: the relative lift divides by 0
 * - SINGLE_ARM: fewer than 2 arms with weight > 0
 * - INVALID_INPUT: negative counts, conversions above units, non-finite numbers, bad parameters (alpha outside (0, 1))
 * - NON_STATIONARY: the always-valid intervals of different looks do not overlap (no constant effect fits the data)
 */
export type StatsErrorCode =
  | "ZERO_UNITS"
  | "TOO_FEW_UNITS"
  | "ZERO_VARIANCE"
  | "CONTROL_RATE_ZERO"
  | "CONTROL_MEAN_ZERO"
  | "SINGLE_ARM"
  | "INVALID_INPUT"
  | "NON_STATIONARY";

export interface ProportionSample {
  units: number;
  conversions: number;
}

export interface MeanSample {
  n: number;
  sum: number;
  sumSquares: number;
}

export interface TestOptions {
  /** two-sided level of the intervals; default 0.05 */
  alpha?: number;
}

/** A point estimate and its (1 - alpha) interval; null where it cannot be computed. */
export interface Interval {
  estimate: number | null;
  ci: [number, number] | null;
}

export interface ProportionTestResult {
  z: number | null;
  pValue: number | null;
  /** p_T - p_C */
  absolute: Interval;
  /** (p_T - p_C) / p_C */
  relative: Interval;
  error?: StatsErrorCode;
}

export interface MeanTestResult {
  t: number | null;
  df: number | null;
  pValue: number | null;
  absolute: Interval;
  relative: Interval;
  error?: StatsErrorCode;
}

export interface SrmResult {
  chiSquare: number | null;
  df: number | null;
  pValue: number | null;
  error?: StatsErrorCode;
}

export interface MixtureSprtInput {
  /** observed difference (treatment - control) */
  diff: number;
  /** variance of `diff` (V_C/n_C + V_T/n_T) */
  varDiff: number;
  /** variance of the normal mixing distribution over the true difference, on the scale of `diff` */
  tau2: number;
  /** default 0.05 */
  alpha?: number;
}

export interface MixtureSprtResult {
  /** log of the mixture likelihood ratio Λ */
  logLambda: number | null;
  /** min(1, 1/Λ) at this look; the always-valid p-value is the running minimum over looks */
  pValue: number | null;
  /** always-valid (1 - alpha) confidence interval for the difference at this look */
  ci: [number, number] | null;
  error?: StatsErrorCode;
}

export type Correction = "holm" | "bh" | "none";

export interface OneSidedSprtResult {
  /** log of the one-sided mixture likelihood ratio Λ (null when it cannot be computed or overflows) */
  logLambda: number | null;
  /** min(1, 1/Λ) at this look, for H0 θ ≤ 0; the always-valid p-value is the running minimum over looks */
  pValue: number | null;
  error?: StatsErrorCode;
}

/** One look of an always-valid guardrail test on the shifted contrast D (H0: D's mean ≤ 0). */
export interface GuardrailSequentialResult extends OneSidedSprtResult {
  /** the shifted contrast m_T − k·m_C − c (or p_T − k·p_C − c) */
  estimate: number | null;
  /** its variance at this look (plug-in for means, at the restricted MLE for rates) */
  variance: number | null;
}
