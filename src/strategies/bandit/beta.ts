import type { RandomSource } from "../../clock.ts";

/**
 * Sampling from Gamma and Beta distributions with an injected uniform source, so that Thompson sampling is
 * reproducible in tests.
 */

/** A standard normal draw by the Box–Muller transform (Box & Muller 1958). */
export function normal(random: RandomSource): number {
  // 1 - u keeps the argument of log in (0, 1]
  const u1 = 1 - random();
  const u2 = random();
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

/**
 * A Gamma(shape, 1) draw for shape >= 1 by Marsaglia & Tsang, "A simple method for generating gamma variables",
 * ACM TOMS 26(3), 2000, section 6 (squeeze test, then the log test). Shapes below 1 are never needed here: the
 * Beta parameters are 1 + counts.
 */
export function gamma(shape: number, random: RandomSource): number {
  const d = shape - 1 / 3;
  const c = 1 / Math.sqrt(9 * d);
  for (;;) {
    const x = normal(random);
    let v = 1 + c * x;
    if (v <= 0) continue;
    v = v * v * v;
    const u = 1 - random();
    const x2 = x * x;
    if (u < 1 - 0.0331 * x2 * x2) return d * v;
    if (Math.log(u) < 0.5 * x2 + d * (1 - v + Math.log(v))) return d * v;
  }
}

/** A Beta(a, b) draw as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b); a, b >= 1. */
export function beta(a: number, b: number, random: RandomSource): number {
  const x = gamma(a, random);
  const y = gamma(b, random);
  return x / (x + y);
}
