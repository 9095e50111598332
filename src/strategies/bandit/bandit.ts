import type { RandomSource } from "../../clock.ts";
import { InvalidArgumentError } from "../../errors.ts";
import type { ArmStats, Range, Strategy, StrategyOptions, StrategyState } from "../types.ts";
import { FNV1A32_OFFSET, bucketOf, fnv1a32Update, type StickyHash } from "../fnv.ts";
import { mergeWeights, toRecord, validateVariants } from "../weights.ts";
import { configWeightsEdited, restoreWeights } from "../restore.ts";
import { RangeTable } from "../sticky/range-table.ts";
import { restoreState, shareMap } from "../sticky/sticky.ts";
import { beta } from "./beta.ts";

export const DEFAULT_FLOOR = 0.01;
export const DEFAULT_BURN_IN_UNITS = 100;
export const DEFAULT_DRAWS = 10_000;
/** About 100 MB for unit ids the size of a UUID (95 B each, measured). */
export const DEFAULT_MAX_SEEN_UNITS = 1_000_000;
/** And at most this many characters of unit ids in all (ids may be up to 512 characters): about 64-128 MB more. */
export const MAX_SEEN_CHARS = 64 * 2 ** 20;
/** Units the proxy made up (no id in the request) are remembered apart, at most a quarter as many (see `assign`). */
const MADE_UP_SHARE = 4;

/**
 * Thompson sampling (Thompson 1933) over the conversion rate of each variant, allocating traffic by the
 * posterior probability that a variant is the best ("randomized probability matching", Scott 2010, "A modern
 * Bayesian look at the multi-armed bandit", Applied Stochastic Models in Business and Industry 26(6)).
 *
 * Choices, and why:
 * - Posterior per arm: Beta(1 + conversions, 1 + units - conversions), a uniform Beta(1,1) prior.
 * - P(best) by Monte Carlo: `draws` (default 10,000) joint draws from the posteriors with the injected random
 *   source; an arm's weight is the share of draws where it is the largest (first arm on exact ties). Weights are
 *   recomputed only when `observe` is called (the gateway calls it every `updateIntervalMs`), not per request,
 *   so the cost (draws x arms x 2 gamma draws) stays off the hot path.
 * - Floor: every active arm gets at least `floor` (default 1%): w_i = floor + (1 - k * floor) * P(best_i) for k
 *   active arms, so a variant that looks bad early keeps collecting data and can recover. If k * floor >= 1 the
 *   arms get equal shares.
 * - Burn-in: until the active arms have `burnInUnits` units in total, the configured weights stay in force; a
 *   posterior from a handful of units would swing traffic on noise. Past it, an arm with fewer than its part of
 *   them (burnInUnits / active arms: one added, or set back above 0) is held at its configured share of the active
 *   arms, and the others share the rest by P(best) among themselves: drawn from Beta(1,1), an arm with no data beat
 *   a 2% arm in 98% of draws and took 96% of new units, each of them for good.
 * - Counts that are not finite (a store's overflow) change nothing: the weights stay, and the update says why.
 * - Active arms: the variants whose configured weight is > 0. `setWeights` changes the configured weights, and the
 *   weights in force are recomputed at once from the last counts `observe` saw (before any, they are the configured
 *   ones): setting a variant to 0 takes it out of the bandit for good (promote and rollback rely on this), any
 *   positive value only matters during burn-in. (Applying the configured weights until the next update put a
 *   bandit at 5/95 back to 50/50 for a whole interval on any PUT /v1/weights, even one that changed nothing, and
 *   gave every new unit of that interval its variant for good.)
 * - A variant new in the config since the saved state (a new arm) starts, until the next update, with its
 *   configured share of the active arms' configured weights; the arms known before share the rest as they did. (The
 *   saved weights in force are shares that sum to 1, the configured ones any numbers: mixed as they were, a new arm
 *   at weight 50 took 98% of new units.)
 * - A new unit is assigned through the sticky range table (same FNV-1a bucket as `sticky`), which follows the
 *   weights in force. An already-seen unit keeps the variant it was first given while the bandit moves the weights
 *   (GrowthBook's sticky bucketing for bandits): by the range table alone, a shift from 50/50 to 1/99 moved half of
 *   all seen units to the other arm, which made them multi-variant units and mixed two treatments in one unit's
 *   outcomes. So the strategy remembers each unit's variant, up to `maxSeenUnits` (least recently seen forgotten first; a
 *   forgotten unit goes by the range table again; units the proxy made up are kept apart, see `assign`), seeded at
 *   start with the units the store saw (`seenUnits`).
 *   While a unit's first variant is set to weight 0 (promote, rollback) it goes by the range table; it returns to
 *   its first variant if that variant comes back, as it would after a restart.
 */
