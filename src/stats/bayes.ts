import { logBeta, normalCdf } from "./distributions.ts";
import type { ProportionSample } from "./types.ts";

/**
 * Chance to win: P(p_T > p_C) for independent posteriors p ~ Beta(1 + conversions, 1 + failures) (Beta(1,1)
 * priors). Returns null only for invalid counts (negative, fractional, conversions above units).
 *
 * Method: Evan Miller's closed form for integer parameters ("Formulas for Bayesian A/B Testing", 2015):
 *
 *   P(p_B > p_A) = Σ_{i=0}^{α_B-1} B(α_A+i, β_A+β_B) / ((β_B+i) · B(1+i, β_B) · B(α_A, β_A))
 *
 * Its terms follow term_{i+1}/term_i = (α_A+i)(β_B+i) / ((α_A+β_A+β_B+i)(1+i)), which is ≥ 1 up to
 * i₀ = (α_Aβ_B - α_A - β_A - β_B)/(β_A+1) and < 1 after it, so the terms are unimodal. The sum starts at the
 * peak (its term from ln B, computed without cancellation by `logBeta`) and walks outwards both ways until the
 * remaining terms cannot change the total in the 16th digit. The terms fall off like a beta-binomial around its
 * mode, so the work is O(√α_B) instead of O(α_B) and stays exact at any realistic n (10^8 units takes a few ms); accuracy is
 * that of ln B at the peak, about 1e-13 relative for small counts and 1e-8 at 10^8 units (checked against scipy quadrature).
 * Above 1e12 units in an arm a normal approximation takes over (see `normalApproximation`).
 */
export function chanceToWin(control: ProportionSample, treatment: ProportionSample): number | null {
  const counts = [control.units, control.conversions, treatment.units, treatment.conversions];
  if (!counts.every((c) => Number.isInteger(c) && c >= 0) || control.conversions > control.units || treatment.conversions > treatment.units) {
    return null;
  }
  if (control.units > MAX_EXACT_UNITS || treatment.units > MAX_EXACT_UNITS) return normalApproximation(control, treatment);
  const aA = control.conversions + 1;
  const bA = control.units - control.conversions + 1;
  const aB = treatment.conversions + 1;
  const bB = treatment.units - treatment.conversions + 1;
  const s = bA + bB;
  const last = aB - 1;
  const ratio = (i: number): number => ((aA + i) * (bB + i)) / ((aA + s + i) * (1 + i));
  const i0 = (aA * bB - aA - s) / (bA + 1);
  const peak = Math.min(last, Math.max(0, Math.floor(i0) + 1));
  const logPeak = logBeta(aA + peak, s) - Math.log(bB + peak) - logBeta(1 + peak, bB) - logBeta(aA, bA);
  // Sum in units of the peak term, so nothing under- or overflows; every other term is ≤ 1 in these units.
  let sum = 1;
  let term = 1;
  for (let i = peak; i < last; i++) {
    term *= ratio(i);
    sum += term;
    if (term * (last - i) < sum * 1e-17) break;
  }
  term = 1;
  for (let i = peak - 1; i >= 0; i--) {
    term /= ratio(i);
    sum += term;
    if (term * (i + 1) < sum * 1e-17) break;
  }
  const p = Math.exp(logPeak + Math.log(sum));
  return Math.min(1, Math.max(0, p));
}

/**
 * Beyond 1e12 units in an arm (no real experiment; the exact walk would take ~10^7 steps) each Beta posterior is
 * replaced by the normal with its mean and variance; the error is of the order of the posteriors' skewness,
 * below 1e-5 there.
 */
const MAX_EXACT_UNITS = 1e12;

function normalApproximation(control: ProportionSample, treatment: ProportionSample): number {
  const moments = (s: ProportionSample): [number, number] => {
    const a = s.conversions + 1;
    const b = s.units - s.conversions + 1;
    const mean = a / (a + b);
    return [mean, (mean * (b / (a + b))) / (a + b + 1)];
  };
  const [mC, vC] = moments(control);
  const [mT, vT] = moments(treatment);
  const se = Math.sqrt(vC + vT);
  if (!(se > 0)) return mT > mC ? 1 : mT < mC ? 0 : 0.5;
  return normalCdf((mT - mC) / se);
}
