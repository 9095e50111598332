import type { Strategy, StrategyOptions, StrategyState } from "../types.ts";
import { mergeWeights, toRecord, validateVariants } from "../weights.ts";
import { configWeightsEdited, restoreWeights } from "../restore.ts";

/**
 * Smooth weighted round robin, as nginx does it (ngx_http_upstream_get_peer in
 * src/http/ngx_http_upstream_round_robin.c): on every pick each variant's `current` grows by its weight, the
 * variant with the largest `current` wins (the first in config order on ties) and gives back the total. Over
 * any window of `total` picks (integer weights) each variant gets exactly its weight, spread out rather than
 * in bursts: weights 5:1:1 give a a b a c a a.
 *
 * The sequence ignores the unit, and restarts from the beginning after setWeights or a restart (as nginx after
 * a reload), so a restored strategy picks the same sequence as a fresh one with the same weights.
 */
export class RoundRobinStrategy implements Strategy {
  readonly kind = "round-robin" as const;
  readonly #names: string[];
  #weights: number[];
  /** the config's weights, saved in the snapshot so that a restart can tell a config edit from run-time changes */
  readonly #configFile: number[];
  #current: Float64Array;

  constructor(options: StrategyOptions) {
    const { names, weights } = validateVariants(options.variants);
    this.#names = names;
    this.#configFile = weights;
    this.#weights = restoreWeights(names, weights, options.restore, configWeightsEdited(names, weights, options.restore, options.onWarning));
    this.#current = new Float64Array(names.length);
  }

  assign(_unit: string): string {
    const weights = this.#weights;
    const current = this.#current;
    let total = 0;
    let best = -1;
    for (let i = 0; i < weights.length; i++) {
      // a weight-0 variant is left out entirely, so it can never win even when every other current is negative
      if (!(weights[i] > 0)) continue;
      current[i] += weights[i];
      total += weights[i];
      if (best < 0 || current[i] > current[best]) best = i;
    }
    current[best] -= total;
    return this.#names[best];
  }

  weights(): Record<string, number> {
    return toRecord(this.#names, this.#weights);
  }

  setWeights(weights: Record<string, number>): void {
    this.#weights = mergeWeights(this.#names, this.#weights, weights);
    this.#current.fill(0);
  }

  ranges(): undefined {
    return undefined;
  }

  snapshot(): StrategyState {
    return { weights: this.weights(), configFileWeights: toRecord(this.#names, this.#configFile) };
  }
}
