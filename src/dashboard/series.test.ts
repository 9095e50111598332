import assert from "node:assert/strict";
import { test } from "node:test";
import { validateConfig } from "../config/index.ts";
import type { MinuteBucket } from "../store/types.ts";
import { ReportHistory, Timeline } from "./page/timeline.ts";
import { toSeries } from "./series.ts";

const config = validateConfig({
  experiment: "exp",
  engine: "static",
  variants: [
    { name: "control", url: "http://127.0.0.1:1" },
    { name: "treatment", url: "http://127.0.0.1:2" },
  ],
  metrics: [
    { name: "watched", kind: "conversion", event: "watched" },
    { name: "latency", kind: "latency" },
  ],
});

const T0 = Date.UTC(2026, 10, 28, 12, 0);
const bucket = (minute: number, variant: string, requests: number, conversions = 0): MinuteBucket => ({
  minute: T0 + minute * 60_000,
  variant,
  requests,
  errors: requests > 5 ? 1 : 0,
  latencySumMs: requests * 10,
  latencyCount: requests,
  newUnits: requests,
  conversions: { watched: conversions },
});

test("toSeries fills minutes without buckets with zeros and keeps config order of variants", () => {
  const body = toSeries("exp", ["control", "treatment"], config.metrics, [bucket(3, "treatment", 4, 1), bucket(0, "control", 10, 2)]);
  assert.deepEqual(body.minutes, [0, 1, 2, 3].map((m) => T0 + m * 60_000));
  assert.deepEqual(body.variants.map((v) => v.name), ["control", "treatment"]);
  assert.deepEqual(body.variants[0]!.requests, [10, 0, 0, 0]);
  assert.deepEqual(body.variants[0]!.errors, [1, 0, 0, 0]);
  assert.deepEqual(body.variants[1]!.latencySumMs, [0, 0, 0, 40]);
  // latency has no event, so only the conversion metric gets a column
  assert.deepEqual(Object.keys(body.variants[1]!.conversions), ["watched"]);
  assert.deepEqual(body.variants[1]!.conversions.watched, [0, 0, 0, 1]);
  assert.equal(body.truncated, false);
});

test("toSeries runs the zeros on to the current minute, so a chart shows traffic that stopped as a drop to zero", () => {
  const buckets = [bucket(0, "control", 10), bucket(1, "control", 12)];
  const body = toSeries("exp", ["control"], config.metrics, buckets, { nowMs: T0 + 4 * 60_000 + 30_000 });
  assert.deepEqual(body.minutes, [0, 1, 2, 3, 4].map((m) => T0 + m * 60_000));
  assert.deepEqual(body.variants[0]!.requests, [10, 12, 0, 0, 0]);
  // A bucket after the server's now (an event stamped by a client clock that runs ahead) waits until now reaches
  // it: drawn at once, it stretched the axis past now, and the page's later fetches, resuming from its last minute,
  // never asked for the minutes up to it again (flat charts for up to an hour).
  assert.deepEqual(toSeries("exp", ["control"], config.metrics, buckets, { nowMs: T0 }).variants[0]!.requests, [10]);
  assert.deepEqual(toSeries("exp", ["control"], config.metrics, buckets, { nowMs: T0 + 60_000 }).variants[0]!.requests, [10, 12]);
  // No traffic yet: nothing to draw, now or not.
  assert.deepEqual(toSeries("exp", ["control"], config.metrics, [], { nowMs: T0 }).minutes, []);
});

test("toSeries with no buckets gives empty columns for every configured variant", () => {
  const body = toSeries("exp", ["control", "treatment"], config.metrics, []);
  assert.deepEqual(body.minutes, []);
  assert.deepEqual(body.variants.map((v) => [v.name, v.requests.length]), [["control", 0], ["treatment", 0]]);
});

test("toSeries keeps only the newest maxMinutes and lists variants that are no longer configured", () => {
  const body = toSeries("exp", ["control"], config.metrics, [bucket(0, "control", 1), bucket(9, "old", 2)], { maxMinutes: 5 });
  assert.equal(body.truncated, true);
  assert.deepEqual(body.minutes, [5, 6, 7, 8, 9].map((m) => T0 + m * 60_000));
  assert.deepEqual(body.variants.map((v) => v.name), ["control", "old"]);
  assert.deepEqual(body.variants[1]!.requests, [0, 0, 0, 0, 2]);
});

test("toSeries handles a week of minutes for two variants quickly", () => {
  const buckets: MinuteBucket[] = [];
  for (let m = 0; m < 7 * 24 * 60; m++) buckets.push(bucket(m, "control", 3, 1), bucket(m, "treatment", 3, 1));
  const started = performance.now();
  const body = toSeries("exp", ["control", "treatment"], config.metrics, buckets);
  assert.equal(body.minutes.length, 10_080);
  assert.ok(performance.now() - started < 500);
});

