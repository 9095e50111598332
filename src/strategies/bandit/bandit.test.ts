import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { seededRandom } from "../../clock.ts";
import { runConformance } from "../conformance.ts";
import { BanditStrategy } from "./bandit.ts";
import { beta, gamma } from "./beta.ts";

runConformance("bandit", (o) => new BanditStrategy({ draws: 2000, ...o }), { deterministicByUnit: true, learnedWeights: true });

function make(extra: Partial<ConstructorParameters<typeof BanditStrategy>[0]> = {}): BanditStrategy {
  return new BanditStrategy({
    variants: [{ name: "control", weight: 1 }, { name: "treatment", weight: 1 }],
    salt: "b",
    random: seededRandom(11),
    ...extra,
  });
}

function sum(w: Record<string, number>): number {
  return Object.values(w).reduce((a, b) => a + b, 0);
}

describe("bandit: sampling", () => {
  test("gamma and beta draws have the right means and variances (Marsaglia–Tsang)", () => {
    const random = seededRandom(5);
    const n = 50_000;
    let s = 0;
    let s2 = 0;
    for (let i = 0; i < n; i++) {
      const x = gamma(3, random);
      s += x;
      s2 += x * x;
    }
    const mean = s / n;
    assert.ok(Math.abs(mean - 3) < 0.05, `gamma mean ${mean}`);
    assert.ok(Math.abs(s2 / n - mean * mean - 3) < 0.1, "gamma variance");
    let b = 0;
    for (let i = 0; i < n; i++) b += beta(2, 8, random);
    assert.ok(Math.abs(b / n - 0.2) < 0.005, `beta mean ${b / n}`);
  });
});

