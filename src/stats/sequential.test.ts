/**
 * What the mSPRT is for, checked by simulation with a seeded random source: reading the report after every batch
 * of units does not inflate false positives (the fixed-horizon p does), and the "units still needed" estimate is
 * about right.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { seededRandom, type RandomSource } from "../clock.ts";
import { DEFAULT_TAU2_STANDARDIZED, meanIncreaseSequential, mixtureSprt, oneSidedMixtureSprt, runningMinimum } from "./sequential.ts";
import { proportionTest } from "./frequentist.ts";
import { sequentialUnits } from "./power.ts";

function binomialStep(random: RandomSource, n: number, p: number): number {
  let c = 0;
  for (let i = 0; i < n; i++) if (random() < p) c++;
  return c;
}

interface Arm {
  units: number;
  conversions: number;
}

/** One experiment read after every `batch` units per arm; returns whether each test ever rejected at alpha. */
function peekingRun(random: RandomSource, rateC: number, rateT: number, batch: number, looks: number, alpha: number) {
  const c: Arm = { units: 0, conversions: 0 };
  const t: Arm = { units: 0, conversions: 0 };
  let sequential: number | null = null;
  let fixedEver = false;
  let firstRejection: number | null = null;
  for (let look = 0; look < looks; look++) {
    c.units += batch;
    t.units += batch;
    c.conversions += binomialStep(random, batch, rateC);
    t.conversions += binomialStep(random, batch, rateT);
    const pC = c.conversions / c.units;
    const pT = t.conversions / t.units;
    const pooled = (c.conversions + t.conversions) / (c.units + t.units);
    if (pooled > 0 && pooled < 1) {
      const s = mixtureSprt({ diff: pT - pC, varDiff: (pC * (1 - pC)) / c.units + (pT * (1 - pT)) / t.units, tau2: DEFAULT_TAU2_STANDARDIZED * pooled * (1 - pooled), alpha });
      sequential = runningMinimum(sequential, s.pValue);
      if (sequential !== null && sequential < alpha && firstRejection === null) firstRejection = c.units + t.units;
    }
    const f = proportionTest(c, t).pValue;
    if (f !== null && f < alpha) fixedEver = true;
  }
  return { sequentialRejected: sequential !== null && sequential < alpha, fixedEver, firstRejection };
}

