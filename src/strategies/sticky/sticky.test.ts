import assert from "node:assert/strict";
import { describe, test } from "node:test";
import fc from "fast-check";
import { seededRandom } from "../../clock.ts";
import { InvalidArgumentError } from "../../errors.ts";
import { runConformance } from "../conformance.ts";
import { fnv1a32 } from "../fnv.ts";
import type { Range } from "../types.ts";
import { RangeTable } from "./range-table.ts";
import { StickyStrategy } from "./sticky.ts";

runConformance("sticky", (o) => new StickyStrategy(o), { deterministicByUnit: true });

const TOL = 1e-9;

/** Owner of x in a plain range list (linear scan, the reference for the binary search). */
function ownerAt(ranges: Range[], x: number): string {
  for (const r of ranges) if (x >= r.from && x < r.to) return r.variant;
  throw new Error(`no range holds ${x}`);
}

/** Fraction of [0,1) whose owner differs between two tables, with the (from, to) pairs of every move. */
function moved(before: Range[], after: Range[]): { fraction: number; pairs: [string, string][] } {
  const cuts = [...new Set([0, 1, ...before.flatMap((r) => [r.from, r.to]), ...after.flatMap((r) => [r.from, r.to])])].sort((a, b) => a - b);
  let fraction = 0;
  const pairs: [string, string][] = [];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const a = ownerAt(before, cuts[i]);
    const b = ownerAt(after, cuts[i]);
    if (a !== b) {
      fraction += cuts[i + 1] - cuts[i];
      pairs.push([a, b]);
    }
  }
  return { fraction, pairs };
}

function assertWellFormed(ranges: Range[]): void {
  assert.equal(ranges[0].from, 0);
  assert.equal(ranges[ranges.length - 1].to, 1);
  for (const [i, r] of ranges.entries()) {
    assert.ok(r.to > r.from, `range ${i} empty`);
    if (i > 0) {
      assert.equal(r.from, ranges[i - 1].to, "contiguous");
      assert.notEqual(r.variant, ranges[i - 1].variant, "adjacent ranges of one variant are merged");
    }
  }
}

function lengths(ranges: Range[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const r of ranges) out.set(r.variant, (out.get(r.variant) ?? 0) + r.to - r.from);
  return out;
}

const NAMES = ["a", "b", "c", "d"];
const weightVector = fc.array(fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 100 }), fc.double({ min: 0.001, max: 10, noNaN: true })), {
  minLength: 4,
  maxLength: 4,
}).filter((w) => w.some((x) => x > 0));

describe("sticky: bucket rule", () => {
  test("the bucket is fnv1a32(salt + ':' + unit) / 2^32 and the variant is the range owner (predictable by anyone)", () => {
    const s = new StickyStrategy({ variants: [{ name: "control", weight: 50 }, { name: "treatment", weight: 50 }], salt: "recommender-v2" });
    assert.deepEqual(s.ranges(), [
      { variant: "control", from: 0, to: 0.5 },
      { variant: "treatment", from: 0.5, to: 1 },
    ]);
    for (let i = 0; i < 2000; i++) {
      const unit = `user-${i}`;
      const bucket = fnv1a32(`recommender-v2:${unit}`) / 2 ** 32;
      assert.equal(s.bucket(unit), bucket);
      assert.equal(s.assign(unit), bucket < 0.5 ? "control" : "treatment");
    }
  });

  test("initial ranges are consecutive in config order, sized by weight, weight 0 left out", () => {
    const s = new StickyStrategy({ variants: [{ name: "x", weight: 1 }, { name: "y", weight: 0 }, { name: "z", weight: 3 }], salt: "s" });
    assert.deepEqual(s.ranges(), [
      { variant: "x", from: 0, to: 0.25 },
      { variant: "z", from: 0.25, to: 1 },
    ]);
  });

  test("exact distribution: counts equal the number of units whose bucket falls in each range", () => {
    const s = new StickyStrategy({ variants: [{ name: "a", weight: 1 }, { name: "b", weight: 3 }], salt: "exp" });
    let a = 0;
    for (let i = 0; i < 10_000; i++) if (fnv1a32(`exp:u${i}`) / 2 ** 32 < 0.25) a++;
    const got = { a: 0, b: 0 } as Record<string, number>;
    for (let i = 0; i < 10_000; i++) got[s.assign(`u${i}`)]++;
    assert.deepEqual(got, { a, b: 10_000 - a });
  });

  test("a weight change from 50/50 to 40/60 moves exactly 10% of [0,1), all from control to treatment", () => {
    const s = new StickyStrategy({ variants: [{ name: "control", weight: 50 }, { name: "treatment", weight: 50 }], salt: "e" });
    const before = s.ranges();
    const assigned = Array.from({ length: 20_000 }, (_, i) => s.assign(`u${i}`));
    s.setWeights({ control: 40, treatment: 60 });
    assert.deepEqual(s.ranges(), [
      { variant: "control", from: 0, to: 0.4 },
      { variant: "treatment", from: 0.4, to: 1 },
    ]);
    const m = moved(before, s.ranges());
    assert.ok(Math.abs(m.fraction - 0.1) < TOL);
    let changed = 0;
    for (let i = 0; i < assigned.length; i++) {
      const now = s.assign(`u${i}`);
      if (now !== assigned[i]) {
        assert.equal(assigned[i], "control");
        changed++;
      }
    }
    assert.ok(Math.abs(changed / assigned.length - 0.1) < 0.01, `changed ${changed}`);
  });
});

