import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { INLINE_UNIT_CHARS, inlineHash, UnitCache } from "./unit-cache.ts";

/**
 * What the database holds for each unit after the writes a cache was told about: the same merge rule as the units
 * upsert (earliest first exposure, multi once two variants were seen). A cache may forget, never claim more.
 */
class Truth {
  readonly rows = new Map<string, { ts: number; variant: string; multi: boolean }>();
  remember(experiment: string, unit: string, ts: number, variant: string, multi: boolean): void {
    const key = `${experiment}\u0000${unit}`;
    const known = this.rows.get(key);
    if (known === undefined) {
      this.rows.set(key, { ts, variant, multi });
      return;
    }
    known.multi ||= multi || known.variant !== variant;
    if (ts < known.ts) {
      known.ts = ts;
      known.variant = variant;
    }
  }
  /** whether an exposure (unit at ts in variant) could change the unit's row */
  unchanged(experiment: string, unit: string, ts: number, variant: string): boolean {
    const r = this.rows.get(`${experiment}\u0000${unit}`);
    return r !== undefined && ts >= r.ts && (r.multi || r.variant === variant);
  }
}

describe("UnitCache", () => {
  // Units of every kind: short, UUID-long, the longest kept in a slot, one longer (kept in a map), non-Latin-1, empty.
  const units = fc.oneof(
    fc.constantFrom("", "a", "b", "user-1", "user-2", "x".repeat(INLINE_UNIT_CHARS), "y".repeat(INLINE_UNIT_CHARS + 1), "é", "☃", "u\u0000v"),
    fc.uuid(),
    fc.string({ maxLength: 60 }),
  );
  const op = fc.record({
    remember: fc.boolean(),
    experiment: fc.constantFrom("e1", "e2"),
    unit: units,
    ts: fc.integer({ min: 0, max: 100 }),
    variant: fc.constantFrom("c", "t", "u"),
    multi: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
  });

  it("never claims an exposure leaves a row unchanged when it would change it, whatever it evicts", () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 300 }), fc.constantFrom(1, 2, 3, 8, 1000), (ops, max) => {
        const cache = new UnitCache(max);
        const truth = new Truth();
        for (const o of ops) {
          if (o.remember) {
            cache.remember(o.experiment, o.unit, o.ts, o.variant, o.multi);
            truth.remember(o.experiment, o.unit, o.ts, o.variant, o.multi);
          } else if (cache.covers(o.experiment, o.unit, o.ts, o.variant)) {
            assert.ok(truth.unchanged(o.experiment, o.unit, o.ts, o.variant), JSON.stringify(o));
          }
        }
      }),
    );
  });

  it("forgets nothing while it has room: exactly the truth", () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 300 }), (ops) => {
        const cache = new UnitCache(100_000);
        const truth = new Truth();
        for (const o of ops) {
          if (o.remember) {
            cache.remember(o.experiment, o.unit, o.ts, o.variant, o.multi);
            truth.remember(o.experiment, o.unit, o.ts, o.variant, o.multi);
          } else {
            assert.equal(cache.covers(o.experiment, o.unit, o.ts, o.variant), truth.unchanged(o.experiment, o.unit, o.ts, o.variant), JSON.stringify(o));
          }
        }
        assert.equal(cache.size, truth.rows.size);
      }),
    );
  });

  it("grows past its first slots and keeps nearly every unit up to its size", () => {
    const cache = new UnitCache(20_000);
    for (let i = 0; i < 20_000; i++) cache.remember("e", `user-${i}`, i, i % 2 ? "c" : "t", false);
    let covered = 0;
    for (let i = 0; i < 20_000; i++) if (cache.covers("e", `user-${i}`, i + 1, i % 2 ? "c" : "t")) covered++;
    // The table doubles at a quarter full, up to 65,536 slots here; a unit whose bucket's four slots are taken
    // evicts one (Poisson: about 0.4% of buckets at a quarter full, more once the maximum is reached).
    assert.ok(covered >= 19_800, `covered ${covered} of 20,000`);
    assert.equal(cache.size, covered);
    assert.ok(!cache.covers("e", "user-1", 0, "c"), "earlier than the first exposure");
    assert.ok(!cache.covers("e", "user-1", 5, "t"), "another variant");
  });

  it("evicts the unit of a full bucket written least recently", () => {
    // A size of 2 gives the smallest table: one bucket of four slots.
    const cache = new UnitCache(2);
    for (const u of ["a", "b", "c", "d", "a", "e"]) cache.remember("exp", u, 1, "c", false);
    assert.equal(cache.size, 4);
    for (const u of ["a", "c", "d", "e"]) assert.ok(cache.covers("exp", u, 5, "c"), u);
    assert.ok(!cache.covers("exp", "b", 5, "c"));
  });

  it("keeps the units of the four experiments used last", () => {
    const cache = new UnitCache(100);
    const long = "z".repeat(INLINE_UNIT_CHARS + 1); // kept in the map, not a slot
    for (const e of ["e1", "e2", "e3", "e4"]) {
      cache.remember(e, "a", 1, "c", false);
      cache.remember(e, long, 1, "c", false);
    }
    assert.ok(cache.covers("e1", "a", 5, "c") && cache.covers("e1", long, 5, "c"), "e1 is now the most recently used");
    cache.remember("e5", "a", 1, "c", false);
    cache.remember("e5", long, 1, "c", false);
    assert.ok(!cache.covers("e2", "a", 5, "c") && !cache.covers("e2", long, 5, "c"), "e2, used least recently, is forgotten");
    for (const e of ["e1", "e3", "e4", "e5"]) assert.ok(cache.covers(e, "a", 5, "c"), e);
    assert.equal(cache.size, 4 + 4);
  });

  it("does nothing with a size of 0", () => {
    const cache = new UnitCache(0);
    cache.remember("exp", "a", 1, "c", false);
    assert.equal(cache.size, 0);
    assert.ok(!cache.covers("exp", "a", 5, "c"));
  });

  it("hashes only units that fit in a slot", () => {
    assert.ok(inlineHash("x".repeat(INLINE_UNIT_CHARS)) >= 0);
    assert.equal(inlineHash("x".repeat(INLINE_UNIT_CHARS + 1)), -1);
    assert.equal(inlineHash("☃"), -1);
    assert.ok(inlineHash("\u00ff") >= 0);
    assert.notEqual(inlineHash("ab"), inlineHash("ba"));
  });
});
