import { test } from "node:test";
import assert from "node:assert/strict";
import { fmix32, fnv1a32 } from "./fnv.ts";
import { createStrategy } from "./index.ts";

/** chi-square statistic of a 2-way split against 50/50 */
function chiSquare(units: string[], assign: (u: string) => string): number {
  let a = 0;
  for (const u of units) if (assign(u) === "a") a++;
  const e = units.length / 2;
  return ((a - e) ** 2 + (units.length - a - e) ** 2) / e;
}

const variants = [
  { name: "a", weight: 1 },
  { name: "b", weight: 1 },
];

test("fmix32 is MurmurHash3's finalizer (known values)", () => {
  assert.equal(fmix32(0), 0);
  assert.equal(fmix32(1), 0x514e28b7);
  assert.equal(fmix32(0xffffffff), 0x81f16f39);
});

test("the default bucket is the spec's plain FNV-1a rule", () => {
  const s = createStrategy("sticky", { variants, salt: "exp" });
  for (let i = 0; i < 200; i++) {
    const u = `user-${i}`;
    assert.equal(s.assign(u), fnv1a32(`exp:${u}`) / 2 ** 32 < 0.5 ? "a" : "b");
  }
});

test("sequential ids: plain FNV-1a splits them unevenly, fnv1a32-fmix evenly", () => {
  const units = Array.from({ length: 3000 }, (_, i) => `u${i}`);
  const plain = createStrategy("sticky", { variants, salt: "recommender-v2" });
  const mixed = createStrategy("sticky", { variants, salt: "recommender-v2", hash: "fnv1a32-fmix" });
  // chi-square with 1 df: 10.83 is p = 0.001, the report's SRM threshold
  assert.ok(chiSquare(units, (u) => plain.assign(u)) > 10.83, "plain FNV-1a shows the bias this option exists for");
  assert.ok(chiSquare(units, (u) => mixed.assign(u)) < 10.83);
  for (const u of units.slice(0, 50)) assert.equal(mixed.assign(u), fmix32(fnv1a32(`recommender-v2:${u}`)) / 2 ** 32 < 0.5 ? "a" : "b");
});
