import type { MixtureSprtInput, MixtureSprtResult } from "./types.ts";

/**
 * Normal-mixture sequential probability ratio test (mSPRT) for one look, after Johari, Koomen, Pekelis & Walsh,
 * "Peeking at A/B Tests" (KDD 2017) and "Always Valid Inference" (Operations Research 2022): with the
 * estimate D ~ N(θ, V) and the mixing distribution θ ~ N(0, τ²) under the alternative,
 *
 *   Λ = √(V / (V + τ²)) · exp( τ² D² / (2V(V + τ²)) )
 *
 * The always-valid p-value is p_n = min(1, 1/Λ_n) running-minimised over looks, and the
 * always-valid (1 - α) interval is D ± √( V(V + τ²)/τ² · (ln((V + τ²)/V) - 2 ln α) ), the set of θ whose shifted
 * ratio stays below 1/α. V is the plug-in variance at this look, as Optimizely's implementation does.
 */
export function mixtureSprt(input: MixtureSprtInput): MixtureSprtResult {
  const { diff, varDiff, tau2 } = input;
  const alpha = input.alpha !== undefined && input.alpha > 0 && input.alpha < 1 ? input.alpha : 0.05;
  if (!Number.isFinite(diff) || !Number.isFinite(varDiff) || varDiff < 0 || !(tau2 > 0) || !Number.isFinite(tau2)) {
    return { logLambda: null, pValue: null, ci: null, error: "INVALID_INPUT" };
  }
  if (varDiff === 0) {
    if (diff === 0) return { logLambda: 0, pValue: 1, ci: [0, 0], error: "ZERO_VARIANCE" };
    return { logLambda: null, pValue: null, ci: null, error: "ZERO_VARIANCE" };
  }
  const total = varDiff + tau2;
  const logLambda = 0.5 * Math.log(varDiff / total) + (tau2 * diff * diff) / (2 * varDiff * total);
  const pValue = logLambda <= 0 ? 1 : Math.exp(-logLambda);
  const halfWidth = Math.sqrt(((varDiff * total) / tau2) * (Math.log(total) - Math.log(varDiff) - 2 * Math.log(alpha)));
  const ci: [number, number] | null = Number.isFinite(halfWidth) ? [diff - halfWidth, diff + halfWidth] : null;
  // A variance so small that Λ overflows: the evidence is beyond what a double can hold, p is 0.
  if (!Number.isFinite(logLambda)) return { logLambda: null, pValue: 0, ci };
  return { logLambda, pValue, ci };
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
