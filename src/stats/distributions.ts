/**
 * Special functions and distributions, written for abgate so that every p-value can be traced to a formula.
 *
 * Accuracy goal: about 1e-13 relative on the tails that p-values come from. Tail probabilities are always computed
 * from the tail itself (erfc, upper incomplete gamma, I_x on the small side), never as 1 - cdf, so that p-values
 * far below 1e-12 keep their digits. Checked against scipy in distributions.test.ts (fixtures/distributions.json).
 */

const SQRT2 = Math.SQRT2;
const SQRT_PI = Math.sqrt(Math.PI);
const LOG_SQRT_2PI = 0.5 * Math.log(2 * Math.PI);
const EPS = 1e-16;
const TINY = 1e-300;

/**
 * Complementary error function.
 * - |x| < 2: erf by the series of positive terms erf(x) = 2/√π · e^(-x²) · Σ 2ⁿx^(2n+1) / (1·3·…·(2n+1))
 *   (Abramowitz & Stegun 7.1.6), which has no cancellation; erfc = 1 - erf loses at most ~2 digits there
 *   since erfc(2) ≈ 4.7e-3.
 * - x ≥ 2: the continued fraction erfc(x) = e^(-x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))
 *   (A&S 7.1.14), evaluated with the modified Lentz method (Numerical Recipes 3rd ed. §5.2).
 */
export function erfc(x: number): number {
  if (Number.isNaN(x)) return NaN;
  if (x < 0) return 2 - erfc(-x);
  if (x < 2) return 1 - erfSeries(x);
  if (x > 27) return 0; // e^(-729) underflows a double
  // Lentz on b0 + a1/(b1 + a2/(b2 + ...)) with b_k = x, a_k = k/2.
  let f = x;
  let c = x;
  let d = 0;
  for (let k = 1; k < 5000; k++) {
    const a = k / 2;
    d = x + a * d;
    if (Math.abs(d) < TINY) d = TINY;
    c = x + a / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    const delta = c * d;
    f *= delta;
    if (Math.abs(delta - 1) < EPS) break;
  }
  return Math.exp(-x * x) / (SQRT_PI * f);
}

function erfSeries(x: number): number {
  const x2 = x * x;
  let term = x;
  let sum = x;
  for (let n = 1; n < 500; n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
    if (term < sum * EPS) break;
  }
  return ((2 / SQRT_PI) * Math.exp(-x2) * sum);
}

/** Error function (see `erfc`). */
export function erf(x: number): number {
  if (Math.abs(x) < 2) return x < 0 ? -erfSeries(-x) : erfSeries(x);
  return 1 - erfc(x);
}

/** Standard normal density. */
export function normalPdf(z: number): number {
  return Math.exp(-0.5 * z * z - LOG_SQRT_2PI);
}

/** Standard normal CDF Φ(z) = erfc(-z/√2)/2: accurate in the lower tail as well. */
export function normalCdf(z: number): number {
  return 0.5 * erfc(-z / SQRT2);
}

/** Upper tail 1 - Φ(z), computed as erfc(z/√2)/2 so that tiny tails keep their digits. */
export function normalSf(z: number): number {
  return 0.5 * erfc(z / SQRT2);
}

/**
 * Standard normal quantile Φ⁻¹(p). Starting value from Abramowitz & Stegun 26.2.23 (|error| < 4.5e-4), then
 * Halley steps on the tail probability (as P. J. Acklam suggests for his approximation); three steps reach full
 * double precision because Halley converges cubically. p outside (0, 1) gives ±Infinity / NaN.
 */
export function normalQuantile(p: number): number {
  if (Number.isNaN(p) || p < 0 || p > 1) return NaN;
  if (p === 0) return -Infinity;
  if (p === 1) return Infinity;
  if (p > 0.5) return -lowerQuantile(1 - p);
  return lowerQuantile(p);
}

/** Quantile for p ≤ 0.5 (result ≤ 0), refined against normalCdf. */
function lowerQuantile(p: number): number {
  if (p === 0.5) return 0;
  const t = Math.sqrt(-2 * Math.log(p));
  let x = -(t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (1 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t));
  for (let i = 0; i < 4; i++) {
    const e = normalCdf(x) - p;
    const u = e / normalPdf(x);
    const step = u / (1 + (x * u) / 2);
    x -= step;
    if (Math.abs(step) <= 1e-15 * Math.max(1, Math.abs(x))) break;
  }
  return x;
}

