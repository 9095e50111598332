/**
 * The error-rate guardrail's one-sided test of H0: p_T ≤ k·p_C + c: Farrington–Manning score test (variance at the
 * restricted MLE). Reference values: scipy (brentq on the restricted likelihood's derivative, norm.sf), computed
 * independently; and a seeded simulation of the type I error at the boundary of H0.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { seededRandom, type RandomSource } from "../clock.ts";
import { meanTest, proportionOneSidedIncrease, proportionTest, restrictedMle, srmTest, symmetricCi, welchOneSidedIncrease } from "./frequentist.ts";
import { studentTQuantile } from "./distributions.ts";
import { meanIncreaseSequential } from "./sequential.ts";
import { adjustPValues } from "./multiple.ts";
import { chanceToWin } from "./bayes.ts";
import { mixtureSprt } from "./sequential.ts";

function close(actual: number | null | undefined, expected: number, what: string, tol = 1e-12): void {
  assert.equal(typeof actual, "number", what);
  assert.ok(Math.abs(actual! - expected) <= tol * Math.max(Math.abs(expected), 1e-300), `${what}: got ${actual}, reference ${expected}`);
}

const arm = (units: number, conversions: number) => ({ units, conversions });

describe("proportionOneSidedIncrease: Farrington–Manning score test", () => {
  const cases: { c: [number, number]; t: [number, number]; k: number; add: number; pC: number; pT: number; p: number }[] = [
    { c: [5000, 0], t: [5000, 3], k: 1.2, add: 0, pC: 0.0002727340367406673, pT: 0.00032728084408880075, p: 0.05689850358959791 },
    { c: [4000, 10], t: [4000, 60], k: 1, add: 0.01, pC: 0.0029696026906560966, pT: 0.012969602690656097, p: 0.10394387348553291 },
    { c: [1000, 50], t: [1200, 70], k: 1.2, add: 0, pC: 0.04917683818377789, pT: 0.059012205820533466, p: 0.5621282793740163 },
    { c: [5000, 0], t: [5000, 0], k: 1, add: 0.01, pC: 0, pT: 0.01, p: 0.9999999999994057 },
    { c: [10000, 120], t: [9000, 95], k: 1.5, add: 0.002, pC: 0.008596944662728737, pT: 0.014895416994093106, p: 0.9999997333790486 },
  ];
  for (const x of cases) {
    it(`control ${x.c[1]}/${x.c[0]}, treatment ${x.t[1]}/${x.t[0]}, H0: p_T ≤ ${x.k}·p_C + ${x.add} (scipy)`, () => {
      const mle = restrictedMle(arm(...x.c), arm(...x.t), x.k, x.add)!;
      close(mle.pC, x.pC, "restricted p_C", 1e-9);
      close(mle.pT, x.pT, "restricted p_T", 1e-9);
      close(proportionOneSidedIncrease(arm(...x.c), arm(...x.t), x.k, x.add).pValue, x.p, "p", 1e-9);
    });
  }

  it("a control without errors no longer makes 3 errors in 5,000 'significantly' above +20% (Wald: p = 0.042)", () => {
    const r = proportionOneSidedIncrease(arm(5000, 0), arm(5000, 3), 1.2, 0);
    assert.ok(r.pValue! > 0.05, String(r.pValue));
    assert.equal(r.estimate, 0.0006);
  });

  it("data problems give codes, not exceptions", () => {
    assert.equal(proportionOneSidedIncrease(arm(0, 0), arm(10, 1), 1.2, 0).error, "ZERO_UNITS");
    assert.equal(proportionOneSidedIncrease(arm(10, 11), arm(10, 1), 1.2, 0).error, "INVALID_INPUT");
    assert.equal(proportionOneSidedIncrease(arm(10, 1), arm(10, 1), 0, 0).error, "INVALID_INPUT");
    const none = proportionOneSidedIncrease(arm(100, 0), arm(100, 0), 1.2, 0);
    assert.deepEqual([none.pValue, none.error], [1, "ZERO_VARIANCE"]);
    assert.equal(proportionOneSidedIncrease(arm(100, 1), arm(100, 100), 1, 1.5).pValue, 1, "a limit above 100 points cannot be exceeded");
  });

  it("type I error at the boundary of H0 (treatment exactly +20%) stays at or below alpha; the Wald test gave 6.7%", () => {
    const random = seededRandom(5);
    // binomial by waiting times, for small rates
    const binomial = (r: RandomSource, n: number, p: number): number => {
      let k = 0;
      let i = 0;
      for (;;) {
        i += Math.floor(Math.log(1 - r()) / Math.log(1 - p)) + 1;
        if (i > n) return k;
        k++;
      }
    };
    const runs = 20_000;
    let rejected = 0;
    for (let r = 0; r < runs; r++) {
      const c = binomial(random, 2000, 0.001);
      const t = binomial(random, 2000, 0.0012);
      const p = proportionOneSidedIncrease(arm(2000, c), arm(2000, t), 1.2, 0).pValue;
      if (p !== null && p < 0.05) rejected++;
    }
    // binomial(20000, 0.05) has sd 0.0015: 0.05 + 3 sd ≈ 0.055
    assert.ok(rejected / runs <= 0.055, `type I error ${rejected / runs}`);
  });
});

describe("bad options are refused, not replaced by defaults", () => {
  it("alpha outside (0, 1) gives INVALID_INPUT, where it used to be 0.05 silently", () => {
    for (const alpha of [0, 1, 2, -0.1, Number.NaN]) {
      assert.equal(proportionTest({ units: 100, conversions: 10 }, { units: 100, conversions: 20 }, { alpha }).error, "INVALID_INPUT", String(alpha));
      assert.equal(meanTest({ n: 10, sum: 10, sumSquares: 20 }, { n: 10, sum: 12, sumSquares: 30 }, { alpha }).error, "INVALID_INPUT", String(alpha));
      assert.equal(mixtureSprt({ diff: 0.1, varDiff: 0.01, tau2: 0.001, alpha }).error, "INVALID_INPUT", String(alpha));
    }
    assert.equal(proportionTest({ units: 100, conversions: 10 }, { units: 100, conversions: 20 }, { alpha: 0.1 }).error, undefined);
  });

  it("adjustPValues: an unknown method throws; a p that is not a probability is null and not counted", () => {
    assert.throws(() => adjustPValues([0.01], "xyz" as "holm"), /method must be "holm", "bh" or "none", got "xyz"/);
    assert.deepEqual(adjustPValues([0.01, 1.5, -0.2, 0.04], "holm"), [0.02, null, null, 0.04]);
    assert.deepEqual(adjustPValues([1 + 1e-15], "none"), [1], "rounding above 1 is still a p of 1");
  });
});

describe("numerical edges found by an audit (references: scipy)", () => {
  it("sums of squares no data could give are INVALID_INPUT, not a variance of 0", () => {
    // Σx² = 500 < (Σx)²/n = 1000: was read as a control with no variance at all (p = 0.037).
    const impossible = { n: 10, sum: 100, sumSquares: 500 };
    const other = { n: 10, sum: 120, sumSquares: 1500 };
    assert.equal(meanTest(impossible, other).error, "INVALID_INPUT");
    assert.equal(meanTest(other, impossible).error, "INVALID_INPUT");
    assert.equal(welchOneSidedIncrease(impossible, other, 1.2, 0).error, "INVALID_INPUT");
    assert.equal(meanIncreaseSequential(impossible, other, 1.2, 0, 1e-3).error, "INVALID_INPUT");
    // Exactly no variance, and rounding just below it, are data.
    assert.equal(meanTest({ n: 10, sum: 100, sumSquares: 1000 }, other).error, undefined);
    assert.equal(meanTest({ n: 3, sum: 0.3, sumSquares: 0.03 * (1 - 1e-12) }, other).error, undefined);
    // Values under 1e-160, whose squares the stores drop: a sum of squares of 0 beside a tiny sum is data.
    assert.notEqual(meanTest({ n: 1000, sum: 1e-158, sumSquares: 0 }, other).error, "INVALID_INPUT");
  });

  it("confidence intervals at a small alpha come from the lower tail (1 - alpha/2 rounded the digits away)", () => {
    close(proportionTest(arm(1000, 100), arm(1000, 120), { alpha: 1e-10 }).absolute.ci![1], 0.11044488302246462, "alpha 1e-10", 1e-14);
    close(proportionTest(arm(1000, 100), arm(1000, 120), { alpha: 1e-16 }).absolute.ci![1], 0.13614829556857835, "alpha 1e-16 (was null)", 1e-14);
    assert.ok(meanTest({ n: 50, sum: 500, sumSquares: 5200 }, { n: 50, sum: 550, sumSquares: 6300 }, { alpha: 1e-16 }).absolute.ci !== null);
  });

  it("student t quantiles: converged in the far tail at a huge df, and df 1 and 2 without cancellation", () => {
    close(studentTQuantile(1e-120, 1e8), -23.3341068880014, "q 1e-120, df 1e8 (was -23.0963)", 1e-12);
    close(studentTQuantile(0.50000001, 2), 2.8284271389583564e-8, "df 2 near the median (was 5% off)", 1e-7);
    close(studentTQuantile(1e-12, 1), -318309886183.7907, "df 1 far tail", 1e-12);
  });

  it("srmTest: counts or weights beyond the doubles do not pass for evidence", () => {
    assert.deepEqual(srmTest([1e308, 1e308], [1, 1]), { chiSquare: null, df: 1, pValue: null, error: "INVALID_INPUT" });
    close(srmTest([10, 20], [1e308, 1e308]).pValue, srmTest([10, 20], [1, 1]).pValue!, "huge equal weights are equal weights");
    assert.equal(proportionTest(arm(1e308, 1e307), arm(1e308, 2e307)).error, "INVALID_INPUT");
  });

  it("symmetricCi: an interval with an end beyond the doubles is null, not infinite", () => {
    assert.deepEqual(symmetricCi(1, 0.5), [0.5, 1.5]);
    assert.equal(symmetricCi(-1e308, 1e308), null, "the lower end overflows");
    assert.equal(symmetricCi(1e308, 1e308), null, "the upper end overflows");
    assert.equal(symmetricCi(0, Infinity), null);
  });
});

describe("arguments that are not samples, and samples with no spread", () => {
  it("a missing sample is a data problem (INVALID_INPUT), not a TypeError; adjustPValues says what it needs", () => {
    const bad = [null, undefined, 3, "x"] as unknown as { units: number; conversions: number; n: number; sum: number; sumSquares: number }[];
    for (const b of bad) {
      assert.equal(proportionTest(b, { units: 10, conversions: 1 }).error, "INVALID_INPUT");
      assert.equal(proportionTest({ units: 10, conversions: 1 }, b).error, "INVALID_INPUT");
      assert.equal(meanTest(b, { n: 3, sum: 3, sumSquares: 5 }).error, "INVALID_INPUT");
      assert.equal(srmTest(b as unknown as number[], [1, 1]).error, "INVALID_INPUT");
      // (these two threw a TypeError: "Cannot read properties of null", "Cannot destructure property 'diff'")
      assert.equal(chanceToWin(b, { units: 10, conversions: 1 }), null);
      assert.equal(chanceToWin({ units: 10, conversions: 1 }, b), null);
      assert.equal(mixtureSprt(b as unknown as Parameters<typeof mixtureSprt>[0]).error, "INVALID_INPUT");
    }
    assert.throws(() => adjustPValues(null as unknown as number[], "holm"), /pValues must be an array, got null/);
  });

  it("fractional counts are INVALID_INPUT (as chanceToWin has them); fractional weights and sums are not counts", () => {
    assert.equal(proportionTest({ units: 10.5, conversions: 1 }, { units: 10, conversions: 2 }).error, "INVALID_INPUT");
    assert.equal(proportionTest({ units: 10, conversions: 1 }, { units: 10, conversions: 2.5 }).error, "INVALID_INPUT");
    assert.equal(proportionOneSidedIncrease(arm(100, 1.5), arm(100, 2), 1.2, 0).error, "INVALID_INPUT");
    assert.equal(srmTest([100.5, 100], [1, 1]).error, "INVALID_INPUT");
    assert.equal(srmTest([100, 100], [0.25, 0.75]).error, undefined);
    assert.equal(meanTest({ n: 3.5, sum: 3, sumSquares: 5 }, { n: 3, sum: 3, sumSquares: 5 }).error, "INVALID_INPUT");
    assert.equal(meanTest({ n: 3, sum: 3.5, sumSquares: 5.25 }, { n: 3, sum: 3, sumSquares: 5 }).error, undefined);
  });

  it("arms each all-zero or all-one but apart get no interval (a Wald interval of no width), and say so", () => {
    const allVsNone = proportionTest({ units: 20, conversions: 20 }, { units: 20, conversions: 0 });
    assert.equal(allVsNone.absolute.estimate, -1);
    assert.equal(allVsNone.absolute.ci, null);
    assert.equal(allVsNone.relative.ci, null);
    assert.equal(allVsNone.error, "ZERO_VARIANCE");
    // the pooled test has a variance: its p-value stands
    assert.ok(allVsNone.pValue! < 1e-9);
    const oneEach = proportionTest({ units: 1, conversions: 0 }, { units: 1, conversions: 1 });
    assert.equal(oneEach.absolute.ci, null);
    assert.equal(oneEach.error, "CONTROL_RATE_ZERO");
    // equal arms too: [0, 0] claimed a certainty 5 of 5 against 9 of 9 cannot give
    const equal = proportionTest({ units: 5, conversions: 5 }, { units: 9, conversions: 9 });
    assert.equal(equal.absolute.ci, null);
    assert.equal(equal.relative.ci, null);
    assert.equal(equal.error, "ZERO_VARIANCE");
    assert.equal(equal.pValue, 1);
    const none = proportionTest({ units: 10, conversions: 0 }, { units: 10, conversions: 0 });
    assert.equal(none.absolute.ci, null);
    assert.equal(none.pValue, 1);
  });
});
