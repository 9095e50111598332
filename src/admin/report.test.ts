/**
 * experimentReport over a real SQLite store: a ramp-up (90/10 → 50/50) is not taken for a sample ratio mismatch,
 * a real mismatch after it still is, and the bandit strategy skips the check.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { seededRandom } from "../clock.ts";
import { parseConfig, type Config } from "../config/index.ts";
import { srmTest } from "../stats/frequentist.ts";
import type { Report } from "../stats/index.ts";
import { openStore, type Exposure, type OutcomeEvent, type Store } from "../store/index.ts";
import { experimentReport, recordBanditWeights, recordWeightChange } from "./report.ts";

const START = Date.parse("2026-11-28T00:00:00Z");
const HOUR = 3_600_000;

function config(kind: string, strategyKeys = ""): Config {
  return parseConfig(
    [
      "experiment: exp",
      "engine: static",
      `strategy: { kind: ${kind}${strategyKeys} }`,
      "variants:",
      "  - { name: control, weight: 90, url: 'http://127.0.0.1:9001' }",
      "  - { name: treatment, weight: 10, url: 'http://127.0.0.1:9002' }",
      "metrics:",
      "  - { name: watched, kind: conversion, event: watched }",
      "  - { name: clicked, kind: conversion, event: clicked }",
      "analysis: { alpha: 0.05, srmThreshold: 0.001, correction: holm }",
    ].join("\n"),
    tmpdir(),
    {},
  );
}

/**
 * A writer of cohorts into `store`: `count` units from `from`, a second apart, treatment with probability `share`; each
 * converts at 30% a minute after its exposure, written now when `convert`, else returned to be written later.
 */
function cohorts(store: Store, rng: () => number) {
  return async (prefix: string, from: number, count: number, share: number, convert: boolean): Promise<OutcomeEvent[]> => {
    const exposures: Exposure[] = [];
    const later: OutcomeEvent[] = [];
    for (let i = 0; i < count; i++) {
      const id = `${prefix}${i}`;
      const variant = rng() < share ? "treatment" : "control";
      const ts = from + i * 1000;
      exposures.push({ experiment: "exp", ts, requestId: id, unit: id, assigned: variant, served: variant, replica: `${variant}-0`, status: 200, latencyMs: 5, forced: false });
      if (rng() < 0.3) later.push({ experiment: "exp", unit: id, event: "watched", value: null, ts: ts + 60_000, requestId: null });
    }
    await store.writeExposures(exposures);
    if (convert) await store.writeEvents(later);
    return later;
  };
}

