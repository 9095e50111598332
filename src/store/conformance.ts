import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import type { MetricConfig } from "../config/index.ts";
import { StoreError } from "../errors.ts";
import { meanTest } from "../stats/frequentist.ts";
import type { Exposure, OutcomeEvent, Query, Store } from "./types.ts";

/** One empty database; `open()` may be called several times (reopen after close, two instances at once). */
export interface StoreFixture {
  open(): Store;
  dispose(): Promise<void>;
}

export interface StoreFactory {
  name: string;
  /** a fresh, empty database */
  fresh(): Promise<StoreFixture>;
  /** runs once before the suite (start a server) and once after */
  setup?(): Promise<void>;
  teardown?(): Promise<void>;
}

/** A minute boundary, so the per-minute expectations below line up. */
export const T0 = 28_333_334 * 60_000;
const M0 = T0;
const M1 = T0 + 60_000;

function x(
  unit: string,
  dt: number,
  assigned: string,
  opts: Partial<Pick<Exposure, "served" | "status" | "latencyMs" | "forced" | "experiment">> = {},
): Exposure {
  return {
    experiment: opts.experiment ?? "exp",
    ts: T0 + dt,
    requestId: `${unit}@${dt}`,
    unit,
    assigned,
    served: opts.served ?? assigned,
    replica: `${opts.served ?? assigned}-0`,
    status: opts.status ?? 200,
    latencyMs: opts.latencyMs ?? 1,
    forced: opts.forced ?? false,
  };
}

function ev(unit: string, event: string, dt: number, value: number | null, experiment = "exp"): OutcomeEvent {
  return { experiment, unit, event, value, ts: T0 + dt, requestId: null };
}

/**
 * The hand-computed data set. Expected figures are worked out in the comments; see aggregate.ts for the rules.
 *
 * units (first non-forced exposure):          control: u1 (T0), u4 (+4s), u3 (+5s), u6 (+8s), u7 (+9s)   = 5
 *                                             treatment: u2 (+2s), u5 (+7s)                               = 2
 * u3's forced treatment exposure at +3s does not count; u4's two variants arrive in one batch, later one first;
 * u7's treatment exposure at +70s arrives first (batch 2)
 * and its earlier control exposure at +9s later (batch 3), so u7 ends up control; u4 and u7 are multi-variant.
 * u8 is only ever forced: no unit. Experiment "other" must never leak into "exp".
 */
export const batches: Exposure[][] = [
  [
    x("u1", 0, "control", { latencyMs: 10 }),
    x("u2", 2_000, "treatment", { latencyMs: 30 }),
    x("u3", 3_000, "treatment", { forced: true, latencyMs: 999 }),
    x("u4", 6_000, "treatment", { status: 503, latencyMs: 60 }), // same batch, arrives before its earlier exposure
    x("u4", 4_000, "control", { latencyMs: 50 }),
    x("u3", 5_000, "control", { latencyMs: 40 }),
    x("u1", 0, "control", { experiment: "other", latencyMs: 5 }),
  ],
  [
    x("u1", 1_000, "control", { latencyMs: 20 }), // known unit, same variant, later: the unit cache skips it
    x("u5", 7_000, "treatment", { served: "control", latencyMs: 70 }), // fallback: no latency for treatment
    x("u6", 8_000, "control", { status: 0, latencyMs: 80 }), // no answer: an error
    x("u7", 70_000, "treatment", { latencyMs: 100 }),
  ],
  [
    x("u7", 9_000, "control", { latencyMs: 90 }),
    x("u8", 200_000, "treatment", { forced: true, status: 500 }), // forced: not an error, not the last exposure
  ],
];

