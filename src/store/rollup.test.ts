import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { StoreError } from "../errors.ts";
import {
  ExposureRollupBuilder,
  checkEvent,
  exposureProblem,
  MAX_ABS_TS_MS,
  MAX_ABS_MEASURE,
  histogramQuantile,
  latencyBucket,
  latencyBucketValueMs,
  minuteOf,
  rollupExposures,
} from "./rollup.ts";
import { UnitCache } from "./unit-cache.ts";
import type { Exposure, OutcomeEvent } from "./types.ts";

describe("latency histogram", () => {
  it("represents any latency from 1 µs to an hour within 2.5%", () => {
    fc.assert(
      fc.property(fc.double({ min: 0.001, max: 3_600_000, noNaN: true }), (ms) => {
        const v = latencyBucketValueMs(latencyBucket(ms));
        assert.ok(Math.abs(v - ms) <= ms * 0.025, `${ms} ms -> ${v} ms`);
      }),
    );
  });

  it("puts sub-microsecond, zero and nonsense latencies in bucket 0 (reported as 0)", () => {
    for (const ms of [0, 0.0005, -1, Number.NaN]) assert.equal(latencyBucket(ms), 0);
    assert.equal(latencyBucketValueMs(0), 0);
  });

  it("takes nearest-rank quantiles", () => {
    const rows = [10, 20, 40, 50, 80, 90].map((ms) => ({ bucket: latencyBucket(ms), count: 1 }));
    assert.equal(histogramQuantile(rows, 0.5), latencyBucketValueMs(latencyBucket(40)));
    assert.equal(histogramQuantile(rows, 0.99), latencyBucketValueMs(latencyBucket(90)));
    assert.equal(histogramQuantile(rows, 0), latencyBucketValueMs(latencyBucket(10)));
    assert.equal(histogramQuantile([], 0.5), 0);
  });
});

describe("rollupExposures", () => {
  const e = (unit: string, ts: number, assigned: string, extra: Partial<Exposure> = {}): Exposure => ({
    experiment: "exp",
    ts,
    requestId: "r",
    unit,
    assigned,
    served: assigned,
    replica: "",
    status: 200,
    latencyMs: 2,
    forced: false,
    ...extra,
  });

  it("folds a batch into one row per minute and variant", () => {
    const r = rollupExposures(
      [e("a", 60_000, "c"), e("b", 60_500, "c", { status: 502 }), e("c", 119_999, "t", { served: "c" }), e("d", 120_000, "c", { forced: true })],
      new UnitCache(0),
    );
    assert.deepEqual(
      r.minutes.map((m) => [m.minute, m.variant, m.requests, m.errors, m.fallback, m.forced, m.latencyN, m.minTs, m.maxTs]),
      [
        [60_000, "c", 2, 1, 0, 0, 2, 60_000, 60_500],
        [60_000, "t", 1, 0, 1, 0, 0, 119_999, 119_999],
        [120_000, "c", 0, 0, 0, 1, 0, null, null],
      ],
    );
    assert.deepEqual(r.units.map((u) => u.unit), ["a", "b", "c"]);
    assert.equal(r.counts.get("exp"), 4);
    assert.equal(minuteOf(-1), -60_000);
  });

  it("skips units the cache proves unchanged, and only those", () => {
    const cache = new UnitCache(10);
    cache.remember("exp", "a", 1000, "c", false);
    cache.remember("exp", "m", 1000, "c", true);
    const r = rollupExposures(
      [e("a", 2000, "c"), e("a", 999, "c"), e("m", 5000, "t")],
      cache,
    );
    // a at 2000 in c: covered; a at 999: earlier than what the database holds -> written; m is multi already
    assert.deepEqual(r.units.map((u) => [u.unit, u.firstTs]), [["a", 999]]);
    const again = rollupExposures([e("a", 2000, "t")], cache);
    assert.deepEqual(again.units.map((u) => u.unit), ["a"], "another variant must reach the database");
  });

  it("remembers the earliest time it was told and turns multi once told two variants", () => {
    const cache = new UnitCache(10);
    cache.remember("exp", "a", 1000, "c", false);
    cache.remember("exp", "a", 2000, "c", false);
    assert.ok(cache.covers("exp", "a", 1500, "c"), "the database's first exposure is no later than 1000");
    assert.ok(!cache.covers("exp", "a", 1500, "t"));
    cache.remember("exp", "a", 3000, "t", false);
    assert.ok(cache.covers("exp", "a", 1000, "t") && cache.covers("exp", "a", 1000, "x"), "seen in c and t: multi");
    assert.equal(cache.size, 1);
  });

  it("gives the same rollup for a batch folded in slices as all at once", () => {
    const row = fc.record({
      experiment: fc.constantFrom("e1", "e2"),
      ts: fc.integer({ min: 0, max: 300_000 }),
      unit: fc.constantFrom("a", "b", "c", "d"),
      assigned: fc.constantFrom("c", "t"),
      fallback: fc.boolean(),
      status: fc.constantFrom(200, 503, 0),
      latencyMs: fc.double({ min: 0, max: 100, noNaN: true }),
      forced: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.array(row, { maxLength: 60 }), fc.array(fc.integer({ min: 0, max: 60 })), (raw, cuts) => {
        const rows = raw.map((r) => e(r.unit, r.ts, r.assigned, { ...r, served: r.fallback ? "x" : r.assigned }));
        const cache = new UnitCache(10);
        cache.remember("e1", "a", 100_000, "c", false);
        const b = new ExposureRollupBuilder(cache);
        const points = [...new Set([0, ...cuts.map((c) => Math.min(c, rows.length)), rows.length])].sort((x, y) => x - y);
        for (let k = 1; k < points.length; k++) b.add(rows, points[k - 1]!, points[k]!);
        assert.deepEqual(b.result(), rollupExposures(rows, cache));
      }),
    );
  });
});

