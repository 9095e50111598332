import { chiSquareSf, erfc, normalQuantile, studentTQuantile, studentTSf } from "./distributions.ts";
import type { Interval, MeanSample, MeanTestResult, ProportionSample, ProportionTestResult, SrmResult, StatsErrorCode, TestOptions } from "./types.ts";

const NO_INTERVAL: Interval = { estimate: null, ci: null };

/** An argument that is not an object (null, a number): a data problem (INVALID_INPUT), not a TypeError. */
function isObject(x: unknown): x is object {
  return typeof x === "object" && x !== null;
}

/** Two-sided normal p-value 2·(1 - Φ(|z|)) = erfc(|z|/√2), from the tail. */
export function twoSidedNormalP(z: number): number {
  return erfc(Math.abs(z) / Math.SQRT2);
}

function finiteOrNull(x: number): number | null {
  return Number.isFinite(x) ? x : null;
}

/**
 * center ± halfWidth, or null unless both ends are finite: a finite half-width beside a huge center can still
 * overflow an end (a property test found -Infinity there), and JSON has no infinities.
 */
export function symmetricCi(center: number, halfWidth: number): [number, number] | null {
  const lower = center - halfWidth;
  const upper = center + halfWidth;
  return Number.isFinite(lower) && Number.isFinite(upper) ? [lower, upper] : null;
}

function interval(estimate: number, halfWidth: number): Interval {
  if (!Number.isFinite(estimate)) return NO_INTERVAL;
  return { estimate, ci: symmetricCi(estimate, halfWidth) };
}

/** The options' alpha: 0.05 when not given, null (INVALID_INPUT) when given outside (0, 1), rather than silently 0.05. */
export function alphaOf(alpha: number | undefined): number | null {
  if (alpha === undefined) return 0.05;
  return typeof alpha === "number" && alpha > 0 && alpha < 1 ? alpha : null;
}

/**
 * A count of units, conversions or errors: a whole number. A fraction (say 10.5 units) is not a sample these tests
 * are defined on, and most often comes from a caller's arithmetic error, so it is INVALID_INPUT, as chanceToWin has it.
 */
function isCount(x: number): boolean {
  return Number.isInteger(x) && x >= 0;
}

/**
 * Two-proportion comparison of treatment against control.
 * - z and p: pooled two-proportion z-test, z = (p_T - p_C) / √(p̄(1-p̄)(1/n_C + 1/n_T)) (e.g. Agresti,
 *   Categorical Data Analysis, 3rd ed. §3.1.3; equivalent to Pearson's χ² on the 2×2 table).
 * - absolute: p_T - p_C with the unpooled Wald interval ± z_{1-α/2}·√(p_C(1-p_C)/n_C + p_T(1-p_T)/n_T).
 * - relative: p_T/p_C - 1 with its delta-method standard error √(V_T/p_C² + p_T²·V_C/p_C⁴)
 *   (Casella & Berger, Statistical Inference, §5.5.4), normal quantile.
 * Data problems give an `error` code and nulls (ZERO_UNITS, INVALID_INPUT, CONTROL_RATE_ZERO, ZERO_VARIANCE).
 */
