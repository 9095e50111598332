import { Counter, Gauge, Histogram, Registry } from "prom-client";

/**
 * Prometheus metrics. Label children are cached so that the proxy's hot path does a map lookup and an add, not
 * a label-set hash per request.
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly #requests: Counter<"variant" | "status">;
  readonly #latency: Histogram<"variant">;
  readonly #events: Counter<"event">;
  readonly #exposuresDropped: Counter;
  #children = new Map<string, { inc(n?: number): void }>();
  #latencyChildren = new Map<string, { observe(v: number): void }>();

  constructor(experiment: string, replicaHealth: () => { variant: string; replica: string; healthy: boolean }[], weights: () => Record<string, number>) {
    this.registry.setDefaultLabels({ experiment });
    this.#requests = new Counter({ name: "abgate_requests_total", help: "Proxied requests by served variant and status", labelNames: ["variant", "status"], registers: [this.registry] });
    this.#latency = new Histogram({
      name: "abgate_request_duration_seconds",
      help: "Time from request to last response byte, by served variant",
      labelNames: ["variant"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [this.registry],
    });
    this.#events = new Counter({ name: "abgate_events_ingested_total", help: "Outcome events stored", labelNames: ["event"], registers: [this.registry] });
    this.#exposuresDropped = new Counter({ name: "abgate_exposures_dropped_total", help: "Exposures dropped because the store could not keep up", registers: [this.registry] });
    new Gauge({
      name: "abgate_replica_healthy",
      help: "1 when the replica receives traffic",
      labelNames: ["variant", "replica"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const r of replicaHealth()) this.set({ variant: r.variant, replica: r.replica }, r.healthy ? 1 : 0);
      },
    });
    new Gauge({
      name: "abgate_variant_weight",
      help: "Current traffic weight of the variant",
      labelNames: ["variant"],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [v, w] of Object.entries(weights())) this.set({ variant: v }, w);
      },
    });
  }

  request(variant: string, status: number, latencyMs: number): void {
    const key = `${variant}\u0000${status}`;
    let c = this.#children.get(key);
    if (!c) {
      c = this.#requests.labels(variant, String(status));
      this.#children.set(key, c);
    }
    c.inc();
    let h = this.#latencyChildren.get(variant);
    if (!h) {
      h = this.#latency.labels(variant);
      this.#latencyChildren.set(variant, h);
    }
    h.observe(latencyMs / 1000);
  }

  eventsIngested(counts: Map<string, number>): void {
    for (const [event, n] of counts) this.#events.inc({ event }, n);
  }

  exposuresDropped(n: number): void {
    this.#exposuresDropped.inc(n);
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
