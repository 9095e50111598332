import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { meanTest, proportionTest } from "./frequentist.ts";
import { stratifiedDifference } from "./stratified.ts";

const close = (actual: number | null | undefined, expected: number, what: string, tolerance = 1e-12) =>
  assert.ok(actual !== null && actual !== undefined && Math.abs(actual - expected) <= tolerance * Math.max(1, Math.abs(expected)), `${what}: ${actual} vs ${expected}`);

describe("stratifiedDifference (post-stratification by period)", () => {
  it("two periods, worked by hand (Python, statistics.NormalDist): weights 1/3 and 2/3 by units", () => {
    const r = stratifiedDifference([
      { control: { units: 100, conversions: 10 }, treatment: { units: 100, conversions: 20 } },
      { control: { units: 300, conversions: 60 }, treatment: { units: 100, conversions: 30 } },
    ]);
    close(r.control, 0.16666666666666666, "control");
    close(r.treatment, 0.26666666666666666, "treatment");
    close(r.diff, 0.1, "diff");
    close(r.varDiff, 0.001448148148148148, "variance");
    // the test, under H0: each period's pooled rate, Σ W²·p̄(1−p̄)(1/n_C + 1/n_T)
    close(r.varDiffNull, 0.0013166666666666667, "variance under H0");
    close(r.statistic, 2.7558912730477525, "z");
    close(r.pValue, 0.005853245025574161, "p", 1e-9);
    close(r.absolute.ci![0], 0.025414468712922855, "lower", 1e-9);
    close(r.absolute.ci![1], 0.17458553128707716, "upper", 1e-9);
    close(r.relative.estimate, 0.6, "relative");
    close(r.relative.ci![0], 0.07752589945183064, "relative lower", 1e-9);
    close(r.relative.ci![1], 1.1224741005481695, "relative upper", 1e-9);
    assert.equal(r.periods, 2);
    assert.equal(r.error, undefined);
  });

  it("precision weights (the bandit's): n_C·n_T/(n_C + n_T), worked by hand in Python; one period is the same either way", () => {
    // a period at 50/50, then one where the control had the floor: 20 units against 1,980
    const strata = [
      { control: { units: 500, conversions: 50 }, treatment: { units: 500, conversions: 60 } },
      { control: { units: 20, conversions: 2 }, treatment: { units: 1980, conversions: 250 } },
    ];
    const r = stratifiedDifference(strata, { weights: "precision" });
    // weights 250 and 19.8 (of 269.8): 0.92661 and 0.07339, where by units they are 1/3 and 2/3
    close(r.control, 0.09999999999999999, "control");
    close(r.treatment, 0.12045959970348406, "treatment");
    close(r.diff, 0.02045959970348407, "diff");
    close(r.varDiffNull, 0.00036618640169996605, "variance under H0");
    close(r.statistic, 1.0691681823711283, "z");
    close(r.pValue, 0.28499389298581335, "p", 1e-9);
    const byUnits = stratifiedDifference(strata);
    assert.ok(byUnits.varDiffNull! > 5 * r.varDiffNull!, `by units ${byUnits.varDiffNull}, by precision ${r.varDiffNull}`);
    const one = [strata[0]!];
    assert.deepEqual({ ...stratifiedDifference(one, { weights: "precision" }), weights: "units" }, stratifiedDifference(one));
  });

  it("one period is the plain comparison for rates (pooled z, unpooled Wald interval); for means, Welch's interval", () => {
    const c = { units: 1000, conversions: 112 };
    const t = { units: 950, conversions: 131 };
    const plain = proportionTest(c, t);
    const one = stratifiedDifference([{ control: c, treatment: t }]);
    close(one.statistic, plain.z!, "z");
    close(one.pValue, plain.pValue!, "p");
    close(one.absolute.ci![0], plain.absolute.ci![0], "lower");
    close(one.absolute.ci![1], plain.absolute.ci![1], "upper");
    close(one.relative.ci![0], plain.relative.ci![0], "relative lower");
    const mc = { n: 40, sum: 52, sumSquares: 120 };
    const mt = { n: 35, sum: 61, sumSquares: 160 };
    const welch = meanTest(mc, mt);
    const oneMean = stratifiedDifference([{ control: mc, treatment: mt }]);
    close(oneMean.absolute.ci![0], welch.absolute.ci![0], "lower", 1e-9);
    close(oneMean.absolute.ci![1], welch.absolute.ci![1], "upper", 1e-9);
    assert.equal(oneMean.df, 73, "the test's df: the pooled variance's, n_C + n_T − 2");
  });

  it("a heavily weighted period whose small arm has no conversion is no certainty (the review's false rollback)", () => {
    // 99/1 for most of the units, then 50/50; the arms are identical
    const r = stratifiedDifference([
      { control: { units: 1980, conversions: 99 }, treatment: { units: 20, conversions: 0 } },
      { control: { units: 100, conversions: 5 }, treatment: { units: 100, conversions: 5 } },
    ]);
    assert.ok(r.pValue! > 0.2, `p = ${r.pValue}`);
    assert.ok(r.varDiffNull! > 0);
  });

  it("Simpson's paradox: identical arms ramped from 50/50 to 10/90 before the new units converted are not apart", () => {
    const before = { control: { units: 500, conversions: 150 }, treatment: { units: 500, conversions: 150 } };
    const after = { control: { units: 100, conversions: 0 }, treatment: { units: 900, conversions: 0 } };
    const pooled = proportionTest({ units: 600, conversions: 150 }, { units: 1400, conversions: 150 });
    assert.ok(pooled.pValue! < 1e-10, "pooled, the treatment looks far worse");
    const r = stratifiedDifference([before, after]);
    assert.equal(r.diff, 0);
    assert.equal(r.pValue, 1);
    assert.ok(r.absolute.ci![0] < 0 && r.absolute.ci![1] > 0);
  });

  it("a period with too few units in an arm is left out and counted; none left is ZERO_UNITS; bad input is INVALID_INPUT", () => {
    const r = stratifiedDifference([
      { control: { units: 100, conversions: 10 }, treatment: { units: 100, conversions: 20 } },
      { control: { units: 0, conversions: 0 }, treatment: { units: 500, conversions: 40 } },
    ]);
    assert.equal(r.periods, 1);
    assert.equal(r.excludedUnits, 500);
    close(r.diff, 0.1, "the first period alone");
    assert.equal(stratifiedDifference([{ control: { units: 1, conversions: 0 }, treatment: { units: 9, conversions: 1 } }]).error, "ZERO_UNITS");
    assert.equal(stratifiedDifference([{ control: { units: 10.5, conversions: 1 }, treatment: { units: 9, conversions: 1 } }]).error, "INVALID_INPUT");
    assert.equal(stratifiedDifference([{ control: { units: 10, conversions: 1 }, treatment: { n: 9, sum: 1, sumSquares: 1 } }] as never).error, "INVALID_INPUT");
    assert.equal(stratifiedDifference(null as never).error, "INVALID_INPUT");
    const zero = stratifiedDifference([{ control: { units: 10, conversions: 0 }, treatment: { units: 10, conversions: 0 } }]);
    assert.equal(zero.error, "ZERO_VARIANCE");
    assert.equal(zero.absolute.ci, null);
  });
});
