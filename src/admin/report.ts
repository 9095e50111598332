import type { Config } from "../config/index.ts";
import type { ReportInput } from "../stats/report.ts";
import { MAX_PERIOD_STARTS } from "../store/aggregate.ts";
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
  /** the last time (ms since epoch, to a minute) a report found these weights still in force */
  confirmedAt?: number;
  /** the periods before, oldest first, each with the weights in force from `since` to `until` (at most MAX_PERIODS) */
  earlier?: WeightPeriod[];
}

/** Weights known to have been in force from `since` (null: the start) to `until`, both ms since epoch. */
interface WeightPeriod {
  shares: Record<string, number>;
  since: number | null;
  until: number;
}

/** Earlier weight periods kept for the SRM check; older ones are no longer tested. */
const MAX_PERIODS = 30;

/** The bandit's weights over time (see `recordBanditWeights`). */
const BANDIT_PERIODS_STATE_KEY = "bandit-periods";
/**
 * A bandit period ends when some variant's share has moved by more than this fraction of the larger of its share at
 * the period's start and now. Within a period the allocation then stays within −20%/+25% of where it began, which bounds
 * what is left of the bias that pooling would have (Simpson's paradox) to a fraction of it, until more than 64
 * periods make neighbours merge; a bandit that goes from an even split to a 1% floor makes about 18 (ln 50 / ln 1.25).
 */
const BANDIT_PERIOD_SHIFT = 0.2;

interface BanditPeriod {
  /** ms since epoch: the first update that set weights like these */
  since: number;
  shares: Record<string, number>;
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
  const saved = await store.getState(config.experiment, SEQUENTIAL_STATE_KEY);
  let previousSequential: Record<string, number> = {};
  try {
    if (saved) previousSequential = JSON.parse(saved) as Record<string, number>;
  } catch {
    previousSequential = {};
  }
  const current = Object.fromEntries(variants.map((name) => [name, weights[name] ?? 0]));
  const bandit = config.strategy.kind === "bandit";
  const window = bandit ? undefined : await weightsInForce(config, store, current, nowMs, save, record);
  // Comparisons across weight changes are post-stratified by period of first exposure (stats/stratified.ts); under the
  // bandit the periods are those its updates recorded, and the SRM check stays skipped (its weights move within them).
  const periodStarts = bandit ? banditPeriodStarts(await readBanditPeriods(store, config)) : (window?.periodStarts ?? []);
  const aggregates = await store.aggregate(config.experiment, variants, config.metrics, periodStarts.length > 0 ? { periodStarts } : {});
  const srmWindow = window ? { since: window.since, units: window.units, earlier: window.earlier } : undefined;
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
  if (shares === null) return;
  const seen = await readWeightsSeen(store, config);
  // The same shares again (a PUT of the weights in force) change nothing: their period goes on. Starting a new one
  // hid a mismatch found in the units before it.
  if (seen !== null && sameShares(seen.shares, shares)) return;
  // Without a record, the configured weights are the only history there is (as for the first report): a change to
  // them is no change either.
  const before = seen ?? { shares: sharesOf(configuredWeights(config)), since: null };
  if (seen === null && before.shares !== null && sameShares(before.shares, shares)) return;
  const earlier = closePeriod(seen?.earlier ?? [], before.shares, before.since, nowMs);
  await saveWeightsSeen(store, config, { shares, since: nowMs, earlier });
}

/**
 * Under the bandit, notes the weights an update (or a PUT) set at `nowMs`, so that the report can compare the arms
 * within periods of like weights instead of pooled. A bandit moves its weights towards the arm that looks better, so
 * later units, which have had less time to convert and come from a later population, go more to that arm: pooled, its
 * rate mixes periods in other proportions than the other arm's (Simpson's paradox). Optimizely's Stats Accelerator
 * compares within "epochs" of constant allocation for this reason. A new period starts when the shares have moved by
 * more than BANDIT_PERIOD_SHIFT since the current one began; at most MAX_PERIOD_STARTS are kept.
 */
