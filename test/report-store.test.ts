/**
 * The report end to end over a real SQLite file: simulated units and outcomes go into the store, the store's SQL
 * aggregates go into buildReport, and the report names the winner, counts forced requests and multi-variant units,
 * and keeps its sequential state across reports.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { seededRandom } from "../src/clock.ts";
import type { MetricConfig } from "../src/config/index.ts";
import { buildReport, formatReportTable } from "../src/stats/index.ts";
import { openStore, type Exposure, type OutcomeEvent, type Store } from "../src/store/index.ts";

const START = Date.parse("2026-11-28T10:00:00Z");
const METRICS: MetricConfig[] = [
  { name: "watched", kind: "conversion", event: "watched", windowMs: 3_600_000 },
  { name: "watch_minutes", kind: "mean", event: "watched" },
  { name: "latency", kind: "latency", guardrail: { maxRelativeIncrease: 0.2 } },
  { name: "errors", kind: "error_rate", guardrail: { maxAbsoluteIncrease: 0.01 } },
];
const VARIANTS = ["control", "treatment"];

describe("report from a real SQLite store", () => {
  let dir: string;
  let store: Store;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "abgate-report-"));
    store = openStore(`sqlite:${join(dir, "abgate.db")}`);
    await store.init();
    const random = seededRandom(42);
    const exposures: Exposure[] = [];
    const events: OutcomeEvent[] = [];
    let request = 0;
    for (let u = 0; u < 4000; u++) {
      const unit = `u${u}`;
      const variant = random() < 0.5 ? "control" : "treatment";
      const ts = START + u * 500;
      for (let r = 0; r < 2; r++) {
        exposures.push({
          experiment: "exp",
          ts: ts + r * 1000,
          requestId: `r${request++}`,
          unit,
          assigned: variant,
          served: variant,
          replica: `${variant}-0`,
          status: random() < 0.002 ? 500 : 200,
          latencyMs: 40 + random() * 20,
          forced: false,
        });
      }
      const rate = variant === "control" ? 0.1 : 0.16;
      if (random() < rate) events.push({ experiment: "exp", unit, event: "watched", value: 10 + random() * 30, ts: ts + 60_000, requestId: null });
    }
    // QA traffic forced to the treatment, and a unit that also shows up in the other variant
    for (let i = 0; i < 5; i++) {
      exposures.push({ experiment: "exp", ts: START + 10, requestId: `f${i}`, unit: `qa${i}`, assigned: "treatment", served: "treatment", replica: "treatment-0", status: 200, latencyMs: 50, forced: true });
    }
    exposures.push({ experiment: "exp", ts: START + 5_000_000, requestId: "x1", unit: "u0", assigned: exposures[0]!.assigned === "control" ? "treatment" : "control", served: "control", replica: "control-0", status: 200, latencyMs: 50, forced: false });
    await store.writeExposures(exposures);
    await store.writeEvents(events);
  });

  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("names the winner, counts forced and multi-variant traffic, and keeps the sequential state", async () => {
    const aggregates = await store.aggregate("exp", VARIANTS, METRICS);
    const first = buildReport({
      experiment: "exp",
      variants: VARIANTS.map((name) => ({ name, weight: 50 })),
      aggregates,
      metrics: METRICS,
      analysis: { alpha: 0.05, srmThreshold: 0.001, correction: "holm" },
      now: START + 3 * 3_600_000,
      previousSequential: {},
    });
    const { report } = first;
    assert.equal(report.variants.reduce((s, v) => s + v.units, 0), 4000);
    assert.equal(report.dataQuality.forcedRequests, 5);
    assert.equal(report.dataQuality.multiVariantUnits, 1);
    assert.equal(report.srm.mismatch, false);
    assert.equal(report.decision.action, "promote", report.decision.reason);
    assert.equal(report.decision.variant, "treatment");
    assert.ok(report.guardrails.every((g) => g.ok), JSON.stringify(report.guardrails));
    assert.deepEqual(JSON.parse(JSON.stringify(report)), report);
    assert.match(formatReportTable(report), /Decision: PROMOTE treatment/);

    const second = buildReport({
      experiment: "exp",
      variants: VARIANTS.map((name) => ({ name, weight: 50 })),
      aggregates,
      metrics: METRICS,
      analysis: { alpha: 0.05, srmThreshold: 0.001, correction: "holm" },
      now: START + 4 * 3_600_000,
      previousSequential: { ...first.sequentialState, "watched/treatment": 1e-9 },
    });
    assert.equal(second.report.metrics[0]!.comparisons[0]!.pValueSequential, 1e-9);
  });
});
