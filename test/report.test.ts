/** Reports built from hand-made aggregates: the decisions of issue 4 and the JSON shape of the spec. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import type { MetricConfig } from "../src/config/index.ts";
import type { ExperimentAggregates, MetricAggregate } from "../src/store/types.ts";
import { adjustPValues, buildReport, formatReportTable, type Report, type ReportInput } from "../src/stats/index.ts";

const NOW = Date.parse("2026-11-28T12:00:00Z");

const METRICS: MetricConfig[] = [
  { name: "watched", kind: "conversion", event: "watched", windowMs: 3_600_000 },
  { name: "watch_minutes", kind: "mean", event: "watched" },
  { name: "latency", kind: "latency", guardrail: { maxRelativeIncrease: 0.2 } },
  { name: "errors", kind: "error_rate", guardrail: { maxAbsoluteIncrease: 0.01 } },
];

interface Arm {
  units: number;
  conversions: number;
  /** per-unit watch minutes: mean and sd */
  minutes?: [number, number];
  requests?: number;
  /** latency mean and sd, ms */
  latency?: [number, number];
  errors?: number;
}

function meanStats(n: number, mean: number, sd: number) {
  return { n, sum: n * mean, sumSquares: n > 1 ? (n - 1) * sd * sd + n * mean * mean : n * mean * mean };
}

function aggregates(arms: Record<string, Arm>, extra: Partial<ExperimentAggregates> = {}): ExperimentAggregates {
  const names = Object.keys(arms);
  const by = <T>(f: (a: Arm) => T): Record<string, T> => Object.fromEntries(names.map((n) => [n, f(arms[n]!)]));
  const metrics: MetricAggregate[] = [
    { name: "watched", kind: "conversion", byVariant: by((a) => ({ units: a.units, conversions: a.conversions })) },
    { name: "watch_minutes", kind: "mean", byVariant: by((a) => meanStats(a.units, ...(a.minutes ?? [0, 0]))) },
    {
      name: "latency",
      kind: "latency",
      byVariant: by((a) => ({ ...meanStats(a.requests ?? a.units * 4, ...(a.latency ?? [100, 30])), p50: a.latency?.[0] ?? 100, p99: 200 })),
    },
    { name: "errors", kind: "error_rate", byVariant: by((a) => ({ units: a.requests ?? a.units * 4, conversions: a.errors ?? 0 })) },
  ];
  const any = names.some((n) => arms[n]!.units > 0);
  return {
    experiment: "recommender-v2",
    variants: names.map((n) => ({ variant: n, units: arms[n]!.units, requests: arms[n]!.requests ?? arms[n]!.units * 4, fallbackRequests: 0 })),
    multiVariantUnits: 0,
    forcedRequests: 0,
    metrics,
    firstExposureTs: any ? NOW - 3_600_000 : null,
    lastExposureTs: any ? NOW - 1000 : null,
    ...extra,
  };
}

function input(arms: Record<string, Arm>, over: Partial<ReportInput> = {}): ReportInput {
  const names = Object.keys(arms);
  return {
    experiment: "recommender-v2",
    variants: names.map((name) => ({ name, weight: 50 })),
    aggregates: aggregates(arms),
    metrics: METRICS,
    analysis: { alpha: 0.05, srmThreshold: 0.001, correction: "holm" },
    now: NOW,
    previousSequential: {},
    ...over,
  };
}

/** Every number finite, and the JSON round trip is lossless (no NaN/Infinity turned into null). */
function assertJsonClean(report: Report): void {
  const walk = (v: unknown, path: string): void => {
    if (typeof v === "number") assert.ok(Number.isFinite(v), `${path} = ${v}`);
    else if (Array.isArray(v)) v.forEach((x, i) => walk(x, `${path}[${i}]`));
    else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) walk(x, `${path}.${k}`);
  };
  walk(report, "report");
  assert.deepEqual(JSON.parse(JSON.stringify(report)), report);
}

const CLEAR_WIN = {
  control: { units: 5000, conversions: 500, minutes: [20, 15] as [number, number] },
  treatment: { units: 5000, conversions: 650, minutes: [22, 15] as [number, number] },
};

