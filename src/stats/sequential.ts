import { erfc } from "./distributions.ts";
import { alphaOf, impossibleMeanSample, meanAndVariance, restrictedMle, symmetricCi } from "./frequentist.ts";
import type { GuardrailSequentialResult, MeanSample, MixtureSprtInput, MixtureSprtResult, OneSidedSprtResult, ProportionSample } from "./types.ts";

/**
 * Normal-mixture sequential probability ratio test (mSPRT) for one look, after Johari, Koomen, Pekelis & Walsh,
 * "Peeking at A/B Tests" (KDD 2017) and "Always Valid Inference" (Operations Research 2022): with the
 * estimate D ~ N(θ, V) and the mixing distribution θ ~ N(0, τ²) under the alternative,
 *
 *   Λ = √(V / (V + τ²)) · exp( τ² D² / (2V(V + τ²)) )
 *
 * The always-valid p-value is p_n = min(1, 1/Λ_n) running-minimised over looks, and the
 * always-valid (1 - α) interval is D ± √( V(V + τ²)/τ² · (ln((V + τ²)/V) - 2 ln α) ), the set of θ whose shifted
 * ratio stays below 1/α. V is the variance of the difference estimated at this look (the report's: see compare).
 */
export function mixtureSprt(input: MixtureSprtInput): MixtureSprtResult {
  if (typeof input !== "object" || input === null) return { logLambda: null, pValue: null, ci: null, error: "INVALID_INPUT" };
  const { diff, varDiff, tau2 } = input;
  const alpha = alphaOf(input.alpha);
  if (alpha === null || !Number.isFinite(diff) || !Number.isFinite(varDiff) || varDiff < 0 || !(tau2 > 0) || !Number.isFinite(tau2)) {
    return { logLambda: null, pValue: null, ci: null, error: "INVALID_INPUT" };
  }
  if (varDiff === 0) {
    if (diff === 0) return { logLambda: 0, pValue: 1, ci: [0, 0], error: "ZERO_VARIANCE" };
    return { logLambda: null, pValue: null, ci: null, error: "ZERO_VARIANCE" };
  }
  const { q, lnOnePlusQ, w, z } = scaleFree(diff, varDiff, tau2);
  // ln Λ = -½ ln(1 + q) + ½ w z², and the half-width √V · √(1/w · (ln(1 + q) - 2 ln α)): the formulas above with V
  // and τ² only as their ratio, so that metrics in large or small units (1e100, 1e-90: V·(V + τ²) leaves the double
  // range) give the same answer as in units near 1.
  const logLambda = -0.5 * lnOnePlusQ + 0.5 * w * z * z;
  const halfWidth = Math.sqrt(varDiff) * Math.sqrt((q === Infinity ? 1 : (1 + q) / q) * (lnOnePlusQ - 2 * Math.log(alpha)));
  const ci = symmetricCi(diff, halfWidth);
  if (Number.isNaN(logLambda)) return { logLambda: null, pValue: null, ci: null, error: "INVALID_INPUT" };
  // An estimate so many standard errors out that z² overflows: the evidence is beyond what a double holds, p is 0.
  if (logLambda === Infinity) return { logLambda: null, pValue: 0, ci };
  return { logLambda, pValue: logLambda <= 0 ? 1 : Math.exp(-logLambda), ci };
}

/**
 * The mixture's terms as ratios of like quantities: q = τ²/V, w = τ²/(V + τ²) = q/(1 + q) and the z-score
 * z = D/√V. V and τ² both scale with the square of the metric's unit, so these do not depend on it.
 */
function scaleFree(diff: number, varDiff: number, tau2: number): { q: number; lnOnePlusQ: number; w: number; z: number } {
  const q = tau2 / varDiff;
  // q overflows only for a V near the smallest doubles against an ordinary τ²; ln(1 + q) is then ln τ² - ln V.
  const finite = q !== Infinity;
  return {
    q,
    lnOnePlusQ: finite ? Math.log1p(q) : Math.log(tau2) - Math.log(varDiff),
    w: finite ? q / (1 + q) : 1,
    z: diff / Math.sqrt(varDiff),
  };
}

/**
 * Default mixing variance, in units of the metric's per-unit variance σ² (the config's `analysis.tau2`):
 * τ²/σ² = 1e-3, i.e. standardized true effects with a prior standard deviation of ≈ 0.032.
 *
 * Why: the mixture is most powerful around the sample size where V is comparable to τ², and Johari et al. recommend
 * matching τ² to the effect sizes one expects. For V = σ²(1/n_C + 1/n_T) and equal arms, V = τ² at
 * n = 2/(τ²/σ²) = 2,000 units per arm; away from it the rejection boundary on |D|/√V grows only like
 * √(ln(τ²/V) - 2 ln α), so the test stays usable from a few hundred to millions of units per arm. A conversion lift from 10% to 11%
 * (σ ≈ 0.3, standardized effect 0.033) sits at one prior standard deviation.
 */
