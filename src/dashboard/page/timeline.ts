import { emptyVariant } from "../series.ts";
import type { Report, SeriesBody, VariantSeries } from "./types.ts";

/** Minutes fetched again on every poll (see resumeFromMs). */
const REFETCH_MINUTES = 3;
/** Every so many fetches the last hour is fetched again, and every so many more all the minutes kept. */
const HOUR_EVERY_FETCHES = 12;
const ALL_EVERY_FETCHES = 120;

/**
 * The page's copy of the per-minute series. The first fetch brings up to a week; later fetches ask only from the
 * last minute on (that minute was still filling) and are spliced in, so a week-old experiment costs one large
 * fetch and then a few hundred bytes every few seconds.
 */
export class Timeline {
  stepMs = 60_000;
  minutes: number[] = [];
  variants = new Map<string, VariantSeries>();
  /** the server's clock at the last fetch (its `nowMs`), plus the time since by this page's clock */
  #serverNow: { serverMs: number; pageMs: number } | null = null;
  get serverNowMs(): number | undefined {
    return this.#serverNow === null ? undefined : this.#serverNow.serverMs + (Date.now() - this.#serverNow.pageMs);
  }
  /**
   * Per variant, new units and conversions (by metric) of the minutes dropped off the front, so the cumulative
   * rates go on from where they were rather than restart at the first minute kept.
   */
  #dropped = new Map<string, { newUnits: number; conversions: Record<string, number> }>();
  /** incremental fetches asked for (resumeFromMs) */
  #fetches = 0;

  /** `maxMinutes`: the newest minutes kept (default a week, as much as the first fetch brings) */
  constructor(private readonly maxMinutes = 7 * 24 * 60) {}

  /** Forgets everything: the gateway now serves another store or experiment, whose minutes must not mix with these. */
  reset(): void {
    this.minutes = [];
    this.variants.clear();
    this.#dropped.clear();
    this.#serverNow = null;
  }

  /**
   * Where the next incremental fetch should start (ms since epoch), or null before the first data; called once per
   * fetch. The last REFETCH_MINUTES minutes again, because a minute's rows keep arriving after it ends (the store's batches,
   * requests that finish later); with the series zero-filled up to the server's now, the last minute alone missed
   * them for good.
   */
  resumeFromMs(): number | null {
    if (this.minutes.length === 0) return null;
    // Rows can come much later than that: exposures kept in the batcher through a store outage, events a client
    // posts with an earlier ts. So now and then more is fetched again (every minute the last hour, every ten minutes
    // everything kept, at a 5 s poll), and the page comes to agree with the store, where before it never did.
    this.#fetches++;
    const back = this.#fetches % ALL_EVERY_FETCHES === 0 ? this.minutes.length : this.#fetches % HOUR_EVERY_FETCHES === 0 ? 60 : REFETCH_MINUTES;
    return this.minutes[Math.max(0, this.minutes.length - back)]!;
  }

  /**
   * Splices a fetched body in: minutes at or after its first minute are replaced, a gap before it is zero-filled,
   * and so are the minutes after the last one up to the server's `nowMs` (no bucket since: no traffic since).
   */
  merge(body: SeriesBody): void {
    this.stepMs = body.stepMs;
    // What came before a first fetch's window (an experiment older than it): the cumulative rates start from it, as
    // from minutes dropped off the front. Without it they started at 0 in the window, and conversions there of
    // older units took a rate past 100%.
    if (body.carried !== undefined && this.minutes.length === 0) {
      this.#dropped.clear();
      for (const [name, t] of Object.entries(body.carried)) this.#dropped.set(name, { newUnits: t.newUnits, conversions: { ...t.conversions } });
    }
    if (body.nowMs !== undefined) this.#serverNow = { serverMs: body.nowMs, pageMs: Date.now() };
    for (const v of body.variants) if (!this.variants.has(v.name)) this.variants.set(v.name, emptyVariant(v.name, Object.keys(v.conversions), this.minutes.length));
    this.#splice(body);
    if (body.nowMs !== undefined && this.minutes.length > 0) {
      // An empty minute `now`: the splice zero-fills the gap up to it, as for any fetched minute.
      const nowMinute = Math.floor(body.nowMs / this.stepMs) * this.stepMs;
      if (nowMinute > this.minutes[this.minutes.length - 1]!) this.#splice({ ...body, minutes: [nowMinute], variants: [] });
    }
    this.#trim();
  }