describe("buildReport", () => {
  it("control clearly worse -> promote the treatment, in the spec's JSON shape", () => {
    const { report, sequentialState } = buildReport(input(CLEAR_WIN));
    assertJsonClean(report);
    assert.equal(report.decision.action, "promote");
    assert.equal(report.decision.variant, "treatment");
    assert.match(report.decision.reason, /treatment beats control on watched: 13% vs 10%/);
    // the spec's fields, by name
    for (const key of ["experiment", "generatedAt", "variants", "srm", "metrics", "guardrails", "decision"]) assert.ok(key in report, key);
    assert.equal(report.generatedAt, "2026-11-28T12:00:00.000Z");
    assert.deepEqual(Object.keys(report.variants[0]!).slice(0, 4), ["name", "weight", "units", "requests"]);
    assert.deepEqual(report.variants.map((v) => [v.name, v.units]), [["control", 5000], ["treatment", 5000]]);
    assert.equal(report.srm.mismatch, false);
    assert.equal(typeof report.srm.pValue, "number");
    const watched = report.metrics[0]!;
    assert.equal(watched.name, "watched");
    assert.equal(watched.kind, "conversion");
    assert.deepEqual(watched.control, { units: 5000, value: 0.1 });
    const c = watched.comparisons[0]!;
    for (const key of ["variant", "value", "absolute", "relative", "pValue", "pValueAdjusted", "pValueSequential", "chanceToWin", "significant"]) assert.ok(key in c, key);
    assert.equal(c.value, 0.13);
    assert.ok(Math.abs(c.absolute.estimate! - 0.03) < 1e-12);
    assert.ok(c.absolute.ci![0] < 0.03 && c.absolute.ci![1] > 0.03);
    assert.ok(Math.abs(c.relative.estimate! - 0.3) < 1e-12);
    assert.ok(c.pValue! < 1e-5 && c.pValueAdjusted! >= c.pValue!);
    assert.ok(c.pValueSequential! < 0.05 && c.pValueSequential! > c.pValue!, "the always-valid p is more conservative");
    assert.ok(c.chanceToWin! > 0.9999);
    assert.equal(c.significant, true);
    assert.deepEqual(report.guardrails.map((g) => [g.name, g.variant, g.ok]), [["latency", "treatment", true], ["errors", "treatment", true]]);
    assert.ok(sequentialState["watched/treatment"]! > 0);
    assert.equal(report.analysis.primaryMetric, "watched");
  });

  it("Holm across variants and metrics: pValueAdjusted is Holm over the whole family", () => {
    const arms = { ...CLEAR_WIN, third: { units: 5000, conversions: 520, minutes: [20.3, 15] as [number, number] } };
    const { report } = buildReport(input(arms));
    const family = report.metrics.filter((m) => m.role !== "guardrail").flatMap((m) => m.comparisons);
    assert.equal(family.length, 4);
    const expected = adjustPValues(family.map((c) => c.pValue!), "holm");
    family.forEach((c, i) => assert.equal(c.pValueAdjusted, expected[i]));
    assert.equal(report.decision.action, "promote");
    assert.equal(report.decision.variant, "treatment");
    // guardrail metrics are outside the family
    assert.equal(report.metrics.find((m) => m.name === "latency")!.comparisons[0]!.pValueAdjusted, null);

    const none = buildReport(input(arms, { analysis: { alpha: 0.05, srmThreshold: 0.001, correction: "none" } })).report;
    const raw = none.metrics.flatMap((m) => m.comparisons).filter((c) => c.pValueAdjusted !== null);
    for (const c of raw) assert.equal(c.pValueAdjusted, c.pValue);
    const bh = buildReport(input(arms, { analysis: { alpha: 0.05, srmThreshold: 0.001, correction: "bh" } })).report;
    assert.equal(bh.analysis.correction, "bh");
  });

  it("a mean metric decides when it is the first conversion-or-mean metric", () => {
    const { report } = buildReport(input(CLEAR_WIN, { metrics: METRICS.slice(1) }));
    assert.equal(report.analysis.primaryMetric, "watch_minutes");
    assert.equal(report.decision.action, "promote");
    assert.match(report.decision.reason, /on watch_minutes: 22 vs 20/);
    assert.equal(report.metrics[0]!.comparisons[0]!.chanceToWin, null);
  });

  it("latency guardrail broken -> rollback, even though the primary metric wins", () => {
    const arms = {
      control: { ...CLEAR_WIN.control, latency: [100, 30] as [number, number] },
      treatment: { ...CLEAR_WIN.treatment, latency: [135, 40] as [number, number] },
    };
    const { report } = buildReport(input(arms));
    assertJsonClean(report);
    assert.equal(report.decision.action, "rollback");
    assert.equal(report.decision.variant, "control");
    const g = report.guardrails.find((x) => x.name === "latency")!;
    assert.equal(g.ok, false);
    assert.ok(g.pValue! < 0.05);
    assert.match(g.detail, /mean latency 135 ms vs 100 ms for the control \(\+35%\): significantly above the limit \+20% relative/);
    assert.match(report.decision.reason, /^Roll back to control: treatment breaks the latency guardrail/);
  });

  it("an increase over the limit that is not significant keeps the guardrail ok", () => {
    const arms = {
      control: { ...CLEAR_WIN.control, requests: 40, latency: [100, 60] as [number, number] },
      treatment: { ...CLEAR_WIN.treatment, requests: 40, latency: [125, 60] as [number, number] },
    };
    const g = buildReport(input(arms)).report.guardrails.find((x) => x.name === "latency")!;
    assert.equal(g.ok, true);
    assert.match(g.detail, /above the limit \+20% relative, but not significantly yet/);
  });

  it("error-rate guardrail broken (absolute limit) -> rollback", () => {
    const arms = {
      control: { ...CLEAR_WIN.control, requests: 20000, errors: 200 },
      treatment: { ...CLEAR_WIN.treatment, requests: 20000, errors: 600 },
    };
    const { report } = buildReport(input(arms));
    assert.equal(report.decision.action, "rollback");
    const g = report.guardrails.find((x) => x.name === "errors")!;
    assert.equal(g.ok, false);
    assert.match(g.detail, /error rate 3% vs 1% for the control/);
  });

  it("sample ratio mismatch -> no promote, even with a clear win", () => {
    const arms = { control: { ...CLEAR_WIN.control, units: 5600, conversions: 560 }, treatment: { ...CLEAR_WIN.treatment, units: 4400, conversions: 572 } };
    const { report } = buildReport(input(arms));
    assertJsonClean(report);
    assert.equal(report.srm.mismatch, true);
    assert.equal(report.srm.judged, true);
    assert.ok(report.srm.pValue! < 1e-12, String(report.srm.pValue));
    assert.ok(report.metrics[0]!.comparisons[0]!.significant, "the metric alone would win");
    assert.equal(report.decision.action, "continue");
    assert.match(report.decision.reason, /^Sample ratio mismatch/);
  });

  it("SRM is not judged below 8 expected units per variant, and says so", () => {
    const { report } = buildReport(input({ control: { units: 2, conversions: 0 }, treatment: { units: 9, conversions: 1 } }));
    assertJsonClean(report);
    assert.equal(report.srm.judged, false);
    assert.equal(report.srm.mismatch, false);
    assert.match(report.srm.note, /not judged until every variant is expected to have 8 units \(control: 2 of 5\.5 expected, treatment: 9 of 5\.5 expected\)/);
  });

  it("an arm of weight 0 is left out of the SRM check", () => {
    const arms = { ...CLEAR_WIN, old: { units: 40, conversions: 4 } };
    const base = input(arms);
    const { report } = buildReport({ ...base, variants: [{ name: "control", weight: 50 }, { name: "treatment", weight: 50 }, { name: "old", weight: 0 }] });
    assert.equal(report.srm.df, 1);
    assert.equal(report.srm.mismatch, false);
    assert.match(report.srm.note, /variants at weight 0 left out: old/);
  });

  it("empty experiment -> continue, says so, no NaN anywhere", () => {
    const { report, sequentialState } = buildReport(input({ control: { units: 0, conversions: 0 }, treatment: { units: 0, conversions: 0 } }));
    assertJsonClean(report);
    assert.equal(report.decision.action, "continue");
    assert.equal(report.decision.variant, null);
    assert.match(report.decision.reason, /No exposures yet/);
    assert.equal(report.srm.pValue, null);
    assert.equal(report.metrics[0]!.comparisons[0]!.pValue, null);
    assert.equal(report.metrics[0]!.comparisons[0]!.error, "ZERO_UNITS");
    assert.equal(report.dataQuality.firstExposureAt, null);
    assert.deepEqual(Object.keys(sequentialState).filter((k) => !k.endsWith("#definition") && !k.endsWith("#strata")), [], "no evidence, only the metrics' definitions and marks");
    assert.ok(formatReportTable(report).includes("Decision: CONTINUE"));
  });

  it("a store that returns no metric aggregates at all still gives a clean report", () => {
    const base = input({ control: { units: 0, conversions: 0 }, treatment: { units: 0, conversions: 0 } });
    const { report } = buildReport({ ...base, aggregates: { ...base.aggregates, variants: [], metrics: [] } });
    assertJsonClean(report);
    assert.equal(report.decision.action, "continue");
  });

  it("single variant -> continue, says so", () => {
    const { report } = buildReport(input({ control: { units: 300, conversions: 30, minutes: [10, 5] } }));
    assertJsonClean(report);
    assert.equal(report.decision.action, "continue");
    assert.match(report.decision.reason, /Only one variant \(control\) is configured/);
    assert.equal(report.srm.judged, false);
    assert.deepEqual(report.metrics[0]!.comparisons, []);
  });

  it("no variants at all -> continue, says so", () => {
    const base = input({});
    const { report } = buildReport(base);
    assertJsonClean(report);
    assert.equal(report.control, null);
    assert.match(report.decision.reason, /No variants are configured/);
  });

  it("units but no outcomes yet -> continue, says so", () => {
    const { report } = buildReport(input({ control: { units: 800, conversions: 0 }, treatment: { units: 790, conversions: 0 } }));
    assertJsonClean(report);
    assert.equal(report.decision.action, "continue");
    assert.match(report.decision.reason, /No outcomes for the primary metric "watched" yet/);
    assert.equal(report.metrics[0]!.comparisons[0]!.pValue, 1);
    assert.equal(report.metrics[0]!.comparisons[0]!.error, "CONTROL_RATE_ZERO");
  });

  it("no conversion or mean metric -> continue, says so", () => {
    const { report } = buildReport(input(CLEAR_WIN, { metrics: METRICS.slice(2) }));
    assert.equal(report.decision.action, "continue");
    assert.match(report.decision.reason, /no primary metric/);
  });

  it("a promising but unproven treatment -> continue with units still needed", () => {
    const { report } = buildReport(input({ control: { units: 1000, conversions: 100 }, treatment: { units: 1000, conversions: 112 } }));
    assertJsonClean(report);
    assert.equal(report.decision.action, "continue");
    const needed = report.decision.unitsNeeded!;
    assert.ok(needed > 5_000 && needed < 200_000, String(needed));
    assert.match(report.decision.reason, /treatment leads on watched .* but not significantly yet .*about [\d,]+ more units/);
  });

  it("every treatment significantly worse on the primary metric -> rollback", () => {
    const { report } = buildReport(input({ control: CLEAR_WIN.treatment, treatment: CLEAR_WIN.control }));
    assert.equal(report.decision.action, "rollback");
    assert.match(report.decision.reason, /treatment is significantly worse on watched/);
  });

  it("the sequential p-value is the running minimum over reports", () => {
    const arms = { control: { units: 1000, conversions: 100 }, treatment: { units: 1000, conversions: 112 } };
    const first = buildReport(input(arms));
    const current = first.sequentialState["watched/treatment"]!;
    assert.ok(current > 0.01);
    // an earlier look's interval [0.001, 0.03] excluded 0 on the positive side; it overlaps this look's interval
    const previous = { "watched/treatment": 0.004, "watched/treatment#lower": 0.001, "watched/treatment#upper": 0.03, "watched/treatment#alpha": 0.05, "gone/metric": 0.5 };
    const { report, sequentialState } = buildReport(input(arms, { previousSequential: previous }));
    assert.equal(report.metrics[0]!.comparisons[0]!.pValueSequential, 0.004);
    assert.equal(sequentialState["watched/treatment"], 0.004);
    assert.equal(sequentialState["gone/metric"], 0.5, "state of other keys is kept");
    assert.deepEqual(report.metrics[0]!.comparisons[0]!.sequentialCi, [0.001, 0.03]);
    // watch_minutes has no spread, hence no sequential p: the family is this one comparison, and once crossed stays crossed
    assert.equal(report.metrics[0]!.comparisons[0]!.significant, true);
    assert.equal(report.decision.action, "promote");
    // a state saved before the intersections were kept: the p loads, but its direction is unknown, so not significant
    const old = buildReport(input(arms, { previousSequential: { "watched/treatment": 0.004 } })).report;
    assert.equal(old.metrics[0]!.comparisons[0]!.pValueSequential, 0.004);
    assert.equal(old.metrics[0]!.comparisons[0]!.significant, false);
    assert.equal(old.decision.action, "continue");
  });

  it("counts forced requests and multi-variant units in dataQuality", () => {
    const base = input(CLEAR_WIN);
    const { report } = buildReport({ ...base, aggregates: { ...base.aggregates, forcedRequests: 17, multiVariantUnits: 3 } });
    assert.equal(report.dataQuality.forcedRequests, 17);
    assert.equal(report.dataQuality.multiVariantUnits, 3);
    assert.equal(report.dataQuality.notes.length, 2);
    assert.match(report.dataQuality.notes.join("\n"), /17 forced requests .* left out/);
  });

  it("units of a variant no longer in the config (renamed, removed) are named in a note, not dropped silently", () => {
    const base = input(CLEAR_WIN);
    const aggregates = { ...base.aggregates, otherVariants: [{ variant: "old-model", units: 700, requests: 2100, fallbackRequests: 0 }] };
    const { report } = buildReport({ ...base, aggregates });
    assert.deepEqual(report.variants.map((v) => v.name), ["control", "treatment"]);
    assert.match(report.dataQuality.notes.join("\n"), /variants no longer in the config are left out of the analysis: old-model \(700 units, 2100 requests\)/);
    assert.ok(!buildReport(base).report.dataQuality.notes.some((n) => n.includes("no longer in the config")));
  });

  it("a store holding nothing of the experiment but exposures of others says which, in a note", () => {
    const base = input(CLEAR_WIN);
    const aggregates = { ...base.aggregates, otherExperiments: ["recsys-v1", "recsys-v2"] };
    const { report } = buildReport({ ...base, aggregates });
    assert.match(report.dataQuality.notes.join("\n"), /this store has no exposures of experiment \S+, but has some of recsys-v1, recsys-v2: is the config's experiment: \(or store:\) the one meant\?/);
  });

  it("the table explains a statistic's error code in words", () => {
    const { report } = buildReport(input({ control: { units: 1000, conversions: 0 }, treatment: { units: 1000, conversions: 5 } }));
    assert.equal(report.metrics[0]!.comparisons[0]!.error, "CONTROL_RATE_ZERO");
    assert.match(formatReportTable(report), /note: treatment: the control's rate is 0, so there is no relative lift \(CONTROL_RATE_ZERO\)/);
  });

  it("formatReportTable prints a readable table with the decision", () => {
    const { report } = buildReport(input(CLEAR_WIN));
    const text = formatReportTable(report);
    assert.match(text, /^Experiment recommender-v2 — report at 2026-11-28T12:00:00.000Z/);
    assert.match(text, /control \(control\)\s+50\s+5000\s+20000/);
    assert.match(text, /Metric watched \(conversion, primary\)/);
    assert.match(text, /treatment\s+5000\s+13%\s+\+3 pp \[\+[\d.]+ pp, \+[\d.]+ pp\]\s+\+30% \[/);
    assert.match(text, /Guardrails\n\s+metric\s+variant\s+status/);
    assert.match(text, /Metric watched \(conversion, primary\)\n\s+variant\s+units\s+value/);
    assert.match(text, /Metric latency \(latency, guardrail\)\n\s+variant\s+requests\s+value/, "latency is per request");
    assert.match(text, /Decision: PROMOTE treatment/);
    assert.ok(!/NaN|Infinity|undefined/.test(text), text);
  });

  it("any aggregates (fast-check): never throws, JSON clean, a known action and a reason", () => {
    const arm = fc.record({
      units: fc.integer({ min: 0, max: 200_000 }),
      rate: fc.double({ min: 0, max: 1, noNaN: true }),
      minutes: fc.tuple(fc.double({ min: 0, max: 100, noNaN: true }), fc.double({ min: 0, max: 50, noNaN: true })),
      latency: fc.tuple(fc.double({ min: 0, max: 1000, noNaN: true }), fc.double({ min: 0, max: 500, noNaN: true })),
      requestsPerUnit: fc.integer({ min: 0, max: 5 }),
      errorRate: fc.double({ min: 0, max: 1, noNaN: true }),
      weight: fc.integer({ min: 0, max: 100 }),
    });
    fc.assert(
      fc.property(fc.array(arm, { minLength: 0, maxLength: 4 }), fc.constantFrom("holm", "bh", "none") as fc.Arbitrary<"holm" | "bh" | "none">, (list, correction) => {
        const arms: Record<string, Arm> = {};
        list.forEach((a, i) => {
          const requests = a.units * a.requestsPerUnit;
          arms[i === 0 ? "control" : `v${i}`] = {
            units: a.units,
            conversions: Math.floor(a.units * a.rate),
            minutes: a.minutes,
            latency: a.latency,
            requests,
            errors: Math.floor(requests * a.errorRate),
          };
        });
        const base = input(arms, { analysis: { alpha: 0.05, srmThreshold: 0.001, correction } });
        const { report } = buildReport({ ...base, variants: base.variants.map((v, i) => ({ ...v, weight: list[i]!.weight })) });
        assertJsonClean(report);
        assert.ok(["promote", "rollback", "continue"].includes(report.decision.action));
        assert.ok(report.decision.reason.length > 10);
        const text = formatReportTable(report);
        assert.ok(!/NaN|Infinity|undefined/.test(text), text);
      }),
      { numRuns: 300 },
    );
  });
});