describe("mSPRT by simulation", () => {
  it("under no difference, peeking 40 times keeps false positives at or below alpha (the fixed-horizon p does not)", () => {
    const random = seededRandom(20261128);
    const runs = 300;
    let sequential = 0;
    let fixed = 0;
    for (let r = 0; r < runs; r++) {
      const o = peekingRun(random, 0.2, 0.2, 100, 40, 0.05);
      if (o.sequentialRejected) sequential++;
      if (o.fixedEver) fixed++;
    }
    // binomial(300, 0.05) has sd ≈ 3.8: 0.05 + 3 sd ≈ 0.088
    assert.ok(sequential / runs <= 0.088, `sequential false positive rate ${sequential / runs}`);
    assert.ok(fixed / runs > 0.12, `peeking at the fixed-horizon p should inflate errors, got ${fixed / runs}`);
  });

  it("with a real difference, the test rejects by about the sample size sequentialUnits predicts", () => {
    const random = seededRandom(7);
    const rateC = 0.1;
    const rateT = 0.13;
    const pooled = (rateC + rateT) / 2;
    const predicted = sequentialUnits({
      effect: rateT - rateC,
      varianceControl: rateC * (1 - rateC),
      varianceTreatment: rateT * (1 - rateT),
      shareControl: 0.5,
      shareTreatment: 0.5,
      tau2: DEFAULT_TAU2_STANDARDIZED * pooled * (1 - pooled),
    })!;
    const runs = 100;
    let byPredicted = 0;
    const batch = 100;
    for (let r = 0; r < runs; r++) {
      const o = peekingRun(random, rateC, rateT, batch, Math.ceil(predicted / (2 * batch)), 0.05);
      if (o.firstRejection !== null && o.firstRejection <= predicted + 2 * batch) byPredicted++;
    }
    // the estimate asks for 80% power at N and ignores earlier crossings, so it should reach at least ~80%
    assert.ok(byPredicted / runs >= 0.72, `rejected by ${predicted} units in ${byPredicted}/${runs} runs`);
    assert.ok(byPredicted / runs <= 0.99, `estimate far too generous: ${byPredicted}/${runs} by ${predicted}`);
  });

  it("mixtureSprt: an interval whose end would overflow a double is null, not infinite (a property-test counterexample)", () => {
    const r = mixtureSprt({ diff: -5.293757016178272e302, varDiff: 1.7976931348621163e308, tau2: 1483, alpha: 9.4e-323 });
    assert.equal(r.ci, null);
    assert.ok(Number.isFinite(r.pValue));
  });

  it("mixtureSprt: no evidence at a zero difference, and the interval narrows as data grows", () => {
    const zero = mixtureSprt({ diff: 0, varDiff: 1e-4, tau2: 1e-4 });
    assert.equal(zero.pValue, 1);
    const wide = mixtureSprt({ diff: 0.01, varDiff: 1e-4, tau2: 1e-4 }).ci!;
    const narrow = mixtureSprt({ diff: 0.01, varDiff: 1e-6, tau2: 1e-4 }).ci!;
    assert.ok(narrow[1] - narrow[0] < wide[1] - wide[0]);
    assert.deepEqual(mixtureSprt({ diff: 1, varDiff: 1, tau2: 0 }).error, "INVALID_INPUT");
    assert.equal(runningMinimum(0.2, null), 0.2);
    assert.equal(runningMinimum(undefined, 0.3), 0.3);
    assert.equal(runningMinimum(0.2, 0.3), 0.2);
  });

  it("the metric's unit does not matter: values of 1e100 or 1e-90 give the evidence of values near 1", () => {
    // V·(V + τ²) overflowed to Infinity (or underflowed to 0) from about 1e80 (1e-80): ln Λ was NaN, read as p = 0,
    // which the running minimum then kept for good. One event of 1e100 rolled an experiment back.
    const close = (a: number, b: number) => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b));
    for (const [diff, varDiff, tau2] of [
      [0.3, 0.09, 1e-3],
      [-0.02, 1e-4, 1e-3],
      [0.05, 1e-4, 1e-4],
    ] as const) {
      const plain = mixtureSprt({ diff, varDiff, tau2 });
      const plainOneSided = oneSidedMixtureSprt({ diff, varDiff, tau2 });
      for (const unit of [1e-150, 1e-90, 1e80, 1e100, 1e150]) {
        const scaled = mixtureSprt({ diff: diff * unit, varDiff: varDiff * unit * unit, tau2: tau2 * unit * unit });
        assert.ok(close(scaled.logLambda!, plain.logLambda!), `${unit}: ln Λ ${scaled.logLambda} against ${plain.logLambda}`);
        assert.ok(close(scaled.pValue!, plain.pValue!));
        assert.ok(close(scaled.ci![0] / unit, plain.ci![0]) && close(scaled.ci![1] / unit, plain.ci![1]), `${unit}: ${scaled.ci}`);
        const oneSided = oneSidedMixtureSprt({ diff: diff * unit, varDiff: varDiff * unit * unit, tau2: tau2 * unit * unit });
        assert.ok(close(oneSided.logLambda!, plainOneSided.logLambda!) && close(oneSided.pValue!, plainOneSided.pValue!), `${unit}: one-sided`);
      }
    }
    // The guardrail's test, as the audit met it: 200 units a side, values 0-20, and one treatment unit's value 1e100.
    const values = Array.from({ length: 200 }, (_, i) => i % 21);
    const sample = (xs: number[]) => ({ n: xs.length, sum: xs.reduce((a, b) => a + b, 0), sumSquares: xs.reduce((a, b) => a + b * b, 0) });
    const guard = meanIncreaseSequential(sample(values), sample([...values.slice(1), 1e100]), 1.2, 0, DEFAULT_TAU2_STANDARDIZED);
    assert.ok(guard.pValue! > 0.05, `one huge value is no evidence of an increase: p = ${guard.pValue}`);
  });
});