describe("experimentReport: SRM across weight changes", () => {
  let dir: string;
  let store: Store;
  const random = seededRandom(1128);
  let unit = 0;

  /** `count` new units from `from`, one every `stepMs`, split by `treatmentShare`; 10% vs 13% convert. */
  async function traffic(from: number, count: number, stepMs: number, treatmentShare: number): Promise<void> {
    const exposures: Exposure[] = [];
    const events: OutcomeEvent[] = [];
    for (let i = 0; i < count; i++) {
      const id = `u${unit++}`;
      const variant = random() < treatmentShare ? "treatment" : "control";
      const ts = from + i * stepMs;
      exposures.push({ experiment: "exp", ts, requestId: id, unit: id, assigned: variant, served: variant, replica: `${variant}-0`, status: 200, latencyMs: 50, forced: false });
      if (random() < (variant === "control" ? 0.1 : 0.13)) events.push({ experiment: "exp", unit: id, event: "watched", value: null, ts: ts + 1000, requestId: null });
    }
    await store.writeExposures(exposures);
    await store.writeEvents(events);
  }

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "abgate-admin-report-"));
    store = openStore(`sqlite:${join(dir, "abgate.db")}`);
    await store.init();
  });

  after(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a ramp-up is not a mismatch: after a weight change only units assigned under the new weights are tested", async () => {
    const cfg = config("sticky");
    // a day at the configured 90/10
    await traffic(START, 2000, 40_000, 0.1);
    const first = (await experimentReport(cfg, store, { control: 90, treatment: 10 }, START + 24 * HOUR)) as Report;
    assert.equal(first.srm.judged, true);
    assert.equal(first.srm.reason, undefined, "no change seen: the cumulative units are tested");
    assert.equal(first.srm.mismatch, false, first.srm.note);

    // ramp-up to 50/50; four days of traffic before the next report
    await traffic(START + 25 * HOUR, 8000, 40_000, 0.5);
    const second = (await experimentReport(cfg, store, { control: 50, treatment: 50 }, START + 120 * HOUR)) as Report;
    assert.equal(second.srm.mismatch, false, second.srm.note);
    assert.equal(second.srm.reason, "SINCE_WEIGHT_CHANGE");
    // No unit is known yet to have been assigned under 50/50; the day at 90/10 is tested against 90/10.
    assert.equal(second.srm.judged, true);
    assert.deepEqual(second.srm.periods?.map((p) => [p.since, p.until, p.judged]), [[null, new Date(START + 24 * HOUR).toISOString(), true]]);
    assert.match(second.srm.note, /^units match the weights over 1 weight period, against the weights then in force \(p = .*\); the current weights not judged until every variant is expected to have 8 units first exposed from/);
    assert.equal(second.decision.action, "promote", second.decision.reason);

    // more units at 50/50: now tested, against 50/50
    await traffic(START + 121 * HOUR, 2000, 20_000, 0.5);
    const third = (await experimentReport(cfg, store, { control: 50, treatment: 50 }, START + 135 * HOUR)) as Report;
    assert.equal(third.srm.judged, true);
    assert.equal(third.srm.since, new Date(START + 120 * HOUR).toISOString());
    const minutes = await store.minutes("exp", [], START + 120 * HOUR);
    const since = (v: string) => minutes.filter((b) => b.variant === v).reduce((s, b) => s + b.newUnits, 0);
    assert.equal(since("control") + since("treatment"), 2000);
    // the two periods' χ² add up: the day at 90/10 against 90/10, the units since the change against 50/50
    const before = await store.minutes("exp", [], START);
    const upTo = (v: string) => before.filter((b) => b.variant === v && b.minute < START + 24 * HOUR).reduce((s, b) => s + b.newUnits, 0);
    const chiSquare = srmTest([upTo("control"), upTo("treatment")], [90, 10]).chiSquare! + srmTest([since("control"), since("treatment")], [50, 50]).chiSquare!;
    assert.equal(third.srm.df, 2);
    assert.ok(Math.abs(third.srm.chiSquare! - chiSquare) < 1e-9, `${third.srm.chiSquare} vs ${chiSquare}`);
    assert.ok(Math.abs(third.srm.pValue! - Math.exp(-chiSquare / 2)) < 1e-12, "χ² with 2 df: p = e^(-χ²/2)");
    assert.equal(third.srm.mismatch, false);
    assert.equal(third.decision.action, "promote", third.decision.reason);

    // a real mismatch under the current weights is still caught
    await traffic(START + 136 * HOUR, 3000, 10_000, 0.35);
    const fourth = (await experimentReport(cfg, store, { control: 50, treatment: 50 }, START + 145 * HOUR)) as Report;
    assert.equal(fourth.srm.mismatch, true, fourth.srm.note);
    assert.equal(fourth.decision.action, "continue");
  });

  it("a weight change recorded when it is made: the next report tests the units assigned since then", async () => {
    const own = openStore(`sqlite:${join(dir, "recorded.db")}`);
    await own.init();
    const cfg = config("sticky");
    const saved = store;
    store = own;
    try {
      await traffic(START, 2000, 40_000, 0.1); // at the configured 90/10, never reported on
      await recordWeightChange(own, cfg, { control: 50, treatment: 50 }, START + 25 * HOUR);
      await traffic(START + 25 * HOUR, 4000, 40_000, 0.5);
      const report = (await experimentReport(cfg, own, { control: 50, treatment: 50 }, START + 72 * HOUR)) as Report;
      assert.equal(report.srm.reason, "SINCE_WEIGHT_CHANGE");
      assert.equal(report.srm.since, new Date(START + 25 * HOUR).toISOString());
      assert.equal(report.srm.judged, true, "the 4,000 units since the change are tested at once");
      assert.equal(report.srm.mismatch, false, report.srm.note);
    } finally {
      store = saved;
      await own.close();
    }
  });

  it("a mismatch before a weight change is not hidden by it, nor by a change to the same weights", async () => {
    const own = openStore(`sqlite:${join(dir, "hidden.db")}`);
    await own.init();
    const cfg = config("sticky");
    const saved = store;
    store = own;
    try {
      // 90/10 configured, but units come 80/20: a mismatch
      await traffic(START, 3000, 10_000, 0.2);
      const first = (await experimentReport(cfg, own, { control: 90, treatment: 10 }, START + 10 * HOUR)) as Report;
      assert.equal(first.srm.mismatch, true, first.srm.note);
      // the same weights again, then a real change; a few units under the new ones
      await recordWeightChange(own, cfg, { control: 90, treatment: 10 }, START + 10 * HOUR + 1000);
      const same = (await experimentReport(cfg, own, { control: 90, treatment: 10 }, START + 10 * HOUR + 2000)) as Report;
      assert.equal(same.srm.mismatch, true, "a PUT of the weights in force starts no new period");
      assert.equal(same.srm.reason, undefined);
      await recordWeightChange(own, cfg, { control: 50, treatment: 50 }, START + 11 * HOUR);
      await traffic(START + 11 * HOUR, 300, 10_000, 0.5);
      const after = (await experimentReport(cfg, own, { control: 50, treatment: 50 }, START + 13 * HOUR)) as Report;
      assert.equal(after.srm.mismatch, true, after.srm.note);
      assert.equal(after.srm.periods?.length, 1);
      assert.match(after.srm.note, /among them the units first exposed from the start to 2026-11-28T11:00:00\.000Z/);
      assert.equal(after.decision.action, "continue");
      assert.match(after.decision.reason, /^Sample ratio mismatch: units are not split as the weights say, over 2 weight periods/);
    } finally {
      store = saved;
      await own.close();
    }
  });

  it("a ramp of identical arms is no rollback: comparisons are post-stratified by weight period (Simpson's paradox)", async () => {
    const own = openStore(`sqlite:${join(dir, "ramp.db")}`);
    await own.init();
    const cfg = config("sticky");
    const cohort = cohorts(own, seededRandom(30));
    try {
      await cohort("a", START, 1000, 0.5, true);
      await recordWeightChange(own, cfg, { control: 10, treatment: 90 }, START + 2 * HOUR);
      // the ramp's new units, whose conversions have not come in yet
      const pending = await cohort("b", START + 2 * HOUR + 1000, 1000, 0.9, false);
      const report = (await experimentReport(cfg, own, { control: 10, treatment: 90 }, START + 3 * HOUR)) as Report;
      const watched = report.metrics.find((m) => m.name === "watched")!;
      const cmp = watched.comparisons[0]!;
      // pooled, the treatment looks far worse
      const agg = await own.aggregate("exp", ["control", "treatment"], cfg.metrics);
      const pooled = agg.metrics[0]!.byVariant as Record<string, { units: number; conversions: number }>;
      const { proportionTest } = await import("../stats/frequentist.ts");
      assert.ok(proportionTest(pooled.control!, pooled.treatment!).pValue! < 1e-6, "the scenario misleads a pooled test");
      assert.equal(cmp.adjusted?.periods, 2);
      assert.ok(cmp.pValue! > 0.05, `post-stratified p = ${cmp.pValue}`);
      assert.equal(cmp.significant, false);
      assert.notEqual(report.decision.action, "rollback", report.decision.reason);
      // once they convert too, still nothing (and the always-valid state kept no misleading look)
      await own.writeEvents(pending);
      const later = (await experimentReport(cfg, own, { control: 10, treatment: 90 }, START + 4 * HOUR)) as Report;
      assert.notEqual(later.decision.action, "rollback", later.decision.reason);
      assert.equal(later.metrics.find((m) => m.name === "watched")!.comparisons[0]!.significant, false);
    } finally {
      await own.close();
    }
  });

  it("bandit: identical arms are compared within periods of like weights, not pooled over the bandit's moves", async () => {
    const own = openStore(`sqlite:${join(dir, "bandit.db")}`);
    await own.init();
    const cfg = config("bandit");
    const cohort = cohorts(own, seededRandom(31));
    try {
      // the bandit's first update, then moves too small to start a period
      await recordBanditWeights(own, cfg, { control: 0.5, treatment: 0.5 }, START);
      await recordBanditWeights(own, cfg, { control: 0.45, treatment: 0.55 }, START + 10_000);
      await recordBanditWeights(own, cfg, { control: 0.55, treatment: 0.45 }, START + 20_000);
      await cohort("a", START + 30_000, 2000, 0.5, true);
      // it then favours the treatment (by chance: both convert 30%); the new units' conversions have not come in yet
      await recordBanditWeights(own, cfg, { control: 0.1, treatment: 0.9 }, START + 2 * HOUR);
      const pending = await cohort("b", START + 2 * HOUR + 1000, 1000, 0.9, false);
      const agg = await own.aggregate("exp", ["control", "treatment"], cfg.metrics);
      const pooled = agg.metrics[0]!.byVariant as Record<string, { units: number; conversions: number }>;
      const { proportionTest } = await import("../stats/frequentist.ts");
      assert.ok(proportionTest(pooled.control!, pooled.treatment!).pValue! < 1e-6, "the scenario misleads a pooled test");
      const report = (await experimentReport(cfg, own, { control: 0.1, treatment: 0.9 }, START + 3 * HOUR)) as Report;
      const cmp = report.metrics.find((m) => m.name === "watched")!.comparisons[0]!;
      assert.equal(cmp.adjusted?.periods, 2, "the small moves started no period");
      assert.ok(cmp.pValue! > 0.05, `post-stratified p = ${cmp.pValue}`);
      assert.notEqual(report.decision.action, "rollback", report.decision.reason);
      assert.equal(report.srm.reason, "ADAPTIVE_ALLOCATION", "the SRM check stays skipped under the bandit");
      await own.writeEvents(pending);
      const later = (await experimentReport(cfg, own, { control: 0.1, treatment: 0.9 }, START + 4 * HOUR)) as Report;
      assert.equal(later.metrics.find((m) => m.name === "watched")!.comparisons[0]!.significant, false);
    } finally {
      await own.close();
    }
  });

  it("bandit: a latency guardrail compares requests within periods too (slow hours while the bandit favoured one arm are no breach)", async () => {
    const own = openStore(`sqlite:${join(dir, "bandit-latency.db")}`);
    await own.init();
    const cfg = parseConfig(
      [
        "experiment: exp",
        "engine: static",
        "strategy: { kind: bandit }",
        "variants:",
        "  - { name: control, url: 'http://127.0.0.1:9001' }",
        "  - { name: treatment, url: 'http://127.0.0.1:9002' }",
        "metrics:",
        "  - { name: watched, kind: conversion, event: watched }",
        "  - { name: latency, kind: latency, guardrail: { maxRelativeIncrease: 0.2 } }",
      ].join("\n"),
      tmpdir(),
      {},
    );
    const rng = seededRandom(33);
    /** `count` requests of new units from `from`, a second apart, treatment with probability `share`, all as slow */
    const requests = async (prefix: string, from: number, count: number, share: number, latencyMs: number) => {
      const rows: Exposure[] = [];
      for (let i = 0; i < count; i++) {
        const variant = rng() < share ? "treatment" : "control";
        const id = `${prefix}${i}`;
        rows.push({ experiment: "exp", ts: from + i * 1000, requestId: id, unit: id, assigned: variant, served: variant, replica: `${variant}-0`, status: 200, latencyMs: latencyMs * (0.8 + 0.4 * rng()), forced: false });
      }
      await own.writeExposures(rows);
    };
    try {
      await recordBanditWeights(own, cfg, { control: 0.5, treatment: 0.5 }, START);
      await requests("a", START + 60_000, 2000, 0.5, 100);
      // the busy hours: every request slower, in both arms alike, while the bandit sends 90% to the treatment
      await recordBanditWeights(own, cfg, { control: 0.1, treatment: 0.9 }, START + 2 * HOUR);
      await requests("b", START + 2 * HOUR + 60_000, 2000, 0.9, 200);
      const agg = await own.aggregate("exp", ["control", "treatment"], cfg.metrics);
      const pooled = agg.metrics.find((m) => m.name === "latency")!.byVariant as Record<string, { n: number; sum: number }>;
      assert.ok(pooled.treatment!.sum / pooled.treatment!.n > 1.25 * (pooled.control!.sum / pooled.control!.n), "pooled, the treatment looks 25% slower");
      const report = (await experimentReport(cfg, own, { control: 0.1, treatment: 0.9 }, START + 4 * HOUR)) as Report;
      const latency = report.guardrails.find((g) => g.name === "latency")!;
      assert.equal(latency.ok, true, latency.detail);
      assert.notEqual(report.decision.action, "rollback", report.decision.reason);
      // abgate report's table says what its difference compares, beside values that pool every period
      const { formatReportTable } = await import("../stats/format.ts");
      assert.match(formatReportTable(report), /\n  note: treatment is compared with control within each of 2 weight periods, weighted by their precision: [\d.]+ ms vs [\d.]+ ms; the values above pool every period\n/);
    } finally {
      await own.close();
    }
  });

  it("bandit: units from before the bandit ran (a sticky 10/90 start, then a switch of strategy) are a period of their own", async () => {
    const own = openStore(`sqlite:${join(dir, "bandit-switch.db")}`);
    await own.init();
    const cohort = cohorts(own, seededRandom(32));
    try {
      await cohort("s", START, 1000, 0.9, true);
      await recordBanditWeights(own, config("bandit"), { control: 0.5, treatment: 0.5 }, START + 2 * HOUR);
      await cohort("b", START + 2 * HOUR + 1000, 1000, 0.5, true);
      const report = (await experimentReport(config("bandit"), own, { control: 0.5, treatment: 0.5 }, START + 3 * HOUR)) as Report;
      assert.equal(report.metrics.find((m) => m.name === "watched")!.comparisons[0]!.adjusted?.periods, 2);
    } finally {
      await own.close();
    }
  });

  it("bandit periods: a new one when a share moves by more than a fifth, at most 64 (the closest neighbours merged), none from a clock that went back", async () => {
    const own = openStore(`sqlite:${join(dir, "bandit-periods.db")}`);
    await own.init();
    const cfg = config("bandit");
    const periods = async () => JSON.parse((await own.getState("exp", "bandit-periods"))!) as { since: number; shares: Record<string, number> }[];
    try {
      await recordBanditWeights(own, cfg, { control: 1, treatment: 1 }, START);
      // 0.5 → 0.41 is a move of 18% of 0.5, and 0.5 → 0.59 of 15% of 0.59: the same period
      await recordBanditWeights(own, cfg, { control: 0.41, treatment: 0.59 }, START + 1);
      assert.equal((await periods()).length, 1);
      // the floor's arm: 0.01 → 0.012 is a sixth of 0.012, within; → 0.013 is more than a fifth of 0.013
      await recordBanditWeights(own, cfg, { control: 0.01, treatment: 0.99 }, START + 2);
      await recordBanditWeights(own, cfg, { control: 0.012, treatment: 0.988 }, START + 3);
      await recordBanditWeights(own, cfg, { control: 0.013, treatment: 0.987 }, START + 4);
      assert.deepEqual((await periods()).map((p) => p.since), [START, START + 2, START + 4]);
      await recordBanditWeights(own, cfg, { control: 0.5, treatment: 0.5 }, START + 3);
      assert.equal((await periods()).length, 3, "a time before the current period's start changes nothing");
      // weights that wander between 0.7 and 0.3 for a long time: past 64 periods the closest neighbours merge (first
      // the floor's 0.01 and 0.013), and the early move from 0.5 to the floor stays a period of its own
      for (let i = 0; i < 70; i++) await recordBanditWeights(own, cfg, i % 2 ? { control: 0.3, treatment: 0.7 } : { control: 0.7, treatment: 0.3 }, START + 10 + i);
      const kept = await periods();
      assert.equal(kept.length, 64);
      assert.deepEqual(kept.slice(0, 3).map((p) => p.since), [START, START + 2, START + 10], "the largest moves are kept");
      assert.equal(kept[63]!.since, START + 79, "the newest period is kept");

    } finally {
      await own.close();
    }
  });

  it("bandit: the SRM check is skipped and the report says why", async () => {
    const report = (await experimentReport(config("bandit"), store, { control: 0.01, treatment: 0.99 }, START + 146 * HOUR)) as Report;
    assert.equal(report.srm.pValue, null);
    assert.equal(report.srm.reason, "ADAPTIVE_ALLOCATION");
    assert.equal(report.srm.mismatch, false);
  });

  it("bandit: the report decides on the metric the bandit follows (strategy.metric), not on the first one", async () => {
    const report = (await experimentReport(config("bandit", ", metric: clicked"), store, { control: 0.01, treatment: 0.99 }, START + 146 * HOUR)) as Report;
    assert.equal(report.analysis.primaryMetric, "clicked");
    assert.equal((await experimentReport(config("bandit"), store, { control: 0.01, treatment: 0.99 }, START + 146 * HOUR, { save: false }) as Report).analysis.primaryMetric, "watched");
  });
});