describe("sticky: range table under any sequence of weight changes (fast-check)", () => {
  test("each variant's length equals its share; the moved fraction equals the weight shifted; moves go shrinking -> growing", () => {
    fc.assert(
      fc.property(weightVector, fc.array(weightVector, { minLength: 1, maxLength: 12 }), (initial, changes) => {
        const s = new StickyStrategy({ variants: NAMES.map((name, i) => ({ name, weight: initial[i] })), salt: "p" });
        let shares = normalise(initial);
        for (const change of changes) {
          const before = s.ranges();
          s.setWeights(Object.fromEntries(NAMES.map((n, i) => [n, change[i]])));
          const after = s.ranges();
          const next = normalise(change);
          assertWellFormed(after);
          // no float residue (0.19999999999999996) in what users read to predict a unit's variant
          for (const r of after) for (const x of [r.from, r.to]) assert.equal(Math.round(x * 1e12) / 1e12, x, `bound ${x}`);
          const len = lengths(after);
          for (const [i, n] of NAMES.entries()) assert.ok(Math.abs((len.get(n) ?? 0) - next[i]) < TOL, `${n}: ${len.get(n)} vs ${next[i]}`);
          const tv = NAMES.reduce((sum, _, i) => sum + Math.max(0, shares[i] - next[i]), 0);
          const m = moved(before, after);
          assert.ok(Math.abs(m.fraction - tv) < TOL, `moved ${m.fraction} vs shifted ${tv}`);
          for (const [from, to] of m.pairs) {
            const fi = NAMES.indexOf(from);
            const ti = NAMES.indexOf(to);
            assert.ok(next[fi] < shares[fi] + TOL && next[ti] > shares[ti] - TOL, `${from} -> ${to} must go from a shrinking to a growing variant`);
          }
          shares = next;
        }
      }),
      { numRuns: 400 },
    );
  });

  test("lookup (binary search) agrees with a linear scan", () => {
    fc.assert(
      fc.property(fc.array(weightVector, { minLength: 1, maxLength: 6 }), fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 50, maxLength: 50 }), (changes, points) => {
        const t = RangeTable.initial(NAMES, normalise([1, 1, 1, 1]));
        for (const c of changes) t.rebalance(new Map(NAMES.map((n, i) => [n, normalise(c)[i]])));
        const r = t.ranges();
        for (const x of [...points, 0, r[0].to === 1 ? 0.5 : r[0].to, 1 - 2 ** -53]) assert.equal(t.lookup(x), ownerAt(r, x));
      }),
    );
  });

  test("a variant removed from the config loses its ranges on restore, others keep theirs", () => {
    const s = new StickyStrategy({ variants: [{ name: "a", weight: 1 }, { name: "b", weight: 1 }, { name: "c", weight: 2 }], salt: "z" });
    const snap = s.snapshot();
    const r = new StickyStrategy({ variants: [{ name: "a", weight: 1 }, { name: "c", weight: 2 }], salt: "z", restore: snap });
    const len = lengths(r.ranges());
    assert.ok(Math.abs(len.get("a")! - 1 / 3) < TOL && Math.abs(len.get("c")! - 2 / 3) < TOL);
    // every unit of a or c stays where it was
    for (let i = 0; i < 5000; i++) {
      const before = s.assign(`u${i}`);
      if (before !== "b") assert.equal(r.assign(`u${i}`), before);
    }
  });

  test("fromRanges rejects tables that do not cover [0,1) contiguously", () => {
    const bad: Range[][] = [
      [],
      [{ variant: "a", from: 0.1, to: 1 }],
      [{ variant: "a", from: 0, to: 0.5 }, { variant: "b", from: 0.6, to: 1 }],
      [{ variant: "a", from: 0, to: 0.5 }],
      [{ variant: "a", from: 0, to: 0.5 }, { variant: "b", from: 0.5, to: 0.5 }, { variant: "a", from: 0.5, to: 1 }],
    ];
    for (const ranges of bad) assert.throws(() => RangeTable.fromRanges(ranges), InvalidArgumentError);
  });

  test("the table stays short over many changes (measured: at most ~5 ranges per variant)", () => {
    const random = seededRandom(1);
    for (const k of [2, 4, 8]) {
      const names = Array.from({ length: k }, (_, i) => `v${i}`);
      const s = new StickyStrategy({ variants: names.map((name) => ({ name, weight: 1 })), salt: "x" });
      let longest = 0;
      for (let i = 0; i < 2000; i++) {
        const w = Object.fromEntries(names.map((n) => [n, random() < 0.2 ? 0 : Math.floor(random() * 100) + 1]));
        w.v0 += 1;
        s.setWeights(w);
        longest = Math.max(longest, s.ranges().length);
      }
      assert.ok(longest <= 6 * k, `k=${k}: ${longest} ranges`);
    }
  });

  test("the table stays compact: going back to the initial weights merges everything back", () => {
    const s = new StickyStrategy({ variants: [{ name: "a", weight: 1 }, { name: "b", weight: 1 }], salt: "q" });
    s.setWeights({ a: 3 });
    s.setWeights({ a: 1 });
    assert.deepEqual(s.ranges(), [
      { variant: "a", from: 0, to: 0.5 },
      { variant: "b", from: 0.5, to: 1 },
    ]);
  });
});