export function proportionTest(control: ProportionSample, treatment: ProportionSample, options: TestOptions = {}): ProportionTestResult {
  const alpha = alphaOf(options?.alpha);
  if (!isObject(control) || !isObject(treatment)) return { z: null, pValue: null, absolute: NO_INTERVAL, relative: NO_INTERVAL, error: "INVALID_INPUT" };
  const { units: nC, conversions: cC } = control;
  const { units: nT, conversions: cT } = treatment;
  if (alpha === null || ![nC, cC, nT, cT].every(isCount) || cC > nC || cT > nT) {
    return { z: null, pValue: null, absolute: NO_INTERVAL, relative: NO_INTERVAL, error: "INVALID_INPUT" };
  }
  if (nC === 0 || nT === 0) return { z: null, pValue: null, absolute: NO_INTERVAL, relative: NO_INTERVAL, error: "ZERO_UNITS" };
  // Beyond this the pooled rate's sums overflow (and no experiment counts 10^308 units).
  if (nC + nT === Infinity) return { z: null, pValue: null, absolute: NO_INTERVAL, relative: NO_INTERVAL, error: "INVALID_INPUT" };
  const pC = cC / nC;
  const pT = cT / nT;
  const diff = pT - pC;
  // From the lower tail: 1 - alpha/2 rounds away the digits a small alpha needs (and to 1 at alpha = 1e-16).
  const q = -normalQuantile(alpha / 2);
  const varC = (pC * (1 - pC)) / nC;
  const varT = (pT * (1 - pT)) / nT;
  let absolute = interval(diff, q * Math.sqrt(varC + varT));
  let error: StatsErrorCode | undefined;
  let relative: Interval = NO_INTERVAL;
  if (pC > 0) relative = interval(pT / pC - 1, q * Math.sqrt(varT / (pC * pC) + (pT * pT * varC) / (pC * pC * pC * pC)));
  else error = "CONTROL_RATE_ZERO";
  if (!(varC + varT > 0)) {
    // Each arm all-zero or all-one (1 of 1 against 0 of 1, or 5 of 5 against 9 of 9): the Wald interval has no width
    // (Agresti, Categorical Data Analysis, 2013, §3.1), a certainty no sample gives, equal arms included (their true
    // rates may well differ). No interval, as meanTest gives none; the pooled test below may still have a variance.
    absolute = { estimate: diff, ci: null };
    relative = { estimate: relative.estimate, ci: null };
    error ??= "ZERO_VARIANCE";
  }
  const pooled = (cC + cT) / (nC + nT);
  const se0 = Math.sqrt(pooled * (1 - pooled) * (1 / nC + 1 / nT));
  if (!(se0 > 0)) {
    // Both arms all-zero or all-one: the rates are equal and there is no evidence of a difference.
    return { z: 0, pValue: 1, absolute, relative, error: error ?? "ZERO_VARIANCE" };
  }
  const z = diff / se0;
  const result: ProportionTestResult = { z, pValue: twoSidedNormalP(z), absolute, relative };
  if (error) result.error = error;
  return result;
}

/**
 * Sums that no data could give: Σx² below (Σx)²/n by more than rounding (Cauchy–Schwarz), which meanAndVariance
 * would clamp to a variance of 0 and so read as certainty. The tolerance is relative: sums of 10^7 doubles carry
 * about 1e-9 of relative error.
 */
export function impossibleMeanSample(s: MeanSample): boolean {
  if (!(s.n > 0)) return false;
  const deficit = s.sum * (s.sum / s.n) - s.sumSquares;
  // The floor: the stores drop squares below about 1e-320 (values under 1e-160), so sums of such values have a sum
  // of squares of 0.
  return deficit > 1e-6 * s.sumSquares && deficit > 1e-290;
}

/** Sample mean and unbiased variance from sufficient statistics; variance clamped at 0 against rounding. */
export function meanAndVariance(s: MeanSample): { mean: number; variance: number } {
  const mean = s.sum / s.n;
  const variance = s.n > 1 ? Math.max(0, (s.sumSquares - s.sum * mean) / (s.n - 1)) : 0;
  return { mean, variance };
}

/**
 * Welch–Satterthwaite degrees of freedom (V_C + V_T)² / (V_C²/(n_C-1) + V_T²/(n_T-1)), scaled by the larger variance
 * first so that tiny variances do not underflow to 0/0.
 */
function welchDf(vC: number, vT: number, nC: number, nT: number): number {
  const scale = Math.max(vC, vT);
  const a = vC / scale;
  const b = vT / scale;
  return ((a + b) * (a + b)) / ((a * a) / (nC - 1) + (b * b) / (nT - 1));
}

