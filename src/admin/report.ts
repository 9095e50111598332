import type { Config } from "../config/index.ts";
import type { Store } from "../store/types.ts";

const SEQUENTIAL_STATE_KEY = "sequential";
/** The weights the report last saw and since when they are known to be in force (see `weightsInForce`). */
const REPORT_WEIGHTS_STATE_KEY = "report-weights";
const MINUTE_MS = 60_000;

interface WeightsSeen {
  /** shares (weights divided by their sum), by variant */
  shares: Record<string, number>;
  /** ms since epoch from which these weights are known to be in force; null: since the start of the experiment */
  since: number | null;
}

/**
 * The report of the spec: sufficient statistics from the store, the verdict from the stats engine. The running
 * minimum of the sequential p-values is kept in the store, so that the always-valid p-value survives restarts
 * and `abgate report` run from the command line sees the same history as GET /v1/report.
 *
 * `save: false` (a store opened read-only: `abgate report`) reads that history and the weights last seen but
 * records neither: the report is the same, and later reports just do not see its minima (GET /v1/report and the
 * dashboard of a running gateway, which see the same data, record theirs), nor when it first saw weights that
 * differ from those recorded (each such report then starts the SRM window at its own time).
 */
export async function experimentReport(
  config: Config,
  store: Store,
  weights: Record<string, number>,
  nowMs: number,
  { save = true, onSaveError }: { save?: boolean; onSaveError?: (err: unknown) => void } = {},
): Promise<unknown> {
  // What the report records is for later reports; a store that cannot be written just now (another process holds
  // its write lock) should not cost this one its answer, when the caller says how to note the failure.
  const record = async (write: () => Promise<void>) => {
    if (!onSaveError) return write();
    try {
      await write();
    } catch (err) {
      onSaveError(err);
    }
  };
  const variants = config.variants.map((v) => v.name);
  const aggregates = await store.aggregate(config.experiment, variants, config.metrics);
  const saved = await store.getState(config.experiment, SEQUENTIAL_STATE_KEY);
  let previousSequential: Record<string, number> = {};
  try {
    if (saved) previousSequential = JSON.parse(saved) as Record<string, number>;
  } catch {
    previousSequential = {};
  }
  const current = Object.fromEntries(variants.map((name) => [name, weights[name] ?? 0]));
  const bandit = config.strategy.kind === "bandit";
  const srmWindow = bandit ? undefined : await weightsInForce(config, store, current, nowMs, save, record);
  // Loaded on first use: the proxy starts without the statistics code.
  const { buildReport } = await import("../stats/index.ts");
  const { report, sequentialState } = buildReport({
    experiment: config.experiment,
    variants: variants.map((name) => ({ name, weight: current[name]! })),
    aggregates,
    metrics: config.metrics,
    analysis: config.analysis,
    now: nowMs,
    previousSequential,
    strategy: config.strategy.kind,
    ...(srmWindow ? { srmWindow } : {}),
    ...(config.strategy.kind === "bandit" && config.strategy.metric !== undefined ? { primaryMetric: config.strategy.metric } : {}),
  });
  if (save) await record(() => store.setState(config.experiment, SEQUENTIAL_STATE_KEY, JSON.stringify(sequentialState)));
  return report;
}

/**
 * Notes that `weights` took effect at `nowMs` (PUT /v1/weights, promote, rollback), so that the next report's SRM
 * check counts units from then on, rather than from the first report that sees the new weights.
 */
export async function recordWeightChange(store: Store, config: Config, weights: Record<string, number>, nowMs: number): Promise<void> {
  const shares = sharesOf(weights);
  if (shares !== null) await saveWeightsSeen(store, config, { shares, since: nowMs });
}

function saveWeightsSeen(store: Store, config: Config, seen: WeightsSeen): Promise<void> {
  return store.setState(config.experiment, REPORT_WEIGHTS_STATE_KEY, JSON.stringify(seen));
}

function sharesOf(weights: Record<string, number>): Record<string, number> | null {
  const total = Object.values(weights).reduce((s, w) => s + (Number.isFinite(w) && w > 0 ? w : 0), 0);
  if (!(total > 0)) return null;
  return Object.fromEntries(Object.entries(weights).map(([k, w]) => [k, Number.isFinite(w) && w > 0 ? w / total : 0]));
}

function sameShares(a: Record<string, number>, b: Record<string, number>): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  for (const k of keys) if (Math.abs((a[k] ?? 0) - (b[k] ?? 0)) > 1e-9) return false;
  return true;
}

/**
 * For the SRM check under manual weight changes (ramp-ups): the units whose first exposure came after the current
 * weights are known to have been in force, or undefined to test the cumulative units (no change seen).
 *
 * The store keeps no history of weights, so one state key holds the weights last known and the time from which
 * they are known to hold: the gateway sets it when it applies a change (recordWeightChange), and this sets it when it
 * finds weights that differ from the ones recorded (or, at the first report, from the configured ones), which
 * changed at some unknown time before now (a config edit between runs, or a store that missed the gateway's note).
 * Only units first exposed from the next full minute after that time on (the store counts new units per minute)
 * are known to have been assigned under the current weights; those are what the SRM check then tests. Units from
 * before are left out rather than compared with weights that did not apply to them. Under sticky assignment new
 * units hash into the current ranges, so their split follows the current weights whatever came before.
 * Limits, for changes found this way: one undone before a report sees it (A → B → A) is not noticed, and the
 * window starts at the report, not at the change, so the check stays unjudged until each arm has a few units since.
 */
async function weightsInForce(
  config: Config,
  store: Store,
  weights: Record<string, number>,
  nowMs: number,
  save: boolean,
  record: (write: () => Promise<void>) => Promise<void>,
): Promise<{ since: number; units: Record<string, number> } | undefined> {
  const shares = sharesOf(weights);
  if (shares === null) return undefined;
  let seen: WeightsSeen | null = null;
  try {
    const raw = await store.getState(config.experiment, REPORT_WEIGHTS_STATE_KEY);
    if (raw) {
      const parsed = JSON.parse(raw) as Partial<WeightsSeen>;
      if (parsed && typeof parsed.shares === "object" && parsed.shares !== null && (parsed.since === null || typeof parsed.since === "number")) {
        seen = { shares: parsed.shares, since: parsed.since };
      }
    }
  } catch {
    seen = null;
  }
  let since: number | null;
  if (seen !== null && sameShares(seen.shares, shares)) since = seen.since;
  else if (seen === null) {
    const configured = sharesOf(Object.fromEntries(config.variants.map((v) => [v.name, v.weight])));
    // First report: the configured weights are the only history there is.
    since = configured !== null && sameShares(configured, shares) ? null : nowMs;
  } else since = nowMs;
  if (save && (seen === null || seen.since !== since || !sameShares(seen.shares, shares))) await record(() => saveWeightsSeen(store, config, { shares, since }));
  if (since === null) return undefined;
  // Whole minutes from `since` on: every unit counted there was first exposed after the weights were seen in force.
  const from = Math.ceil(since / MINUTE_MS) * MINUTE_MS;
  const buckets = await store.minutes(config.experiment, [], from);
  const units: Record<string, number> = Object.fromEntries(config.variants.map((v) => [v.name, 0]));
  for (const b of buckets) if (b.minute >= from && b.variant in units) units[b.variant]! += b.newUnits;
  return { since: from, units };
}