test("Timeline splices incremental fetches: the last minute is replaced, a gap is zero-filled", () => {
  const t = new Timeline();
  t.merge(toSeries("exp", ["control", "treatment"], config.metrics, [bucket(0, "control", 2, 1), bucket(1, "control", 3)]));
  assert.equal(t.resumeFromMs(), T0, "the last three minutes are fetched again");
  // minute 1 was still filling: the next fetch brings it again with more requests, plus minute 4
  t.merge(toSeries("exp", ["control", "treatment"], config.metrics, [bucket(1, "control", 5, 1), bucket(4, "treatment", 6, 3)]));
  assert.deepEqual(t.minutes, [0, 1, 2, 3, 4].map((m) => T0 + m * 60_000));
  assert.deepEqual(t.requests("control"), [2, 5, 0, 0, 0]);
  assert.deepEqual(t.requests("treatment"), [0, 0, 0, 0, 6]);
  assert.deepEqual(t.meanLatencyMs("treatment"), [null, null, null, null, 10]);
  assert.deepEqual(t.errorRate("treatment"), [null, null, null, null, 1 / 6]);
  assert.deepEqual(t.cumulativeRate("control", "watched"), [0.5, 2 / 7, 2 / 7, 2 / 7, 2 / 7]);
  assert.deepEqual(t.xs(), t.minutes.map((m) => m / 1000));
});

test("Timeline keeps the newest maxMinutes, and its cumulative rates go on over the minutes it dropped", () => {
  const t = new Timeline(4);
  const all = new Timeline();
  const fetches = [
    [bucket(0, "control", 2, 1), bucket(1, "control", 3, 1)],
    [bucket(1, "control", 3, 1), bucket(2, "control", 4), bucket(3, "treatment", 5, 2)],
    [bucket(3, "treatment", 5, 2), bucket(5, "control", 10, 5), bucket(6, "control", 1)],
  ];
  for (const f of fetches) {
    t.merge(toSeries("exp", ["control", "treatment"], config.metrics, f));
    all.merge(toSeries("exp", ["control", "treatment"], config.metrics, f));
  }
  assert.deepEqual(t.minutes, [3, 4, 5, 6].map((m) => T0 + m * 60_000));
  assert.equal(all.minutes.length, 7);
  for (const v of ["control", "treatment"]) {
    assert.deepEqual(t.requests(v), all.requests(v).slice(3), v);
    assert.deepEqual(t.meanLatencyMs(v), all.meanLatencyMs(v).slice(3), v);
    assert.deepEqual(t.cumulativeRate(v, "watched"), all.cumulativeRate(v, "watched").slice(3), v);
  }
  assert.deepEqual(t.cumulativeRate("control", "watched"), [2 / 9, 2 / 9, 7 / 19, 7 / 20]);
  assert.equal(t.resumeFromMs(), T0 + 4 * 60_000);
});

test("Timeline ignores an empty fetch", () => {
  const t = new Timeline();
  t.merge(toSeries("exp", ["control"], config.metrics, [bucket(0, "control", 2)]));
  t.merge(toSeries("exp", ["control"], config.metrics, []));
  assert.deepEqual(t.requests("control"), [2]);
});

test("Timeline runs on to the server's clock with zeros when no bucket came since, so the chart drops to zero", () => {
  const t = new Timeline();
  t.merge(toSeries("exp", ["control"], config.metrics, [bucket(0, "control", 2, 1), bucket(1, "control", 3)], { nowMs: T0 + 60_000 }));
  assert.deepEqual(t.requests("control"), [2, 3]);
  // the resumed fetch from minute 1 finds nothing: traffic stopped
  t.merge(toSeries("exp", ["control"], config.metrics, [], { nowMs: T0 + 3 * 60_000 + 5_000 }));
  assert.deepEqual(t.minutes, [0, 1, 2, 3].map((m) => T0 + m * 60_000));
  assert.deepEqual(t.requests("control"), [2, 3, 0, 0]);
  assert.deepEqual(t.meanLatencyMs("control"), [10, 10, null, null]);
  assert.deepEqual(t.cumulativeRate("control", "watched"), [0.5, 0.2, 0.2, 0.2]);
  assert.equal(t.resumeFromMs(), T0 + 60_000);
});

test("Timeline: rows a minute gets after the next minute began still reach the chart", () => {
  const t = new Timeline();
  // polled at 10:00:59, then at 10:01:00.2 (before the store's last batch for minute 0), then at 10:01:05
  t.merge(toSeries("exp", ["control"], config.metrics, [bucket(0, "control", 60)], { nowMs: T0 + 59_000 }));
  t.merge(toSeries("exp", ["control"], config.metrics, [bucket(0, "control", 60), bucket(1, "control", 1)], { nowMs: T0 + 60_200 }));
  const since = t.resumeFromMs()!;
  assert.ok(since <= T0, "minute 0 is asked for again");
  const store = [bucket(0, "control", 70), bucket(1, "control", 90)].filter((b) => b.minute >= since);
  t.merge(toSeries("exp", ["control"], config.metrics, store, { nowMs: T0 + 65_000 }));
  assert.deepEqual(t.requests("control"), [70, 90]);
});

