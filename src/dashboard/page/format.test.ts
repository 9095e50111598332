import assert from "node:assert/strict";
import { test } from "node:test";
import { fmtCi, fmtDiff, fmtMs, fmtP, fmtPct, fmtSignedPct, fmtValue, normalQuantile, significance, waldInterval } from "./format.ts";

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

test("the per-variant Wald interval uses the normal quantile of 1 - alpha/2", () => {
  // A&S 26.2.23 is good to 4.5e-4
  assert.ok(Math.abs(normalQuantile(0.975) - 1.959964) < 5e-4);
  assert.ok(Math.abs(normalQuantile(0.025) + 1.959964) < 5e-4);
  const [lo, hi] = waldInterval(0.112, 5012, 0.05)!;
  const half = 1.959964 * Math.sqrt((0.112 * 0.888) / 5012);
  assert.ok(Math.abs(lo - (0.112 - half)) < 1e-5 && Math.abs(hi - (0.112 + half)) < 1e-5);
  assert.deepEqual(waldInterval(0, 10, 0.05), [0, 0]);
  assert.equal(waldInterval(0.5, 0, 0.05), null);
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
