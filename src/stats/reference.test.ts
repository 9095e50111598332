/**
 * Agreement with reference values computed by scipy / mpmath (scripts/stats-fixtures.py, output committed as
 * fixtures/reference.json): every number to at least 6 significant digits, tails included.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import {
  adjustPValues,
  chanceToWin,
  chiSquareSf,
  fixedHorizonUnits,
  logBeta,
  logGamma,
  meanTest,
  mixtureSprt,
  normalCdf,
  normalQuantile,
  normalSf,
  proportionTest,
  srmTest,
  studentTQuantile,
  studentTSf,
} from "./index.ts";

// eslint-disable-next-line @typescript-eslint/no-explicit-any
const ref: any = JSON.parse(readFileSync(new URL("./fixtures/reference.json", import.meta.url), "utf8"));

const SIG = 1e-6;

/** Relative agreement to 6 significant digits; values that are exactly 0 in the reference must be ≤ 1e-15. */
function close(actual: number | null | undefined, expected: number | null, what: string): void {
  if (expected === null) {
    assert.equal(actual ?? null, null, `${what}: expected null, got ${actual}`);
    return;
  }
  assert.equal(typeof actual, "number", `${what}: expected ${expected}, got ${actual}`);
  const a = actual as number;
  assert.ok(Number.isFinite(a), `${what}: not finite: ${a}`);
  const ok = expected === 0 ? Math.abs(a) <= 1e-15 : Math.abs(a - expected) <= SIG * Math.abs(expected);
  assert.ok(ok, `${what}: got ${a}, reference ${expected} (relative error ${Math.abs(a - expected) / Math.abs(expected)})`);
}

/** Interval bounds may straddle 0, so they get an absolute floor scaled by the interval's width. */
function closeInterval(actual: { estimate: number | null; ci: [number, number] | null }, expected: { estimate: number | null; ci: [number, number] | null } | undefined, what: string): void {
  if (!expected) return;
  closeAbs(actual.estimate, expected.estimate, `${what}.estimate`, expected.ci ? expected.ci[1] - expected.ci[0] : 0);
  if (expected.ci === null) {
    assert.equal(actual.ci, null, `${what}.ci`);
    return;
  }
  assert.ok(actual.ci, `${what}.ci missing`);
  const width = expected.ci[1] - expected.ci[0];
  closeAbs(actual.ci[0], expected.ci[0], `${what}.ci[0]`, width);
  closeAbs(actual.ci[1], expected.ci[1], `${what}.ci[1]`, width);
}

function closeAbs(actual: number | null, expected: number | null, what: string, scale: number): void {
  if (expected === null) return assert.equal(actual, null, what);
  assert.equal(typeof actual, "number", what);
  const tol = SIG * Math.max(Math.abs(expected), Math.abs(scale)) + 1e-15;
  assert.ok(Math.abs((actual as number) - expected) <= tol, `${what}: got ${actual}, reference ${expected}`);
}

describe("distributions against scipy/mpmath", () => {
  it("normal tails, CDF and quantiles (down to 1e-300)", () => {
    for (const c of ref.distributions.normalSf) close(normalSf(c.z), c.value, `normalSf(${c.z})`);
    for (const c of ref.distributions.normalCdf) close(normalCdf(c.z), c.value, `normalCdf(${c.z})`);
    for (const c of ref.distributions.normalQuantile) close(normalQuantile(c.p), c.value, `normalQuantile(${c.p})`);
  });
  it("Student t tail and quantile, df from 1 to 1e8", () => {
    for (const c of ref.distributions.studentTSf) close(studentTSf(c.t, c.df), c.value, `studentTSf(${c.t}, ${c.df})`);
    for (const c of ref.distributions.studentTQuantile) close(studentTQuantile(c.p, c.df), c.value, `studentTQuantile(${c.p}, ${c.df})`);
  });
  it("chi-square upper tail", () => {
    for (const c of ref.distributions.chiSquareSf) close(chiSquareSf(c.x, c.df), c.value, `chiSquareSf(${c.x}, ${c.df})`);
  });
  it("log gamma and log beta, including huge arguments", () => {
    for (const c of ref.distributions.logGamma) close(logGamma(c.x), c.value, `logGamma(${c.x})`);
    for (const c of ref.distributions.logBeta) close(logBeta(c.a, c.b), c.value, `logBeta(${c.a}, ${c.b})`);
  });
});

describe("proportionTest against scipy", () => {
  for (const c of ref.proportionTest) {
    it(c.name, () => {
      const r = proportionTest(c.control, c.treatment, { alpha: c.alpha });
      const e = c.expected;
      close(r.z, e.z, "z");
      close(r.pValue, e.pValue, "pValue");
      assert.equal(r.error, e.error, "error code");
      closeInterval(r.absolute, e.absolute, "absolute");
      closeInterval(r.relative, e.relative, "relative");
    });
  }
});

describe("meanTest (Welch) against scipy", () => {
  for (const c of ref.meanTest) {
    it(c.name, () => {
      const r = meanTest(c.control, c.treatment, { alpha: c.alpha });
      const e = c.expected;
      assert.equal(r.error, e.error, "error code");
      close(r.pValue, e.pValue, "pValue");
      if (e.t !== undefined) close(r.t, e.t, "t");
      if (e.df !== undefined) close(r.df, e.df, "df");
      closeInterval(r.absolute, e.absolute, "absolute");
      closeInterval(r.relative, e.relative, "relative");
    });
  }
});

describe("srmTest against scipy.stats.chisquare", () => {
  for (const c of ref.srmTest) {
    it(c.name, () => {
      const r = srmTest(c.observed, c.weights);
      assert.equal(r.error, c.expected.error);
      close(r.pValue, c.expected.pValue, "pValue");
      if (c.expected.chiSquare !== undefined) close(r.chiSquare, c.expected.chiSquare, "chiSquare");
      if (c.expected.df !== undefined) assert.equal(r.df, c.expected.df);
    });
  }
});

describe("mixtureSprt against mpmath", () => {
  for (const c of ref.mixtureSprt) {
    it(JSON.stringify(c.input), () => {
      const r = mixtureSprt(c.input);
      close(r.logLambda, c.expected.logLambda, "logLambda");
      close(r.pValue, c.expected.pValue, "pValue");
      assert.ok(r.ci);
      close(r.ci[0], c.expected.ci[0], "ci[0]");
      close(r.ci[1], c.expected.ci[1], "ci[1]");
    });
  }
});

describe("chanceToWin against exact sums and scipy quadrature", () => {
  for (const c of ref.chanceToWin) {
    it(`${c.name} (${c.method})`, () => close(chanceToWin(c.control, c.treatment), c.expected, "chanceToWin"));
  }
});

describe("adjustPValues against Holm by hand and scipy's false_discovery_control", () => {
  for (const c of ref.adjustPValues) {
    it(JSON.stringify(c.pValues), () => {
      adjustPValues(c.pValues as number[], "holm").forEach((p, i) => close(p, c.holm[i], `holm[${i}]`));
      adjustPValues(c.pValues as number[], "bh").forEach((p, i) => close(p, c.bh[i], `bh[${i}]`));
      assert.deepEqual(adjustPValues(c.pValues as number[], "none"), c.pValues);
    });
  }
});

describe("fixedHorizonUnits against the textbook formula with scipy quantiles", () => {
  for (const c of ref.fixedHorizonUnits) {
    it(JSON.stringify(c.input), () => assert.equal(fixedHorizonUnits(c.input), c.expected));
  }
});