describe("sticky: going back to earlier weights brings units back", () => {
  const three = () => new StickyStrategy({ variants: [{ name: "control", weight: 50 }, { name: "treatment", weight: 30 }, { name: "other", weight: 20 }], salt: "recommender-v2" });

  test("pausing a variant (weight 0) and resuming it at its weight gives back exactly the table from before", () => {
    const s = three();
    const initial = s.ranges();
    s.setWeights({ treatment: 0 });
    s.setWeights({ treatment: 30 });
    assert.deepEqual(s.ranges(), initial);
  });

  test("a sequence of changes that ends at the config's weights ends at the config's table (the audit's 50/30/20 sequence)", () => {
    const s = three();
    const initial = s.ranges();
    for (const w of [{ control: 20, treatment: 60, other: 20 }, { control: 20, treatment: 20, other: 60 }, { control: 60, treatment: 20, other: 20 }, { control: 50, treatment: 30, other: 20 }]) s.setWeights(w);
    assert.deepEqual(s.ranges(), initial);
  });

  test("pausing any variant and resuming it gives back the table, whatever the config's weights", () => {
    fc.assert(
      fc.property(weightVector, fc.integer({ min: 0, max: 3 }), (initial, paused) => {
        const others = initial.map((w, i) => (i === paused ? 0 : w));
        fc.pre(initial[paused]! > 0 && others.some((w) => w > 0));
        const s = new StickyStrategy({ variants: NAMES.map((name, i) => ({ name, weight: initial[i] })), salt: "h" });
        const home = s.ranges();
        s.setWeights({ [NAMES[paused]!]: 0 });
        s.setWeights({ [NAMES[paused]!]: initial[paused]! });
        assert.ok(moved(home, s.ranges()).fraction < TOL, `${moved(home, s.ranges()).fraction} of [0,1) is not back home`);
      }),
      { numRuns: 400 },
    );
  });

  test("random changes, then the config's weights again: most of [0,1) is back home (moves stay minimal, so not all can be)", () => {
    // A variant whose weight is back where it was may still hold another's home; taking it back would move more
    // than the change requires. Measured over these 2,000 sequences: 7.4% of [0,1) not home on average, 62% of them
    // wholly home; giving up the top of the highest range instead left 36.6% not home, 17% wholly home.
    const random = seededRandom(7);
    const weights = () => NAMES.map((_, i) => (random() < 0.25 ? 0 : Math.floor(random() * 100) + 1) + (i === 0 ? 1 : 0));
    let notHome = 0;
    const n = 2000;
    for (let k = 0; k < n; k++) {
      const initial = weights();
      const s = new StickyStrategy({ variants: NAMES.map((name, i) => ({ name, weight: initial[i]! })), salt: "h" });
      const home = s.ranges();
      for (let j = 1 + Math.floor(random() * 6); j > 0; j--) {
        const change = weights();
        s.setWeights(Object.fromEntries(NAMES.map((name, i) => [name, change[i]!])));
      }
      s.setWeights(Object.fromEntries(NAMES.map((name, i) => [name, initial[i]!])));
      notHome += moved(home, s.ranges()).fraction;
    }
    assert.ok(notHome / n < 0.1, `${notHome / n} of [0,1) not home on average`);
  });

  test("a ramp (50/50 to 90/10), then a pause and a resume of the treatment, gives back the ramped table", () => {
    const s = new StickyStrategy({ variants: [{ name: "control", weight: 50 }, { name: "treatment", weight: 50 }], salt: "x" });
    s.setWeights({ control: 90, treatment: 10 });
    const ramped = s.ranges();
    s.setWeights({ treatment: 0 });
    s.setWeights({ treatment: 10 });
    assert.deepEqual(s.ranges(), ramped);
  });

  test("one random change, then a pause and a resume: most tables come back whole, and little moves otherwise", () => {
    // Measured over these 2,000 cases: 579 not restored, 6.0% of [0,1) moved on average; giving back a growing
    // variant's home from the top down: 1,574 and 12.5%; the table before homes: 1,984 and 37.9%.
    const random = seededRandom(3);
    const weights = () => NAMES.map((_, i) => (random() < 0.2 ? 0 : Math.floor(random() * 100) + 1) + (i === 0 ? 1 : 0));
    let notRestored = 0;
    let movedSum = 0;
    const n = 2000;
    for (let k = 0; k < n; k++) {
      const initial = weights();
      const s = new StickyStrategy({ variants: NAMES.map((name, i) => ({ name, weight: initial[i]! })), salt: "h" });
      const change = weights();
      s.setWeights(Object.fromEntries(NAMES.map((name, i) => [name, change[i]!])));
      const v = NAMES.findIndex((_, i) => change[i]! > 0 && change.some((x, j) => j !== i && x > 0));
      if (v < 0) continue;
      const before = s.ranges();
      s.setWeights({ [NAMES[v]!]: 0 });
      s.setWeights({ [NAMES[v]!]: change[v]! });
      const m = moved(before, s.ranges()).fraction;
      movedSum += m;
      if (m > TOL) notRestored++;
    }
    assert.ok(notRestored < 0.35 * n && movedSum / n < 0.08, `${notRestored} not restored, ${movedSum / n} moved on average`);
  });

  test("the home survives a restart: resuming after a restart with the variant paused gives back the table from before", () => {
    const s = three();
    const initial = s.ranges();
    s.setWeights({ treatment: 0 });
    const again = new StickyStrategy({ variants: [{ name: "control", weight: 50 }, { name: "treatment", weight: 30 }, { name: "other", weight: 20 }], salt: "recommender-v2", restore: JSON.parse(JSON.stringify(s.snapshot())) });
    again.setWeights({ treatment: 30 });
    assert.deepEqual(again.ranges(), initial);
  });
});

