import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { runConformance } from "../conformance.ts";
import { RoundRobinStrategy } from "./round-robin.ts";

runConformance("round-robin", (o) => new RoundRobinStrategy(o), { deterministicByUnit: false });

function make(weights: Record<string, number>): RoundRobinStrategy {
  return new RoundRobinStrategy({ variants: Object.entries(weights).map(([name, weight]) => ({ name, weight })), salt: "x" });
}

function sequence(s: RoundRobinStrategy, n: number): string[] {
  return Array.from({ length: n }, (_, i) => s.assign(`u${i}`));
}

function count(seq: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of seq) out[v] = (out[v] ?? 0) + 1;
  return out;
}

// table-driven as traefik's wrr tests: weights, number of requests, the exact sequence or exact counts
describe("round-robin: smooth weighted round robin, exact sequences", () => {
  const cases: { name: string; weights: Record<string, number>; n: number; sequence?: string; counts: Record<string, number> }[] = [
    { name: "3:1 over 4 requests gives 3 and 1", weights: { a: 3, b: 1 }, n: 4, sequence: "a a b a", counts: { a: 3, b: 1 } },
    { name: "nginx's example 5:1:1", weights: { a: 5, b: 1, c: 1 }, n: 7, sequence: "a a b a c a a", counts: { a: 5, b: 1, c: 1 } },
    { name: "equal weights alternate", weights: { a: 1, b: 1 }, n: 6, sequence: "a b a b a b", counts: { a: 3, b: 3 } },
    { name: "1:0 only the positive one", weights: { a: 1, b: 0 }, n: 5, sequence: "a a a a a", counts: { a: 5 } },
    { name: "0 weight in the middle is skipped", weights: { a: 1, z: 0, b: 2 }, n: 6, sequence: "b a b b a b", counts: { a: 2, b: 4 } },
    { name: "50:30:20 over 1000 requests is exact", weights: { a: 50, b: 30, c: 20 }, n: 1000, counts: { a: 500, b: 300, c: 200 } },
    { name: "fractional weights 0.5:0.25:0.25 over 8", weights: { a: 0.5, b: 0.25, c: 0.25 }, n: 8, counts: { a: 4, b: 2, c: 2 } },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const seq = sequence(make(c.weights), c.n);
      if (c.sequence) assert.equal(seq.join(" "), c.sequence);
      assert.deepEqual(count(seq), c.counts);
    });
  }

  test("every window of `total` requests is exact for integer weights", () => {
    const s = make({ a: 7, b: 2, c: 1 });
    for (let w = 0; w < 20; w++) assert.deepEqual(count(sequence(s, 10)), { a: 7, b: 2, c: 1 });
  });

  test("setWeights restarts the sequence with the new weights", () => {
    const s = make({ a: 1, b: 1 });
    s.assign("x");
    s.setWeights({ a: 3 });
    assert.equal(sequence(s, 4).join(" "), "a a b a");
  });
});
