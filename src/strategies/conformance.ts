import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { seededRandom } from "../clock.ts";
import { InvalidArgumentError } from "../errors.ts";
import type { Strategy, StrategyOptions } from "./types.ts";

export interface ConformanceOptions {
  /** true when a unit's variant depends only on the unit and the state (sticky, bandit) */
  deterministicByUnit: boolean;
  /**
   * true when the weights in force come from the data (bandit): a restart with a variant new in the config keeps the
   * learned weights of those it knows and fits the new one in by the strategy's own rule (its own tests), rather
   * than falling back to the config's weights
   */
  learnedWeights?: boolean;
}

const VARIANTS = [
  { name: "control", weight: 50 },
  { name: "treatment", weight: 30 },
  { name: "other", weight: 20 },
];

/**
 * Unit ids that look like real ones (random hex, from a fixed seed). Sequential ids ("u1", "u2", ...) would not
 * do for the distribution test: FNV-1a's top bits are visibly non-uniform over them (chi-square ~250 on 9 degrees
 * of freedom for 40k ids "d0".."d39999", against ~8 for UUIDs), a property of the hash the spec prescribes.
 */
function units(n: number, prefix = "u"): string[] {
  const random = seededRandom(prefix.charCodeAt(0));
  const hex = () => Math.floor(random() * 2 ** 32).toString(16).padStart(8, "0");
  return Array.from({ length: n }, () => `${prefix}-${hex()}${hex()}${hex()}`);
}

function counts(strategy: Strategy, list: string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const u of list) {
    const v = strategy.assign(u);
    out.set(v, (out.get(v) ?? 0) + 1);
  }
  return out;
}

function assertInvalid(fn: () => void, message: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof InvalidArgumentError, `expected InvalidArgumentError, got ${String(err)}`);
    assert.match(err.message, message);
    return true;
  });
}

/**
 * The contract every Strategy implementation meets (as hono's routers share common.case.test.ts). Each
 * strategy's own test file calls this with its factory, then adds the exact-distribution tests that only make
 * sense for it.
 */