/** Bernoulli-number coefficients B_2k / (2k(2k-1)) of Stirling's series (A&S 6.1.41). */
const STIRLING = [1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156, -3617 / 122400];

/** δ(x) = lnΓ(x) - [(x - ½)ln x - x + ½ln 2π], by Stirling's series; accurate to ~1e-17 for x ≥ 10. */
function stirlingCorrection(x: number): number {
  const r = 1 / (x * x);
  let sum = 0;
  for (let k = STIRLING.length - 1; k >= 0; k--) sum = sum * r + STIRLING[k]!;
  return sum / x;
}

/**
 * ln Γ(x) for x > 0: Stirling's series (A&S 6.1.40–41) for x ≥ 10, below that shifted up with the recurrence
 * Γ(x+1) = xΓ(x) (A&S 6.1.15).
 */
export function logGamma(x: number): number {
  if (!(x > 0)) return NaN;
  if (x === 1 || x === 2) return 0; // exact; the shifted series would leave ~1e-15
  let shift = 0;
  let prod = 1;
  while (x < 10) {
    prod *= x;
    x += 1;
    shift++;
    if (prod > 1e280) return NaN; // unreachable for x > 0
  }
  const base = (x - 0.5) * Math.log(x) - x + LOG_SQRT_2PI + stirlingCorrection(x);
  return shift === 0 ? base : base - Math.log(prod);
}

/**
 * ln B(a, b). When an argument is large, ln Γ(a) + ln Γ(b) - ln Γ(a+b) would cancel catastrophically, so the
 * Stirling terms are combined analytically first (the arrangement R's `lbeta` uses, after Loader / TOMS 708).
 */
export function logBeta(a: number, b: number): number {
  const p = Math.min(a, b);
  const q = Math.max(a, b);
  if (!(p > 0)) return NaN;
  if (p >= 10) {
    const corr = stirlingCorrection(p) + stirlingCorrection(q) - stirlingCorrection(p + q);
    return -0.5 * Math.log(q) + LOG_SQRT_2PI + corr + (p - 0.5) * Math.log(p / (p + q)) + q * Math.log1p(-p / (p + q));
  }
  if (q >= 10) {
    // lnΓ(q) - lnΓ(p+q) = (q - ½)·ln(q/(p+q)) - p·ln(p+q) + p + δ(q) - δ(p+q)
    const corr = stirlingCorrection(q) - stirlingCorrection(p + q);
    return logGamma(p) + corr + p - p * Math.log(p + q) + (q - 0.5) * Math.log1p(-p / (p + q));
  }
  return logGamma(p) + logGamma(q) - logGamma(p + q);
}

/**
 * Continued fraction for the incomplete beta function (Numerical Recipes 3rd ed. §6.4, `betacf`, modified
 * Lentz). Converges quickly for x < (a+1)/(a+b+2); needs O(√max(a,b)) terms in the worst case.
 */