describe("exposureProblem", () => {
  const ok: Exposure = { experiment: "e", ts: 1, requestId: "r", unit: "u", assigned: "a", served: "a", replica: "a-0", status: 200, latencyMs: 1, forced: false };
  it("refuses rows no store could keep alike: NUL in unit or request id, a latency the histogram cannot bucket", () => {
    assert.equal(exposureProblem(ok), null);
    assert.match(exposureProblem({ ...ok, unit: "a\u0000b" }) ?? "", /NUL/);
    assert.match(exposureProblem({ ...ok, requestId: "\u0000" }) ?? "", /NUL/);
    assert.equal(exposureProblem({ ...ok, latencyMs: MAX_ABS_MEASURE }), null);
    assert.ok(Number.isFinite(latencyBucket(MAX_ABS_MEASURE)));
    assert.match(exposureProblem({ ...ok, latencyMs: 1e305 }) ?? "", /latencyMs must be at most/);
  });
});

describe("exposureProblem: rows the proxy never produces that would fail a PostgreSQL batch on every retry", () => {
  const ok: Exposure = { experiment: "e", ts: 1, requestId: "r", unit: "u", assigned: "a", served: "a", replica: "a-0", status: 200, latencyMs: 1, forced: false };

  it("latency: its square, and the sum of many squares in one minute row, stay finite", () => {
    assert.equal(MAX_ABS_MEASURE, 1e150);
    for (const latencyMs of [MAX_ABS_MEASURE, -MAX_ABS_MEASURE]) assert.equal(exposureProblem({ ...ok, latencyMs }), null);
    const r = rollupExposures(Array.from({ length: 2000 }, (_, i) => ({ ...ok, unit: `u${i}`, latencyMs: MAX_ABS_MEASURE })), new UnitCache(0));
    assert.ok(Number.isFinite(r.minutes[0]!.latencySumSq) && Number.isFinite(r.minutes[0]!.latencySumSq * 1e4), "room for 10,000 such batches in one minute");
    // 1e154 squares to 1e308: finite alone, Infinity (PostgreSQL: "value out of range: overflow") once two are summed.
    for (const latencyMs of [1e154, 1.0000001e150, 1e300, -1e200]) assert.match(exposureProblem({ ...ok, latencyMs }) ?? "", /latencyMs must be at most 1e\+150/, String(latencyMs));
  });

  it("ts: within the Date range, ±8.64e15 ms (PostgreSQL's bigint cannot hold 1e300)", () => {
    assert.equal(MAX_ABS_TS_MS, 8.64e15);
    for (const ts of [MAX_ABS_TS_MS, -MAX_ABS_TS_MS, 0]) assert.equal(exposureProblem({ ...ok, ts }), null);
    for (const ts of [MAX_ABS_TS_MS + 1, -MAX_ABS_TS_MS - 1, 1e300, -1e19]) assert.match(exposureProblem({ ...ok, ts }) ?? "", /ts must be within/, String(ts));
  });

  it("status: an int PostgreSQL can store", () => {
    assert.equal(exposureProblem({ ...ok, status: 0 }), null);
    assert.match(exposureProblem({ ...ok, status: 2 ** 31 }) ?? "", /status must be within/);
  });

  it("units and request ids with an unpaired surrogate (PostgreSQL would store both as U+FFFD, one unit)", () => {
    for (const unit of ["u\ud800", "u\ud801", "\udfff", "a\ud83db"]) assert.match(exposureProblem({ ...ok, unit }) ?? "", /unpaired surrogates/, JSON.stringify(unit));
    assert.match(exposureProblem({ ...ok, requestId: "r\udc00" }) ?? "", /unpaired surrogates/);
    assert.equal(exposureProblem({ ...ok, unit: "zoë-😀", requestId: "😀" }), null, "pairs are fine");
  });
});

describe("checkEvent: the same holes through the Store API", () => {
  const ok: OutcomeEvent = { experiment: "e", unit: "u", event: "watched", value: 1, ts: 1, requestId: null };
  const refused = (e: OutcomeEvent, re: RegExp) =>
    assert.throws(() => checkEvent(e, 3), (err: unknown) => err instanceof StoreError && err.code === "ABGATE_ERR_STORE" && /^event 3: /.test(err.message) && re.test(err.message), JSON.stringify(e));

  it("accepts what POST /v1/events produces", () => {
    for (const e of [ok, { ...ok, requestId: "r-😀", unit: "zoë", ts: MAX_ABS_TS_MS }, { ...ok, value: null, ts: -MAX_ABS_TS_MS }]) checkEvent(e, 0);
  });

  it("refuses a ts beyond ±8.64e15, and unpaired surrogates or NUL in unit, event and requestId", () => {
    for (const ts of [MAX_ABS_TS_MS + 1, 1e300, -1e300]) refused({ ...ok, ts }, /ts must be within/);
    refused({ ...ok, unit: "u\ud800" }, /unpaired surrogates/);
    refused({ ...ok, event: "\udfffwatched" }, /unpaired surrogates/);
    refused({ ...ok, requestId: "r\ud800" }, /unpaired surrogates/);
    refused({ ...ok, event: "w\u0000" }, /NUL/);
    refused({ ...ok, requestId: 5 as unknown as string }, /requestId a string or null/);
  });

  it("refuses a value beyond ±1e150, as it does such a latency", () => {
    for (const value of [1.1e150, -1e151, 1e300]) refused({ ...ok, value }, /value must be at most 1e\+150/);
    checkEvent({ ...ok, value: -1e150 }, 0);
  });
});
