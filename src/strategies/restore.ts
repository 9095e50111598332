import { InvalidArgumentError } from "../errors.ts";
import type { StrategyState } from "./types.ts";
import { mergeWeights } from "./weights.ts";

/**
 * The weights to start with: the snapshot's (set at run time) over the configured ones, ignoring variants the
 * config no longer has.
 */
export function restoreWeights(names: readonly string[], configured: readonly number[], restore: StrategyState | undefined): number[] {
  if (!restore) return [...configured];
  if (typeof restore !== "object" || restore === null || typeof restore.weights !== "object" || restore.weights === null) {
    throw new InvalidArgumentError("a strategy snapshot needs a weights object");
  }
  const known = Object.fromEntries(Object.entries(restore.weights).filter(([name]) => names.includes(name)));
  return mergeWeights(names, configured, known);
}