function betaContinuedFraction(a: number, b: number, x: number): number {
  const qab = a + b;
  const qap = a + 1;
  const qam = a - 1;
  let c = 1;
  let d = 1 - (qab * x) / qap;
  if (Math.abs(d) < TINY) d = TINY;
  d = 1 / d;
  let h = d;
  for (let m = 1; m <= 1_000_000; m++) {
    const m2 = 2 * m;
    let aa = (m * (b - m) * x) / ((qam + m2) * (a + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < TINY) d = TINY;
    c = 1 + aa / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    h *= d * c;
    aa = (-(a + m) * (qab + m) * x) / ((a + m2) * (qap + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < TINY) d = TINY;
    c = 1 + aa / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < EPS) break;
  }
  return h;
}

/**
 * Regularized incomplete beta I_x(a, b) and its complement 1 - I_x(a, b), each computed directly from the side
 * where it is small (Numerical Recipes 3rd ed. §6.4, eq. 6.4.5 and the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)).
 * `oneMinusX` may be passed when 1 - x is known more precisely than by subtraction.
 */
export function incompleteBeta(a: number, b: number, x: number, oneMinusX = 1 - x): { lower: number; upper: number } {
  if (!(a > 0 && b > 0) || Number.isNaN(x)) return { lower: NaN, upper: NaN };
  if (x <= 0) return { lower: 0, upper: 1 };
  if (oneMinusX <= 0) return { lower: 1, upper: 0 };
  // With a large parameter the exponent magnifies rounding in ln x, so take the logarithm of whichever of x and
  // 1 - x is known exactly near 1 through log1p.
  const logX = x < 0.5 ? Math.log(x) : Math.log1p(-oneMinusX);
  const logOneMinusX = oneMinusX < 0.5 ? Math.log(oneMinusX) : Math.log1p(-x);
  const logFront = a * logX + b * logOneMinusX - logBeta(a, b);
  if (x < (a + 1) / (a + b + 2)) {
    const lower = (Math.exp(logFront) * betaContinuedFraction(a, b, x)) / a;
    return { lower, upper: 1 - lower };
  }
  const upper = (Math.exp(logFront) * betaContinuedFraction(b, a, oneMinusX)) / b;
  return { lower: 1 - upper, upper };
}

/**
 * Regularized incomplete gamma P(a, x) and Q(a, x) = 1 - P: the series for x < a + 1, the continued fraction
 * (modified Lentz) otherwise (Numerical Recipes 3rd ed. §6.2, `gser` / `gcf`), so the small one is always direct.
 */
export function incompleteGamma(a: number, x: number): { lower: number; upper: number } {
  if (!(a > 0) || Number.isNaN(x)) return { lower: NaN, upper: NaN };
  if (x <= 0) return { lower: 0, upper: 1 };
  if (x === Infinity) return { lower: 1, upper: 0 };
  const logFront = -x + a * Math.log(x) - logGamma(a);
  if (x < a + 1) {
    let ap = a;
    let del = 1 / a;
    let sum = del;
    for (let n = 0; n < 1_000_000; n++) {
      ap += 1;
      del *= x / ap;
      sum += del;
      if (Math.abs(del) < Math.abs(sum) * EPS) break;
    }
    const lower = sum * Math.exp(logFront);
    return { lower, upper: 1 - lower };
  }
  let b = x + 1 - a;
  let c = 1 / TINY;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 1_000_000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < TINY) d = TINY;
    c = b + an / c;
    if (Math.abs(c) < TINY) c = TINY;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < EPS) break;
  }
  const upper = Math.exp(logFront) * h;
  return { lower: 1 - upper, upper };
}

/**
 * Upper tail of Student's t with `df` degrees of freedom (df > 0, need not be an integer):
 * P(T > t) = ½ I_{df/(df+t²)}(df/2, ½) for t ≥ 0 (A&S 26.7.1 with 26.5.27). 1 - x is formed as t²/(df+t²)
 * rather than by subtraction.
 */
export function studentTSf(t: number, df: number): number {
  if (Number.isNaN(t) || !(df > 0)) return NaN;
  if (t === Infinity) return 0;
  if (t === -Infinity) return 1;
  if (df === Infinity) return normalSf(t);
  if (df > T_QUADRATURE_DF) {
    const tail = studentTSfByQuadrature(Math.abs(t), df);
    return t >= 0 ? tail : 1 - tail;
  }
  const t2 = t * t;
  const x = df / (df + t2);
  const half = 0.5 * incompleteBeta(df / 2, 0.5, x, t2 / (df + t2)).lower;
  return t >= 0 ? half : 1 - half;
}

/**
 * Above this df the incomplete-beta continued fraction for I_x(df/2, ½) becomes ill-conditioned (x is within
 * ~1/df of 1 and each Lentz factor is 1 ± 1e-16 while the sum still moves), so the tail is integrated instead.
 */
const T_QUADRATURE_DF = 2000;

/** Gauss–Legendre nodes and weights on [-1, 1], by Newton's method on P_n (Numerical Recipes 3rd ed. §4.6, gauleg). */
function gaussLegendre(n: number): { x: number[]; w: number[] } {
  const x = new Array<number>(n);
  const w = new Array<number>(n);
  const m = (n + 1) >> 1;
  for (let i = 0; i < m; i++) {
    let z = Math.cos((Math.PI * (i + 0.75)) / (n + 0.5));
    let pp = 0;
    for (let iter = 0; iter < 100; iter++) {
      let p1 = 1;
      let p2 = 0;
      for (let j = 0; j < n; j++) {
        const p3 = p2;
        p2 = p1;
        p1 = ((2 * j + 1) * z * p2 - j * p3) / (j + 1);
      }
      pp = (n * (z * p1 - p2)) / (z * z - 1);
      const z1 = z;
      z = z1 - p1 / pp;
      if (Math.abs(z - z1) < 1e-15) break;
    }
    x[i] = -z;
    x[n - 1 - i] = z;
    w[i] = 2 / ((1 - z * z) * pp * pp);
    w[n - 1 - i] = w[i]!;
  }
  return { x, w };
}