/**
 * watched (window 60 s):   control u1 (+30s), u4 (+64s = first + 60s exactly); not u3 (before its first
 *                          exposure), not u7 (+69.001s, 1 ms late)                  -> control 2/5, treatment u2 1/2
 * watched_any (no window): control u1, u4, u7 -> 3/5; treatment u2 -> 1/2
 * minutes (mean, 60 s):    u1 5 (7 is late, 100 before exposure), u4 2 -> control n 5, sum 7, sumSq 29;
 *                          u2 null (0) + 1.5 -> treatment n 2, sum 1.5, sumSq 2.25
 * minutes_all (mean):      u1 5+7 = 12, u4 2, u7 4 -> control sum 18, sumSq 144+4+16 = 164; treatment 1.5, 2.25
 * buys (no window):        u2 at +62s -> treatment 1/2, control 0/5
 * u9 was never exposed, u8 only forced: both count as units that sent the event unexposed (watched: u9; buy: u8);
 * "other" is another experiment.
 */
export const events: OutcomeEvent[] = [
  ev("u1", "watched", -1_000, 100),
  ev("u1", "watched", 30_000, 5),
  ev("u1", "watched", 120_000, 7),
  ev("u2", "watched", 2_000, null),
  ev("u2", "watched", 3_000, 1.5),
  ev("u2", "buy", 62_000, null),
  ev("u3", "watched", 4_000, 3),
  ev("u4", "watched", 64_000, 2),
  ev("u7", "watched", 69_001, 4),
  ev("u9", "watched", 10_000, 50),
  ev("u9", "watched", 11_000, 1),
  ev("u8", "buy", 300_000, null),
  ev("u1", "watched", 30_000, 1000, "other"),
];

export const metrics: MetricConfig[] = [
  { name: "watched", kind: "conversion", event: "watched", windowMs: 60_000 },
  { name: "watched-any", kind: "conversion", event: "watched" },
  { name: "minutes", kind: "mean", event: "watched", windowMs: 60_000 },
  { name: "minutes-all", kind: "mean", event: "watched" },
  { name: "buys", kind: "conversion", event: "buy" },
  { name: "latency", kind: "latency" },
  { name: "errors", kind: "error_rate" },
];

async function load(store: Store): Promise<void> {
  for (const b of batches) await store.writeExposures(b);
  await store.writeEvents(events);
}

/** Approximate quantiles: within the histogram's 2.5% of the exact nearest-rank value. */
function assertNear(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= expected * 0.025, `${what}: ${actual} is not within 2.5% of ${expected}`);
}