export const DEFAULT_TAU2_STANDARDIZED = 1e-3;

/** The always-valid p-value after a new look: the running minimum (Johari et al. 2017). */
export function runningMinimum(previous: number | null | undefined, current: number | null): number | null {
  if (current === null) return previous ?? null;
  if (previous === null || previous === undefined) return current;
  return Math.min(previous, current);
}

/**
 * One-sided normal-mixture SPRT for one look, testing the composite null θ ≤ 0 against θ > 0 for an estimate
 * D ~ N(θ, V): the likelihood ratio of θ against 0, exp(θD/V − θ²/(2V)), mixed over a half-normal θ ~ N⁺(0, τ²)
 * (density 2·φ(θ/τ)/τ on θ > 0) integrates in closed form to
 *
 *   Λ = 2 · √(V / (V + τ²)) · exp( τ² D² / (2V(V + τ²)) ) · Φ( D·τ / √(V(V + τ²)) )
 *
 * Every component ratio has expectation exp(θ·θ₀·n) ≤ 1 under any true θ₀ ≤ 0 (θ > 0), so the mixture is a
 * nonnegative supermartingale under the whole null, and by Ville's inequality P(∃ look: Λ ≥ 1/α) ≤ α: p = min(1, 1/Λ)
 * running-minimised over looks is an always-valid p-value for θ ≤ 0 however often it is read (Robbins, "Statistical
 * methods related to the law of the iterated logarithm", Ann. Math. Statist. 1970, one-sided mixtures; Howard,
 * Ramdas, McAuliffe & Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 2021,
 * the one-sided normal mixture; Johari, Koomen, Pekelis & Walsh, KDD 2017, the two-sided version and the plug-in V).
 * For D ≤ 0, Λ ≤ √(V/(V + τ²)) < 1 (exp(x²/2)·Φ(x) ≤ 1/2 for x ≤ 0), so p = 1 without computing it.
 * Compared with the two-sided mSPRT it needs about ln 2 less evidence, and its evidence always has a sign.
 */
export function oneSidedMixtureSprt(input: { diff: number; varDiff: number; tau2: number }): OneSidedSprtResult {
  const { diff, varDiff, tau2 } = input;
  if (!Number.isFinite(diff) || !Number.isFinite(varDiff) || varDiff < 0 || !(tau2 > 0) || !Number.isFinite(tau2)) {
    return { logLambda: null, pValue: null, error: "INVALID_INPUT" };
  }
  if (varDiff === 0) return diff > 0 ? { logLambda: null, pValue: null, error: "ZERO_VARIANCE" } : { logLambda: null, pValue: 1, error: "ZERO_VARIANCE" };
  // As in mixtureSprt, in scale-free terms: ln Λ = ln 2 - ½ ln(1 + q) + ½ w z² + ln Φ(x), x = z √w = D·τ/√(V(V + τ²)).
  const { lnOnePlusQ, w, z } = scaleFree(diff, varDiff, tau2);
  const x = z * Math.sqrt(w);
  if (!(diff > 0)) return { logLambda: -0.5 * lnOnePlusQ + Math.log(2 * phiExpSquare(x)), pValue: 1 };
  // ln Φ(x) for x > 0, from the upper tail: Φ(x) = 1 - erfc(x/√2)/2 ∈ (1/2, 1]
  const logPhi = Math.log1p(-0.5 * erfc(x / Math.SQRT2));
  const logLambda = Math.LN2 - 0.5 * lnOnePlusQ + 0.5 * w * z * z + logPhi;
  if (Number.isNaN(logLambda)) return { logLambda: null, pValue: null, error: "INVALID_INPUT" };
  if (logLambda === Infinity) return { logLambda: null, pValue: 0 };
  return { logLambda, pValue: logLambda <= 0 ? 1 : Math.exp(-logLambda) };
}

/** exp(x²/2)·Φ(x) for x = D·τ/√(V(V + τ²)) ≤ 0 (only for ln Λ when D ≤ 0, which p does not need). */
function phiExpSquare(x: number): number {
  const value = Math.exp(0.5 * x * x) * 0.5 * erfc(-x / Math.SQRT2);
  // below x ≈ -38 both factors leave the double range; the Mills-ratio asymptote 1/(|x|√(2π)) is exact enough there
  return Number.isFinite(value) && value > 0 ? value : 1 / (Math.abs(x) * Math.sqrt(2 * Math.PI));
}