/**
 * Welch's unequal-variance t-test of treatment against control (Welch 1947), df by Welch–Satterthwaite:
 * df = (V_C + V_T)² / (V_C²/(n_C-1) + V_T²/(n_T-1)) with V = s²/n. The absolute interval uses the t quantile at
 * that df; the relative lift m_T/m_C - 1 uses the delta-method standard error √(V_T/m_C² + m_T²·V_C/m_C⁴) with
 * the same quantile. Needs n ≥ 2 in both arms (TOO_FEW_UNITS otherwise).
 */
export function meanTest(control: MeanSample, treatment: MeanSample, options: TestOptions = {}): MeanTestResult {
  const alpha = alphaOf(options?.alpha);
  const empty = { t: null, df: null, pValue: null, absolute: NO_INTERVAL, relative: NO_INTERVAL };
  if (!isObject(control) || !isObject(treatment)) return { ...empty, error: "INVALID_INPUT" };
  const all = [control.n, control.sum, control.sumSquares, treatment.n, treatment.sum, treatment.sumSquares];
  if (alpha === null || !all.every(Number.isFinite) || !Number.isInteger(control.n) || !Number.isInteger(treatment.n) || control.n < 0 || treatment.n < 0 || control.sumSquares < 0 || treatment.sumSquares < 0 || impossibleMeanSample(control) || impossibleMeanSample(treatment)) {
    return { ...empty, error: "INVALID_INPUT" };
  }
  if (control.n === 0 || treatment.n === 0) return { ...empty, error: "ZERO_UNITS" };
  const c = meanAndVariance(control);
  const tr = meanAndVariance(treatment);
  const diff = tr.mean - c.mean;
  const relativeEstimate = c.mean !== 0 ? tr.mean / c.mean - 1 : NaN;
  if (control.n < 2 || treatment.n < 2) {
    return {
      ...empty,
      absolute: { estimate: diff, ci: null },
      relative: { estimate: finiteOrNull(relativeEstimate), ci: null },
      error: "TOO_FEW_UNITS",
    };
  }
  const vC = c.variance / control.n;
  const vT = tr.variance / treatment.n;
  const se = Math.sqrt(vC + vT);
  if (!(se > 0)) {
    const same = diff === 0;
    return {
      t: same ? 0 : null,
      df: null,
      pValue: same ? 1 : null,
      // No interval even for equal arms: constant samples make the Welch interval [0, 0], which no sample can show.
      absolute: { estimate: diff, ci: null },
      relative: { estimate: finiteOrNull(relativeEstimate), ci: null },
      error: "ZERO_VARIANCE",
    };
  }
  const df = welchDf(vC, vT, control.n, treatment.n);
  const t = diff / se;
  if (!Number.isFinite(t)) {
    // variances so small (subnormal) that diff / se overflows: as good as zero variance
    return { ...empty, absolute: { estimate: diff, ci: null }, relative: { estimate: finiteOrNull(relativeEstimate), ci: null }, error: "ZERO_VARIANCE" };
  }
  const q = -studentTQuantile(alpha / 2, df);
  const absolute = interval(diff, q * se);
  let relative: Interval = NO_INTERVAL;
  let error: StatsErrorCode | undefined;
  if (c.mean !== 0) {
    const m2 = c.mean * c.mean;
    relative = interval(relativeEstimate, q * Math.sqrt(vT / m2 + (tr.mean * tr.mean * vC) / (m2 * m2)));
  } else error = "CONTROL_MEAN_ZERO";
  const result: MeanTestResult = { t, df, pValue: Math.min(1, 2 * studentTSf(Math.abs(t), df)), absolute, relative };
  if (error) result.error = error;
  return result;
}

/**
 * One-sided Welch test that a linear contrast D = m_T - k·m_C - c exceeds 0, i.e. H0: μ_T ≤ k·μ_C + c.
 * The guardrails' fixed-horizon p (reported for information; the decision uses the always-valid
 * `meanIncreaseSequential` in sequential.ts, since this test re-read at every report inflates false rollbacks):
 * k = 1 + maxRelativeIncrease (c = 0), or k = 1, c = maxAbsoluteIncrease. The variance of D is
 * V_T + k²V_C with Welch–Satterthwaite df for that weighted sum (Satterthwaite 1946), so no delta method is needed.
 */
