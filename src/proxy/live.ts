import type { LiveVariantStats } from "../admin/context.ts";

const SLOTS = 10;
/**
 * Latency buckets in ms, roughly log-spaced: p50/p99 are given as the upper edge of their bucket, and past the last
 * finite edge as that edge (the dashboard reads them so; it imports this list).
 */
export const LIVE_LATENCY_BOUNDS_MS: readonly number[] = [0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000, Infinity];
const BOUNDS = LIVE_LATENCY_BOUNDS_MS;

class Slot {
  second = -1;
  count = 0;
  errors = 0;
  /** requests assigned to this variant that another one served (the fallback) */
  elsewhere = 0;
  hist = new Uint32Array(BOUNDS.length);
  reset(second: number) {
    this.second = second;
    this.count = 0;
    this.errors = 0;
    this.elsewhere = 0;
    this.hist.fill(0);
  }
}

/**
 * Requests per second, p50/p99 and error rate over the last ten seconds, per variant: a ring of one-second slots,
 * so recording is O(1) and nothing grows with traffic.
 */
export class LiveStats {
  #byVariant = new Map<string, { slots: Slot[]; total: number }>();
  #nowMs: () => number;
  constructor(variants: string[], nowMs: () => number = Date.now) {
    this.#nowMs = nowMs;
    for (const v of variants) this.#byVariant.set(v, { slots: Array.from({ length: SLOTS }, () => new Slot()), total: 0 });
  }

  /**
   * One answered request, under the variant that served it; `assigned`, when another (the fallback served it),
   * also counts it as served elsewhere under its own.
   */
  record(variant: string, latencyMs: number, error: boolean, assigned: string = variant): void {
    const entry = this.#byVariant.get(variant);
    if (!entry) return;
    const second = Math.floor(this.#nowMs() / 1000);
    const slot = this.#slot(entry, second);
    slot.count++;
    if (error) slot.errors++;
    let b = 0;
    while (latencyMs > BOUNDS[b]) b++;
    slot.hist[b]++;
    entry.total++;
    if (assigned !== variant) {
      const own = this.#byVariant.get(assigned);
      if (own) this.#slot(own, second).elsewhere++;
    }
  }

  #slot(entry: { slots: Slot[] }, second: number): Slot {
    const slot = entry.slots[second % SLOTS];
    if (slot.second !== second) slot.reset(second);
    return slot;
  }

  snapshot(): LiveVariantStats[] {
    const nowSecond = Math.floor(this.#nowMs() / 1000);
    const out: LiveVariantStats[] = [];
    for (const [variant, entry] of this.#byVariant) {
      let count = 0;
      let errors = 0;
      let elsewhere = 0;
      const hist = new Array<number>(BOUNDS.length).fill(0);
      // the current second is partial: use the SLOTS-1 complete seconds before it
      for (const s of entry.slots) {
        if (s.second < nowSecond - (SLOTS - 1) || s.second >= nowSecond) continue;
        count += s.count;
        errors += s.errors;
        elsewhere += s.elsewhere;
        for (let i = 0; i < BOUNDS.length; i++) hist[i] += s.hist[i];
      }
      const q = (p: number) => {
        if (count === 0) return null;
        const target = p * count;
        let acc = 0;
        for (let i = 0; i < BOUNDS.length; i++) {
          acc += hist[i];
          if (acc >= target) return Number.isFinite(BOUNDS[i]) ? BOUNDS[i] : BOUNDS[i - 1];
        }
        return 0;
      };
      out.push({
        variant,
        requestsPerSecond: count / (SLOTS - 1),
        fallbackPerSecond: elsewhere / (SLOTS - 1),
        p50Ms: q(0.5),
        p99Ms: q(0.99),
        errorRate: count ? errors / count : null,
        requests: entry.total,
      });
    }
    return out;
  }
}
