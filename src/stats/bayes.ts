import { logBeta, logGamma, normalCdf } from "./distributions.ts";
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
 * remaining terms cannot change the total in the 16th digit. The terms fall off like a beta-negative-binomial
 * around its mode, so the work is about n_B·sd(p_A) terms, O(√n) for arms of similar size (10^8 units take a few
 * ms); accuracy is that of ln B at the peak, about 1e-13 relative for small counts and 1e-8 at 10^8 units (checked
 * against scipy quadrature). Which arm is summed, over successes or failures, is chosen so the work stays small
 * when the arms differ in size (see `chanceToWinDetail`); past MAX_CHANCE_TO_WIN_TERMS terms a normal approximation
 * takes over (see `normalApproximation`).
 */
export function chanceToWin(control: ProportionSample, treatment: ProportionSample): number | null {
  const detail = chanceToWinDetail(control, treatment);
  if (detail === null) return null;
  // A sum near 1 carries its relative error (1e-8 at 10^7 units) as an absolute one, far above a chance to lose of
  // 5e-14: 1 - P came out 18,000 times too large. The small side, summed directly, keeps its relative precision.
  if (detail.p > 0.5 && detail.method !== "normal") {
    const lose = chanceToWinDetail(treatment, control);
    if (lose !== null) return 1 - lose.p;
  }
  return detail.p;
}

/** How `chanceToWin` got its answer: which of the four equivalent sums (or the normal approximation), and its length. */
export interface ChanceToWinDetail {
  p: number;
  /** "sum:treatment" etc.: Evan Miller's sum over the named arm's successes or failures; "normal": the approximation */
  method: string;
  /** terms summed (over every sum tried), the work done */
  terms: number;
}

/**
 * Most terms a chance-to-win may sum before it gives up on the exact sum for the normal approximation: 2e6 terms take
 * about 10 ms, and the sum needs more only when both arms have billions of units, where the approximation is good.
 */
export const MAX_CHANCE_TO_WIN_TERMS = 2_000_000;

/**
 * P(p_T > p_C) by the cheapest of four equivalent exact sums. Evan Miller's sum for P(p_B > p_A) runs over the
 * successes i < α_B of arm B; its terms are the beta-negative-binomial probabilities of i with r = β_B, shape
 * (α_A, β_A) (the count of successes before β_B failures at a success rate drawn from A's posterior; they sum to 1
 * over i ≥ 0). So its length is about min(α_B, a few standard deviations of that distribution), and that spread
 * is ≈ n_B·sd(p_A): small when B is the small arm, huge when B is huge and A small (20 units against 4e9 took
 * 10^9 terms, 18 s of blocked event loop). The same probability is also
 * - 1 − P(p_C > p_T): the sum with the arms swapped (Evan Miller's sum for the other arm),
 * - P(q_C > q_T) with q = 1 − p ~ Beta(β, α) (the α/β mirror): the sum over the control's failures, and
 * - 1 − P(q_T > q_C): both, the sum over the treatment's failures,
 * so each arm can be the summed one, over its successes or its failures. The length of each is
 * estimated from the beta-negative-binomial variance r·α·(r+β−1)(α+β−1) / ((β−2)(β−1)²) (β > 2; otherwise the tail
 * is too heavy to bound and only the range counts); the cheapest is summed, with a budget, and if every sum would
 * exceed MAX_CHANCE_TO_WIN_TERMS the normal approximation answers. Sums that give the probability directly are
 * preferred to complements (1 − S loses relative precision when the answer is tiny), and the original orientation
 * (over the treatment's successes) whenever it is cheap.
 */