test("Timeline: rows that come much later (a store outage, events with an earlier ts) reach the chart within a minute of polls", () => {
  const t = new Timeline();
  const store = Array.from({ length: 30 }, (_, m) => bucket(m, "control", 10));
  t.merge(toSeries("exp", ["control"], config.metrics, store, { nowMs: T0 + 29 * 60_000 }));
  // minute 5 gets 7 more requests, written half an hour late
  store[5] = bucket(5, "control", 17);
  for (let poll = 0; poll < 12; poll++) {
    const since = t.resumeFromMs()!;
    t.merge(toSeries("exp", ["control"], config.metrics, store.filter((b) => b.minute >= since), { nowMs: T0 + 29 * 60_000 + poll * 5_000 }));
  }
  assert.equal(t.requests("control")[5], 17);
});

test("Timeline: mean latency is over the requests the variant answered itself, as the report's (not fallbacks)", () => {
  const t = new Timeline();
  // 20 requests assigned to treatment, 5 answered by it at 200 ms, 15 by the fallback while its replicas were down
  t.merge(toSeries("exp", ["treatment"], config.metrics, [{ ...bucket(0, "treatment", 20), latencySumMs: 1000, latencyCount: 5 }], { nowMs: T0 }));
  assert.deepEqual(t.meanLatencyMs("treatment"), [200]);
  t.merge(toSeries("exp", ["treatment"], config.metrics, [{ ...bucket(1, "treatment", 15), latencySumMs: 0, latencyCount: 0 }], { nowMs: T0 + 60_000 }));
  assert.deepEqual(t.meanLatencyMs("treatment"), [200, null], "no request answered by it: a gap, not 0 ms");
});

test("toSeries zero-fills towards now only as far as maxMinutes allows: minutes with data are never cut for it", () => {
  const body = toSeries("exp", ["control"], config.metrics, [bucket(0, "control", 500)], { maxMinutes: 10, nowMs: T0 + 30 * 60_000 });
  assert.equal(body.truncated, false);
  assert.deepEqual(body.variants[0]!.requests, [500, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
});

test("Timeline: a first fetch's carried totals start the cumulative rates where the experiment was (older than the window)", () => {
  const t = new Timeline();
  // 100 units first exposed before the window, none converted then; in it 10 new units, and 50 of the older convert
  const body = toSeries("exp", ["control"], config.metrics, [{ ...bucket(0, "control", 10, 50), newUnits: 10 }], { nowMs: T0 });
  body.carried = { control: { newUnits: 100, conversions: { watched: 0 } } };
  t.merge(body);
  // before: 50 conversions over the 10 units of the window, 500%
  assert.deepEqual(t.cumulativeRate("control", "watched"), [50 / 110]);
  // later fetches carry nothing: what was carried stays
  t.merge(toSeries("exp", ["control"], config.metrics, [{ ...bucket(1, "control", 5, 5), newUnits: 0 }], { nowMs: T0 + 60_000 }));
  assert.deepEqual(t.cumulativeRate("control", "watched"), [50 / 110, 55 / 110]);
});

test("ReportHistory keeps each metric's value per variant report after report, bounded", () => {
  const h = new ReportHistory(3);
  const report = (c: number, t: number | null) => ({
    experiment: "exp",
    variants: [{ name: "control" }, { name: "treatment" }],
    metrics: [{ name: "minutes", kind: "mean", control: { units: 10, value: c }, comparisons: [{ variant: "treatment", value: t }] }],
  });
  h.add(1_000, report(1, 2));
  h.add(2_000, { experiment: "exp" });
  h.add(3_000, report(3, null));
  assert.deepEqual(h.xs(), [1, 2, 3]);
  assert.deepEqual(h.values("minutes", "control"), [1, null, 3]);
  assert.deepEqual(h.values("minutes", "treatment"), [2, null, null]);
  h.add(4_000, report(4, 5));
  assert.deepEqual(h.xs(), [2, 3, 4]);
  assert.deepEqual(h.values("minutes", "treatment"), [null, null, 5]);
  assert.deepEqual(h.values("other", "control"), [null, null, null]);
});

test("ReportHistory plots a report at its generatedAt, and skips one not newer (a stream's replay on reconnect)", () => {
  const h = new ReportHistory();
  const report = (at: string, value: number) => ({ experiment: "exp", generatedAt: at, variants: [{ name: "control" }], metrics: [{ name: "m", kind: "mean", control: { units: 1, value } }] });
  h.add(Date.parse("2026-11-30T12:00:10Z"), report("2026-11-30T12:00:05Z", 1));
  h.add(Date.parse("2026-11-30T15:00:00Z"), report("2026-11-30T12:00:05Z", 1));
  h.add(Date.parse("2026-11-30T15:00:06Z"), report("2026-11-30T15:00:05Z", 2));
  assert.deepEqual(h.xs(), [Date.parse("2026-11-30T12:00:05Z") / 1000, Date.parse("2026-11-30T15:00:05Z") / 1000]);
  assert.deepEqual(h.values("m", "control"), [1, 2]);
  assert.equal(h.size(), 2);
});