describe("bandit: Thompson sampling weights", () => {
  test("burn-in: configured weights stay until burnInUnits units are observed", () => {
    const s = make({ burnInUnits: 1000 });
    s.observe([
      { variant: "control", units: 400, conversions: 10 },
      { variant: "treatment", units: 499, conversions: 200 },
    ]);
    assert.deepEqual(s.weights(), { control: 1, treatment: 1 });
    assert.equal(s.probabilities(), undefined);
  });

  test("after burn-in the weights are the floored share of draws where each arm is best", () => {
    const s = make({ burnInUnits: 100, floor: 0.05, draws: 10_000 });
    s.observe([
      { variant: "control", units: 500, conversions: 50 },
      { variant: "treatment", units: 500, conversions: 52 },
    ]);
    const p = s.probabilities()!;
    const w = s.weights();
    assert.ok(Math.abs(sum(w) - 1) < 1e-9);
    for (const v of ["control", "treatment"]) assert.ok(Math.abs(w[v] - (0.05 + 0.9 * p[v])) < 1e-9);
    // shown to 9 decimals at most: no 0.9500000000000001 in the API, the report or /metrics
    for (const v of ["control", "treatment"]) assert.equal(w[v], Number(w[v].toFixed(9)), String(w[v]));
    // An arm best in every draw: floor + 0.9 · 1, which JS adds up to 0.9500000000000001
    const clear = make({ burnInUnits: 100, floor: 0.05, draws: 1_000 });
    clear.observe([
      { variant: "control", units: 500, conversions: 10 },
      { variant: "treatment", units: 500, conversions: 200 },
    ]);
    assert.deepEqual(clear.weights(), { control: 0.05, treatment: 0.95 });
    // P(treatment better) for Beta(53,449) vs Beta(51,451) is about 0.58 (normal approximation: z = 0.004 / 0.0191)
    assert.ok(p.treatment > 0.5 && p.treatment < 0.66, `p = ${p.treatment}`);
  });

  test("deterministic with a seeded random source", () => {
    const stats = [
      { variant: "control", units: 300, conversions: 30 },
      { variant: "treatment", units: 300, conversions: 36 },
    ];
    const a = make({ draws: 5000 });
    const b = make({ draws: 5000 });
    a.observe(stats);
    b.observe(stats);
    assert.deepEqual(a.weights(), b.weights());
  });

  test("a clear winner gets all but the floor; the loser keeps the floor", () => {
    const s = make({ floor: 0.01 });
    s.observe([
      { variant: "control", units: 2000, conversions: 100 },
      { variant: "treatment", units: 2000, conversions: 300 },
    ]);
    assert.deepEqual(s.weights(), { control: 0.01, treatment: 0.99 });
    assert.ok(Math.abs(s.ranges()!.filter((r) => r.variant === "control").reduce((a, r) => a + r.to - r.from, 0) - 0.01) < 1e-12);
  });

  test("the range table (for new and forgotten units) moves only the units it must, from the loser to the winner", () => {
    const s = make({ maxSeenUnits: 0 }); // nothing remembered: every unit goes by the table
    const units = Array.from({ length: 20_000 }, (_, i) => `user-${i}`);
    const before = units.map((u) => s.assign(u));
    s.observe([
      { variant: "control", units: 2000, conversions: 100 },
      { variant: "treatment", units: 2000, conversions: 300 },
    ]);
    let moved = 0;
    for (const [i, u] of units.entries()) {
      const now = s.assign(u);
      if (now !== before[i]) {
        assert.equal(before[i], "control");
        assert.equal(now, "treatment");
        moved++;
      }
    }
    // 0.49 of [0,1) moved; the hash of these ids is only roughly uniform, so allow a few percent
    assert.ok(Math.abs(moved / units.length - 0.49) < 0.05, `moved ${moved}`);
  });

  test("a variant set to weight 0 is out of the bandit (promote/rollback), and survives restore", () => {
    const s = new BanditStrategy({
      variants: [{ name: "a", weight: 1 }, { name: "b", weight: 1 }, { name: "c", weight: 1 }],
      salt: "x",
      random: seededRandom(2),
      draws: 2000,
    });
    s.setWeights({ c: 0 });
    const stats = [
      { variant: "a", units: 500, conversions: 50 },
      { variant: "b", units: 500, conversions: 50 },
      { variant: "c", units: 500, conversions: 400 },
    ];
    s.observe(stats);
    assert.equal(s.weights().c, 0);
    const r = new BanditStrategy({
      variants: [{ name: "a", weight: 1 }, { name: "b", weight: 1 }, { name: "c", weight: 1 }],
      salt: "x",
      random: seededRandom(2),
      draws: 2000,
      restore: JSON.parse(JSON.stringify(s.snapshot())),
    });
    r.observe(stats);
    assert.equal(r.weights().c, 0);
    s.setWeights({ a: 0, b: 0, c: 1 });
    s.observe(stats);
    assert.deepEqual(s.weights(), { a: 0, b: 0, c: 1 });
  });

  test("floor larger than 1/k gives equal shares; unknown variants and bad counts in stats are ignored or clamped", () => {
    const s = make({ floor: 0.6 });
    s.observe([
      { variant: "control", units: 500, conversions: 900 },
      { variant: "treatment", units: 500, conversions: -3 },
      { variant: "gone", units: 10_000, conversions: 10 },
    ]);
    assert.deepEqual(s.weights(), { control: 0.5, treatment: 0.5 });
  });
});

