import type { Config } from "../config/index.ts";
import type { Store } from "../store/types.ts";

const SEQUENTIAL_STATE_KEY = "sequential";

/**
 * The report of the spec: sufficient statistics from the store, the verdict from the stats engine. The running
 * minimum of the sequential p-values is kept in the store, so that the always-valid p-value survives restarts
 * and `abgate report` run from the command line sees the same history as GET /v1/report.
 */
export async function experimentReport(config: Config, store: Store, weights: Record<string, number>, nowMs: number): Promise<unknown> {
  const variants = config.variants.map((v) => v.name);
  const aggregates = await store.aggregate(config.experiment, variants, config.metrics);
  const saved = await store.getState(config.experiment, SEQUENTIAL_STATE_KEY);
  let previousSequential: Record<string, number> = {};
  try {
    if (saved) previousSequential = JSON.parse(saved) as Record<string, number>;
  } catch {
    previousSequential = {};
  }
  // Loaded on first use: the proxy starts without the statistics code.
  const { buildReport } = await import("../stats/index.ts");
  const { report, sequentialState } = buildReport({
    experiment: config.experiment,
    variants: variants.map((name) => ({ name, weight: weights[name] ?? 0 })),
    aggregates,
    metrics: config.metrics,
    analysis: config.analysis,
    now: nowMs,
    previousSequential,
  });
  await store.setState(config.experiment, SEQUENTIAL_STATE_KEY, JSON.stringify(sequentialState));
  return report;
}