export class BanditStrategy implements Strategy {
  readonly kind = "bandit" as const;
  readonly #names: string[];
  readonly #random: RandomSource;
  readonly #floor: number;
  readonly #burnInUnits: number;
  readonly #draws: number;
  readonly #prefix: number;
  #hash: StickyHash;
  /** configured weights (config or setWeights): decide which arms are active, and rule during burn-in */
  #configured: number[];
  /** the weights in force */
  #weights: number[];
  /** the config's weights, saved in the snapshot so that a restart can tell a config edit from run-time changes */
  readonly #configFile: number[];
  readonly #table: RangeTable;
  #probabilities: number[] | undefined;
  /** the counts of the last `observe`, to recompute the weights when the configured ones change */
  #lastStats: ArmStats[] | undefined;
  /** the active arms #probabilities were drawn for, as a key */
  #drawnFor = "";
  /** units that came with their id (header, query, cookie): the variant each was first given */
  readonly #seen: UnitMemory;
  /** units the proxy made up, until they come back with their id: then they move to `#seen` */
  readonly #madeUp: UnitMemory;

  constructor(options: StrategyOptions) {
    const { names, weights } = validateVariants(options.variants);
    this.#names = names;
    this.#random = options.random ?? Math.random;
    this.#floor = options.floor ?? DEFAULT_FLOOR;
    this.#burnInUnits = options.burnInUnits ?? DEFAULT_BURN_IN_UNITS;
    this.#draws = options.draws ?? DEFAULT_DRAWS;
    this.#prefix = fnv1a32Update(FNV1A32_OFFSET, `${options.salt}:`);
    this.#hash = options.hash ?? "fnv1a32";
    const restore = options.restore;
    this.#configFile = weights;
    // An edited config replaces both the configured weights saved at run time and the bandit's weights in force
    // (the next `observe` recomputes them from the data).
    const edited = configWeightsEdited(names, weights, restore, options.onWarning, false);
    this.#configured = restore && !edited
      ? restoreWeights(names, weights, { weights: restore.configuredWeights ?? restore.weights })
      : weights;
    const restored = restoreState(names, this.#configured, restore && !edited ? withNewArms(names, this.#configured, restore) : restore, edited, weights);
    this.#weights = restored.weights;
    this.#table = restored.table;
    const maxSeenUnits = options.maxSeenUnits ?? DEFAULT_MAX_SEEN_UNITS;
    if (!(Number.isSafeInteger(maxSeenUnits) && maxSeenUnits >= 0)) {
      throw new InvalidArgumentError(`maxSeenUnits must be an integer >= 0, got ${String(options.maxSeenUnits)}`);
    }
    this.#seen = new UnitMemory(maxSeenUnits, MAX_SEEN_CHARS);
    this.#madeUp = new UnitMemory(Math.ceil(maxSeenUnits / MADE_UP_SHARE), MAX_SEEN_CHARS / MADE_UP_SHARE);
    for (const [unit, variant] of options.seenUnits ?? []) {
      const i = names.indexOf(variant);
      if (i >= 0) this.#seen.remember(unit, i);
    }
  }

  /**
   * A unit the proxy made up (`madeUp`: the request named none, and it gets the id in a cookie) is remembered apart,
   * and moves to the main memory when it comes back with its id. Clients that never send the cookie back (scripts,
   * health probes, crawlers) make up a new unit on every request: in one memory they pushed out the real users,
   * whose next visit then went by the range table of that day, in another arm. A made-up unit that does come back
   * after being forgotten goes by the range table too, as it would have without the memory.
   */
  assign(unit: string, madeUp = false): string {
    let known = madeUp ? undefined : this.#seen.get(unit);
    if (known === undefined && !madeUp) {
      known = this.#madeUp.take(unit);
      if (known !== undefined) this.#seen.remember(unit, known);
    }
    // The configured weight, not the one in force: with floor 0 Thompson sampling can set an arm to 0 by itself,
    // which must not release its units; only setWeights (0, promote, rollback) does.
    if (known !== undefined && this.#configured[known]! > 0) return this.#names[known]!;
    const variant = this.#table.lookup(bucketOf(fnv1a32Update(this.#prefix, unit), this.#hash));
    // A unit whose first variant is switched off goes by the table but keeps its first variant in memory: it goes
    // back when the variant does, as it would after a restart, where the memory is the store's first variants.
    if (known === undefined) (madeUp ? this.#madeUp : this.#seen).remember(unit, this.#names.indexOf(variant));
    return variant;
  }

  weights(): Record<string, number> {
    return toRecord(this.#names, this.#weights);
  }

  setWeights(weights: Record<string, number>): void {
    this.#configured = mergeWeights(this.#names, this.#configured, weights);
    // The same arms as the last draw: its P(best) stands (drawing again would move the weights by Monte Carlo noise
    // on a change of nothing); other arms: drawn again from the last counts.
    if (this.#probabilities !== undefined && this.#activeKey() === this.#drawnFor) this.#applyProbabilities();
    else if (this.#lastStats) this.observe(this.#lastStats);
    else this.#apply([...this.#configured]);
  }

  ranges(): Range[] {
    return this.#table.ranges();
  }

  snapshot(): StrategyState {
    return { weights: this.weights(), ranges: this.ranges(), configuredWeights: toRecord(this.#names, this.#configured), configFileWeights: toRecord(this.#names, this.#configFile) };
  }

  /**
   * Recompute the weights from conversion counts so far (totals, not increments). Variants missing from `stats`
   * count as no data; unknown variants are ignored (a variant removed from the config may still have history).
   */
  observe(stats: ArmStats[]): void {
    // (two arms at Infinity drew NaN, no arm won, and the weights summed to 0.02)
    if (stats.some((s) => !Number.isFinite(Number(s.units)) || !Number.isFinite(Number(s.conversions)))) {
      throw new InvalidArgumentError(`bandit: counts must be finite numbers, got ${JSON.stringify(stats.map((s) => [s.variant, s.units, s.conversions]))}`);
    }
    this.#lastStats = stats;
    const units = new Array<number>(this.#names.length).fill(0);
    const conversions = new Array<number>(this.#names.length).fill(0);
    for (const s of stats) {
      const i = this.#names.indexOf(s.variant);
      if (i < 0) continue;
      const u = Math.max(0, Math.floor(Number(s.units) || 0));
      units[i] = u;
      // more conversions than units would make the Beta parameter < 1; counts come from the store, so clamp
      conversions[i] = Math.min(u, Math.max(0, Math.floor(Number(s.conversions) || 0)));
    }
    const active = this.#names.map((_, i) => i).filter((i) => this.#configured[i] > 0);
    const totalUnits = active.reduce((sum, i) => sum + units[i], 0);
    if (totalUnits < this.#burnInUnits || active.length < 2) {
      this.#apply([...this.#configured]);
      return;
    }
    const young = active.filter((i) => units[i] < this.#burnInUnits / active.length);
    const grown = active.filter((i) => units[i] >= this.#burnInUnits / active.length);
    const configuredActive = active.reduce((sum, i) => sum + this.#configured[i], 0);
    const youngShare = young.reduce((sum, i) => sum + this.#configured[i] / configuredActive, 0);
    const wins = new Array<number>(this.#names.length).fill(0);
    for (let d = 0; d < this.#draws; d++) {
      let best = -1;
      let bestDraw = -Infinity;
      for (const i of grown) {
        const draw = beta(1 + conversions[i], 1 + units[i] - conversions[i], this.#random);
        if (draw > bestDraw) {
          bestDraw = draw;
          best = i;
        }
      }
      wins[best]++;
    }
    this.#probabilities = wins.map((w, i) => (young.includes(i) ? this.#configured[i] / configuredActive : ((1 - youngShare) * w) / this.#draws));
    this.#drawnFor = this.#activeKey();
    this.#applyProbabilities();
  }

  /** The arms whose configured weight is > 0, as a key. */
  #activeKey(): string {
    return this.#configured.map((w) => (w > 0 ? "1" : "0")).join("");
  }

  /** The weights in force from the last P(best): floored shares of the active arms. */
  #applyProbabilities(): void {
    const active = this.#names.map((_, i) => i).filter((i) => this.#configured[i] > 0);
    const k = active.length;
    const floor = Math.min(this.#floor, 1 / k);
    const next = new Array<number>(this.#names.length).fill(0);
    // To 9 decimals (and never below the floor): the weights are shown (GET /v1/experiment, the report, /metrics), and
    // the sum's rounding showed as 0.9500000000000001.
    for (const i of active) next[i] = Math.max(floor, Math.round((floor + (1 - k * floor) * this.#probabilities![i]!) * 1e9) / 1e9);
    this.#apply(next);
  }

  /** The last Monte Carlo estimate of P(variant is best), by variant; undefined before the first one. */
  probabilities(): Record<string, number> | undefined {
    return this.#probabilities && toRecord(this.#names, this.#probabilities);
  }

  #apply(weights: number[]): void {
    this.#weights = weights;
    this.#table.rebalance(shareMap(this.#names, weights));
  }
}

/**
 * A snapshot whose weights in force also cover the active variants it does not name (new in the config): each gets
 * its configured weight's share of all active configured weights, and the variants the snapshot names share the
 * rest in proportion to their saved weights. Without new active variants, or without saved weight to scale, the
 * snapshot as it is.
 */
function withNewArms(names: readonly string[], configured: readonly number[], restore: StrategyState): StrategyState {
  const saved = restore.weights;
  /** a saved weight in force, as a number >= 0 (undefined: not saved, a new or inactive variant) */
  const savedWeight = (name: string) => (Object.hasOwn(saved, name) ? Math.max(0, Number(saved[name]) || 0) : undefined);
  const isNew = names.map((name, i) => configured[i]! > 0 && savedWeight(name) === undefined);
  const activeTotal = configured.reduce((sum, w) => sum + (w > 0 ? w : 0), 0);
  const newShare = names.reduce((sum, _, i) => sum + (isNew[i] ? configured[i]! / activeTotal : 0), 0);
  const knownTotal = names.reduce((sum, name) => sum + (savedWeight(name) ?? 0), 0);
  if (newShare === 0 || !(knownTotal > 0)) return restore;
  const weights: Record<string, number> = {};
  names.forEach((name, i) => {
    const w = savedWeight(name);
    if (isNew[i]) weights[name] = configured[i]! / activeTotal;
    else if (w !== undefined) weights[name] = (w / knownTotal) * (1 - newShare);
  });
  return { ...restore, weights };
}

/** Units and the index of the variant each was first given, bounded in count and characters, least recently seen forgotten first. */
class UnitMemory {
  /**
   * in order of last use (a Map iterates in insertion order; a unit seen again moves to the end): forgotten by first
   * sight, a loyal unit that came back every day went before one-off visitors, and then changed variant
   */
  readonly #variants = new Map<string, number>();
  #chars = 0;
  readonly #maxUnits: number;
  readonly #maxChars: number;

  constructor(maxUnits: number, maxChars: number) {
    this.#maxUnits = maxUnits;
    this.#maxChars = maxChars;
  }

  get(unit: string): number | undefined {
    const variant = this.#variants.get(unit);
    if (variant !== undefined) {
      this.#variants.delete(unit);
      this.#variants.set(unit, variant);
    }
    return variant;
  }

  /** The unit's variant, forgetting the unit. */
  take(unit: string): number | undefined {
    const variant = this.#variants.get(unit);
    if (variant !== undefined) {
      this.#variants.delete(unit);
      this.#chars -= unit.length;
    }
    return variant;
  }

  remember(unit: string, variant: number): void {
    if (this.#maxUnits === 0) return;
    const before = this.#variants.size;
    this.#variants.set(unit, variant);
    if (this.#variants.size === before) return;
    this.#chars += unit.length;
    while (this.#variants.size > this.#maxUnits || this.#chars > this.#maxChars) {
      const oldest = this.#variants.keys().next().value!;
      this.#variants.delete(oldest);
      this.#chars -= oldest.length;
    }
  }
}