/**
 * Always-valid guardrail test for means and latency: H0 μ_T ≤ k·μ_C + c on the shifted contrast D = m_T − k·m_C − c,
 * V = s_T²/n_T + k²·s_C²/n_C (the variance of welchOneSidedIncrease, plug-in at this look as in Johari et al. 2017),
 * by the one-sided mixture above. The mixing variance is `tau2Standardized` times the contrast's per-unit variance
 * σ²_D = V / (1/n_C + 1/n_T) (σ² itself when k = 1 and the arms' variances agree), as for the primary metrics.
 * The p-value is one look's; the report keeps the running minimum.
 */
export function meanIncreaseSequential(control: MeanSample, treatment: MeanSample, k: number, c: number, tau2Standardized: number): GuardrailSequentialResult {
  const none = { estimate: null, variance: null, logLambda: null, pValue: null };
  const all = [control.n, control.sum, control.sumSquares, treatment.n, treatment.sum, treatment.sumSquares, k, c, tau2Standardized];
  if (!all.every(Number.isFinite) || control.n < 0 || treatment.n < 0 || control.sumSquares < 0 || treatment.sumSquares < 0 || !(k > 0) || !(tau2Standardized > 0) || impossibleMeanSample(control) || impossibleMeanSample(treatment)) {
    return { ...none, error: "INVALID_INPUT" };
  }
  if (control.n < 2 || treatment.n < 2) return { ...none, error: control.n === 0 || treatment.n === 0 ? "ZERO_UNITS" : "TOO_FEW_UNITS" };
  const cm = meanAndVariance(control);
  const tm = meanAndVariance(treatment);
  const d = tm.mean - k * cm.mean - c;
  const v = tm.variance / treatment.n + (k * k * cm.variance) / control.n;
  return shiftedContrast(d, v, control.n, treatment.n, tau2Standardized);
}

/**
 * Always-valid guardrail test for rates (error rates): H0 p_T ≤ k·p_C + c on D = p̂_T − k·p̂_C − c with the
 * score-test variance at the restricted MLE, V₀ = p̃_T(1−p̃_T)/n_T + k²·p̃_C(1−p̃_C)/n_C (Farrington & Manning 1990,
 * the variance of proportionOneSidedIncrease), by the one-sided mixture above, τ² = tau2Standardized · V₀/(1/n_C + 1/n_T).
 * V₀ is the variance of D where the null is hardest (on the boundary), so it does not shrink with few errors in an
 * arm the way the unpooled Wald variance does.
 */
export function proportionIncreaseSequential(control: ProportionSample, treatment: ProportionSample, k: number, c: number, tau2Standardized: number): GuardrailSequentialResult {
  const none = { estimate: null, variance: null, logLambda: null, pValue: null };
  const counts = [control.units, control.conversions, treatment.units, treatment.conversions];
  if (
    !counts.every((x) => Number.isFinite(x) && x >= 0) ||
    control.conversions > control.units ||
    treatment.conversions > treatment.units ||
    !(k > 0) ||
    !Number.isFinite(k) ||
    !Number.isFinite(c) ||
    !(tau2Standardized > 0) ||
    !Number.isFinite(tau2Standardized)
  ) {
    return { ...none, error: "INVALID_INPUT" };
  }
  if (control.units === 0 || treatment.units === 0) return { ...none, error: "ZERO_UNITS" };
  const d = treatment.conversions / treatment.units - (k * control.conversions) / control.units - c;
  const restricted = restrictedMle(control, treatment, k, c);
  // k·p_C + c never in [0, 1] below 1: every possible rate satisfies H0 (e.g. c ≥ 1), nothing can exceed the limit
  if (restricted === null) return { estimate: d, variance: null, logLambda: null, pValue: 1 };
  const v = (restricted.pT * (1 - restricted.pT)) / treatment.units + (k * k * restricted.pC * (1 - restricted.pC)) / control.units;
  return shiftedContrast(d, v, control.units, treatment.units, tau2Standardized);
}

function shiftedContrast(d: number, v: number, nC: number, nT: number, tau2Standardized: number): GuardrailSequentialResult {
  if (!Number.isFinite(d) || !Number.isFinite(v)) return { estimate: null, variance: null, logLambda: null, pValue: null, error: "INVALID_INPUT" };
  // No spread at all: the contrast is known exactly, above the limit or not (as welchOneSidedIncrease decides it).
  if (!(v > 0)) return { estimate: d, variance: 0, logLambda: null, pValue: d > 0 ? 0 : 1, error: "ZERO_VARIANCE" };
  const tau2 = tau2Standardized * (v / (1 / nC + 1 / nT));
  const s = oneSidedMixtureSprt({ diff: d, varDiff: v, tau2 });
  if (s.error === "INVALID_INPUT") return { estimate: d, variance: v, logLambda: null, pValue: null, error: "INVALID_INPUT" };
  const out: GuardrailSequentialResult = { estimate: d, variance: v, logLambda: s.logLambda, pValue: s.pValue };
  if (s.error) out.error = s.error;
  return out;
}
