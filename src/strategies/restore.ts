import { InvalidArgumentError } from "../errors.ts";
import type { StrategyState } from "./types.ts";
import { mergeWeights } from "./weights.ts";

/**
 * Whether the config's weights were edited since the run that saved `restore`: some variant that both the config
 * and the snapshot's `configFileWeights` name has a different weight now. Variants new in the config or gone from
 * it do not count (a new one starts at its configured weight anyway, a gone one is dropped). A snapshot from
 * before `configFileWeights` was saved counts as unchanged, so its run-time weights are kept as they always were.
 * When edited, `warn` is told what changed and what is given up.
 */
export function configWeightsEdited(
  names: readonly string[],
  configured: readonly number[],
  restore: StrategyState | undefined,
  warn: (message: string) => void = defaultWarn,
): boolean {
  if (!restore) return false;
  checkSnapshot(restore);
  const saved = restore.configFileWeights;
  if (saved === undefined || saved === null) return false;
  if (typeof saved !== "object" || Array.isArray(saved)) throw new InvalidArgumentError("a strategy snapshot's configFileWeights must be an object of variant name to number");
  const changes = names.flatMap((name, i) => (Object.hasOwn(saved, name) && saved[name] !== configured[i] ? [`${name} ${saved[name]} -> ${configured[i]}`] : []));
  if (changes.length === 0) return false;
  const runTime = Object.entries(restore.weights)
    .map(([name, w]) => `${name}=${w}`)
    .join(", ");
  warn(
    `the config's weights changed since the last run (${changes.join(", ")}): they replace the weights saved in the store (${runTime})` +
      (restore.ranges ? "; the saved range table is rebalanced to them, moving only the units the change requires" : ""),
  );
  return true;
}

/**
 * The weights to start with. Without a snapshot, or when the config's weights were edited since the snapshot's run
 * (`edited`, from configWeightsEdited), the configured ones; else the snapshot's (set at run time, PUT /v1/weights)
 * over the configured ones, ignoring variants the config no longer has.
 */
export function restoreWeights(names: readonly string[], configured: readonly number[], restore: StrategyState | undefined, edited = false): number[] {
  if (!restore || edited) return [...configured];
  checkSnapshot(restore);
  const known = Object.fromEntries(Object.entries(restore.weights).filter(([name]) => names.includes(name)));
  return mergeWeights(names, configured, known);
}

function checkSnapshot(restore: StrategyState): void {
  if (typeof restore !== "object" || restore === null || typeof restore.weights !== "object" || restore.weights === null) {
    throw new InvalidArgumentError("a strategy snapshot needs a weights object");
  }
}

/** Without a logger from the caller, a Node process warning (printed on stderr), so the change is never silent. */
function defaultWarn(message: string): void {
  process.emitWarning(message, { code: "ABGATE_CONFIG_WEIGHTS_CHANGED" });
}
