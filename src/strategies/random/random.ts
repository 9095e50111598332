import type { RandomSource } from "../../clock.ts";
import type { Strategy, StrategyOptions, StrategyState } from "../types.ts";
import { mergeWeights, toRecord, validateVariants } from "../weights.ts";
import { configWeightsEdited, restoreWeights } from "../restore.ts";

/** Each request independently by weight: variant i when `random() * total` falls in its cumulative slot. */
export class RandomStrategy implements Strategy {
  readonly kind = "random" as const;
  readonly #names: string[];
  readonly #random: RandomSource;
  #weights: number[];
  /** the config's weights, saved in the snapshot so that a restart can tell a config edit from run-time changes */
  readonly #configFile: number[];
  /** cumulative weights of the variants with weight > 0, and their names */
  #cumulative = new Float64Array(0);
  #eligible: string[] = [];

  constructor(options: StrategyOptions) {
    const { names, weights } = validateVariants(options.variants);
    this.#names = names;
    this.#random = options.random ?? Math.random;
    this.#configFile = weights;
    this.#weights = restoreWeights(names, weights, options.restore, configWeightsEdited(names, weights, options.restore, options.onWarning));
    this.#index();
  }

  assign(_unit: string): string {
    const cumulative = this.#cumulative;
    const r = this.#random() * cumulative[cumulative.length - 1];
    for (let i = 0; i < cumulative.length; i++) if (r < cumulative[i]) return this.#eligible[i];
    // r * total can round up to total itself
    return this.#eligible[this.#eligible.length - 1];
  }

  weights(): Record<string, number> {
    return toRecord(this.#names, this.#weights);
  }

  setWeights(weights: Record<string, number>): void {
    this.#weights = mergeWeights(this.#names, this.#weights, weights);
    this.#index();
  }

  ranges(): undefined {
    return undefined;
  }

  snapshot(): StrategyState {
    return { weights: this.weights(), configFileWeights: toRecord(this.#names, this.#configFile) };
  }

  #index(): void {
    const cumulative: number[] = [];
    this.#eligible = [];
    let total = 0;
    for (let i = 0; i < this.#names.length; i++) {
      if (!(this.#weights[i] > 0)) continue;
      total += this.#weights[i];
      cumulative.push(total);
      this.#eligible.push(this.#names[i]);
    }
    this.#cumulative = Float64Array.from(cumulative);
  }
}