export function welchOneSidedIncrease(control: MeanSample, treatment: MeanSample, k: number, c: number): { estimate: number | null; pValue: number | null; error?: StatsErrorCode } {
  if (impossibleMeanSample(control) || impossibleMeanSample(treatment)) return { estimate: null, pValue: null, error: "INVALID_INPUT" };
  if (control.n < 2 || treatment.n < 2) return { estimate: null, pValue: null, error: control.n === 0 || treatment.n === 0 ? "ZERO_UNITS" : "TOO_FEW_UNITS" };
  const cm = meanAndVariance(control);
  const tm = meanAndVariance(treatment);
  const d = tm.mean - k * cm.mean - c;
  const vC = (k * k * cm.variance) / control.n;
  const vT = tm.variance / treatment.n;
  const se = Math.sqrt(vC + vT);
  if (!(se > 0)) return { estimate: d, pValue: d > 0 ? 0 : 1, error: "ZERO_VARIANCE" };
  const df = welchDf(vC, vT, control.n, treatment.n);
  const t = d / se;
  if (!Number.isFinite(t)) return { estimate: d, pValue: d > 0 ? 0 : 1, error: "ZERO_VARIANCE" };
  return { estimate: d, pValue: studentTSf(t, df) };
}

/**
 * One-sided score test that p_T - k·p_C - c exceeds 0, i.e. H0: p_T ≤ k·p_C + c, for error-rate guardrails
 * (Farrington & Manning, Statistics in Medicine 9, 1990; Miettinen & Nurminen 1985 without their n/(n-1) factor):
 * z = (p̂_T - k·p̂_C - c) / √(p̃_T(1-p̃_T)/n_T + k²·p̃_C(1-p̃_C)/n_C), with p̃ the maximum-likelihood estimates
 * restricted to the boundary p_T = k·p_C + c. The unpooled Wald variance (p̂ in place of p̃) is anti-conservative
 * when an arm has few or no errors: control 0/5000 against treatment 3/5000 at k = 1.2 gave p = 0.042, while the
 * exact conditional p is (1.2/2.2)³ = 0.16; the restricted estimates put variance where H0 says it must be.
 * Fixed-horizon: the report shows it for information and decides on the always-valid `proportionIncreaseSequential`.
 */
export function proportionOneSidedIncrease(control: ProportionSample, treatment: ProportionSample, k: number, c: number): { estimate: number | null; pValue: number | null; error?: StatsErrorCode } {
  const counts = [control.units, control.conversions, treatment.units, treatment.conversions];
  if (!counts.every(isCount) || control.conversions > control.units || treatment.conversions > treatment.units || !(k > 0) || !Number.isFinite(k) || !Number.isFinite(c)) {
    return { estimate: null, pValue: null, error: "INVALID_INPUT" };
  }
  if (control.units === 0 || treatment.units === 0) return { estimate: null, pValue: null, error: "ZERO_UNITS" };
  const pC = control.conversions / control.units;
  const pT = treatment.conversions / treatment.units;
  const d = pT - k * pC - c;
  const restricted = restrictedMle(control, treatment, k, c);
  // c ≥ 1 (or k·p_C + c never in [0, 1]): H0 holds for every possible rate, nothing can exceed the limit
  if (restricted === null) return { estimate: d, pValue: 1 };
  const { pC: rC, pT: rT } = restricted;
  const se = Math.sqrt((rT * (1 - rT)) / treatment.units + (k * k * rC * (1 - rC)) / control.units);
  if (!(se > 0) || !Number.isFinite(d / se)) return { estimate: d, pValue: d > 0 ? 0 : 1, error: "ZERO_VARIANCE" };
  return { estimate: d, pValue: 0.5 * erfc(d / se / Math.SQRT2) };
}