async function checkAggregates(store: Store): Promise<void> {
  const agg = await store.aggregate("exp", ["control", "treatment", "ghost"], metrics);
  assert.equal(agg.experiment, "exp");
  assert.deepEqual(agg.variants, [
    // control: u1 x2, u4, u3, u6, u7 (at +9s); treatment: u2, u4 (+6s), u5, u7 (+70s)
    { variant: "control", units: 5, requests: 6, fallbackRequests: 0 },
    { variant: "treatment", units: 2, requests: 4, fallbackRequests: 1 },
    { variant: "ghost", units: 0, requests: 0, fallbackRequests: 0 },
  ]);
  assert.equal(agg.multiVariantUnits, 2);
  assert.equal(agg.forcedRequests, 2);
  assert.equal(agg.firstExposureTs, T0);
  assert.equal(agg.lastExposureTs, T0 + 70_000);
  const byName = Object.fromEntries(agg.metrics.map((m) => [m.name, m]));
  assert.deepEqual(
    agg.metrics.map((m) => m.name),
    metrics.map((m) => m.name),
    "one entry per metric, in config order",
  );
  assert.deepEqual(byName.watched, {
    name: "watched",
    kind: "conversion",
    byVariant: {
      control: { units: 5, conversions: 2 },
      treatment: { units: 2, conversions: 1 },
      ghost: { units: 0, conversions: 0 },
    },
    unexposedUnits: 1,
    // u1 (-1s) and u3 (4s, before its first non-forced exposure at 5s)
    earlyEventUnits: 2,
  });
  assert.deepEqual(byName["watched-any"]!.byVariant, {
    control: { units: 5, conversions: 3 },
    treatment: { units: 2, conversions: 1 },
    ghost: { units: 0, conversions: 0 },
  });
  assert.deepEqual(byName.minutes, {
    name: "minutes",
    kind: "mean",
    byVariant: {
      control: { n: 5, sum: 7, sumSquares: 29 },
      treatment: { n: 2, sum: 1.5, sumSquares: 2.25 },
      ghost: { n: 0, sum: 0, sumSquares: 0 },
    },
    unexposedUnits: 1,
    earlyEventUnits: 2,
  });
  assert.deepEqual(byName["minutes-all"]!.byVariant, {
    control: { n: 5, sum: 18, sumSquares: 164 },
    treatment: { n: 2, sum: 1.5, sumSquares: 2.25 },
    ghost: { n: 0, sum: 0, sumSquares: 0 },
  });
  assert.deepEqual(byName.buys!.byVariant, {
    control: { units: 5, conversions: 0 },
    treatment: { units: 2, conversions: 1 },
    ghost: { units: 0, conversions: 0 },
  });
  for (const [name, n] of [["watched-any", 1], ["minutes-all", 1], ["buys", 1]] as const) {
    const m = byName[name]!;
    assert.equal(m.kind === "conversion" || m.kind === "mean" ? m.unexposedUnits : undefined, n, `${name}: units with the event, never exposed`);
    assert.equal(m.kind === "conversion" || m.kind === "mean" ? m.earlyEventUnits : undefined, name === "buys" ? 0 : 2, `${name}: units with the event before their first exposure`);
  }
  // latency: served by the assigned variant, not forced. control 10,20,40,50,80,90; treatment 30,60,100.
  const lat = byName.latency!;
  assert.equal(lat.kind, "latency");
  if (lat.kind !== "latency") return;
  const c = lat.byVariant.control!;
  const t = lat.byVariant.treatment!;
  assert.deepEqual([c.n, c.sum, c.sumSquares], [6, 290, 19_100]);
  assert.deepEqual([t.n, t.sum, t.sumSquares], [3, 190, 14_500]);
  assertNear(c.p50, 40, "control p50"); // nearest rank 3 of 6
  assertNear(c.p99, 90, "control p99"); // rank 6 of 6
  assertNear(t.p50, 60, "treatment p50");
  assertNear(t.p99, 100, "treatment p99");
  assert.deepEqual(lat.byVariant.ghost, { n: 0, sum: 0, sumSquares: 0, p50: 0, p99: 0 });
  // errors: control u6 (status 0) of 6; treatment u4's 503 of 4; u8's forced 500 is left out
  assert.deepEqual(byName.errors!.byVariant, {
    control: { units: 6, conversions: 1 },
    treatment: { units: 4, conversions: 1 },
    ghost: { units: 0, conversions: 0 },
  });
}

const conv0 = { watched: 0, "watched-any": 0, buys: 0 };

const allMinutes = [
  { minute: M0, variant: "control", requests: 6, errors: 1, latencySumMs: 290, latencyCount: 6, newUnits: 5, conversions: { ...conv0, watched: 1, "watched-any": 1 } },
  { minute: M0, variant: "treatment", requests: 3, errors: 1, latencySumMs: 90, latencyCount: 2, newUnits: 2, conversions: { ...conv0, watched: 1, "watched-any": 1 } },
  { minute: M1, variant: "control", requests: 0, errors: 0, latencySumMs: 0, latencyCount: 0, newUnits: 0, conversions: { ...conv0, watched: 1, "watched-any": 2 } },
  { minute: M1, variant: "treatment", requests: 1, errors: 0, latencySumMs: 100, latencyCount: 1, newUnits: 0, conversions: { ...conv0, buys: 1 } },
];