export function chanceToWinDetail(control: ProportionSample, treatment: ProportionSample): ChanceToWinDetail | null {
  // (what is not a sample, null included, is a data problem too: null, never a throw)
  if (typeof control !== "object" || control === null || typeof treatment !== "object" || treatment === null) return null;
  const counts = [control.units, control.conversions, treatment.units, treatment.conversions];
  if (!counts.every((c) => Number.isInteger(c) && c >= 0) || control.conversions > control.units || treatment.conversions > treatment.units) {
    return null;
  }
  const aC = control.conversions + 1;
  const bC = control.units - control.conversions + 1;
  const aT = treatment.conversions + 1;
  const bT = treatment.units - treatment.conversions + 1;
  if (control.units > MAX_EXACT_UNITS || treatment.units > MAX_EXACT_UNITS) return { p: normalApproximation(aC, bC, aT, bT), method: "normal", terms: 0 };
  // P(p_B > p_A) = millerSum(A, B); each candidate gives P(p_T > p_C) directly or as 1 − its sum.
  const candidates = [
    { method: "sum:treatment-successes", A: [aC, bC], B: [aT, bT], complement: false },
    { method: "sum:control-failures", A: [bT, aT], B: [bC, aC], complement: false },
    { method: "sum:control-successes", A: [aT, bT], B: [aC, bC], complement: true },
    { method: "sum:treatment-failures", A: [bC, aC], B: [bT, aT], complement: true },
  ].map((c, order) => ({ ...c, order, cost: estimatedTerms(c.A[0]!, c.A[1]!, c.B[0]!, c.B[1]!) }));
  const cheapest = Math.min(...candidates.map((c) => c.cost));
  // The original sum first when it is cheap; then direct sums unless a complement is much cheaper; then by cost.
  // The estimates only order the attempts: one budget covers them all, so a wrong estimate costs at most the budget.
  const ranked = [...candidates].sort((x, y) => rank(x, cheapest) - rank(y, cheapest) || x.order - y.order);
  let terms = 0;
  for (const c of ranked) {
    if (c.cost > MAX_CHANCE_TO_WIN_TERMS - terms) continue;
    const r = millerSum(c.A[0]!, c.A[1]!, c.B[0]!, c.B[1]!, MAX_CHANCE_TO_WIN_TERMS - terms);
    terms += r.terms;
    if (r.p === null || !Number.isFinite(r.p)) continue;
    const p = c.complement ? 1 - r.p : r.p;
    return { p: Math.min(1, Math.max(0, p)), method: c.method, terms };
  }
  return { p: normalApproximation(aC, bC, aT, bT), method: "normal", terms };
}

/** Counts above 2^53 are no longer exact integers, so the sums' arithmetic is not either: the normal approximation. */
const MAX_EXACT_UNITS = 2 ** 53;

function rank(c: { cost: number; complement: boolean; order: number }, cheapest: number): number {
  if (c.order === 0 && c.cost <= 1e4) return -1;
  return c.complement && c.cost > cheapest / 4 ? c.cost * 4 : c.cost;
}

/**
 * Terms the sum for P(p_B > p_A) will walk: at most its range α_B, and about 2 × 20 standard deviations of the
 * beta-negative-binomial (r = β_B, α_A, β_A) around its peak (the walk stops where terms fall below 1e-17 of the
 * total, beyond 9 sd for a normal shape; 20 leaves room for skewed ones). Its tail decays only like i^-(β_A+1)
 * (term ratio 1 − (β_A+1)(i − i₀)/((α_A+β_A+β_B+i)(1+i))), so for small β_A the walk, which stops when
 * term × (terms left) < 1e-17 × sum, runs to about (i₀ + α_A + β_A + β_B)·(1e17·α_B)^(1/(β_A+1)).
 */
function estimatedTerms(aA: number, bA: number, aB: number, bB: number): number {
  if (bA <= 2) return aB;
  const r = bB;
  const variance = (r * aA * (r + bA - 1) * (aA + bA - 1)) / ((bA - 2) * (bA - 1) * (bA - 1));
  let estimate = 40 * Math.sqrt(variance) + 40;
  if (bA <= 30) {
    const scale = Math.max(0, (aA * bB - aA - bA - bB) / (bA + 1)) + aA + bA + bB;
    estimate = Math.max(estimate, scale * Math.pow(1e17 * aB, 1 / (bA + 1)));
  }
  return Math.min(aB, estimate);
}

/**
 * Evan Miller's sum for P(p_B > p_A), A ~ Beta(aA, bA), B ~ Beta(aB, bB), summed outwards from its peak; p null when
 * it would take more than `budget` terms.
 */