describe("bandit: already-seen units keep their variant", () => {
  const ids = (n: number, prefix: string) => Array.from({ length: n }, (_, i) => `${prefix}-${(i * 2654435761) >>> 0}`);
  const clearWinner = [
    { variant: "control", units: 1000, conversions: 50 },
    { variant: "treatment", units: 1000, conversions: 500 },
  ];

  test("when Thompson sampling moves the weights, seen units stay and new units follow the new weights", () => {
    const s = make({ burnInUnits: 100, floor: 0.01, draws: 2000 });
    const seen = ids(2000, "seen");
    const first = new Map(seen.map((u) => [u, s.assign(u)]));
    assert.ok([...first.values()].filter((v) => v === "control").length > 800, "about half start in control");
    s.observe(clearWinner);
    assert.ok(s.weights().treatment! > 0.95);
    for (const u of seen) assert.equal(s.assign(u), first.get(u), u);
    const fresh = ids(2000, "new").map((u) => s.assign(u));
    const inControl = fresh.filter((v) => v === "control").length;
    assert.ok(inControl < 60, `${inControl} of 2000 new units in control at weight ${s.weights().control}`);
  });

  test("a variant switched off (weight 0: promote, rollback) no longer holds its units; back on, it has them again", () => {
    const s = make();
    const seen = ids(1000, "u");
    const first = seen.map((u) => s.assign(u));
    s.setWeights({ control: 0 });
    for (const u of seen) assert.equal(s.assign(u), "treatment", u);
    // back in the bandit: its units return, as after a restart, whose memory is the store's first variants
    s.setWeights({ control: 1 });
    assert.deepEqual(seen.map((u) => s.assign(u)), first);
  });

  test("with floor 0, Thompson sampling setting an arm to 0 does not release its units", () => {
    const s = make({ burnInUnits: 100, floor: 0, draws: 2000 });
    const seen = ids(1000, "f");
    const first = seen.map((u) => s.assign(u));
    s.observe(clearWinner);
    assert.equal(s.weights().control, 0);
    assert.deepEqual(seen.map((u) => s.assign(u)), first);
    assert.ok(ids(500, "g").every((u) => s.assign(u) === "treatment"), "new units all go to the winner");
  });

  test("the memory is bounded by characters too: long ids are forgotten sooner", () => {
    const s = make({ burnInUnits: 100, draws: 2000 });
    const long = (i: number) => `${"x".repeat(500)}-${i}`;
    const first = new Map<string, string>();
    // 140,000 ids of ~506 characters: over 64 Mi characters in all, so the oldest are gone, the newest kept
    for (let i = 0; i < 140_000; i++) first.set(long(i), s.assign(long(i)));
    s.observe(clearWinner);
    const newest = Array.from({ length: 200 }, (_, k) => long(139_999 - k));
    for (const u of newest) assert.equal(s.assign(u), first.get(u), "recent ones are kept");
    const oldest = Array.from({ length: 2000 }, (_, k) => long(k));
    const moved = oldest.filter((u) => s.assign(u) !== first.get(u)).length;
    assert.ok(moved > 500, `${moved} of the 2000 oldest moved: forgotten, they go by the table`);
  });

  test("seenUnits seeds the memory at start (a restart), and maxSeenUnits forgets the oldest first", () => {
    // A unit whose bucket is in control's range at 50/50 but not at 1/99: it moves unless remembered.
    const probe = make({ maxSeenUnits: 0 });
    probe.observe(clearWinner);
    const mover = ids(5000, "m").find((u) => make().assign(u) === "control" && probe.assign(u) === "treatment")!;
    assert.ok(mover, "some unit moves with the range table");

    const restarted = make({ seenUnits: [[mover, "control"], ["gone-variant-unit", "nope"]] });
    restarted.observe(clearWinner);
    assert.equal(restarted.assign(mover), "control", "remembered across the restart");

    const small = make({ maxSeenUnits: 2, seenUnits: [[mover, "control"], ["b", "treatment"], ["c", "treatment"]] });
    small.observe(clearWinner);
    assert.equal(small.assign(mover), "treatment", "the oldest was forgotten, so it goes by the range table");
    assert.throws(() => make({ maxSeenUnits: -1 }), /maxSeenUnits must be an integer >= 0/);
  });

  test("a unit seen again is remembered as recently seen: loyal returning units outlast one-off visitors", () => {
    const s = make({ maxSeenUnits: 1000 });
    const loyal = ids(200, "loyal");
    const first = new Map(loyal.map((u) => [u, s.assign(u)]));
    s.observe(clearWinner);
    for (let round = 0; round < 10; round++) {
      for (const u of loyal) s.assign(u);
      for (const u of ids(200, `once${round}-`)) s.assign(u);
    }
    // before, forgotten in first-seen order: every loyal unit first in control ended in treatment
    assert.deepEqual(loyal.filter((u) => s.assign(u) !== first.get(u)), []);
  });

  test("units the proxy made up are remembered apart: never-returning clients do not push out real users", () => {
    const probe = make({ maxSeenUnits: 0 });
    probe.observe(clearWinner);
    const movers = ids(5000, "m").filter((u) => make().assign(u) === "control" && probe.assign(u) === "treatment");
    const [user, cookie, forgotten] = movers;
    assert.ok(forgotten, "units that move with the range table");

    // maxSeenUnits 8: room for 8 units with ids, and 2 made up.
    const s = make({ maxSeenUnits: 8 });
    assert.equal(s.assign(user!), "control");
    assert.equal(s.assign(cookie!, true), "control", "a made-up unit (its cookie is being set)");
    for (const u of ids(100, "no-cookie")) s.assign(u, true); // a client that never sends the cookie back
    assert.equal(s.assign(forgotten!, true), "control");
    s.observe(clearWinner);
    assert.equal(s.assign(user!), "control", "the real user was not pushed out by 100 made-up units");
    assert.equal(s.assign(cookie!), "treatment", "a made-up unit pushed out by newer ones goes by the range table");
    assert.equal(s.assign(forgotten!), "control", "a made-up unit that comes back with its id keeps its variant");
    for (const u of ids(100, "no-cookie-2")) s.assign(u, true);
    assert.equal(s.assign(forgotten!), "control", "and, back with its id, it is among the real users");
  });
});

