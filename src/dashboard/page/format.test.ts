import assert from "node:assert/strict";
import { test } from "node:test";
import { spanText, fmtShare, fmtBucketMs, fmtCi, fmtDiff, fmtMs, fmtP, fmtPct, fmtSignedPct, fmtValue, significance, wilsonInterval } from "./format.ts";

test("differences carry a sign, in the metric's unit, and never read -0", () => {
  assert.equal(fmtDiff("conversion", 0.019), "+1.90 pp");
  assert.equal(fmtDiff("error_rate", -0.004), "-0.40 pp");
  assert.equal(fmtDiff("latency", -0.04), "0.0 ms");
  assert.equal(fmtDiff("mean", 1.5), "+1.500");
  assert.equal(fmtSignedPct(0.17), "+17.0%");
  assert.equal(fmtSignedPct(-0.0001), "0.0%");
  assert.equal(fmtDiff("conversion", null), "—");
});

test("values, p-values and intervals", () => {
  assert.equal(fmtValue("conversion", 0.112), "11.20%");
  assert.equal(fmtValue("latency", 123.4), "123 ms");
  assert.equal(fmtMs(4.26), "4.3 ms");
  assert.equal(fmtPct(undefined), "—");
  assert.equal(fmtP(0.0004), "< 0.001");
  assert.equal(fmtP(0.05), "0.050");
  assert.equal(fmtP(Number.NaN), "—");
  assert.equal(fmtCi([0.007, 0.031], (x) => fmtDiff("conversion", x)), "[+0.70 pp, +3.10 pp]");
  assert.equal(fmtCi([null, 0.1], (x) => String(x)), "—");
});

test("the per-variant interval is Wilson's, with the normal quantile of 1 - alpha/2", () => {
  // Agresti & Coull 1998, Table 1's kind of check, by hand: p = 0.112, n = 5012, z = 1.96
  const z = 1.959964;
  const [lo, hi] = wilsonInterval(0.112, 5012, 0.05)!;
  const c = (0.112 + (z * z) / (2 * 5012)) / (1 + (z * z) / 5012);
  const h = (z * Math.sqrt((0.112 * 0.888) / 5012 + (z * z) / (4 * 5012 * 5012))) / (1 + (z * z) / 5012);
  assert.ok(Math.abs(lo - (c - h)) < 1e-5 && Math.abs(hi - (c + h)) < 1e-5);
  // A rate of 0 is not known to be exactly 0: [0, z²/(n + z²)], not Wald's [0, 0]
  const [lo0, hi0] = wilsonInterval(0, 10, 0.05)!;
  assert.equal(lo0, 0);
  assert.ok(Math.abs(hi0 - (z * z) / (10 + z * z)) < 1e-4, String(hi0));
  const [lo1, hi1] = wilsonInterval(1, 10, 0.05)!;
  assert.ok(Math.abs(lo1 - 10 / (10 + z * z)) < 1e-4 && hi1 === 1, `${lo1} ${hi1}`);
  assert.equal(wilsonInterval(0.5, 0, 0.05), null);
  assert.equal(wilsonInterval(1.5, 10, 0.05), null);
});

test("a significant difference is better or worse by the metric's direction: up for conversions and means, down for latency and errors", () => {
  const up = { significant: true, sequentialCi: [0.01, 0.03] as [number, number] };
  const down = { significant: true, sequentialCi: [-0.03, -0.01] as [number, number] };
  assert.equal(significance("conversion", up), "better");
  assert.equal(significance("mean", down), "worse");
  // A treatment significantly slower, or with more errors, was shown in green as "significant".
  assert.equal(significance("latency", up), "worse");
  assert.equal(significance("error_rate", up), "worse");
  assert.equal(significance("latency", down), "better");
  assert.equal(significance("conversion", { significant: false, sequentialCi: [0.01, 0.03] }), undefined);
  assert.equal(significance("conversion", { significant: true, sequentialCi: null }), undefined);
  assert.equal(significance("conversion", undefined), undefined);
  // A conversion with a guardrail (say unsubscribes, at most +10%) is watched for going up: a rise is worse.
  assert.equal(significance("conversion", up, true), "worse");
  assert.equal(significance("mean", down, true), "better");
});

test("every line colour has at least 3:1 contrast on white (WCAG 1.4.11), and no two are the same", async () => {
  const { PALETTE } = await import("./chart.tsx");
  const luminance = (hex: string) => {
    const [r, g, b] = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16) / 255).map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4));
    return 0.2126 * r! + 0.7152 * g! + 0.0722 * b!;
  };
  for (const colour of PALETTE) assert.ok(1.05 / (luminance(colour) + 0.05) >= 3, `${colour}: ${(1.05 / (luminance(colour) + 0.05)).toFixed(2)}:1`);
  assert.equal(new Set(PALETTE).size, PALETTE.length);
  assert.ok(PALETTE.length >= 10);
});

test("a live percentile reads as the bucket edge it is: at most that, or past the last finite edge", () => {
  assert.equal(fmtBucketMs(5), "≤ 5.0 ms");
  assert.equal(fmtBucketMs(0.25), "≤ 0.25 ms");
  assert.equal(fmtBucketMs(7.5), "≤ 7.5 ms");
  assert.equal(fmtBucketMs(750), "≤ 750 ms");
  assert.equal(fmtBucketMs(5000), "≤ 5000 ms");
  // 10,000 is both "in (5000, 10000]" and "past 10,000": only "> 5000 ms" is true of both
  assert.equal(fmtBucketMs(10_000), "> 5000 ms");
  assert.equal(fmtBucketMs(null), "—");
});

test("a chart's span for screen readers: its points and the times of the first and last, with the day when it crosses one", () => {
  assert.equal(spanText([]), "no points yet");
  const noon = Date.UTC(2026, 10, 29, 12, 0) / 1000;
  assert.match(spanText([noon]), /^1 point, at \S+/);
  const hour = spanText([noon, noon + 1800, noon + 3600]);
  assert.match(hour, /^3 points from .+ to .+$/);
  assert.doesNotMatch(hour, /Nov/, "same day: times only");
  const week = spanText([noon - 7 * 86400, noon]);
  assert.match(week, /^2 points from Nov \d+.* to Nov \d+/);
});

test("a traffic share is whole percents when exact, else one decimal: nine tenths of 90 are 11.1%, not 11%", () => {
  assert.equal(fmtShare(0.5), "50%");
  assert.equal(fmtShare(1), "100%");
  assert.equal(fmtShare(0), "0%");
  assert.equal(fmtShare(10 / 90), "11.1%");
  assert.equal(fmtShare(1 / 3), "33.3%");
  assert.equal(fmtShare(0.2), "20%", "0.2 * 100 is 20.000000000000004: still whole");
  assert.equal(fmtShare(null), "—");
});
