/**
 * Multiple-comparison adjustment of p-values.
 * - holm: Holm (1979) step-down, controls the family-wise error rate under any dependence:
 *   p̃_(i) = max_{j ≤ i} min(1, (m - j + 1)·p_(j)).
 * - bh: Benjamini & Hochberg (1995) step-up, controls the false discovery rate (independent or PRDS tests):
 *   p̃_(i) = min_{j ≥ i} min(1, m·p_(j)/j).
 * - none: unchanged.
 * Same results as R's `p.adjust` and statsmodels' `multipletests`. Entries that are null or not finite are
 * returned as null and do not count towards m.
 */
export function adjustPValues(pValues: readonly number[], method: "holm" | "bh" | "none"): number[];
export function adjustPValues(pValues: readonly (number | null)[], method: "holm" | "bh" | "none"): (number | null)[];
export function adjustPValues(pValues: readonly (number | null)[], method: "holm" | "bh" | "none"): (number | null)[] {
  const out: (number | null)[] = pValues.map(() => null);
  const valid = pValues
    .map((p, index) => ({ p, index }))
    .filter((e): e is { p: number; index: number } => e.p !== null && Number.isFinite(e.p))
    .map((e) => ({ p: Math.min(1, Math.max(0, e.p)), index: e.index }));
  const m = valid.length;
  if (method === "none") {
    for (const e of valid) out[e.index] = e.p;
    return out;
  }
  valid.sort((a, b) => a.p - b.p || a.index - b.index);
  if (method === "holm") {
    let running = 0;
    valid.forEach((e, j) => {
      running = Math.max(running, Math.min(1, (m - j) * e.p));
      out[e.index] = running;
    });
  } else {
    let running = 1;
    for (let j = m - 1; j >= 0; j--) {
      const e = valid[j]!;
      running = Math.min(running, Math.min(1, (m * e.p) / (j + 1)));
      out[e.index] = running;
    }
  }
  return out;
}