function normalise(w: number[]): number[] {
  const t = w.reduce((a, b) => a + b, 0);
  return w.map((x) => x / t);
}

describe("sticky: restore after a config weight edit", () => {
  test("the saved table is rebalanced to the config's weights, moving only the units the change requires", () => {
    const variants = (c: number, t: number) => [{ name: "control", weight: c }, { name: "treatment", weight: t }];
    const s = new StickyStrategy({ variants: variants(50, 50), salt: "z" });
    s.setWeights({ control: 20, treatment: 80 });
    const before = s.ranges();
    const warnings: string[] = [];
    const r = new StickyStrategy({ variants: variants(90, 10), salt: "z", restore: JSON.parse(JSON.stringify(s.snapshot())), onWarning: (m) => warnings.push(m) });
    assert.deepEqual(r.weights(), { control: 90, treatment: 10 });
    assert.match(warnings.join(), /control 50 -> 90, treatment 50 -> 10.*range table is rebalanced/);
    const len = lengths(r.ranges());
    assert.ok(Math.abs(len.get("control")! - 0.9) < TOL, `control owns ${len.get("control")}`);
    // 0.2 -> 0.9: exactly 0.7 of [0,1) moves, all from treatment to control; control's old range stays its own
    const m = moved(before, r.ranges());
    assert.ok(Math.abs(m.fraction - 0.7) < TOL, `moved ${m.fraction}`);
    assert.ok(m.pairs.every(([from, to]) => from === "treatment" && to === "control"));
    for (let i = 0; i < 2000; i++) if (s.assign(`u${i}`) === "control") assert.equal(r.assign(`u${i}`), "control");
  });
});
