/**
 * The report's use of the sequential test and of the SRM check across reports: the direction of a significant result
 * comes from the running intersection of the always-valid intervals, and weight changes (bandit, ramp-ups) are not
 * taken for a sample ratio mismatch.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { MetricConfig } from "../config/index.ts";
import type { MetricAggregate } from "../store/types.ts";
import { srmTest } from "./frequentist.ts";
import { buildReport, type ReportInput } from "./report.ts";
import { DEFAULT_TAU2_STANDARDIZED, mixtureSprt } from "./sequential.ts";

const NOW = Date.parse("2026-11-28T12:00:00Z");
const METRICS: MetricConfig[] = [{ name: "watched", kind: "conversion", event: "watched" }];

type Arms = Record<string, [units: number, conversions: number]>;

function input(arms: Arms, weights: Record<string, number>, over: Partial<ReportInput> = {}): ReportInput {
  const names = Object.keys(arms);
  return {
    experiment: "x",
    variants: names.map((name) => ({ name, weight: weights[name]! })),
    aggregates: {
      experiment: "x",
      variants: names.map((v) => ({ variant: v, units: arms[v]![0], requests: arms[v]![0], fallbackRequests: 0 })),
      multiVariantUnits: 0,
      forcedRequests: 0,
      firstExposureTs: NOW - 86_400_000,
      lastExposureTs: NOW,
      metrics: [{ name: "watched", kind: "conversion", byVariant: Object.fromEntries(names.map((v) => [v, { units: arms[v]![0], conversions: arms[v]![1] }])) }],
    },
    metrics: METRICS,
    analysis: { alpha: 0.05, srmThreshold: 0.001, correction: "holm" },
    now: NOW,
    ...over,
  };
}

/** The always-valid interval of one look, as the report computes it (the larger of the pooled and the arms' own variances; τ² = 1e-3 · the pooled one). */
function lookInterval(control: [number, number], treatment: [number, number]): [number, number] {
  const pC = control[1] / control[0];
  const pT = treatment[1] / treatment[0];
  const pooled = (control[1] + treatment[1]) / (control[0] + treatment[0]);
  const s = mixtureSprt({
    diff: pT - pC,
    varDiff: Math.max(pooled * (1 - pooled) * (1 / control[0] + 1 / treatment[0]), (pC * (1 - pC)) / control[0] + (pT * (1 - pT)) / treatment[0]),
    tau2: DEFAULT_TAU2_STANDARDIZED * pooled * (1 - pooled),
    alpha: 0.05,
  });
  return s.ci!;
}

const HALF = { control: 50, treatment: 50 };
// Look 1: the treatment is clearly worse (12% vs 8%).
const WORSE: Arms = { control: [3000, 360], treatment: [3000, 240] };