function millerSum(aA: number, bA: number, aB: number, bB: number, budget: number): { p: number | null; terms: number } {
  const s = bA + bB;
  const last = aB - 1;
  const ratio = (i: number): number => ((aA + i) * (bB + i)) / ((aA + s + i) * (1 + i));
  const i0 = (aA * bB - aA - s) / (bA + 1);
  const peak = Math.min(last, Math.max(0, Math.floor(i0) + 1));
  const logPeak = logBetaRatio(aA, bA, bB, peak) - Math.log(bB + peak) - logBeta(1 + peak, bB);
  // Sum in units of the peak term, so nothing under- or overflows; every other term is ≤ 1 in these units.
  let sum = 1;
  let term = 1;
  let terms = 1;
  for (let i = peak; i < last; i++) {
    term *= ratio(i);
    sum += term;
    if (++terms > budget) return { p: null, terms };
    if (term * (last - i) < sum * 1e-17) break;
  }
  term = 1;
  for (let i = peak - 1; i >= 0; i--) {
    term /= ratio(i);
    sum += term;
    if (++terms > budget) return { p: null, terms };
    if (term * (i + 1) < sum * 1e-17) break;
  }
  const p = Math.exp(logPeak + Math.log(sum));
  return { p: Math.min(1, Math.max(0, p)), terms };
}

/**
 * ln B(α_A+k, β_A+β_B) − ln B(α_A, β_A). Two large ln B cancel when arm A is huge and the summed arm small (ln B ~ 10^13
 * at trillions of units, so the difference would keep no digit), so the six ln Γ are also paired into differences
 * G(x, d) = ln Γ(x+d) − ln Γ(x) in the two ways that pair the large arguments:
 *   G(α_A, k) + G(β_A, β_B) − G(α_A+β_A, β_B+k)   (small when β_B and k are)
 *   G(α_A, k) + G(β_A, α_A) − G(β_A+β_B, α_A+k)   (small when α_A and k are)
 * and the arrangement with the smallest magnitudes (so the least rounding) is used.
 */
function logBetaRatio(aA: number, bA: number, bB: number, k: number): number {
  const direct = [logBeta(aA + k, bA + bB), -logBeta(aA, bA)];
  const pairedB = [logGammaDifference(aA, k), logGammaDifference(bA, bB), -logGammaDifference(aA + bA, bB + k)];
  const pairedA = [logGammaDifference(aA, k), logGammaDifference(bA, aA), -logGammaDifference(bA + bB, aA + k)];
  const size = (xs: number[]): number => xs.reduce((s, x) => s + Math.abs(x), 0);
  const best = [direct, pairedB, pairedA].reduce((a, b) => (size(b) < size(a) ? b : a));
  return best.reduce((s, x) => s + x, 0);
}

/**
 * ln Γ(x + d) − ln Γ(x) for x > 0, d ≥ 0, without the cancellation of two large ln Γ: for x ≥ 10 by Stirling's series
 * (Abramowitz & Stegun 6.1.41), (x − ½)·log1p(d/x) + d·ln(x + d) − d + c(x + d) − c(x) with
 * c(z) = 1/(12z) − 1/(360z³) + 1/(1260z⁵) − 1/(1680z⁷) (truncation error below 1e-12 at z ≥ 10).
 */
function logGammaDifference(x: number, d: number): number {
  if (d === 0) return 0;
  if (x < 10) return logGamma(x + d) - logGamma(x);
  const c = (z: number): number => {
    const z2 = z * z;
    return (1 / 12 - (1 / 360 - (1 / 1260 - 1 / (1680 * z2)) / z2) / z2) / z;
  };
  return (x - 0.5) * Math.log1p(d / x) + d * Math.log(x + d) - d + (c(x + d) - c(x));
}

/**
 * When every exact sum would be too long (both arms with billions of units) each Beta posterior is replaced by the
 * normal with its mean and variance; the error is of the order of the posteriors' skewness, below 1e-5 there.
 */
function normalApproximation(aC: number, bC: number, aT: number, bT: number): number {
  const moments = (a: number, b: number): [number, number] => {
    const mean = a / (a + b);
    return [mean, (mean * (b / (a + b))) / (a + b + 1)];
  };
  const [mC, vC] = moments(aC, bC);
  const [mT, vT] = moments(aT, bT);
  const se = Math.sqrt(vC + vT);
  if (!(se > 0)) return mT > mC ? 1 : mT < mC ? 0 : 0.5;
  return normalCdf((mT - mC) / se);
}