export function runConformance(name: string, factory: (options: StrategyOptions) => Strategy, options: ConformanceOptions): void {
  const make = (overrides: Partial<StrategyOptions> = {}): Strategy =>
    factory({ variants: VARIANTS, salt: "exp", random: seededRandom(1), ...overrides });

  describe(`${name}: Strategy conformance`, () => {
    test("assign returns only configured variants, and each of them eventually", () => {
      const s = make();
      const seen = counts(s, units(5000));
      assert.deepEqual([...seen.keys()].sort(), ["control", "other", "treatment"]);
    });

    test("never assigns a weight-0 variant (configured or set)", () => {
      const s = make({ variants: [{ name: "a", weight: 0 }, { name: "b", weight: 1 }, { name: "c", weight: 0 }] });
      assert.deepEqual([...counts(s, units(3000)).keys()], ["b"]);
      const t = make();
      t.setWeights({ treatment: 0 });
      const seen = counts(t, units(5000));
      assert.equal(seen.get("treatment"), undefined);
      assert.ok((seen.get("control") ?? 0) > 0 && (seen.get("other") ?? 0) > 0);
    });

    test("weights() in config order; setWeights keeps variants left out", () => {
      const s = make();
      assert.deepEqual(Object.entries(s.weights()), [["control", 50], ["treatment", 30], ["other", 20]]);
      s.setWeights({ other: 40 });
      assert.deepEqual(s.weights(), { control: 50, treatment: 30, other: 40 });
    });

    test("setWeights rejects bad input with InvalidArgumentError and a clear message, changing nothing", () => {
      const s = make();
      const before = s.snapshot();
      assertInvalid(() => s.setWeights({ nope: 1 }), /unknown variant "nope".*known: control, treatment, other/);
      assertInvalid(() => s.setWeights({ control: -1 }), /weight of variant "control" must be a finite number >= 0, got -1/);
      assertInvalid(() => s.setWeights({ control: Number.NaN }), /got NaN/);
      assertInvalid(() => s.setWeights({ control: Number.POSITIVE_INFINITY }), /got Infinity/);
      assertInvalid(() => s.setWeights({ control: "3" as unknown as number }), /got "3"/);
      assertInvalid(() => s.setWeights({ control: 0, treatment: 0, other: 0 }), /must sum to a positive number, got 0/);
      assert.deepEqual(s.snapshot(), before);
    });

    test("constructor rejects bad variants", () => {
      assertInvalid(() => make({ variants: [] }), /at least one variant/);
      assertInvalid(() => make({ variants: [{ name: "a", weight: 0 }] }), /sum to a positive number/);
      assertInvalid(() => make({ variants: [{ name: "a", weight: 1 }, { name: "a", weight: 1 }] }), /listed twice/);
      assertInvalid(() => make({ variants: [{ name: "a", weight: -2 }] }), /must be a finite number >= 0/);
    });

    test("snapshot/restore gives identical assignment", () => {
      const s = make();
      s.setWeights({ control: 20, treatment: 70 });
      s.setWeights({ other: 5 });
      const snap = JSON.parse(JSON.stringify(s.snapshot()));
      const restored = make({ restore: snap, random: seededRandom(9) });
      assert.deepEqual(restored.weights(), s.weights());
      assert.deepEqual(restored.ranges(), s.ranges());
      assert.deepEqual(restored.snapshot(), s.snapshot());
      const list = units(3000, "r");
      if (options.deterministicByUnit) {
        for (const u of list) assert.equal(restored.assign(u), s.assign(u), u);
      } else {
        // sequence-based strategies: a restored one behaves exactly as a fresh one with the same weights
        const fresh = make({ variants: Object.entries(s.weights()).map(([n, w]) => ({ name: n, weight: w })), random: seededRandom(9) });
        assert.deepEqual(list.map((u) => restored.assign(u)), list.map((u) => fresh.assign(u)));
      }
    });

    test("restore with a variant gone from the config: the config's weights, with a warning", () => {
      const s = make();
      s.setWeights({ treatment: 60 });
      const snap = s.snapshot();
      const warnings: string[] = [];
      const restored = make({ variants: [{ name: "control", weight: 50 }, { name: "treatment", weight: 30 }], restore: snap, onWarning: (m) => warnings.push(m) });
      assert.deepEqual(restored.weights(), { control: 50, treatment: 30 });
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, /^the config's weights changed since the last run \(other gone\): they replace the weights saved in the store \(control=50, treatment=60, other=20\)/);
      const seen = counts(restored, units(3000));
      assert.deepEqual([...seen.keys()].sort(), ["control", "treatment"]);
    });

    test("restore after a promotion with the other variant renamed in the config: the config's weights, not 100% to the new name", () => {
      const s = make();
      s.setWeights({ control: 0, treatment: 100, other: 0 });
      const warnings: string[] = [];
      const renamed = [{ name: "control", weight: 50 }, { name: "treatment2", weight: 30 }, { name: "other", weight: 20 }];
      const restored = make({ variants: renamed, restore: JSON.parse(JSON.stringify(s.snapshot())), onWarning: (m) => warnings.push(m) });
      // before, the run-time 0s stayed beside treatment2's configured 30: all traffic to a variant nobody promoted
      assert.deepEqual(restored.weights(), { control: 50, treatment2: 30, other: 20 });
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, options.learnedWeights ? /\(treatment gone\)/ : /\(treatment2 new at 30, treatment gone\)/);
    });

    // (a bandit fits a new arm in by its own rule: its own tests)
    if (!options.learnedWeights) {
      test("restore after a rollback with a variant added to the config: the config's weights, with a warning", () => {
        const s = make();
        s.setWeights({ control: 100, treatment: 0, other: 0 });
        const warnings: string[] = [];
        const added = [...VARIANTS, { name: "fourth", weight: 50 }];
        const restored = make({ variants: added, restore: JSON.parse(JSON.stringify(s.snapshot())), onWarning: (m) => warnings.push(m) });
        assert.deepEqual(restored.weights(), { control: 50, treatment: 30, other: 20, fourth: 50 });
        assert.match(warnings[0]!, /\(fourth new at 50\)/);
      });
    }

    test("restore with the config's weights unchanged keeps the weights set at run time", () => {
      const s = make();
      s.setWeights({ control: 10, treatment: 10 });
      const restored = make({ restore: JSON.parse(JSON.stringify(s.snapshot())), onWarning: assert.fail });
      assert.deepEqual(restored.weights(), { control: 10, treatment: 10, other: 20 });
      assert.deepEqual(restored.snapshot().configFileWeights, { control: 50, treatment: 30, other: 20 }, "the config's weights are saved");
    });

    test("restore after a config weight edit applies the config's weights, and warns", () => {
      const s = make();
      s.setWeights({ control: 10, treatment: 10 });
      const snap = JSON.parse(JSON.stringify(s.snapshot()));
      const warnings: string[] = [];
      const edited = [{ name: "control", weight: 20 }, { name: "treatment", weight: 30 }, { name: "other", weight: 50 }];
      const restored = make({ variants: edited, restore: snap, onWarning: (m) => warnings.push(m) });
      assert.deepEqual(restored.weights(), { control: 20, treatment: 30, other: 50 });
      assert.equal(warnings.length, 1);
      assert.match(warnings[0], /^the config's weights changed since the last run \(control 50 -> 20, other 20 -> 50\): they replace the weights saved in the store \(control=10, treatment=10, other=20\)/);
      const seen = counts(restored, units(40_000, "d"));
      assert.ok(Math.abs((seen.get("other") ?? 0) / 40_000 - 0.5) < 0.02, `other: ${seen.get("other")}`);
      // the next restart with this config again keeps what is set at run time from now on
      restored.setWeights({ other: 5 });
      const again = make({ variants: edited, restore: JSON.parse(JSON.stringify(restored.snapshot())), onWarning: assert.fail });
      assert.deepEqual(again.weights(), { control: 20, treatment: 30, other: 5 });
    });

    test("a snapshot saved without configFileWeights (older versions) still loads, as unchanged config weights", () => {
      const s = make();
      s.setWeights({ treatment: 60 });
      const { configFileWeights: _, ...old } = JSON.parse(JSON.stringify(s.snapshot()));
      const restored = make({ variants: [{ name: "control", weight: 1 }, { name: "treatment", weight: 1 }, { name: "other", weight: 1 }], restore: old, onWarning: assert.fail });
      assert.deepEqual(restored.weights(), { control: 50, treatment: 60, other: 20 });
    });

    test("distribution follows the weights (large sample, within 5 standard errors)", () => {
      const s = make();
      s.setWeights({ control: 10, treatment: 60, other: 30 });
      const n = 40_000;
      const seen = counts(s, units(n, "d"));
      for (const [v, w] of Object.entries({ control: 0.1, treatment: 0.6, other: 0.3 })) {
        const got = (seen.get(v) ?? 0) / n;
        const se = Math.sqrt((w * (1 - w)) / n);
        assert.ok(Math.abs(got - w) < 5 * se, `${v}: ${got} vs ${w}`);
      }
    });

    test("ranges(): a table covering [0,1) for range strategies, else undefined", () => {
      const r = make().ranges();
      if (r === undefined) return;
      assert.equal(r[0].from, 0);
      assert.equal(r[r.length - 1].to, 1);
      for (let i = 1; i < r.length; i++) assert.equal(r[i].from, r[i - 1].to);
    });
  });
}
