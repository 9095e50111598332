import { InvalidArgumentError } from "../errors.ts";
import { BanditStrategy } from "./bandit/index.ts";
import { RandomStrategy } from "./random/index.ts";
import { RoundRobinStrategy } from "./round-robin/index.ts";
import { StickyStrategy } from "./sticky/index.ts";
import type { Strategy, StrategyKind, StrategyOptions } from "./types.ts";

export type { ArmStats, Range, Strategy, StrategyKind, StrategyOptions, StrategyState } from "./types.ts";
export { fnv1a32, fnv1a32Update, stickyBucket } from "./fnv.ts";
export { BanditStrategy, DEFAULT_MAX_SEEN_UNITS } from "./bandit/index.ts";
export { RandomStrategy } from "./random/index.ts";
export { RoundRobinStrategy } from "./round-robin/index.ts";
export { RangeTable, StickyStrategy } from "./sticky/index.ts";

/** The one switch from a configured kind to its implementation. */
export function createStrategy(kind: StrategyKind, options: StrategyOptions): Strategy {
  switch (kind) {
    case "random":
      return new RandomStrategy(options);
    case "sticky":
      return new StickyStrategy(options);
    case "round-robin":
      return new RoundRobinStrategy(options);
    case "bandit":
      return new BanditStrategy(options);
    default:
      throw new InvalidArgumentError(`unknown strategy kind "${String(kind)}" (expected random, sticky, round-robin or bandit)`);
  }
}
