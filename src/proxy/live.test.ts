import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { LiveStats } from "./live.ts";

/** LiveStats on a clock the test moves by hand. */
function setup(variants = ["control", "treatment"]) {
  let nowMs = 1_000_000; // second 1000
  const stats = new LiveStats(variants, () => nowMs);
  return {
    stats,
    at(ms: number) {
      nowMs = ms;
    },
    get: (variant: string) => stats.snapshot().find((s) => s.variant === variant)!,
  };
}

describe("LiveStats", () => {
  it("is all zero before any traffic, one entry per variant in order", () => {
    const { stats } = setup();
    assert.deepEqual(stats.snapshot(), [
      { variant: "control", requestsPerSecond: 0, fallbackPerSecond: 0, p50Ms: null, p99Ms: null, errorRate: null, requests: 0 },
      { variant: "treatment", requestsPerSecond: 0, fallbackPerSecond: 0, p50Ms: null, p99Ms: null, errorRate: null, requests: 0 },
    ]);
  });

  it("rps is over the 9 complete seconds before the current one; the current second only counts in `requests`", () => {
    const t = setup();
    // seconds 1000..1008: 1..9 requests; second 1009 (current, partial): 100 requests
    for (let s = 0; s < 9; s++) {
      t.at((1000 + s) * 1000 + 250);
      for (let k = 0; k <= s; k++) t.stats.record("control", 3, false);
    }
    t.at(1009 * 1000 + 10);
    for (let k = 0; k < 100; k++) t.stats.record("control", 3, false);
    t.at(1009 * 1000 + 999);
    const c = t.get("control");
    assert.equal(c.requestsPerSecond, 45 / 9);
    assert.equal(c.requests, 145);
    assert.equal(t.get("treatment").requests, 0);

    // one second later: 1000 leaves the window, 1009 enters it
    t.at(1010 * 1000);
    assert.equal(t.get("control").requestsPerSecond, (45 - 1 + 100) / 9);
  });

  it("ignores slots older than the window, also when the ring slot is not reused", () => {
    const t = setup();
    t.at(1000 * 1000);
    for (let k = 0; k < 10; k++) t.stats.record("control", 800, true);
    t.at(1009 * 1000); // 1000 is exactly 9 seconds back: still in the window
    assert.equal(t.get("control").requestsPerSecond, 10 / 9);
    t.at(1010 * 1000); // now 10 seconds back: out
    assert.deepEqual(t.get("control"), { variant: "control", requestsPerSecond: 0, fallbackPerSecond: 0, p50Ms: null, p99Ms: null, errorRate: null, requests: 10 });
    t.at(5000 * 1000);
    assert.equal(t.get("control").requestsPerSecond, 0);
  });

  it("a request the fallback served counts under the variant that served it, and as served elsewhere under its own", () => {
    const t = setup();
    t.at(1000 * 1000);
    for (let k = 0; k < 18; k++) t.stats.record("control", 3, false, "treatment");
    t.stats.record("treatment", 3, false);
    t.stats.record("control", 3, false, "gone"); // an assigned variant no longer in the config: counted where served only
    t.at(1001 * 1000);
    assert.equal(t.get("control").requestsPerSecond, 19 / 9);
    assert.equal(t.get("control").fallbackPerSecond, 0);
    assert.equal(t.get("treatment").requestsPerSecond, 1 / 9);
    assert.equal(t.get("treatment").fallbackPerSecond, 18 / 9);
    assert.equal(t.get("treatment").requests, 1, "requests since start are the ones it served");
    // the window moves on for the served-elsewhere count too, and a reused slot starts it from zero
    t.at(1010 * 1000);
    t.stats.record("control", 3, false, "treatment");
    t.at(1011 * 1000);
    assert.equal(t.get("treatment").fallbackPerSecond, 1 / 9);
  });

  it("a reused ring slot starts from zero", () => {
    const t = setup();
    t.at(1000 * 1000);
    for (let k = 0; k < 50; k++) t.stats.record("control", 1000, true);
    t.at(1010 * 1000); // same slot (1010 % 10 == 1000 % 10)
    t.stats.record("control", 1, false);
    t.at(1011 * 1000);
    const c = t.get("control");
    assert.equal(c.requestsPerSecond, 1 / 9);
    assert.equal(c.errorRate, 0);
    assert.equal(c.p99Ms, 1);
    assert.equal(c.requests, 51);
  });

  it("p50 and p99 are the upper bounds of the buckets holding those ranks", () => {
    const t = setup();
    t.at(1000 * 1000);
    for (let k = 0; k < 98; k++) t.stats.record("control", 4, false); // bucket (3, 5]
    t.stats.record("control", 800, false); // bucket (750, 1000]
    t.stats.record("control", 1500, false); // bucket (1000, 2000]
    t.at(1001 * 1000);
    let c = t.get("control");
    assert.equal(c.p50Ms, 5);
    assert.equal(c.p99Ms, 1000); // rank 99 of 100 is the 800 ms request

    t.at(1001 * 1000 + 1);
    t.stats.record("control", 1500, false);
    t.stats.record("control", 1500, false);
    t.at(1002 * 1000);
    c = t.get("control");
    assert.equal(c.p99Ms, 2000); // rank 0.99 × 102 = 100.98 → the 101st request, in (1000, 2000]
  });

  it("a latency exactly on a bound falls in that bound's bucket; beyond the last bound reports the last finite one", () => {
    const t = setup();
    t.at(1000 * 1000);
    t.stats.record("control", 5, false);
    t.stats.record("treatment", 0, false);
    t.stats.record("treatment", 60_000, false);
    t.stats.record("treatment", 60_000, false);
    t.at(1001 * 1000);
    assert.equal(t.get("control").p50Ms, 5);
    const tr = t.get("treatment");
    assert.equal(tr.p50Ms, 10_000);
    assert.equal(tr.p99Ms, 10_000);
    t.at(1001 * 1000 + 1);
    t.stats.record("treatment", 0, false);
    t.stats.record("treatment", 0, false);
    t.at(1002 * 1000);
    assert.equal(t.get("treatment").p50Ms, 0.25);
  });

  it("error rate is errors / requests in the window, per variant", () => {
    const t = setup();
    t.at(1003 * 1000);
    for (let k = 0; k < 40; k++) t.stats.record("control", 2, k % 4 === 0);
    for (let k = 0; k < 10; k++) t.stats.record("treatment", 2, true);
    t.at(1004 * 1000);
    assert.equal(t.get("control").errorRate, 0.25);
    assert.equal(t.get("treatment").errorRate, 1);
  });

  it("ignores unknown variants", () => {
    const t = setup(["control"]);
    t.stats.record("ghost", 1, true);
    assert.deepEqual(
      t.stats.snapshot().map((s) => s.variant),
      ["control"],
    );
    assert.equal(t.get("control").requests, 0);
  });
});