/**
 * Maximum-likelihood (p_C, p_T) of two binomials restricted to p_T = k·p_C + c (k > 0), for the score test above.
 * The log-likelihood x_C ln p + (n_C-x_C) ln(1-p) + x_T ln(kp+c) + (n_T-x_T) ln(1-kp-c) is concave in p on the
 * interval where both rates are in [0, 1], so its maximum is the root of the (decreasing) derivative there, or an
 * end of the interval; found by bisection to full precision. (Farrington & Manning give it as the root of a cubic
 * for k = 1 and Miettinen & Nurminen of a quadratic for c = 0; bisection covers both, and any k and c, without the
 * cancellation of the closed forms.) null when the interval is empty.
 */
export function restrictedMle(control: ProportionSample, treatment: ProportionSample, k: number, c: number): { pC: number; pT: number } | null {
  const lo = Math.max(0, -c / k);
  const hi = Math.min(1, (1 - c) / k);
  if (!(lo <= hi)) return null;
  const xC = control.conversions;
  const yC = control.units - xC;
  const xT = treatment.conversions;
  const yT = treatment.units - xT;
  // derivative of the log-likelihood; a count of 0 contributes nothing, even where its rate is 0 or 1
  const slope = (p: number): number => {
    const q = k * p + c;
    let g = 0;
    if (xC > 0) g += xC / p;
    if (yC > 0) g -= yC / (1 - p);
    if (xT > 0) g += (k * xT) / q;
    if (yT > 0) g -= (k * yT) / (1 - q);
    return g;
  };
  let p: number;
  if (lo === hi || !(slope(lo) > 0)) p = lo;
  else if (!(slope(hi) < 0)) p = hi;
  else {
    let a = lo;
    let b = hi;
    for (let i = 0; i < 2000; i++) {
      const m = 0.5 * (a + b);
      if (m <= a || m >= b) break;
      if (slope(m) > 0) a = m;
      else b = m;
    }
    p = 0.5 * (a + b);
  }
  const pT = Math.min(1, Math.max(0, k * p + c));
  return { pC: p, pT };
}

/**
 * Sample ratio mismatch: Pearson's χ² goodness of fit of the observed units against the configured weights.
 * Arms with weight 0 are left out (their expected count is 0); df = arms - 1; p = Q(df/2, χ²/2).
 */
export function srmTest(observed: number[], weights: number[]): SrmResult {
  if (!Array.isArray(observed) || !Array.isArray(weights) || observed.length !== weights.length || !observed.every(isCount) || !weights.every((w) => Number.isFinite(w) && w >= 0)) {
    return { chiSquare: null, df: null, pValue: null, error: "INVALID_INPUT" };
  }
  // Weights relative to the largest, so that their sum cannot overflow (only their shares matter).
  const maxWeight = Math.max(0, ...weights);
  const weightSum = maxWeight > 0 ? weights.reduce((s, w) => s + w / maxWeight, 0) : 0;
  // Shares first: a weight too small to matter next to the others counts as 0 rather than dividing by 0.
  const arms = observed.map((o, i) => ({ o, share: weightSum > 0 ? weights[i]! / maxWeight / weightSum : 0 })).filter((a) => a.share > 0);
  if (arms.length < 2) return { chiSquare: null, df: null, pValue: null, error: "SINGLE_ARM" };
  const total = arms.reduce((s, a) => s + a.o, 0);
  const df = arms.length - 1;
  if (total === 0) return { chiSquare: null, df, pValue: null, error: "ZERO_UNITS" };
  // Counts whose total leaves the doubles: no statistic can be computed from them (it came out NaN, read as p = 0).
  if (total === Infinity) return { chiSquare: null, df, pValue: null, error: "INVALID_INPUT" };
  const shareSum = arms.reduce((s, a) => s + a.share, 0);
  let chiSquare = 0;
  for (const a of arms) {
    const expected = (total * a.share) / shareSum;
    chiSquare += ((a.o - expected) * (a.o - expected)) / expected;
  }
  if (Number.isNaN(chiSquare)) return { chiSquare: null, df, pValue: null, error: "INVALID_INPUT" };
  if (!Number.isFinite(chiSquare)) return { chiSquare: null, df, pValue: 0 };
  return { chiSquare, df, pValue: chiSquareSf(chiSquare, df) };
}