describe("bandit: weight changes and new arms", () => {
  const clearWinner = [
    { variant: "control", units: 500, conversions: 10 },
    { variant: "treatment", units: 500, conversions: 100 },
  ];

  test("after burn-in, a PUT of the weights recomputes from the last counts at once: one that changes nothing keeps the split, a 0 takes the arm out", () => {
    const s = make({ variants: [{ name: "control", weight: 50 }, { name: "treatment", weight: 50 }, { name: "other", weight: 50 }], burnInUnits: 100, floor: 0.05 });
    s.observe([...clearWinner, { variant: "other", units: 500, conversions: 10 }]);
    const before = s.weights();
    assert.ok(before.treatment! > 0.85, JSON.stringify(before));
    const table = s.ranges();
    s.setWeights({ other: 50 });
    s.setWeights({ other: 80 });
    assert.deepEqual(s.weights(), before, "a change of nothing (or of a positive weight, past burn-in) keeps the split: no draw again");
    assert.deepEqual(s.ranges(), table);
    s.setWeights({ other: 0 });
    const without = s.weights();
    assert.equal(without.other, 0);
    assert.ok(without.treatment! > 0.9 && without.control! >= 0.05, JSON.stringify(without));
    // The range table follows the weights in force.
    const owned = (v: string) => s.ranges().filter((r) => r.variant === v).reduce((a, r) => a + r.to - r.from, 0);
    assert.ok(Math.abs(owned("treatment") - without.treatment!) < 1e-9);
  });

  test("an arm without its part of the burn-in (new in the config, or set back above 0) is held at its configured share, not given most traffic", () => {
    const s = make({ variants: [{ name: "control", weight: 1 }, { name: "treatment", weight: 1 }, { name: "t2", weight: 1 }], burnInUnits: 100, floor: 0.01, draws: 4000 });
    // 20,000 units per old arm at 2%; t2 just added: before, Beta(1,1) beat them in 98% of draws and t2 took 96%
    const old = [
      { variant: "control", units: 20_000, conversions: 400 },
      { variant: "treatment", units: 20_000, conversions: 420 },
    ];
    s.observe([...old, { variant: "t2", units: 0, conversions: 0 }]);
    let w = s.weights();
    assert.ok(Math.abs(w.t2! - (0.01 + 0.97 / 3)) < 1e-6, JSON.stringify(w));
    assert.ok(Math.abs(sum(w) - 1) < 1e-6);
    // 30 units without a conversion: still short of its part (100 / 3), still held (it took 50% before)
    s.observe([...old, { variant: "t2", units: 30, conversions: 0 }]);
    assert.ok(Math.abs(s.weights().t2! - (0.01 + 0.97 / 3)) < 1e-6, JSON.stringify(s.weights()));
    // with its part, it competes on its data
    s.observe([...old, { variant: "t2", units: 2_000, conversions: 10 }]);
    w = s.weights();
    assert.ok(w.t2! < 0.05, JSON.stringify(w));
    // an arm switched off and back on, with no units of its own
    const back = make({ variants: [{ name: "control", weight: 1 }, { name: "treatment", weight: 0 }], burnInUnits: 100 });
    back.observe([{ variant: "control", units: 5_000, conversions: 100 }]);
    back.setWeights({ treatment: 1 });
    back.observe([{ variant: "control", units: 5_000, conversions: 100 }, { variant: "treatment", units: 0, conversions: 0 }]);
    assert.ok(Math.abs(back.weights().treatment! - 0.5) < 1e-6, JSON.stringify(back.weights()));
  });

  test("counts that are not finite change nothing: the update is refused and the weights stay", () => {
    const s = make({ burnInUnits: 100 });
    s.observe(clearWinner);
    const before = s.weights();
    for (const bad of [Infinity, Number.NaN]) {
      assert.throws(() => s.observe([{ variant: "control", units: bad, conversions: 1 }, clearWinner[1]!]), /counts must be finite/);
      assert.throws(() => s.observe([clearWinner[0]!, { variant: "treatment", units: 500, conversions: bad }]), /counts must be finite/);
    }
    assert.deepEqual(s.weights(), before);
  });

  test("a restart after the promoted arm was removed from the config starts, on the config's weights, with a warning", () => {
    const three = [{ name: "control", weight: 1 }, { name: "treatment", weight: 1 }, { name: "t2", weight: 1 }];
    const s = make({ variants: three, burnInUnits: 100 });
    s.setWeights({ control: 0, treatment: 0, t2: 100 });
    const warnings: string[] = [];
    // before: "weights must sum to a positive number, got 0", and the gateway could not start
    const restored = make({ variants: three.slice(0, 2), burnInUnits: 100, restore: JSON.parse(JSON.stringify(s.snapshot())), onWarning: (m) => warnings.push(m) });
    assert.deepEqual(restored.weights(), { control: 1, treatment: 1 });
    assert.match(warnings[0]!, /t2 gone/);
  });

  test("before any counts, a PUT of the weights applies the configured weights (burn-in)", () => {
    const s = make({ burnInUnits: 100 });
    s.setWeights({ control: 3 });
    assert.deepEqual(s.weights(), { control: 3, treatment: 1 });
  });

  test("a variant new in the config since the saved state starts at its configured share, not on another scale", () => {
    const s = make({ burnInUnits: 100, floor: 0.05 });
    s.observe(clearWinner);
    const saved = JSON.parse(JSON.stringify(s.snapshot()));
    const restored = make({
      variants: [{ name: "control", weight: 1 }, { name: "treatment", weight: 1 }, { name: "fourth", weight: 1 }],
      burnInUnits: 100,
      floor: 0.05,
      restore: saved,
      onWarning: assert.fail,
    });
    const w = restored.weights();
    assert.ok(Math.abs(w.fourth! - 1 / 3) < 1e-9, JSON.stringify(w));
    // the known arms keep their proportions in the rest
    assert.ok(Math.abs(w.treatment! / w.control! - saved.weights.treatment / saved.weights.control) < 1e-9);
    assert.ok(Math.abs(sum(w) - 1) < 1e-9);
    let fourth = 0;
    for (let i = 0; i < 3000; i++) if (restored.assign(`new-${i}`) === "fourth") fourth++;
    assert.ok(Math.abs(fourth / 3000 - 1 / 3) < 0.05, `fourth got ${fourth} of 3000`);
  });
});
