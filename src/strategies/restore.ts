import { InvalidArgumentError } from "../errors.ts";
import type { StrategyState } from "./types.ts";
import { mergeWeights } from "./weights.ts";

/**
 * Whether the config's weights were edited since the run that saved `restore`: some variant that both the config
 * and the snapshot's `configFileWeights` name has a different weight now, or the config names other variants (one
 * added, renamed or removed). A changed set of variants counts because the weights set at run time cannot be
 * mixed with it: a promotion's 0 for the control beside a renamed treatment's configured 50 sent all traffic to a
 * variant nobody promoted, and a rollback's control=100 beside a new variant's 50 sent it a third. A snapshot from
 * before `configFileWeights` was saved counts as unchanged, so its run-time weights are kept as they always were.
 * When edited, `warn` is told what changed and what is given up. The bandit passes `newVariantsCount: false`: its
 * weights in force come from the data (the next update recomputes them), and it fits a new arm in by its own rule;
 * a removed one counts for it too (its saved weights of the others could all be 0 after a promotion of the removed
 * one, and the gateway then could not start).
 */
export function configWeightsEdited(
  names: readonly string[],
  configured: readonly number[],
  restore: StrategyState | undefined,
  warn: (message: string) => void = defaultWarn,
  newVariantsCount = true,
): boolean {
  if (!restore) return false;
  checkSnapshot(restore);
  const saved = restore.configFileWeights;
  if (saved === undefined || saved === null) return false;
  if (typeof saved !== "object" || Array.isArray(saved)) throw new InvalidArgumentError("a strategy snapshot's configFileWeights must be an object of variant name to number");
  const changes = [
    ...names.flatMap((name, i) =>
      Object.hasOwn(saved, name) ? (saved[name] !== configured[i] ? [`${name} ${saved[name]} -> ${configured[i]}`] : []) : newVariantsCount ? [`${name} new at ${configured[i]}`] : [],
    ),
    ...Object.keys(saved).filter((name) => !names.includes(name)).map((name) => `${name} gone`),
  ];
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
