import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { seededRandom } from "../../clock.ts";
import { runConformance } from "../conformance.ts";
import { RandomStrategy } from "./random.ts";

runConformance("random", (o) => new RandomStrategy(o), { deterministicByUnit: false });

function tally(s: RandomStrategy, n: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (let i = 0; i < n; i++) {
    const v = s.assign("same-unit");
    out[v] = (out[v] ?? 0) + 1;
  }
  return out;
}

describe("random: exact distribution with a seeded source", () => {
  // Expected counts: the number of draws of seededRandom(seed) that fall in each cumulative slot, i.e. the rule
  // "variant i when random() * total < cumulative_i" applied by hand to the same stream.
  const cases = [
    { seed: 42, n: 10_000, variants: { a: 1, b: 3 }, expected: { a: 2516, b: 7484 } },
    { seed: 7, n: 1_000, variants: { a: 2, b: 3, c: 5 }, expected: { a: 188, b: 272, c: 540 } },
    { seed: 7, n: 1_000, variants: { a: 2, z: 0, b: 3, c: 5 }, expected: { a: 188, b: 272, c: 540 } },
  ];
  for (const c of cases) {
    test(`seed ${c.seed}, weights ${JSON.stringify(c.variants)}, ${c.n} requests -> ${JSON.stringify(c.expected)}`, () => {
      const s = new RandomStrategy({
        variants: Object.entries(c.variants).map(([name, weight]) => ({ name, weight })),
        salt: "x",
        random: seededRandom(c.seed),
      });
      assert.deepEqual(tally(s, c.n), c.expected);
    });
  }

  test("each request is independent of the unit", () => {
    const s = new RandomStrategy({ variants: [{ name: "a", weight: 1 }, { name: "b", weight: 1 }], salt: "x", random: seededRandom(3) });
    const seen = new Set(Array.from({ length: 50 }, () => s.assign("one-unit")));
    assert.deepEqual([...seen].sort(), ["a", "b"]);
  });

  test("a random source returning values just below 1 still picks a positive-weight variant", () => {
    const s = new RandomStrategy({ variants: [{ name: "a", weight: 3 }, { name: "b", weight: 0 }], salt: "x", random: () => 1 - 2 ** -53 });
    assert.equal(s.assign("u"), "a");
  });
});