export async function recordBanditWeights(store: Store, config: Config, weights: Record<string, number>, nowMs: number): Promise<void> {
  const shares = sharesOf(weights);
  if (shares === null) return;
  const periods = await readBanditPeriods(store, config);
  const current = periods[periods.length - 1];
  if (current !== undefined && (nowMs <= current.since || shift(current.shares, shares) <= BANDIT_PERIOD_SHIFT)) return;
  const next = [...periods, { since: nowMs, shares }];
  // Past the limit, the two neighbours whose weights differ least become one (the earlier's start and weights): a
  // bandit whose weights wander (identical arms) would otherwise keep only its last few minutes apart, and pool
  // everything before, where its largest moves may be.
  while (next.length > MAX_PERIOD_STARTS) {
    let closest = 1;
    for (let i = 2; i < next.length; i++) if (shift(next[i - 1]!.shares, next[i]!.shares) < shift(next[closest - 1]!.shares, next[closest]!.shares)) closest = i;
    next.splice(closest, 1);
  }
  await store.setState(config.experiment, BANDIT_PERIODS_STATE_KEY, JSON.stringify(next));
}

/** The largest move of one variant's share between `a` and `b`, as a fraction of the larger of the two shares. */
function shift(a: Record<string, number>, b: Record<string, number>): number {
  let most = 0;
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
    const x = a[k] ?? 0;
    const y = b[k] ?? 0;
    if (x !== y) most = Math.max(most, Math.abs(x - y) / Math.max(x, y));
  }
  return most;
}

async function readBanditPeriods(store: Store, config: Config): Promise<BanditPeriod[]> {
  const raw = await store.getState(config.experiment, BANDIT_PERIODS_STATE_KEY);
  if (!raw) return [];
  try {
    const parsed = JSON.parse(raw) as unknown;
    if (!Array.isArray(parsed)) return [];
    return parsed.filter(
      (p): p is BanditPeriod => typeof p === "object" && p !== null && Number.isSafeInteger(p.since) && typeof p.shares === "object" && p.shares !== null,
    );
  } catch {
    return [];
  }
}

/**
 * The times that cut a bandit's run into periods: every period's start, the first too, so that units from before
 * the bandit ran (a sticky ramp, before a switch of strategy) are a period of their own (none: it is left out).
 */
function banditPeriodStarts(periods: readonly BanditPeriod[]): number[] {
  return [...new Set(periods.map((p) => p.since))].sort((a, b) => a - b);
}

/** `earlier` with the period of `shares` from `since` to `until` added last, when it is one (at most MAX_PERIODS). */
function closePeriod(earlier: WeightPeriod[], shares: Record<string, number> | null, since: number | null, until: number | undefined): WeightPeriod[] {
  if (shares === null || until === undefined || (since !== null && until <= since)) return earlier;
  return [...earlier, { shares, since, until }].slice(-MAX_PERIODS);
}

function configuredWeights(config: Config): Record<string, number> {
  return Object.fromEntries(config.variants.map((v) => [v.name, v.weight]));
}

