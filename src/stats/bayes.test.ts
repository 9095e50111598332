/**
 * chanceToWin stays short when the arms differ hugely in size: the work is counted in terms summed, not timed.
 * Reference values: scipy.integrate.quad of f_T(x)·F_C(x) over μ_T ± 14 sd_T (scipy.stats.beta), and exact symmetry.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { chanceToWin, chanceToWinDetail, MAX_CHANCE_TO_WIN_TERMS } from "./bayes.ts";

const arm = (units: number, conversions: number) => ({ units, conversions });

function closeRel(actual: number, expected: number, tol: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= tol * Math.abs(expected), `${what}: got ${actual}, reference ${expected}`);
}

describe("chanceToWin with a small arm against a huge one", () => {
  // Before: the sum ran over the huge arm's successes with a spread of n_T·sd(p_C) terms (20 vs 4e9 units: ~10^9
  // terms, 17.8 s). Now the small arm is summed.
  const cases: { control: [number, number]; treatment: [number, number]; expected: number; source: string }[] = [
    { control: [20, 10], treatment: [4e9, 2e9], expected: 0.5, source: "symmetry: both posteriors symmetric about 1/2" },
    { control: [100, 50], treatment: [1e9, 5e8], expected: 0.5, source: "symmetry" },
    { control: [1000, 100], treatment: [1e8, 1e7], expected: 0.47760293425934647, source: "scipy quad" },
    { control: [100, 10], treatment: [1e9, 1e8], expected: 0.4300310330709321, source: "scipy quad" },
    { control: [300, 3], treatment: [2e9, 2e7], expected: 0.35501795713893475, source: "scipy quad" },
    { control: [1e6, 1e5], treatment: [2e9, 2.0002e8], expected: 0.5125835962934575, source: "scipy quad" },
  ];
  for (const c of cases) {
    it(`${c.control.join("/")} vs ${c.treatment.join("/")}: few terms, and within 1e-6 of the reference (${c.source})`, () => {
      for (const [control, treatment, expected] of [
        [c.control, c.treatment, c.expected],
        [c.treatment, c.control, 1 - c.expected],
      ] as const) {
        const r = chanceToWinDetail(arm(...control), arm(...treatment))!;
        assert.ok(r.terms <= 20_000, `${r.terms} terms by ${r.method}`);
        assert.notEqual(r.method, "normal");
        closeRel(r.p, expected, 1e-6, `${control} vs ${treatment}`);
      }
    });
  }

  it("arms of similar size keep the original sum (over the treatment's successes)", () => {
    const r = chanceToWinDetail(arm(100_000, 10_000), arm(100_000, 10_150))!;
    assert.equal(r.method, "sum:treatment-successes");
    assert.ok(r.terms < 5_000, String(r.terms));
  });

  it("both arms with trillions of units: the normal approximation, without a wasted attempt at the sum", () => {
    const r = chanceToWinDetail(arm(1e13, 1e12), arm(1e13, 1.000001e12))!;
    assert.equal(r.method, "normal");
    assert.equal(r.terms, 0);
    assert.ok(r.p > 0.5 && r.p < 1);
  });

  it("never sums more than the budget, whatever the counts, and P(T > C) + P(C > T) = 1", () => {
    const size = fc.oneof(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 0, max: 1e6 }), fc.integer({ min: 0, max: 5e9 }));
    const anArm = size.chain((units) => fc.tuple(fc.constant(units), fc.oneof(fc.constant(0), fc.constant(units), fc.integer({ min: 0, max: units }))));
    fc.assert(
      fc.property(anArm, anArm, ([nC, cC], [nT, cT]) => {
        const r = chanceToWinDetail(arm(nC, cC), arm(nT, cT))!;
        const back = chanceToWin(arm(nT, cT), arm(nC, cC))!;
        assert.ok(r.terms <= MAX_CHANCE_TO_WIN_TERMS + 1, `${r.terms} terms`);
        assert.ok(r.p >= 0 && r.p <= 1);
        assert.ok(Math.abs(r.p + back - 1) <= 1e-6, `${r.p} + ${back} (${r.method})`);
      }),
      { seed: 20261129, numRuns: 300 },
    );
  });
});

describe("chance to win near 1", () => {
  it("keeps the chance to lose: the small side is summed directly (mpmath: 1 - P = 5.147008907e-14)", () => {
    const a = arm(1e7, 1e6);
    const b = arm(1e7, 1.01e6);
    const p = chanceToWin(a, b)!;
    const lose = chanceToWin(b, a)!;
    closeRel(lose, 5.147008907e-14, 1e-8, "P(b < a)");
    assert.ok(Math.abs(1 - p - 5.147008907e-14) < 2e-16, `1 - P = ${1 - p} (was 9.4e-10)`);
    assert.equal(p + lose, 1);
  });
});
