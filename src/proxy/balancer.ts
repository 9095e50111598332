import type { RandomSource } from "../clock.ts";
import type { Endpoint } from "../engines/types.ts";
import { UpstreamPool, type UpstreamPoolOptions } from "./upstream.ts";

/** What the balancer needs to know of health; the HealthTracker provides it. */
export interface HealthView {
  isHealthy(id: string): boolean;
  reportSuccess(id: string): void;
  reportFailure(id: string, error?: string): void;
}

/** One replica as the proxy tracks it: its socket pool and how many requests it has in flight. */
export class Replica {
  readonly id: string;
  readonly variant: string;
  readonly endpoint: Endpoint;
  readonly pool: UpstreamPool;
  outstanding = 0;
  /** consecutive failures seen by the proxy; success is reported to health only when this is non-zero */
  failing = 0;
  constructor(endpoint: Endpoint, poolOptions: UpstreamPoolOptions) {
    this.id = endpoint.id;
    this.variant = endpoint.variant;
    this.endpoint = endpoint;
    this.pool = new UpstreamPool(endpoint.host, endpoint.port, poolOptions);
  }
}

/**
 * Replicas per variant, and the choice among the healthy ones by power of two choices on outstanding requests
 * (Mitzenmacher 2001): nearly as good as least-outstanding without scanning, and robust to stale counts.
 */
export class Balancer {
  #all = new Map<string, Replica[]>();
  #healthy = new Map<string, Replica[]>();
  #byKey = new Map<string, Replica>();
  #random: RandomSource;
  #poolOptions: UpstreamPoolOptions;
  #health: HealthView;

  constructor(variants: string[], random: RandomSource, poolOptions: UpstreamPoolOptions, health: HealthView) {
    this.#random = random;
    this.#poolOptions = poolOptions;
    this.#health = health;
    for (const v of variants) {
      this.#all.set(v, []);
      this.#healthy.set(v, []);
    }
  }

  get health(): HealthView {
    return this.#health;
  }

  /**
   * A replica failed a request (refused, reset, timed out, a 5xx, an answer that is not HTTP or is cut short): one
   * more in its streak toward passive ejection.
   */
  failed(replica: Replica, why: string): void {
    replica.failing++;
    this.#health.reportFailure(replica.id, why);
  }

  /** A replica served a request whole, with a status under 500: its streak of failures ends. */
  succeeded(replica: Replica): void {
    if (replica.failing > 0) {
      replica.failing = 0;
      this.#health.reportSuccess(replica.id);
    }
  }

  /** A replica's answer is complete with `status` (an upgrade's handshake): a 5xx counts as a failure. */
  answered(replica: Replica, status: number): void {
    if (status >= 500) this.failed(replica, `answered ${status}`);
    else this.succeeded(replica);
  }

  /** Follow the engine's endpoint list: keep replicas (and their warm pools) that did not change. */
  setEndpoints(endpoints: Endpoint[]): void {
    const next = new Map<string, Replica>();
    for (const ep of endpoints) {
      if (!this.#all.has(ep.variant)) continue;
      const key = `${ep.id}@${ep.host}:${ep.port}`;
      next.set(key, this.#byKey.get(key) ?? new Replica(ep, this.#poolOptions));
    }
    for (const [key, r] of this.#byKey) if (!next.has(key)) r.pool.close();
    this.#byKey = next;
    for (const v of this.#all.keys()) this.#all.set(v, []);
    for (const r of next.values()) this.#all.get(r.variant)!.push(r);
    this.refreshHealth();
  }

  /** Recompute the healthy lists; called whenever any replica's health changes. */
  refreshHealth(): void {
    for (const [v, list] of this.#all) this.#healthy.set(v, list.filter((r) => this.#health.isHealthy(r.id)));
  }

  hasHealthy(variant: string): boolean {
    return (this.#healthy.get(variant)?.length ?? 0) > 0;
  }

  /** A healthy replica of `variant` not in `exclude`, or undefined. */
  pick(variant: string, exclude?: Replica[]): Replica | undefined {
    let list = this.#healthy.get(variant);
    if (!list || list.length === 0) return undefined;
    if (exclude && exclude.length) {
      list = list.filter((r) => !exclude.includes(r));
      if (list.length === 0) return undefined;
    }
    const n = list.length;
    if (n === 1) return list[0];
    const i = Math.floor(this.#random() * n);
    let j = Math.floor(this.#random() * (n - 1));
    if (j >= i) j++;
    const a = list[i];
    const b = list[j];
    return b.outstanding < a.outstanding ? b : a;
  }

  replicas(variant?: string): Replica[] {
    if (variant !== undefined) return this.#all.get(variant) ?? [];
    return [...this.#byKey.values()];
  }

  close(): void {
    for (const r of this.#byKey.values()) r.pool.close();
  }
}