  /** Drops the minutes beyond maxMinutes off the front: a tab left open for weeks stays as light as on its first day. */
  #trim(): void {
    const drop = this.minutes.length - this.maxMinutes;
    if (drop <= 0) return;
    this.minutes.splice(0, drop);
    const sum = (a: number[]) => a.splice(0, drop).reduce((s, x) => s + x, 0);
    for (const [name, v] of this.variants) {
      let carried = this.#dropped.get(name);
      if (carried === undefined) this.#dropped.set(name, (carried = { newUnits: 0, conversions: {} }));
      v.requests.splice(0, drop);
      v.errors.splice(0, drop);
      v.latencySumMs.splice(0, drop);
      v.latencyCount.splice(0, drop);
      carried.newUnits += sum(v.newUnits);
      for (const [metric, column] of Object.entries(v.conversions)) carried.conversions[metric] = (carried.conversions[metric] ?? 0) + sum(column);
    }
  }

  #splice(body: SeriesBody): void {
    if (body.minutes.length === 0) return;
    const start = body.minutes[0]!;
    let keep = this.minutes.length;
    while (keep > 0 && this.minutes[keep - 1]! >= start) keep--;
    const gap: number[] = [];
    if (keep > 0) for (let m = this.minutes[keep - 1]! + this.stepMs; m < start; m += this.stepMs) gap.push(m);
    this.minutes = this.minutes.slice(0, keep).concat(gap, body.minutes);
    const zeros = new Array<number>(gap.length).fill(0);
    const incoming = new Map(body.variants.map((v) => [v.name, v]));
    for (const [name, mine] of this.variants) {
      const theirs = incoming.get(name) ?? emptyVariant(name, Object.keys(mine.conversions), body.minutes.length);
      const splice = (a: number[], b: number[]) => a.slice(0, keep).concat(zeros, b);
      mine.requests = splice(mine.requests, theirs.requests);
      mine.errors = splice(mine.errors, theirs.errors);
      mine.latencySumMs = splice(mine.latencySumMs, theirs.latencySumMs);
      mine.latencyCount = splice(mine.latencyCount, theirs.latencyCount);
      mine.newUnits = splice(mine.newUnits, theirs.newUnits);
      for (const metric of new Set([...Object.keys(mine.conversions), ...Object.keys(theirs.conversions)])) {
        const a = mine.conversions[metric] ?? new Array<number>(keep).fill(0);
        const b = theirs.conversions[metric] ?? new Array<number>(body.minutes.length).fill(0);
        mine.conversions[metric] = splice(a, b);
      }
    }
  }

  /** x values for uPlot, in seconds. */
  xs(): number[] {
    return this.minutes.map((m) => m / 1000);
  }

  /** Requests per minute of one variant. */
  requests(variant: string): number[] {
    return this.variants.get(variant)?.requests ?? [];
  }

  /**
   * Mean latency per minute, over the requests the variant answered itself, as the report's (divided by all requests,
   * fallbacks included, it showed about 0 ms while a variant's replicas were down); null in minutes without any.
   */
  meanLatencyMs(variant: string): (number | null)[] {
    const v = this.variants.get(variant);
    return v ? v.latencySumMs.map((sum, i) => (v.latencyCount[i]! > 0 ? sum / v.latencyCount[i]! : null)) : [];
  }

  /** Share of failed requests per minute; null in minutes without requests. */
  errorRate(variant: string): (number | null)[] {
    const v = this.variants.get(variant);
    return v ? v.errors.map((e, i) => (v.requests[i]! > 0 ? e / v.requests[i]! : null)) : [];
  }

  /**
   * Cumulative conversions over cumulative new units, minute by minute: the running value of a conversion metric
   * as the report would have computed it then (without the attribution window, which the buckets do not carry).
   */
  cumulativeRate(variant: string, metric: string): (number | null)[] {
    const v = this.variants.get(variant);
    const conversions = v?.conversions[metric];
    if (!v || !conversions) return [];
    const carried = this.#dropped.get(variant);
    let units = carried?.newUnits ?? 0;
    let converted = carried?.conversions[metric] ?? 0;
    return v.newUnits.map((n, i) => {
      units += n;
      converted += conversions[i]!;
      return units > 0 ? converted / units : null;
    });
  }
}

/**
 * Each metric's value per variant as the report gave it, report after report, since the page opened: the chart of
 * metrics that the per-minute buckets cannot rebuild (means). Bounded, so a tab left open for days stays light.
 */
export class ReportHistory {
  #ts: number[] = [];
  #added = 0;
  #values = new Map<string, (number | null)[]>();
  constructor(private readonly maxPoints = 5_000) {}

  /**
   * Takes a report in at its `generatedAt` (else `nowMs`). One not newer than the last taken in is skipped: a stream
   * that reconnects replays its last report, which may be hours old (plotted at the time it arrived, it showed old
   * values as the latest).
   */
  add(nowMs: number, report: Report): void {
    const generated = typeof report.generatedAt === "string" ? Date.parse(report.generatedAt) : Number.NaN;
    const atS = (Number.isFinite(generated) ? generated : nowMs) / 1000;
    if (this.#ts.length > 0 && atS <= this.#ts[this.#ts.length - 1]!) return;
    this.#added++;
    const i = this.#ts.length;
    this.#ts.push(atS);
    for (const m of report.metrics ?? []) {
      const control = report.variants?.[0]?.name;
      if (control !== undefined) this.#set(m.name, m.control?.variant ?? control, i, m.control?.value);
      for (const c of m.comparisons ?? []) this.#set(m.name, c.variant, i, c.value);
    }
    for (const column of this.#values.values()) while (column.length < this.#ts.length) column.push(null);
    if (this.#ts.length > this.maxPoints) {
      const drop = this.#ts.length - this.maxPoints;
      this.#ts.splice(0, drop);
      for (const column of this.#values.values()) column.splice(0, drop);
    }
  }

  /** Forgets the reports taken in (another store or experiment); `size` still grows, so views redraw. */
  reset(): void {
    this.#ts = [];
    this.#values.clear();
    this.#added++;
  }

  xs(): number[] {
    return this.#ts.slice();
  }

  /** reports taken in so far (grows by one per report, also once the oldest are dropped) */
  size(): number {
    return this.#added;
  }

  values(metric: string, variant: string): (number | null)[] {
    return this.#values.get(`${metric}\u0000${variant}`)?.slice() ?? new Array<null>(this.#ts.length).fill(null);
  }

  #set(metric: string, variant: string, i: number, value: number | null | undefined): void {
    const key = `${metric}\u0000${variant}`;
    let column = this.#values.get(key);
    if (!column) this.#values.set(key, (column = new Array<number | null>(i).fill(null)));
    column[i] = typeof value === "number" && Number.isFinite(value) ? value : null;
  }
}
