import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { UnitCache } from "./unit-cache.ts";

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

interface Op {
  remember: boolean;
  experiment: string;
  unit: string;
  ts: number;
  variant: string;
  multi: boolean;
}

/** Runs the ops (remember, or ask whether an exposure is covered), checking that the cache never claims more than the truth. */
function neverOverclaims(cache: UnitCache, ops: readonly Op[]): void {
  const truth = new Truth();
  for (const o of ops) {
    if (o.remember) {
      cache.remember(o.experiment, o.unit, o.ts, o.variant, o.multi);
      truth.remember(o.experiment, o.unit, o.ts, o.variant, o.multi);
    } else if (cache.covers(o.experiment, o.unit, o.ts, o.variant)) {
      assert.ok(truth.unchanged(o.experiment, o.unit, o.ts, o.variant), JSON.stringify(o));
    }
  }
}

describe("UnitCache", () => {
  // Units of every kind: short, UUID-long, long, non-Latin-1, lone surrogates, empty.
  const units = fc.oneof(
    fc.constantFrom("", "a", "b", "ab", "ba", "user-1", "user-2", "x".repeat(44), "x".repeat(45), "y".repeat(300), "é", "☃", "\ud800", "u\u0000v"),
    fc.uuid(),
    fc.string({ maxLength: 60, unit: "binary" }),
  );
  const op = fc.record({
    remember: fc.boolean(),
    experiment: fc.constantFrom("e1", "e2"),
    unit: units,
    // times of the 1970s, around 2^32 ms (where the entry's high word starts to count), of today, and just under its
    // limit of 2^44: an entry keeps a time in two words
    ts: fc.oneof(
      fc.integer({ min: 0, max: 100 }),
      fc.integer({ min: 2 ** 32 - 50, max: 2 ** 32 + 50 }),
      fc.integer({ min: 1_764_547_200_000, max: 1_764_547_200_100 }),
      fc.integer({ min: 2 ** 44 - 50, max: 2 ** 44 - 1 }),
    ),
    variant: fc.constantFrom("c", "t", "u"),
    multi: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
  });

  it("never claims an exposure leaves a row unchanged when it would change it, whatever it evicts", () => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 300 }), fc.constantFrom(1, 2, 3, 8, 1000), (ops, max) => {
        neverOverclaims(new UnitCache(max), ops);
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
    // The table doubles at a quarter full, up to 65,536 entries here; a unit whose bucket's four entries are taken
    // evicts one (Poisson: at 20,000 units in 65,536 entries about 170 units, with random seeds).
    assert.ok(covered >= 19_700, `covered ${covered} of 20,000`);
    assert.equal(cache.size, covered);
    assert.ok(!cache.covers("e", "user-1", 0, "c"), "earlier than the first exposure");
    assert.ok(!cache.covers("e", "user-1", 5, "t"), "another variant");
  });

  it("takes a unit remembered in a second variant for multi, as the units upsert does", () => {
    const cache = new UnitCache(10);
    cache.remember("e", "u", 5, "c", false);
    assert.ok(cache.covers("e", "u", 6, "c") && !cache.covers("e", "u", 6, "t"));
    cache.remember("e", "u", 7, "t", false);
    for (const variant of ["c", "t", "never-seen"]) assert.ok(cache.covers("e", "u", 6, variant), variant);
    assert.ok(!cache.covers("e", "u", 4, "c"), "still its first exposure's time");
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
    const long = "z".repeat(1000);
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

  it("tells apart a million units by their fingerprints, whatever the seeds", () => {
    // 10^6 units in a cache that keeps them all: a fingerprint shared by two of them would show as a unit covered
    // in a variant it was never remembered in (odd units in "c", even in "t"). Units alike but for their last
    // character, or their order, or a character past the Latin-1 range, stress the hashes' mixing.
    for (const seeds of [[0, 0], [1, 2], [0x9e3779b9, 0x7f4a7c15]] as const) {
      const cache = new UnitCache(1_000_000, seeds);
      const n = 1_000_000;
      const unit = (i: number) => (i % 3 === 0 ? `user-${i}` : i % 3 === 1 ? `${i}-user` : `☃${i}`);
      for (let i = 0; i < n; i++) cache.remember("e", unit(i), 1, i % 2 ? "c" : "t", false);
      let wrong = 0;
      for (let i = 0; i < n; i++) if (cache.covers("e", unit(i), 5, i % 2 ? "t" : "c")) wrong++;
      assert.equal(wrong, 0, `seeds ${seeds}`);
    }
  });

  it("keeps to its rule while it grows and evicts: a small table, many units", () => {
    // maxEntries 300: the table starts with 1,024 entries, doubles at 256 units, and evicts once at its maximum.
    const manyUnits = fc.record({
      remember: fc.boolean(),
      experiment: fc.constant("e"),
      unit: fc.integer({ min: 0, max: 700 }).map((n) => `u${n}`),
      ts: fc.integer({ min: 0, max: 50 }),
      variant: fc.constantFrom("c", "t"),
      multi: fc.constant(false),
    });
    fc.assert(
      fc.property(fc.array(manyUnits, { minLength: 500, maxLength: 1500 }), (ops) => {
        neverOverclaims(new UnitCache(300), ops);
      }),
      { numRuns: 30 },
    );
  });

  it("tells many variants apart", () => {
    // Ids past 8 bits, up to the 15 the entry keeps them in: v1 and v257 (and v32767) share their low bits.
    const cache = new UnitCache(100);
    // Ids are given in the order variants are first remembered, in any experiment.
    for (let v = 0; v < 0x7fff; v++) cache.remember("ids", "u", 1, `v${v}`, false);
    for (const v of [1, 256, 257, 0x4001, 0x7ffe]) cache.remember("e", `unit-of-v${v}`, 1, `v${v}`, false);
    for (const v of [1, 256, 257, 0x4001, 0x7ffe]) {
      assert.ok(cache.covers("e", `unit-of-v${v}`, 2, `v${v}`), `v${v}`);
      for (const other of [v ^ 0x100, v ^ 0x4000, v + 1]) assert.ok(!cache.covers("e", `unit-of-v${v}`, 2, `v${other}`), `v${v} as v${other}`);
    }
    // One more variant than an entry can name: its units are not remembered.
    cache.remember("e", "unit-of-one-too-many", 1, "v32767", false);
    assert.ok(!cache.covers("e", "unit-of-one-too-many", 2, "v32767"));
  });

  it("does not remember a time it cannot hold", () => {
    const cache = new UnitCache(10);
    cache.remember("e", "before-1970", -5, "c", false);
    cache.remember("e", "far-future", 2 ** 50, "c", false);
    // (rounded up to 2^44, one past the last time an entry holds)
    cache.remember("e", "just-past", 2 ** 44 - 0.5, "c", false);
    assert.equal(cache.size, 0);
    assert.ok(!cache.covers("e", "just-past", 0, "c"));
    cache.remember("e", "last", 2 ** 44 - 1, "c", false);
    assert.ok(cache.covers("e", "last", 2 ** 44 - 1, "c") && !cache.covers("e", "last", 2 ** 44 - 2, "c"));
    cache.remember("e", "fraction", 10.2, "c", false);
    assert.ok(!cache.covers("e", "fraction", 10.5, "c"), "the entry's time is rounded up, to stay an upper bound");
    assert.ok(cache.covers("e", "fraction", 11, "c"));
  });
});
