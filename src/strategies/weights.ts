import { InvalidArgumentError, shown } from "../errors.ts";

/**
 * Weight bookkeeping shared by every strategy: validation with clear messages, merging a partial update, and
 * conversion between config-ordered arrays and records.
 */

/** Validate the configured variants; returns names and weights in config order. */
export function validateVariants(variants: { name: string; weight: number }[]): { names: string[]; weights: number[] } {
  if (!Array.isArray(variants) || variants.length === 0) {
    throw new InvalidArgumentError("a strategy needs at least one variant");
  }
  const names: string[] = [];
  const weights: number[] = [];
  const seen = new Set<string>();
  for (const v of variants) {
    if (typeof v?.name !== "string" || v.name === "") throw new InvalidArgumentError("every variant needs a non-empty name");
    if (seen.has(v.name)) throw new InvalidArgumentError(`variant "${v.name}" is listed twice`);
    seen.add(v.name);
    checkWeight(v.name, v.weight);
    names.push(v.name);
    weights.push(v.weight);
  }
  checkSum(weights);
  return { names, weights };
}

/**
 * `current` with `update` applied (variants left out keep their weight). Throws InvalidArgumentError for an
 * unknown variant, a weight that is not a finite number >= 0, or a result that does not sum to a positive number.
 */
export function mergeWeights(names: readonly string[], current: readonly number[], update: Record<string, number>): number[] {
  if (update === null || typeof update !== "object" || Array.isArray(update)) {
    throw new InvalidArgumentError("weights must be an object of variant name to number");
  }
  const next = [...current];
  for (const [name, weight] of Object.entries(update)) {
    const i = names.indexOf(name);
    if (i < 0) throw new InvalidArgumentError(`unknown variant ${shown(name)} in weights (known: ${names.join(", ")})`);
    checkWeight(name, weight);
    next[i] = weight;
  }
  checkSum(next);
  return next;
}

/** Weights as a record in config order. */
export function toRecord(names: readonly string[], weights: ArrayLike<number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (let i = 0; i < names.length; i++) out[names[i]] = weights[i];
  return out;
}

/** Weights normalised to shares that sum to 1. */
export function toShares(weights: readonly number[]): number[] {
  const total = weights.reduce((a, b) => a + b, 0);
  return weights.map((w) => w / total);
}

function checkWeight(name: string, weight: unknown): asserts weight is number {
  if (typeof weight !== "number" || !Number.isFinite(weight) || weight < 0) {
    throw new InvalidArgumentError(
      `weight of variant "${name}" must be a finite number >= 0, got ${shown(weight)}`,
    );
  }
}

function checkSum(weights: readonly number[]): void {
  const total = weights.reduce((a, b) => a + b, 0);
  if (!(total > 0) || !Number.isFinite(total)) {
    throw new InvalidArgumentError(`weights must sum to a positive number, got ${total}`);
  }
}
