import { normalQuantile } from "./distributions.ts";

/** What a sample-size question needs: the effect to detect and the per-unit variances and traffic shares. */
export interface SampleSizeInput {
  /** difference to detect, treatment - control, on the metric's scale */
  effect: number;
  /** per-unit variance of the metric in the control and the treatment */
  varianceControl: number;
  varianceTreatment: number;
  /** fraction of all units that the control and the treatment receive (weights / total weight) */
  shareControl: number;
  shareTreatment: number;
  /** default 0.05 */
  alpha?: number;
  /** default 0.8 */
  power?: number;
}

/** K such that Var(diff) = K / N when N units are spread over the arms by their shares. */
function varianceFactor(input: SampleSizeInput): number {
  return input.varianceControl / input.shareControl + input.varianceTreatment / input.shareTreatment;
}

function usable(input: SampleSizeInput): boolean {
  return (
    Number.isFinite(input.effect) &&
    input.effect !== 0 &&
    input.varianceControl >= 0 &&
    input.varianceTreatment >= 0 &&
    input.varianceControl + input.varianceTreatment > 0 &&
    input.shareControl > 0 &&
    input.shareTreatment > 0
  );
}

/**
 * Total units a fixed-horizon two-sided z-test needs to detect `effect` with the given power:
 * N = (z_{1-α/2} + z_{power})² · (σ_C²/s_C + σ_T²/s_T) / effect² (e.g. Chow, Shao & Wang, Sample Size
 * Calculations in Clinical Research, §3.2). Null when the effect is 0 or the inputs cannot give an answer.
 */
export function fixedHorizonUnits(input: SampleSizeInput): number | null {
  if (!usable(input)) return null;
  const alpha = input.alpha ?? 0.05;
  const power = input.power ?? 0.8;
  const z = -normalQuantile(alpha / 2) + normalQuantile(power);
  const n = Math.ceil((z * z * varianceFactor(input)) / (input.effect * input.effect));
  return Number.isFinite(n) ? n : null;
}

/**
 * Total units after which the mSPRT (see sequential.ts) rejects with probability ≥ `power` when the true difference
 * is `effect`: the smallest N with |effect| - z_{power}·√V_N ≥ c(V_N), where V_N = K/N and
 * c(V) = √(V(V+τ²)/τ² · (ln((V+τ²)/V) - 2 ln α)) is the boundary on |diff| (Johari et al. 2017). It looks at
 * the boundary at N only, ignoring earlier crossings, so it errs on the side of more units. `tau2` is on the scale
 * of the difference. Found by doubling, then bisection (the condition is monotone in N).
 */
export function sequentialUnits(input: SampleSizeInput & { tau2: number }): number | null {
  return sequentialUnitsMore({ ...input, unitsControl: 0, unitsTreatment: 0 });
}

/**
 * Like sequentialUnits, for an experiment that already has `unitsControl` and `unitsTreatment` units: the smallest
 * number N of further units (all arms together, spread by the current shares) with enough power at the boundary,
 * where now V_N = σ_C²/(n_C + s_C·N) + σ_T²/(n_T + s_T·N). Subtracting the units so far from sequentialUnits' answer
 * instead assumed they were split by the current shares, and counted the units of arms outside the comparison: after
 * a ramp, or beside a retired arm, it said far too few. 0 when the units so far are enough.
 */
export function sequentialUnitsMore(input: SampleSizeInput & { tau2: number; unitsControl: number; unitsTreatment: number }): number | null {
  const nC = input.unitsControl;
  const nT = input.unitsTreatment;
  if (!usable(input) || !(input.tau2 > 0) || !(nC >= 0) || !(nT >= 0) || !Number.isFinite(nC + nT)) return null;
  const alpha = input.alpha ?? 0.05;
  const zPower = normalQuantile(input.power ?? 0.8);
  const tau2 = input.tau2;
  const effect = Math.abs(input.effect);
  const variance = (n: number): number => {
    // An arm with no units yet and no share of new ones never gets a variance: that is "never enough".
    const c = input.varianceControl === 0 ? 0 : input.varianceControl / (nC + input.shareControl * n);
    const t = input.varianceTreatment === 0 ? 0 : input.varianceTreatment / (nT + input.shareTreatment * n);
    return c + t;
  };
  const enough = (n: number): boolean => {
    const v = variance(n);
    if (!(v > 0)) return false;
    const boundary = Math.sqrt(((v * (v + tau2)) / tau2) * (Math.log((v + tau2) / v) - 2 * Math.log(alpha)));
    return effect - zPower * Math.sqrt(v) >= boundary;
  };
  if (nC + nT > 0 && enough(0)) return 0;
  let hi = 2;
  while (!enough(hi)) {
    hi *= 2;
    if (hi > 1e15) return null;
  }
  let lo = hi / 2;
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (enough(mid)) hi = mid;
    else lo = mid;
  }
  return hi;
}