async function readWeightsSeen(store: Store, config: Config): Promise<WeightsSeen | null> {
  try {
    const raw = await store.getState(config.experiment, REPORT_WEIGHTS_STATE_KEY);
    if (!raw) return null;
    const parsed = JSON.parse(raw) as Partial<WeightsSeen>;
    if (!parsed || typeof parsed.shares !== "object" || parsed.shares === null || !(parsed.since === null || typeof parsed.since === "number")) return null;
    const earlier = Array.isArray(parsed.earlier)
      ? parsed.earlier.filter(
          (p): p is WeightPeriod =>
            typeof p === "object" && p !== null && typeof p.shares === "object" && p.shares !== null && (p.since === null || typeof p.since === "number") && typeof p.until === "number",
        )
      : [];
    return {
      shares: parsed.shares,
      since: parsed.since,
      ...(typeof parsed.confirmedAt === "number" ? { confirmedAt: parsed.confirmedAt } : {}),
      earlier,
    };
  } catch {
    return null;
  }
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
 * weights are known to have been in force, and those of each earlier period under the weights then in force; or
 * undefined to test the cumulative units (no change seen).
 *
 * One state key holds the weights last known, the time from which they are known to hold, and the periods before:
 * the gateway closes a period when it applies a change (recordWeightChange), and this closes one when it finds
 * weights that differ from the ones recorded (or, at the first report, from the configured ones), which changed at
 * some unknown time before now (a config edit between runs, or a store that missed the gateway's note). Such a
 * period ends at the last report that found its weights still in force (`confirmedAt`, noted at most once a
 * minute); the time between is left out. Only units first exposed in whole minutes within a period (the store counts
 * new units per minute) are known to have been assigned under its weights; each period's units are tested against
 * its own weights, so a ramp-up is not a mismatch, and a mismatch before a change is not hidden by it. Under sticky
 * assignment new units hash into the current ranges, so their split follows the current weights whatever came before.
 * Limit: a change undone before a report sees it (A → B → A), made outside a gateway, is not noticed.
 */
async function weightsInForce(
  config: Config,
  store: Store,
  weights: Record<string, number>,
  nowMs: number,
  save: boolean,
  record: (write: () => Promise<void>) => Promise<void>,
): Promise<SrmWindow | undefined> {
  const shares = sharesOf(weights);
  if (shares === null) return undefined;
  const seen = await readWeightsSeen(store, config);
  const nowMinute = Math.floor(nowMs / MINUTE_MS) * MINUTE_MS;
  let next: WeightsSeen;
  // (only a confirmation once a minute when the weights are the same; every other case is a change to save)
  let dirty = true;
  if (seen !== null && sameShares(seen.shares, shares)) {
    next = { ...seen, confirmedAt: Math.max(seen.confirmedAt ?? nowMinute, nowMinute) };
    dirty = seen.confirmedAt !== next.confirmedAt;
  } else if (seen === null) {
    const configured = sharesOf(configuredWeights(config));
    // First report: the configured weights are the only history there is.
    next = configured !== null && sameShares(configured, shares) ? { shares, since: null, confirmedAt: nowMinute, earlier: [] } : { shares, since: nowMs, confirmedAt: nowMinute, earlier: [] };
  } else {
    next = { shares, since: nowMs, confirmedAt: nowMinute, earlier: closePeriod(seen.earlier ?? [], seen.shares, seen.since, seen.confirmedAt) };
  }
  if (save && dirty) await record(() => saveWeightsSeen(store, config, next));
  const earlier = next.earlier ?? [];
  if (next.since === null && earlier.length === 0) return undefined;
  // The times that cut the experiment into periods, to the millisecond: each period's start and end (a change a
  // report found leaves a period between, of unknown weights, of its own).
  const cuts = [...earlier.flatMap((p) => [p.since, p.until]), next.since].filter((t): t is number => t !== null && Number.isSafeInteger(t));
  const periodStarts = [...new Set(cuts)].sort((a, b) => a - b).slice(-MAX_PERIOD_STARTS);
  // Whole minutes within each period: every unit counted there was first exposed while its weights were in force.
  const from = next.since === null ? null : Math.ceil(next.since / MINUTE_MS) * MINUTE_MS;
  const periods = earlier.map((p) => ({ from: p.since === null ? -Infinity : Math.ceil(p.since / MINUTE_MS) * MINUTE_MS, until: Math.floor(p.until / MINUTE_MS) * MINUTE_MS, p }));
  const first = Math.min(from ?? -Infinity, ...periods.map((p) => p.from));
  const buckets = await store.minutes(config.experiment, [], Number.isFinite(first) ? first : 0);
  const names = config.variants.map((v) => v.name);
  const unitsIn = (lo: number, hi: number) => {
    const units: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
    for (const b of buckets) if (b.minute >= lo && b.minute < hi && b.variant in units) units[b.variant]! += b.newUnits;
    return units;
  };
  return {
    periodStarts,
    since: from ?? Number.NEGATIVE_INFINITY,
    units: unitsIn(from ?? -Infinity, Infinity),
    earlier: periods.filter((q) => q.until > q.from).map((q) => ({ since: q.p.since === null ? null : q.from, until: q.until, weights: q.p.shares, units: unitsIn(q.from, q.until) })),
  };
}

/**
 * What the SRM check tests: the units of the current period, from `since` (-Infinity: the start), and of earlier
 * ones; and the times that start the periods, for the comparisons (post-stratified over them).
 */
type SrmWindow = NonNullable<ReportInput["srmWindow"]> & { periodStarts: number[] };