describe("significance and direction from the running intersection of always-valid intervals", () => {
  it("keeps the intersection in sequentialState, exactly, and its side gives the direction", () => {
    const first = buildReport(input(WORSE, HALF));
    const i1 = lookInterval(WORSE.control!, WORSE.treatment!);
    assert.ok(i1[1] < 0);
    assert.equal(first.sequentialState["watched/treatment#lower"], i1[0]);
    assert.equal(first.sequentialState["watched/treatment#upper"], i1[1]);
    assert.equal(first.sequentialState["watched/treatment#alpha"], 0.05);
    assert.equal(first.report.decision.action, "rollback");

    // Look 2: a small positive estimate whose interval still overlaps look 1's. The running minimum p is still
    // < alpha; the direction is the intersection's (worse), not the current estimate's (better).
    const look2: Arms = { control: [4000, 480], treatment: [4000, 500] };
    const second = buildReport(input(look2, HALF, { previousSequential: first.sequentialState }));
    const c = second.report.metrics[0]!.comparisons[0]!;
    const i2 = lookInterval(look2.control!, look2.treatment!);
    assert.ok(c.absolute.estimate! > 0 && i2[0] < i1[1] && i2[1] > 0, JSON.stringify(i2));
    assert.deepEqual(c.sequentialCi, [Math.max(i1[0], i2[0]), Math.min(i1[1], i2[1])]);
    assert.equal(c.significant, true);
    assert.equal(c.sequentialError, undefined);
    assert.notEqual(second.report.decision.action, "promote");
    assert.equal(second.report.decision.action, "rollback");
    assert.match(second.report.decision.reason, /treatment is significantly worse on watched/);
  });

  it("an empty intersection is NON_STATIONARY: not significant, nothing decided, and it stays empty", () => {
    const first = buildReport(input(WORSE, HALF));
    // the reviewer's repro: later, the treatment is slightly ahead and its interval lies above look 1's
    const look2: Arms = { control: [20000, 2400], treatment: [20000, 2440] };
    const second = buildReport(input(look2, HALF, { previousSequential: first.sequentialState }));
    const c = second.report.metrics[0]!.comparisons[0]!;
    assert.equal(c.pValueSequential, first.report.metrics[0]!.comparisons[0]!.pValueSequential, "the running minimum p is kept");
    assert.ok(c.pValueSequential! < 0.05);
    assert.equal(c.significant, false);
    assert.equal(c.sequentialCi, null);
    assert.equal(c.sequentialError, "NON_STATIONARY");
    assert.equal(second.report.decision.action, "continue");
    assert.match(second.report.decision.reason, /not stable over time.*NON_STATIONARY/);
    assert.ok(second.sequentialState["watched/treatment#lower"]! > second.sequentialState["watched/treatment#upper"]!);
    // a later clear win does not undo it: the intersection only shrinks
    const third = buildReport(input({ control: [40000, 4000], treatment: [40000, 5200] }, HALF, { previousSequential: second.sequentialState }));
    assert.equal(third.report.metrics[0]!.comparisons[0]!.sequentialError, "NON_STATIONARY");
    assert.equal(third.report.decision.action, "continue");
  });

  it("an old state with only the running minimum p loads; without an interval its direction is unknown, so it is not significant", () => {
    const look: Arms = { control: [4000, 480], treatment: [4000, 500] };
    const { report, sequentialState } = buildReport(input(look, HALF, { previousSequential: { "watched/treatment": 0.0005, "gone/metric": 0.5 } }));
    const c = report.metrics[0]!.comparisons[0]!;
    assert.equal(c.pValueSequential, 0.0005);
    assert.equal(c.significant, false);
    assert.deepEqual(c.sequentialCi, lookInterval(look.control!, look.treatment!), "the intersection starts at this look");
    assert.equal(report.decision.action, "continue");
    assert.equal(sequentialState["gone/metric"], 0.5);
    assert.equal(sequentialState["watched/treatment"], 0.0005);
    // unreadable interval entries are ignored rather than trusted
    const junk = buildReport(input(look, HALF, { previousSequential: { "watched/treatment#lower": Number.NaN, "watched/treatment#upper": 1, "watched/treatment#alpha": 0.05 } }));
    assert.deepEqual(junk.report.metrics[0]!.comparisons[0]!.sequentialCi, lookInterval(look.control!, look.treatment!));
  });

  it("a stored p that is not a probability is ignored, for the primary metric as for guardrails", () => {
    const look: Arms = { control: [4000, 480], treatment: [4000, 500] };
    const fresh = buildReport(input(look, HALF)).report.metrics[0]!.comparisons[0]!.pValueSequential;
    for (const bad of [-0.5, 1.5, Number.NEGATIVE_INFINITY]) {
      const { report } = buildReport(input(look, HALF, { previousSequential: { "watched/treatment": bad } }));
      assert.equal(report.metrics[0]!.comparisons[0]!.pValueSequential, fresh, String(bad));
    }
  });

  it("a different alpha starts a new intersection", () => {
    const first = buildReport(input(WORSE, HALF));
    const look2: Arms = { control: [20000, 2400], treatment: [20000, 2440] };
    const second = buildReport(input(look2, HALF, { previousSequential: first.sequentialState, analysis: { alpha: 0.1, srmThreshold: 0.001, correction: "holm" } }));
    assert.equal(second.report.metrics[0]!.comparisons[0]!.sequentialError, undefined);
    assert.equal(second.sequentialState["watched/treatment#alpha"], 0.1);
  });
});

describe("guardrail wording", () => {
  it("a breach remembered from an earlier report says so when the value is within the limit now", () => {
    const metrics: MetricConfig[] = [{ name: "watched", kind: "conversion", event: "watched", guardrail: { maxRelativeIncrease: 0.2 } } as MetricConfig];
    const look: Arms = { control: [4000, 480], treatment: [4000, 300] };
    const key = "watched/treatment#guardrail-relative=0.2";
    const { report } = buildReport(input(look, HALF, { metrics, previousSequential: { [key]: 0.001 } }));
    const g = report.guardrails.find((x) => x.name === "watched")!;
    assert.equal(g.ok, false, "the always-valid breach stands");
    assert.match(g.detail, /-37\.5%\): limit \+20(\.0)?% relative, within it now but significantly above it at an earlier report \(always-valid one-sided p = 0\.001/);
  });
});