const GL20 = gaussLegendre(20);

/**
 * P(T > t) for t ≥ 0 and large df, as ∫_t^∞ of the density by composite 20-point Gauss–Legendre. For df > 2000 and
 * any t whose tail is representable (t < ~40 ≪ √df), the density falls at least like a normal one, so panels of
 * width ½/max(1, t) until the density has dropped by e^-45 relative to f(t) capture it to ~1e-15.
 */
function studentTSfByQuadrature(t: number, df: number): number {
  const logC = -logBeta(df / 2, 0.5) - 0.5 * Math.log(df);
  const logDensity = (s: number): number => logC - ((df + 1) / 2) * Math.log1p((s * s) / df);
  const logAtT = logDensity(t);
  if (logAtT < -800) return 0;
  const width = 0.5 / Math.max(1, t);
  let sum = 0;
  for (let a = t; ; a += width) {
    const mid = a + width / 2;
    let panel = 0;
    for (let i = 0; i < 20; i++) panel += GL20.w[i]! * Math.exp(logDensity(mid + (width / 2) * GL20.x[i]!) - logAtT);
    sum += (panel * width) / 2;
    if (logDensity(a + width) - logAtT < -45) break;
  }
  return sum * Math.exp(logAtT);
}

/** Student's t CDF (see `studentTSf`). */
export function studentTCdf(t: number, df: number): number {
  return studentTSf(-t, df);
}

/** Student's t density. */
export function studentTPdf(t: number, df: number): number {
  return Math.exp(-logBeta(df / 2, 0.5) - 0.5 * Math.log(df) - ((df + 1) / 2) * Math.log1p((t * t) / df));
}

/**
 * Student's t quantile: closed forms for df = 1 (Cauchy) and df = 2 (F(t) = ½ + t/(2√(2+t²)) inverted); otherwise
 * Newton's method on the tail probability from the Cornish–Fisher start (A&S 26.7.5), kept inside a bracket
 * that falls back to bisection, so it cannot diverge.
 */
export function studentTQuantile(p: number, df: number): number {
  if (Number.isNaN(p) || p < 0 || p > 1 || !(df > 0)) return NaN;
  if (p === 0) return -Infinity;
  if (p === 1) return Infinity;
  if (p === 0.5) return 0;
  if (df === Infinity) return normalQuantile(p);
  const upper = p > 0.5;
  const q = upper ? 1 - p : p; // tail probability, ≤ 0.5
  let t: number;
  // Closed forms (Cauchy; df 2: t = (1 - 2q)/√(2q(1 - q))), written so that no difference of near-equal numbers
  // costs digits: tan(π(1/2 - q)) lost them for a small q, and 2/(4q(1 - q)) - 2 for q near 1/2.
  if (df === 1) t = 1 / Math.tan(Math.PI * q);
  else if (df === 2) t = (1 - 2 * q) / Math.sqrt(2 * q * (1 - q));
  else {
    const z = -normalQuantile(q);
    const z3 = z * z * z;
    const z5 = z3 * z * z;
    let start = z + (z3 + z) / (4 * df) + (5 * z5 + 16 * z3 + 3 * z) / (96 * df * df);
    if (!(start > 0) || !Number.isFinite(start)) start = 1;
    let lo = 0;
    let hi = start;
    while (studentTSf(hi, df) > q) {
      lo = hi;
      hi *= 2;
      if (hi > 1e300) break;
    }
    t = start;
    for (let i = 0; i < 200; i++) {
      const f = studentTSf(t, df) - q; // decreasing in t
      if (f > 0) lo = Math.max(lo, t);
      else hi = Math.min(hi, t);
      let next = t + f / studentTPdf(t, df);
      // Converged before the bracket test: a step under an ULP lands on a bound just set to t, and bisecting from
      // there threw away an exact start (then Newton crawled back up a steep tail and ran out of steps).
      if (Math.abs(next - t) <= 1e-15 * Math.abs(t)) {
        t = next;
        break;
      }
      if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
      t = next;
    }
  }
  return upper ? t : -t;
}

/** Upper tail of the chi-square distribution: Q(df/2, x/2); df = 1 and 2 through their closed forms. */
export function chiSquareSf(x: number, df: number): number {
  if (Number.isNaN(x) || !(df > 0)) return NaN;
  if (x <= 0) return 1;
  if (df === 1) return erfc(Math.sqrt(x / 2));
  if (df === 2) return Math.exp(-x / 2);
  return incompleteGamma(df / 2, x / 2).upper;
}
