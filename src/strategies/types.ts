import type { RandomSource } from "../clock.ts";

export type StrategyKind = "random" | "sticky" | "round-robin" | "bandit";

/** A contiguous part of [0,1) owned by a variant (sticky/bandit). */
export interface Range {
  variant: string;
  from: number;
  to: number;
}

/** Per-variant conversion counts fed to adaptive strategies (bandit). */
export interface ArmStats {
  variant: string;
  units: number;
  conversions: number;
}

/** What a strategy persists so that assignment survives a restart (sticky ranges). */
export interface StrategyState {
  weights: Record<string, number>;
  ranges?: Range[];
  /** bandit: the configured weights (config or setWeights), which decide the active arms and rule during burn-in */
  configuredWeights?: Record<string, number>;
  /**
   * The weights the config file gave when this was saved. On restore, a config whose weights differ from these was
   * edited, and its weights replace the saved ones; when they are the same, the weights set at run time are kept.
   * Absent in snapshots from before it was saved: treated as unchanged.
   */
  configFileWeights?: Record<string, number>;
  /**
   * The salt and hash function the units were hashed with when this was saved (kept by the gateway, for every
   * strategy): a run with others puts every unit in a new bucket, so it is warned about. Absent in older snapshots.
   */
  hashing?: { salt: string; hash: string };
}

/**
 * Picks a variant for a unit. Implementations: random, sticky, round-robin, bandit; all pass
 * strategies/conformance.test.ts.
 */
export interface Strategy {
  readonly kind: StrategyKind;
  /**
   * The variant for this request. `unit` is always present: when the request names none, the proxy makes one up
   * (and sets it in a cookie), and says so with `madeUp`.
   */
  assign(unit: string, madeUp?: boolean): string;
  /** Current weights by variant name (config order). */
  weights(): Record<string, number>;
  /**
   * Change weights. Throws InvalidArgumentError naming the problem for an unknown variant, a negative or
   * non-finite weight, or weights that do not sum to a positive number. Variants left out keep their weight.
   */
  setWeights(weights: Record<string, number>): void;
  /** The sticky range table (sticky, bandit), else undefined. */
  ranges(): Range[] | undefined;
  /** State to persist; `restore` on start gives the same assignment as before the restart. */
  snapshot(): StrategyState;
  /** Conversion counts so far (bandit recomputes weights from them; others ignore it). */
  observe?(stats: ArmStats[]): void;
}

export interface StrategyOptions {
  /** variants in config order with their weights; the first is the control */
  variants: { name: string; weight: number }[];
  salt: string;
  /** sticky/bandit: plain FNV-1a as the spec says (default), or FNV-1a + fmix32 for sequential ids */
  hash?: "fnv1a32" | "fnv1a32-fmix";
  random?: RandomSource;
  /** a snapshot from a previous run */
  restore?: StrategyState;
  /** told when restoring replaces the saved weights by edited config weights (default: a Node process warning) */
  onWarning?: (message: string) => void;
  /** bandit */
  floor?: number;
  burnInUnits?: number;
  /** bandit: Monte Carlo draws per weight update (default 10,000) */
  draws?: number;
  /** bandit: units assigned before (a previous run's, from the store), oldest first: they keep their variant */
  seenUnits?: Iterable<readonly [unit: string, variant: string]>;
  /** bandit: how many units' variants are remembered (default 1,000,000); the oldest are forgotten first */
  maxSeenUnits?: number;
}
