import { FNV1A32_OFFSET, bucketOf, fnv1a32Update, type StickyHash } from "../fnv.ts";
import type { Range, Strategy, StrategyOptions, StrategyState } from "../types.ts";
import { mergeWeights, toRecord, toShares, validateVariants } from "../weights.ts";
import { RangeTable } from "./range-table.ts";
import { configWeightsEdited, restoreWeights } from "../restore.ts";

/**
 * Deterministic assignment by hash: a unit's bucket is `fnv1a32(salt + ":" + unit) / 2^32` and its variant is the
 * owner of the range that contains the bucket (see RangeTable). Anyone who knows the salt and the range table can
 * predict a unit's variant; a weight change moves only the units it must, from shrinking to growing variants.
 */
export class StickyStrategy implements Strategy {
  readonly kind = "sticky" as const;
  readonly #names: string[];
  #weights: number[];
  /** the config's weights, saved in the snapshot so that a restart can tell a config edit from run-time changes */
  readonly #configFile: number[];
  readonly #table: RangeTable;
  /** FNV state after hashing `salt + ":"`, so a request only hashes its unit */
  readonly #prefix: number;
  #hash: StickyHash;

  constructor(options: StrategyOptions) {
    const { names, weights } = validateVariants(options.variants);
    this.#names = names;
    this.#prefix = fnv1a32Update(FNV1A32_OFFSET, `${options.salt}:`);
    this.#hash = options.hash ?? "fnv1a32";
    this.#configFile = weights;
    const edited = configWeightsEdited(names, weights, options.restore, options.onWarning);
    const restored = restoreState(names, weights, options.restore, edited);
    this.#weights = restored.weights;
    this.#table = restored.table;
  }

  assign(unit: string): string {
    return this.#table.lookup(bucketOf(fnv1a32Update(this.#prefix, unit), this.#hash));
  }

  /** The bucket of a unit, in [0,1) (for tests and for explaining an assignment). */
  bucket(unit: string): number {
    return bucketOf(fnv1a32Update(this.#prefix, unit), this.#hash);
  }

  weights(): Record<string, number> {
    return toRecord(this.#names, this.#weights);
  }

  setWeights(weights: Record<string, number>): void {
    this.#weights = mergeWeights(this.#names, this.#weights, weights);
    this.#table.rebalance(shareMap(this.#names, this.#weights));
  }

  ranges(): Range[] {
    return this.#table.ranges();
  }

  snapshot(): StrategyState {
    return { weights: this.weights(), ranges: this.ranges(), configFileWeights: toRecord(this.#names, this.#configFile) };
  }
}

/** Shares by name in config order. */
export function shareMap(names: readonly string[], weights: readonly number[]): Map<string, number> {
  const shares = toShares(weights);
  return new Map(names.map((n, i) => [n, shares[i]]));
}

/**
 * Weights and range table from a snapshot. The snapshot's weights win over the configured ones (they were set at
 * run time) unless the config's weights were edited since (`edited`, see configWeightsEdited), variants the config
 * no longer has are dropped (their ranges move to the others), and variants new in the config keep their
 * configured weight; the persisted table is then rebalanced to the weights, as a weight change at run time would
 * be: a no-op when nothing changed, so a restart gives exactly the assignment from before, and after a config edit
 * only the units the change requires move.
 */
export function restoreState(
  names: readonly string[],
  configured: readonly number[],
  restore: StrategyState | undefined,
  edited = false,
  /** the config file's weights, whose layout is every point's home (see RangeTable) */
  home: readonly number[] = configured,
): { weights: number[]; table: RangeTable } {
  const withHome = (table: RangeTable) => {
    table.setHome(names, toShares(home));
    return table;
  };
  if (!restore) return { weights: [...configured], table: withHome(RangeTable.initial(names, toShares(configured))) };
  const weights = restoreWeights(names, configured, restore, edited);
  const shares = shareMap(names, weights);
  if (!restore.ranges) return { weights, table: withHome(RangeTable.initial(names, toShares(weights))) };
  const table = withHome(RangeTable.fromRanges(restore.ranges));
  table.rebalance(shares);
  return { weights, table };
}