/** Registers the shared behaviour every Store must have, as node:test tests. */
export function storeConformance(factory: StoreFactory): void {
  describe(`Store conformance: ${factory.name}`, () => {
    const fixtures: StoreFixture[] = [];
    const stores: Store[] = [];
    const fresh = async (): Promise<StoreFixture> => {
      const f = await factory.fresh();
      fixtures.push(f);
      return f;
    };
    const open = async (f: StoreFixture): Promise<Store> => {
      const s = f.open();
      stores.push(s);
      await s.init();
      return s;
    };
    before(async () => {
      await factory.setup?.();
    });
    after(async () => {
      for (const s of stores) await s.close().catch(() => {});
      for (const f of fixtures) await f.dispose().catch(() => {});
      await factory.teardown?.();
    });

    it("aggregates the hand-computed data set exactly (ITT, windows, forced, multi-variant, fallback)", async () => {
      const store = await open(await fresh());
      await load(store);
      await checkAggregates(store);
      assert.deepEqual(await store.counts("exp"), { exposures: 12, events: 12 });
      assert.deepEqual(await store.counts("other"), { exposures: 1, events: 1 });
      assert.deepEqual(await store.counts("nobody"), { exposures: 0, events: 0 });
    });

    it("recentUnits: the newest units by first exposure, oldest first, with their first assigned variant", async () => {
      const store = await open(await fresh());
      await store.writeExposures([
        x("a", 1000, "control"),
        x("b", 2000, "treatment"),
        x("forced-only", 2500, "treatment", { forced: true }),
        x("c", 3000, "control"),
        x("a", 4000, "treatment"), // a second variant later: still first seen in control
        x("elsewhere", 5000, "control", { experiment: "other" }),
      ]);
      assert.deepEqual(await store.recentUnits("exp", 10), [
        ["a", "control"],
        ["b", "treatment"],
        ["c", "control"],
      ]);
      assert.deepEqual(await store.recentUnits("exp", 2), [["b", "treatment"], ["c", "control"]]);
      assert.deepEqual(await store.recentUnits("exp", 0), []);
      assert.deepEqual(await store.recentUnits("nobody", 5), []);
    });

    it("gives per-minute buckets, and 'since' counts only conversions that happened since", async () => {
      const store = await open(await fresh());
      await load(store);
      assert.deepEqual(await store.minutes("exp", metrics, T0 - 3_600_000), allMinutes);
      // From M1 on: u1's watched-any conversion (at +30s) happened before, although it has an event at +120s.
      assert.deepEqual(await store.minutes("exp", metrics, M1 + 5), allMinutes.slice(2));
      assert.deepEqual(await store.minutes("exp", metrics, T0 + 3_600_000), []);
    });

    it("totalsBefore a minute and the buckets from it add up to the whole experiment's (the dashboard's cumulative rates)", async () => {
      const store = await open(await fresh());
      await load(store);
      const sum = (buckets: Awaited<ReturnType<Store["minutes"]>>, carried: Awaited<ReturnType<Store["totalsBefore"]>>) => {
        const out: Record<string, { newUnits: number; conversions: Record<string, number> }> = {};
        for (const [v, t] of Object.entries(carried)) out[v] = { newUnits: t.newUnits, conversions: { ...t.conversions } };
        for (const b of buckets) {
          const t = (out[b.variant] ??= { newUnits: 0, conversions: {} });
          t.newUnits += b.newUnits;
          for (const [m, n] of Object.entries(b.conversions)) t.conversions[m] = (t.conversions[m] ?? 0) + n;
        }
        return out;
      };
      const whole = sum(await store.minutes("exp", metrics, 0), {});
      assert.deepEqual(await store.totalsBefore("exp", metrics, T0 - 60_000), {}, "nothing before the first exposure");
      for (const cut of [T0 + 1, M1, M1 + 30_000, T0 + 3_600_000]) {
        // (within M0 the cut is its minute: nothing before it)
        assert.deepEqual(sum(await store.minutes("exp", metrics, cut), await store.totalsBefore("exp", metrics, cut)), whole, `cut at ${cut - T0} ms`);
      }
      // before M1: control's units u1, u4, u3, u6, u7 and treatment's u2, u5; u1's watched-any conversion at +30 s
      const carried = await store.totalsBefore("exp", metrics, M1);
      assert.equal(carried.control!.newUnits, 5);
      assert.equal(carried.treatment!.newUnits, 2);
    });

    it("gives the conversion and mean metrics per period of first exposure, and the same totals", async () => {
      const store = await open(await fresh());
      await load(store);
      const plain = await store.aggregate("exp", ["control", "treatment"], metrics);
      // Between u4 (+4s) and u3 (+5s): period 0 has control u1, u4 and treatment u2; period 1 control u3, u6, u7 and
      // treatment u5 (see the data set's comments for who converts).
      const cut = await store.aggregate("exp", ["control", "treatment"], metrics, { periodStarts: [T0 + 4_500] });
      const { strata, ...totals } = cut;
      assert.deepEqual(totals, plain);
      assert.deepEqual(strata?.map((p) => p.from), [null, T0 + 4_500]);
      const [p0, p1] = strata!;
      const of = (period: typeof p0, name: string) => period!.metrics.find((m) => m.name === name)!.byVariant;
      assert.deepEqual(of(p0, "watched"), { control: { units: 2, conversions: 2 }, treatment: { units: 1, conversions: 1 } });
      assert.deepEqual(of(p1, "watched"), { control: { units: 3, conversions: 0 }, treatment: { units: 1, conversions: 0 } });
      assert.deepEqual(of(p0, "watched-any"), { control: { units: 2, conversions: 2 }, treatment: { units: 1, conversions: 1 } });
      assert.deepEqual(of(p1, "watched-any"), { control: { units: 3, conversions: 1 }, treatment: { units: 1, conversions: 0 } });
      assert.deepEqual(of(p0, "minutes"), { control: { n: 2, sum: 7, sumSquares: 29 }, treatment: { n: 1, sum: 1.5, sumSquares: 2.25 } });
      assert.deepEqual(of(p1, "minutes"), { control: { n: 3, sum: 0, sumSquares: 0 }, treatment: { n: 1, sum: 0, sumSquares: 0 } });
      assert.deepEqual(of(p1, "minutes-all"), { control: { n: 3, sum: 4, sumSquares: 16 }, treatment: { n: 1, sum: 0, sumSquares: 0 } });
      assert.deepEqual(of(p0, "buys"), { control: { units: 2, conversions: 0 }, treatment: { units: 1, conversions: 1 } });
      assert.deepEqual(p0!.metrics.map((m) => m.name), ["watched", "watched-any", "minutes", "minutes-all", "buys", "latency", "errors"]);
      // Per-request metrics by the minute of the request: T0 starts a minute, and the cut within it leaves that whole
      // minute to period 0; the periods add up to the totals.
      type Latency = { n: number; sum: number; sumSquares: number };
      type Errors = { units: number; conversions: number };
      const total = (name: string) => plain.metrics.find((m) => m.name === name)!.byVariant as Record<string, Latency & Errors>;
      for (const v of ["control", "treatment"]) {
        const lat = [p0, p1].map((p) => (of(p, "latency") as Record<string, Latency>)[v]!);
        assert.equal(lat[0]!.n + lat[1]!.n, total("latency")[v]!.n);
        assert.ok(Math.abs(lat[0]!.sum + lat[1]!.sum - total("latency")[v]!.sum) < 1e-9);
        const err = [p0, p1].map((p) => (of(p, "errors") as Record<string, Errors>)[v]!);
        assert.deepEqual([err[0]!.units + err[1]!.units, err[0]!.conversions + err[1]!.conversions], [total("errors")[v]!.units, total("errors")[v]!.conversions]);
        const minuteOne = await store.aggregate("exp", ["control", "treatment"], metrics, { periodStarts: [T0 + 60_000] });
        assert.deepEqual(
          [0, 1].map((k) => (minuteOne.strata![k]!.metrics.find((m) => m.name === "errors")!.byVariant as Record<string, Errors>)[v]!.units),
          [0, 1].map((k) => (of([p0, p1][k], "errors") as Record<string, Errors>)[v]!.units),
          "a cut within a minute counts as at its end",
        );
      }
      // starts before and after every unit: empty periods around the whole experiment
      const wide = await store.aggregate("exp", ["control", "treatment"], metrics, { periodStarts: [T0 - 1, T0 + 3_600_000] });
      assert.deepEqual((wide.strata![1]!.metrics.find((m) => m.name === "errors")!.byVariant as Record<string, unknown>), total("errors"), "all requests within");
      assert.deepEqual(wide.strata!.map((p) => p.metrics[0]!.byVariant), [
        { control: { units: 0, conversions: 0 }, treatment: { units: 0, conversions: 0 } },
        { control: { units: 5, conversions: 2 }, treatment: { units: 2, conversions: 1 } },
        { control: { units: 0, conversions: 0 }, treatment: { units: 0, conversions: 0 } },
      ]);
      await assert.rejects(store.aggregate("exp", ["control"], metrics, { periodStarts: [T0 + 2, T0 + 1] }), /sorted, distinct safe integers/);
    });

    it("an empty experiment aggregates to zeros and nulls", async () => {
      const store = await open(await fresh());
      const agg = await store.aggregate("exp", ["control", "treatment"], metrics);
      assert.equal(agg.multiVariantUnits, 0);
      assert.equal(agg.forcedRequests, 0);
      assert.equal(agg.firstExposureTs, null);
      assert.equal(agg.lastExposureTs, null);
      assert.deepEqual(agg.variants.map((v) => v.units + v.requests + v.fallbackRequests), [0, 0]);
      assert.equal(agg.metrics.length, metrics.length);
      assert.deepEqual(await store.minutes("exp", metrics, 0), []);
    });

    it("keeps everything across close and reopen (exposures, events, state), and keeps aggregating correctly after", async () => {
      const f = await fresh();
      const first = await open(f);
      await load(first);
      await first.setState("exp", "ranges", '[{"variant":"control","from":0,"to":0.5}]');
      await first.close();
      await first.close(); // idempotent
      const second = await open(f);
      await checkAggregates(second);
      assert.equal(await second.getState("exp", "ranges"), '[{"variant":"control","from":0,"to":0.5}]');
      // A new instance starts with an empty unit cache: a later exposure of a known unit must not change its variant,
      // and a different variant must mark it multi-variant.
      await second.writeExposures([x("u2", 90_000, "treatment"), x("u6", 90_000, "treatment")]);
      const agg = await second.aggregate("exp", ["control", "treatment"], metrics);
      assert.deepEqual(agg.variants.map((v) => v.units), [5, 2]);
      assert.deepEqual(agg.otherVariants, []);
      // A variant renamed in the config: its units and requests are reported apart, not lost.
      const renamed = await second.aggregate("exp", ["control", "model-b"], metrics);
      assert.deepEqual(renamed.variants.map((v) => v.units), [5, 0]);
      assert.deepEqual(renamed.otherVariants, [{ variant: "treatment", units: 2, requests: 6, fallbackRequests: 1 }]);
      // An experiment the store has nothing of (renamed in the config): the store says which it does hold.
      assert.deepEqual((await second.aggregate("exp-renamed", ["control"], metrics)).otherExperiments, ["exp", "other"]);
      assert.deepEqual(agg.otherExperiments, []);
      // ...but not of one that runs (its gateway saved state) and has no exposure yet
      await second.setState("exp-new", "strategy", "{}");
      assert.deepEqual((await second.aggregate("exp-new", ["control"], metrics)).otherExperiments, []);
      assert.equal(agg.multiVariantUnits, 3);
    });

    it("re-running migrations is safe: init twice, and two instances initialising at once", async () => {
      const f = await fresh();
      const a = f.open();
      const b = f.open();
      stores.push(a, b);
      await Promise.all([a.init(), b.init()]);
      await a.init();
      await a.writeEvents([ev("u1", "watched", 0, 1)]);
      await b.init();
      assert.deepEqual(await b.counts("exp"), { exposures: 0, events: 1 });
    });

    it("writes an event batch all or nothing", async () => {
      const store = await open(await fresh());
      await store.writeExposures(batches[0]!);
      const good = Array.from({ length: 5 }, (_, i) => ev(`u${i}`, "watched", 10 + i, i));
      // The empty event name passes the JS checks and is refused by the database's CHECK constraint at row 4.
      const badInDb = [...good.slice(0, 4), ev("u9", "", 20, 1), good[4]!];
      await assert.rejects(store.writeEvents(badInDb), StoreError);
      const badInJs = [...good.slice(0, 2), ev("u9", "watched", Number.NaN, 1)];
      await assert.rejects(store.writeEvents(badInJs), (err: unknown) => err instanceof StoreError && /event 2: ts/.test(err.message));
      assert.deepEqual(await store.counts("exp"), { exposures: 6, events: 0 });
      const agg = await store.aggregate("exp", ["control", "treatment"], metrics);
      assert.equal(agg.metrics[0]!.kind === "conversion" && agg.metrics[0]!.byVariant.control!.conversions, 0);
      await store.writeEvents(good);
      assert.deepEqual(await store.counts("exp"), { exposures: 6, events: 5 });
    });

    it("writes an exposure batch all or nothing", async () => {
      const store = await open(await fresh());
      await assert.rejects(
        store.writeExposures([x("u1", 0, "control"), { ...x("u2", 0, "control"), latencyMs: Number.NaN }]),
        (err: unknown) => err instanceof StoreError && err.code === "ABGATE_ERR_STORE_INVALID_EXPOSURE" && /exposure 1: ts, latencyMs/.test(err.message),
      );
      assert.deepEqual(await store.counts("exp"), { exposures: 0, events: 0 });
      assert.deepEqual((await store.aggregate("exp", ["control"], [])).variants[0], {
        variant: "control",
        units: 0,
        requests: 0,
        fallbackRequests: 0,
      });
    });

    it("accepts 10,000 events in one batch (the API's maximum) and large exposure batches", async () => {
      const store = await open(await fresh());
      const exposures = Array.from({ length: 5000 }, (_, i) => x(`u${i % 2500}`, i, i % 2 === 0 ? "control" : "treatment"));
      await store.writeExposures(exposures);
      await store.writeEvents(Array.from({ length: 10_000 }, (_, i) => ev(`u${i % 2500}`, "watched", 5000 + i, 1)));
      const agg = await store.aggregate("exp", ["control", "treatment"], [metrics[3]!]);
      // units alternate variants by exposure index; u_k is first seen at index k: even k control, odd k treatment
      assert.deepEqual(agg.variants.map((v) => [v.units, v.requests]), [[1250, 2500], [1250, 2500]]);
      assert.equal(agg.multiVariantUnits, 0);
      const m = agg.metrics[0]!;
      assert.ok(m.kind === "mean");
      assert.deepEqual(m.byVariant.control, { n: 1250, sum: 5000, sumSquares: 1250 * 16 });
    });

    it("aggregates squares and sums past the double range as IEEE arithmetic does (Infinity, 0) instead of failing", async () => {
      // PostgreSQL raises on float8 overflow and underflow where SQLite and JS round; see aggregate.ts.
      const store = await open(await fresh());
      await store.writeExposures([
        // The largest latency a store accepts (MAX_ABS_MEASURE): its square, and the squares of two minute rows, stay finite.
        x("big", 0, "control", { latencyMs: 1e150 }),
        x("small", 1, "control", { latencyMs: 1 }),
        x("e150", 2, "control", { latencyMs: 2 }),
        x("tiny", 3, "treatment", { latencyMs: 1 }),
        x("two", 4, "treatment", { latencyMs: 2 }),
        x("p451", 5, "treatment", { latencyMs: 3 }),
      ]);
      await store.writeExposures([x("big", 60_000, "control", { latencyMs: 1e150 })]); // the other minute row
      // Two requests of the API's largest batch at its largest value: big's sum is 2e154, whose square overflows.
      for (let k = 0; k < 2; k++) await store.writeEvents(Array.from({ length: 10_000 }, () => ev("big", "watched", 10, 1e150)));
      await store.writeEvents([
        ev("small", "watched", 10, 3),
        ev("e150", "watched", 10, 1e150), // squares to a finite 1e300
        ev("tiny", "watched", 10, 1e-200), // its square underflows to 0
        ev("two", "watched", 10, 2),
        // Past the split between aggregate.ts's bands: its square comes out exactly 2^902 only if the scaling by
        // 2^-600 and back is exact in this database.
        ev("p451", "watched", 10, 2 ** 451),
      ]);
      const mean: MetricConfig = { name: "minutes", kind: "mean", event: "watched" };
      const latency: MetricConfig = { name: "latency", kind: "latency" };
      const agg = await store.aggregate("exp", ["control", "treatment"], [mean, latency]);
      const [m, l] = agg.metrics;
      assert.ok(m?.kind === "mean" && l?.kind === "latency");
      const c = m.byVariant.control!;
      const t = m.byVariant.treatment!;
      assert.equal(c.n, 3);
      assert.ok(Math.abs(c.sum / 2.0001e154 - 1) < 1e-9, `control sum ${c.sum}`);
      assert.equal(c.sumSquares, Infinity);
      assert.deepEqual(t, { n: 3, sum: 2 ** 451, sumSquares: 2 ** 902 });
      // What the report then does with it: that metric is flagged, the rest of the report goes on.
      assert.equal(meanTest(c, t).error, "INVALID_INPUT");
      assert.equal(meanTest(t, t).error, undefined);
      const lc = l.byVariant.control!;
      const lt = l.byVariant.treatment!;
      assert.deepEqual([lc.n, lc.sum, lc.sumSquares], [4, 2e150, 2 * (1e150 * 1e150)]);
      assert.deepEqual([lt.n, lt.sum, lt.sumSquares], [3, 6, 14]);
      assert.equal(meanTest(lc, lt).error, undefined);
      assert.deepEqual((await store.minutes("exp", [mean, latency], 0)).map((b) => b.latencySumMs), [1e150 + 3, 6, 1e150]);
    });

    it("a snapshot sees one state: a write that commits during it is in none of its queries (aggregate's figures agree)", async () => {
      const store = await open(await fresh());
      await store.writeExposures([x("s1", 0, "control")]);
      await store.writeEvents([ev("s1", "watched", 1_000, null)]);
      const units = (q: Query) => q(`SELECT COUNT(*) AS n FROM units WHERE experiment = ?`, ["exp"]).then((r) => Number(r[0]!.n));
      const events = (q: Query) => q(`SELECT COUNT(*) AS n FROM events WHERE experiment = ?`, ["exp"]).then((r) => Number(r[0]!.n));
      let writing: Promise<void> | undefined;
      const seen = await store.snapshot(async (q) => {
        const first = await units(q);
        // a new unit and its conversion, committed between the snapshot's statements where writes run meanwhile (a
        // file store, PostgreSQL); a store that holds them back writes them after
        writing = (async () => {
          await store.writeExposures([x("s2", 2_000, "treatment")]);
          await store.writeEvents([ev("s2", "watched", 3_000, null)]);
        })();
        await Promise.race([writing, new Promise((r) => setTimeout(r, 500))]);
        return { first, units: await units(q), events: await events(q) };
      });
      await writing;
      assert.deepEqual(seen, { first: 1, units: 1, events: 1 });
      assert.deepEqual(await store.snapshot(async (q) => [await units(q), await events(q)]), [2, 2]);
      const watched: MetricConfig = { name: "watched", kind: "conversion", event: "watched" };
      const agg = await store.aggregate("exp", ["control", "treatment"], [watched]);
      assert.deepEqual(agg.metrics[0]!.byVariant, { control: { units: 1, conversions: 1 }, treatment: { units: 1, conversions: 1 } });
    });

    it("stores state per experiment and key, last write wins", async () => {
      const store = await open(await fresh());
      assert.equal(await store.getState("exp", "weights"), null);
      await store.setState("exp", "weights", "a");
      await store.setState("exp", "weights", "b");
      await store.setState("other", "weights", "c");
      assert.equal(await store.getState("exp", "weights"), "b");
      assert.equal(await store.getState("other", "weights"), "c");
    });

    it("refuses to be used before init() or after close()", async () => {
      const f = await fresh();
      const s = f.open();
      stores.push(s);
      await assert.rejects(s.counts("exp"), StoreError);
      await s.init();
      await s.close();
      await assert.rejects(s.writeEvents([ev("u1", "watched", 0, 1)]), StoreError);
    });
  });
}