describe("SRM under weight changes", () => {
  // burn-in 50/50, then Thompson sampling; the bandit now sits at its floor, 1/99
  const BANDIT: Arms = { control: [3000, 300], treatment: [9000, 1170] };

  it("bandit: the allocation is adaptive, so the SRM check is skipped and says so", () => {
    const { report } = buildReport(input(BANDIT, { control: 0.01, treatment: 0.99 }, { strategy: "bandit" }));
    assert.equal(report.srm.pValue, null);
    assert.equal(report.srm.mismatch, false);
    assert.equal(report.srm.judged, false);
    assert.equal(report.srm.reason, "ADAPTIVE_ALLOCATION");
    assert.match(report.srm.note, /bandit/);
    assert.equal(report.decision.action, "promote", report.decision.reason);
    assert.match(report.decision.reason, /Guardrails hold; the split is not checked under the bandit's moving weights\./, "not 'SRM not judged yet', as if it would be");
    // other strategies still check the cumulative split
    assert.equal(buildReport(input(BANDIT, { control: 0.01, treatment: 0.99 }, { strategy: "sticky" })).report.srm.mismatch, true);
  });

  // one day at 90/10, then four at 50/50; the treatment converts 13% vs 10%
  const RAMP: Arms = { control: [5800, 580], treatment: [4200, 546] };
  const CHANGED = NOW - 4 * 86_400_000;

  it("ramp-up: units since the current weights took effect are tested, not the cumulative ones", () => {
    const { report } = buildReport(input(RAMP, HALF, { srmWindow: { since: CHANGED, units: { control: 4000, treatment: 4000 } } }));
    assert.equal(report.srm.judged, true);
    assert.equal(report.srm.mismatch, false);
    assert.equal(report.srm.pValue, srmTest([4000, 4000], [50, 50]).pValue);
    assert.equal(report.srm.reason, "SINCE_WEIGHT_CHANGE");
    assert.equal(report.srm.since, new Date(CHANGED).toISOString());
    assert.equal(report.decision.action, "promote", report.decision.reason);
  });

  it("a real mismatch since the change is still caught, and too few units since it are not judged", () => {
    const bad = buildReport(input(RAMP, HALF, { srmWindow: { since: CHANGED, units: { control: 4300, treatment: 3700 } } })).report;
    assert.equal(bad.srm.mismatch, true);
    assert.equal(bad.srm.pValue, srmTest([4300, 3700], [50, 50]).pValue);
    assert.equal(bad.decision.action, "continue");
    assert.match(bad.decision.reason, /^Sample ratio mismatch/);
    const young = buildReport(input(RAMP, HALF, { srmWindow: { since: NOW - 60_000, units: { control: 3 } } })).report;
    assert.equal(young.srm.judged, false);
    assert.match(young.srm.note, /not judged until every variant is expected to have 8 units first exposed from .* on \(the first whole minute under the current weights\) \(control: 3 of 1\.5 expected, treatment: 0 of 1\.5 expected\)/);
  });

  it("an arm the split starves is a mismatch: units are judged by those expected, not those received (the review's case)", () => {
    // 34/33/33, and t2 got 5 units where about 3,960 were due: before, "not judged until t2 has 8 units", and t1 promoted
    const starved = buildReport(input({ control: [6000, 600], t1: [6000, 780], t2: [5, 0] }, { control: 34, t1: 33, t2: 33 })).report;
    assert.equal(starved.srm.judged, true, starved.srm.note);
    assert.equal(starved.srm.mismatch, true);
    assert.equal(starved.srm.pValue, srmTest([6000, 6000, 5], [34, 33, 33]).pValue);
    assert.equal(starved.decision.action, "continue");
    assert.match(starved.decision.reason, /^Sample ratio mismatch/);
    for (const got of [0, 7]) {
      const two = buildReport(input({ control: [10_000, 1000], treatment: [got, 0] }, HALF)).report;
      assert.equal(two.srm.mismatch, true, `treatment with ${got} units: ${two.srm.note}`);
    }
    // few units in all: still too few expected to judge
    const early = buildReport(input({ control: [9, 1], treatment: [3, 0] }, { control: 90, treatment: 10 })).report;
    assert.equal(early.srm.judged, false);
    assert.match(early.srm.note, /treatment: 3 of 1\.2 expected/);
  });

  it("counts no test can be made of are not judged, rather than said to match", () => {
    for (const units of [Infinity, Number.NaN]) {
      const { report } = buildReport(input({ control: [units, 100], treatment: [1000, 120] }, HALF));
      assert.equal(report.srm.judged, false, String(units));
      assert.equal(report.srm.mismatch, false);
      assert.match(report.srm.note, /^not judged: the unit counts give no test \(INVALID_INPUT\)/);
    }
  });
});

describe("chance to win", () => {
  it("is null for an arm without units: its posterior would be the prior, not evidence", () => {
    const { report } = buildReport(input({ control: [388, 0], treatment: [412, 9], empty: [0, 0] }, { control: 50, treatment: 50, empty: 0 }));
    const byVariant = Object.fromEntries(report.metrics[0]!.comparisons.map((c) => [c.variant, c]));
    assert.ok(byVariant.treatment!.chanceToWin! > 0.99);
    assert.equal(byVariant.empty!.chanceToWin, null);
    assert.equal(byVariant.empty!.error, "ZERO_UNITS");
    const none = buildReport(input({ control: [0, 0], treatment: [0, 0] }, HALF)).report;
    assert.equal(none.metrics[0]!.comparisons[0]!.chanceToWin, null, "an experiment without units yet");
  });
});

describe("the decision counts the treatments in the split", () => {
  it("every treatment in the split significantly worse is a rollback, even beside an empty variant at weight 0", () => {
    const { report } = buildReport(input({ control: [5000, 600], treatment: [5000, 400], off: [0, 0] }, { control: 50, treatment: 50, off: 0 }));
    assert.equal(report.decision.action, "rollback", report.decision.reason);
    assert.match(report.decision.reason, /treatment is significantly worse/);
  });
});

describe("a metric's definition", () => {
  it("a metric redefined (another event, window or τ²) starts its evidence afresh; an unchanged one keeps it", () => {
    const first = buildReport(input(WORSE, HALF));
    const key = "watched/treatment";
    assert.ok(first.sequentialState[key]! < 0.001, "strong evidence at the first look");
    assert.equal(typeof first.sequentialState["watched#definition"], "number");
    const even: Arms = { control: [3000, 300], treatment: [3000, 300] };
    const same = buildReport(input(even, HALF, { previousSequential: first.sequentialState }));
    assert.equal(same.sequentialState[key], first.sequentialState[key], "same definition: the running minimum is kept");
    for (const changed of [
      [{ name: "watched", kind: "conversion", event: "clicked" }],
      [{ name: "watched", kind: "conversion", event: "watched", windowMs: 3_600_000 }],
    ] as MetricConfig[][]) {
      const next = buildReport(input(even, HALF, { metrics: changed, previousSequential: first.sequentialState }));
      assert.equal(next.report.metrics[0]!.comparisons[0]!.pValueSequential, 1, JSON.stringify(changed));
      assert.equal(next.sequentialState[`${key}#lower`]! <= 0 && next.sequentialState[`${key}#upper`]! >= 0, true, "a fresh interval");
    }
    const otherTau = buildReport(input(even, HALF, { analysis: { alpha: 0.05, srmThreshold: 0.001, correction: "holm", tau2: 0.01 }, previousSequential: first.sequentialState }));
    assert.equal(otherTau.report.metrics[0]!.comparisons[0]!.pValueSequential, 1);
    // A state saved before definitions were kept has none: its evidence is kept, and the definition saved from now on.
    const { ["watched#definition"]: _, ...old } = first.sequentialState;
    const upgraded = buildReport(input(even, HALF, { previousSequential: old }));
    assert.equal(upgraded.sequentialState[key], first.sequentialState[key]);
  });

  it("a mean metric whose events all carry 0 says so, naming the event, not the metric", () => {
    const metrics: MetricConfig[] = [{ name: "minutes", kind: "mean", event: "watched" }];
    const zero = { n: 100, sum: 0, sumSquares: 0 };
    const base = input({ control: [100, 0], treatment: [100, 0] }, HALF, { metrics });
    const { report } = buildReport({
      ...base,
      aggregates: { ...base.aggregates, metrics: [{ name: "minutes", kind: "mean", byVariant: { control: zero, treatment: zero } }] },
    });
    assert.match(report.decision.reason, /no "watched" events with a value other than 0 have been attributed to them/);
  });
});

describe("the always-valid p of a small arm with no conversions yet (a calibration audit's case)", () => {
  // 90/10, read early: treatment 0 of 124, control 19 of 1,076. Fisher's exact test gives p = 0.25; with each arm's
  // own variance (none for the treatment) the mSPRT said p = 0.012, and A/A runs rolled back 7-25% of the time.
  const NINETY_TEN = { control: 90, treatment: 10 };
  it("conversions: the look's variance is the pooled one under H0, so this is no rollback", () => {
    const { report } = buildReport(input({ control: [1076, 19], treatment: [124, 0] }, NINETY_TEN));
    const c = report.metrics[0]!.comparisons[0]!;
    assert.ok(c.pValueSequential! > 0.5, `p = ${c.pValueSequential}`);
    assert.equal(c.significant, false);
    assert.equal(report.decision.action, "continue");
  });

  it("means with unequal variances: the small arm's larger spread counts (the pooled variance alone promoted on noise)", () => {
    // a review's case: control 9,000 units, mean 1.0, variance 3; treatment 1,000, mean 1.3, variance 19. Welch's
    // fixed-horizon p is 0.031; with the pooled variance alone the always-valid p was 0.021, and the report promoted.
    const metrics: MetricConfig[] = [{ name: "minutes", kind: "mean", event: "watched" }];
    const base = input({ control: [9000, 0], treatment: [1000, 0] }, NINETY_TEN, { metrics });
    const arm = (n: number, mean: number, variance: number) => ({ n, sum: n * mean, sumSquares: (n - 1) * variance + n * mean * mean });
    const byVariant = { control: arm(9000, 1, 3), treatment: arm(1000, 1.3, 19) };
    const { report } = buildReport({ ...base, aggregates: { ...base.aggregates, metrics: [{ name: "minutes", kind: "mean", byVariant }] } });
    const c = report.metrics[0]!.comparisons[0]!;
    assert.ok(c.pValue! > 0.02 && c.pValue! < 0.04, `Welch p = ${c.pValue}`);
    assert.ok(c.pValueSequential! > c.pValue!, `always-valid p = ${c.pValueSequential}, Welch p = ${c.pValue}`);
    assert.equal(report.decision.action, "continue");
  });

  it("means: likewise, for a treatment whose units all have 0 so far", () => {
    const metrics: MetricConfig[] = [{ name: "minutes", kind: "mean", event: "watched" }];
    const base = input({ control: [1076, 19], treatment: [124, 0] }, NINETY_TEN, { metrics });
    // 19 control units watched 30 minutes each
    const byVariant = { control: { n: 1076, sum: 19 * 30, sumSquares: 19 * 900 }, treatment: { n: 124, sum: 0, sumSquares: 0 } };
    const { report } = buildReport({ ...base, aggregates: { ...base.aggregates, metrics: [{ name: "minutes", kind: "mean", byVariant }] } });
    const c = report.metrics[0]!.comparisons[0]!;
    assert.ok(c.pValueSequential! > 0.5, `p = ${c.pValueSequential}`);
    assert.equal(report.decision.action, "continue");
  });
});

describe("events of units that were never exposed", () => {
  const metrics: MetricConfig[] = [
    { name: "watched", kind: "conversion", event: "watched" },
    { name: "watched-1h", kind: "conversion", event: "watched", windowMs: 3_600_000 },
    { name: "minutes", kind: "mean", event: "played" },
  ];
  function withUnexposed(watched: number, played: number | undefined): ReportInput {
    const base = input({ control: [1000, 100], treatment: [1000, 110] }, HALF);
    const zero = { n: 1000, sum: 0, sumSquares: 0 };
    const conv = base.aggregates.metrics[0] as Extract<MetricAggregate, { kind: "conversion" }>;
    return {
      ...base,
      metrics,
      aggregates: {
        ...base.aggregates,
        metrics: [
          { ...conv, unexposedUnits: watched },
          { ...conv, name: "watched-1h", unexposedUnits: watched },
          { name: "minutes", kind: "mean", byVariant: { control: zero, treatment: zero }, ...(played === undefined ? {} : { unexposedUnits: played }) },
        ],
      },
    };
  }

  it("counts them once per event in dataQuality, and says so in a note, since their events count nowhere", () => {
    const { report } = buildReport(withUnexposed(40, 1));
    assert.deepEqual(report.dataQuality.unexposedEventUnits, { watched: 40, played: 1 });
    const notes = report.dataQuality.notes.filter((n) => n.includes("never exposed"));
    assert.equal(notes.length, 2, notes.join("\n"));
    assert.match(notes[0]!, /^40 units sent "watched" events but were never exposed .*count nowhere/);
    assert.match(notes[1]!, /^1 unit sent "played" events but was never exposed/);
  });

  it("counts events named like Object's own properties too (constructor, toString, __proto__)", () => {
    const names = ["constructor", "toString", "__proto__", "hasOwnProperty"];
    const base = input({ control: [1000, 100], treatment: [1000, 110] }, HALF);
    const conv = base.aggregates.metrics[0] as Extract<MetricAggregate, { kind: "conversion" }>;
    const { report } = buildReport({
      ...base,
      metrics: names.map((n, i) => ({ name: `m${i}`, kind: "conversion", event: n })),
      aggregates: { ...base.aggregates, metrics: names.map((_, i) => ({ ...conv, name: `m${i}`, unexposedUnits: i + 1, earlyEventUnits: 1 })) },
    });
    assert.deepEqual(JSON.parse(JSON.stringify(report.dataQuality.unexposedEventUnits)), JSON.parse('{"constructor":1,"toString":2,"__proto__":3,"hasOwnProperty":4}'));
    assert.equal(Object.keys(report.dataQuality.earlyEventUnits).length, 4);
    assert.equal(report.dataQuality.notes.filter((n) => n.includes("never exposed")).length, 4);
  });

  it("says nothing when every unit with events was exposed, and leaves out events a store did not count", () => {
    const { report } = buildReport(withUnexposed(0, undefined));
    assert.deepEqual(report.dataQuality.unexposedEventUnits, { watched: 0 });
    assert.ok(!report.dataQuality.notes.some((n) => n.includes("never exposed")), report.dataQuality.notes.join("\n"));
  });
});

describe("the primary metric", () => {
  it("is the bandit's metric when given (its weights follow that one), else the first conversion or mean metric", () => {
    const two: MetricConfig[] = [
      { name: "watched", kind: "conversion", event: "watched" },
      { name: "clicked", kind: "conversion", event: "clicked" },
    ];
    const base = input(WORSE, HALF, { metrics: two });
    const watched = base.aggregates.metrics[0]!;
    base.aggregates.metrics = [watched, { ...watched, name: "clicked" } as MetricAggregate];
    assert.equal(buildReport(base).report.analysis.primaryMetric, "watched");
    const bandit = buildReport({ ...base, strategy: "bandit", primaryMetric: "clicked" }).report;
    assert.equal(bandit.analysis.primaryMetric, "clicked");
    assert.deepEqual(bandit.metrics.map((m) => [m.name, m.role]), [["watched", "secondary"], ["clicked", "primary"]]);
    // a name that is no decidable metric is ignored, not an error
    assert.equal(buildReport({ ...base, primaryMetric: "nope" }).report.analysis.primaryMetric, "watched");
  });
});

describe("comparisons across weight periods (post-stratified)", () => {
  const period = (c: [number, number], t: [number, number]) => ({
    metrics: [{ name: "watched", kind: "conversion" as const, byVariant: { control: { units: c[0], conversions: c[1] }, treatment: { units: t[0], conversions: t[1] } } }],
  });

  it("a ramp at 99/1 whose 20-unit treatment arm did not convert, then identical arms at 50/50: no rollback (the review's case)", () => {
    const base = input({ control: [2080, 104], treatment: [120, 5] }, HALF);
    const strata = [
      { from: null, ...period([1980, 99], [20, 0]) },
      { from: NOW - 3_600_000, ...period([100, 5], [100, 5]) },
    ];
    const { report } = buildReport({ ...base, aggregates: { ...base.aggregates, strata } });
    const cmp = report.metrics[0]!.comparisons[0]!;
    assert.equal(cmp.adjusted?.periods, 2);
    assert.ok(cmp.pValue! > 0.2, `p = ${cmp.pValue}`);
    assert.equal(cmp.significant, false);
    assert.notEqual(report.decision.action, "rollback", report.decision.reason);
  });

  it("a guardrail on a conversion metric judges the period-weighted arms too: identical arms diluted by a ramp are no breach", () => {
    const metrics: MetricConfig[] = [{ name: "watched", kind: "conversion", event: "watched", guardrail: { maxRelativeIncrease: 0.05 } }];
    // 50/50 with 5% each, then 90/10 before the new units converted: pooled, 1.8% vs 4.2% (+133%)
    const base = input({ control: [2800, 50], treatment: [1200, 50] }, HALF, { metrics });
    const strata = [
      { from: null, ...period([1000, 50], [1000, 50]) },
      { from: NOW - 3_600_000, ...period([1800, 0], [200, 0]) },
    ];
    const pooled = buildReport(base).report;
    assert.equal(pooled.guardrails[0]!.ok, false, "pooled, it breaks");
    const { report } = buildReport({ ...base, aggregates: { ...base.aggregates, strata } });
    assert.equal(report.guardrails[0]!.ok, true, report.guardrails[0]!.detail);
    assert.notEqual(report.decision.action, "rollback", report.decision.reason);
  });

  it("an older abgate's pooled looks do not carry over once comparisons are post-stratified; this version's one-period looks do", () => {
    const base = input({ control: [2080, 104], treatment: [120, 5] }, HALF);
    const strata = [
      { from: null, ...period([1980, 99], [20, 0]) },
      { from: NOW - 3_600_000, ...period([100, 5], [100, 5]) },
    ];
    // a state saved before the weights changed, with a running minimum (made small here, to be seen)
    const onePeriod: Record<string, number> = { ...buildReport(base).sequentialState, "watched/treatment": 1e-9 };
    assert.equal(onePeriod["watched#strata"], 1);
    const kept = buildReport({ ...base, aggregates: { ...base.aggregates, strata }, previousSequential: onePeriod });
    assert.equal(kept.report.metrics[0]!.comparisons[0]!.pValueSequential, 1e-9, "a one-period look is valid evidence: kept");
    // the same from an older abgate (no mark): its looks may have pooled across the change, a misleading minimum
    const { ["watched#strata"]: _, ...older } = onePeriod;
    const { report, sequentialState } = buildReport({ ...base, aggregates: { ...base.aggregates, strata }, previousSequential: older });
    assert.ok(report.metrics[0]!.comparisons[0]!.pValueSequential! > 0.01, "not the pooled 1e-9");
    assert.equal(sequentialState["watched#strata"], 1);
  });

  it("a guardrail breach found before the first weight change is kept after it (the change makes periods, not a new test)", () => {
    const metrics: MetricConfig[] = [
      { name: "watched", kind: "conversion", event: "watched" },
      { name: "latency", kind: "latency", guardrail: { maxRelativeIncrease: 0.2 } },
    ];
    const arms = (n: number, mean: number) => ({ n, sum: n * mean, sumSquares: n * mean * mean + (n - 1) * 400, p50: mean, p99: mean * 2 });
    const withLatency = (c: number, t: number, strata?: ReportInput["aggregates"]["strata"]) => {
      const base = input({ control: [2000, 200], treatment: [2000, 200] }, HALF, { metrics });
      return { ...base, aggregates: { ...base.aggregates, metrics: [...base.aggregates.metrics, { name: "latency", kind: "latency" as const, byVariant: { control: arms(2000, 100), treatment: arms(2000, t) } }], ...(strata ? { strata } : {}) } };
    };
    const first = buildReport(withLatency(100, 150));
    assert.equal(first.report.guardrails[0]!.ok, false, "150 ms against 100 ms: breached");
    // the rollback it asks for is a weight change: two periods, now within the limit
    const latencyPeriod = (t: number) => ({ name: "latency", kind: "latency" as const, byVariant: { control: arms(1000, 100), treatment: arms(1000, t) } });
    const strata = [
      { from: null, metrics: [latencyPeriod(101)] },
      { from: NOW - 3_600_000, metrics: [latencyPeriod(101)] },
    ];
    const second = buildReport({ ...withLatency(100, 101, strata), previousSequential: first.sequentialState });
    assert.equal(second.report.guardrails[0]!.ok, false, second.report.guardrails[0]!.detail);
  });
});

describe("after a promotion or beside a retired treatment (the second review's cases)", () => {
  it("a guardrail compares the one period that has both arms, as the comparison does, not the pooled arms", () => {
    const metrics: MetricConfig[] = [
      { name: "watched", kind: "conversion", event: "watched" },
      { name: "latency", kind: "latency", guardrail: { maxRelativeIncrease: 0.2 } },
    ];
    const latency = (n: number, mean: number) => ({ n, sum: n * mean, sumSquares: n * mean * mean + (n - 1) * 400, p50: mean, p99: mean * 2 });
    const none = { n: 0, sum: 0, sumSquares: 0, p50: 0, p99: 0 };
    const conversions = (c: [number, number], t: [number, number]) => ({ name: "watched", kind: "conversion" as const, byVariant: { control: { units: c[0], conversions: c[1] }, treatment: { units: t[0], conversions: t[1] } } });
    // 50/50 at 100 ms each; then promoted (0/100), and the treatment alone takes the whole load at 140 ms
    const base = input({ control: [3000, 300], treatment: [5000, 600] }, { control: 0, treatment: 100 }, { metrics });
    const strata = [
      { from: null, metrics: [conversions([3000, 300], [3000, 360]), { name: "latency", kind: "latency" as const, byVariant: { control: latency(3000, 100), treatment: latency(3000, 100) } }] },
      { from: NOW - 3_600_000, metrics: [conversions([0, 0], [2000, 240]), { name: "latency", kind: "latency" as const, byVariant: { control: none, treatment: latency(6000, 140) } }] },
    ];
    const pooledLatency = { name: "latency", kind: "latency" as const, byVariant: { control: latency(3000, 100), treatment: { n: 9000, sum: 3000 * 100 + 6000 * 140, sumSquares: latency(3000, 100).sumSquares + latency(6000, 140).sumSquares, p50: 0, p99: 0 } } };
    const { report } = buildReport({ ...base, aggregates: { ...base.aggregates, metrics: [...base.aggregates.metrics, pooledLatency], strata } });
    assert.deepEqual(report.metrics[1]!.comparisons[0]!.adjusted, { control: 100, value: 100, periods: 1, excludedUnits: 6000 });
    assert.equal(report.guardrails[0]!.ok, true, report.guardrails[0]!.detail);
    assert.match(report.guardrails[0]!.detail, /100 ms vs 100 ms/);
    assert.notEqual(report.decision.action, "rollback", report.decision.reason);
  });

  it("the multiple-comparison family has the config's size: a metric without data yet counts as p = 1", () => {
    const metrics: MetricConfig[] = [
      { name: "watched", kind: "conversion", event: "watched" },
      { name: "bought", kind: "conversion", event: "bought" },
    ];
    const decide = (bought: number) => {
      const base = input({ control: [4000, 400], treatment: [4000, 497] }, HALF, { metrics });
      base.aggregates.metrics.push({ name: "bought", kind: "conversion", byVariant: { control: { units: 4000, conversions: bought }, treatment: { units: 4000, conversions: bought } } });
      return buildReport(base).report;
    };
    const none = decide(0);
    const one = decide(1);
    const watched = (r: ReturnType<typeof decide>) => r.metrics[0]!.comparisons[0]!;
    assert.equal(none.metrics[1]!.comparisons[0]!.pValueSequential, null, "no events: no p");
    assert.equal(none.metrics[1]!.comparisons[0]!.pValueSequentialAdjusted, null);
    // before, the metric without events was left out: watched's p went unadjusted (0.034), a promotion that one
    // event in each arm of the other metric turned back into "continue"
    assert.equal(watched(none).pValueSequentialAdjusted, Math.min(1, 2 * watched(none).pValueSequential!));
    assert.equal(watched(none).pValueSequentialAdjusted, watched(one).pValueSequentialAdjusted);
    assert.equal(none.decision.action, one.decision.action);
    assert.equal(none.decision.action, "continue", none.decision.reason);
  });

  it("a NON_STATIONARY treatment set to weight 0 no longer holds up the decision on the others", () => {
    const first = buildReport(input({ control: [3000, 300], t1: [3000, 300], t2: [3000, 450] }, { control: 34, t1: 33, t2: 33 }));
    const later = buildReport(
      input({ control: [30000, 3000], t1: [30000, 3600], t2: [30000, 2700] }, { control: 50, t1: 50, t2: 0 }, {
        previousSequential: first.sequentialState,
        srmWindow: { since: NOW - 3_600_000, units: { control: 1000, t1: 1000, t2: 0 } },
      }),
    ).report;
    const t2 = later.metrics[0]!.comparisons.find((c) => c.variant === "t2")!;
    assert.equal(t2.sequentialError, "NON_STATIONARY");
    assert.equal(later.decision.action, "promote", later.decision.reason);
    assert.equal(later.decision.variant, "t1");
    // while t2 is in the split, it still stops everything
    const inSplit = buildReport(input({ control: [30000, 3000], t1: [30000, 3600], t2: [30000, 2700] }, { control: 1, t1: 1, t2: 1 }, { previousSequential: first.sequentialState })).report;
    assert.equal(inSplit.decision.action, "continue");
    assert.match(inSplit.decision.reason, /NON_STATIONARY/);
  });

  it("units still needed count each arm's units so far, not the total split by today's weights", () => {
    // control and t1 at 50/50 now; t2 had 30,000 units and is at weight 0
    const { report } = buildReport(
      input({ control: [20000, 2000], t1: [5000, 540], t2: [30000, 3000] }, { control: 50, t1: 50, t2: 0 }, {
        srmWindow: { since: NOW - 3_600_000, units: { control: 2000, t1: 2000, t2: 0 } },
      }),
    );
    assert.equal(report.decision.action, "continue", report.decision.reason);
    // The same condition solved directly: N more units, half to each arm, until |d| - z_0.8·√V ≥ the mSPRT boundary
    // at alpha / 2 (Holm over two comparisons), V = p_C(1-p_C)/(20000 + N/2) + p_T(1-p_T)/(5000 + N/2).
    const pC = 0.1;
    const pT = 0.108;
    const variancePooled = ((20000 - 1) * pC * (1 - pC) + (5000 - 1) * pT * (1 - pT)) / (25000 - 2);
    const tau2 = DEFAULT_TAU2_STANDARDIZED * variancePooled;
    const enough = (n: number) => {
      const v = (pC * (1 - pC)) / (20000 + n / 2) + (pT * (1 - pT)) / (5000 + n / 2);
      const boundary = Math.sqrt(((v * (v + tau2)) / tau2) * (Math.log((v + tau2) / v) - 2 * Math.log(0.025)));
      return pT - pC - 0.8416212335729143 * Math.sqrt(v) >= boundary;
    };
    const needed = report.decision.unitsNeeded!;
    assert.ok(enough(needed) && !enough(needed - 1), `unitsNeeded ${needed}`);
    assert.ok(needed > 70_000, "before: 46,093");
  });
});
