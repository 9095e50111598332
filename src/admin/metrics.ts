import { Counter, Gauge, Registry } from "prom-client";
import { logLinesDropped } from "../log/index.ts";

const LATENCY_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const LATENCY_BOUNDS_MS = LATENCY_BUCKETS_S.map((s) => s * 1000);

/** Per served variant: request counts by status and the latency histogram, as plain numbers. */
class VariantCounters {
  byStatus = new Map<number, number>();
  buckets = new Float64Array(LATENCY_BOUNDS_MS.length + 1);
  sumMs = 0;
  count = 0;
}

/**
 * Prometheus metrics. The proxy's per-request path only adds to plain counters (a map lookup and a few
 * additions); prom-client renders them at scrape time through its registry's metric interface (`name`, `get()`),
 * so that the text format, escaping and default labels stay the library's.
 */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly #events: Counter<"event">;
  #variants = new Map<string, VariantCounters>();

  constructor(
    experiment: string,
    replicaHealth: () => { variant: string; replica: string; healthy: boolean }[],
    weights: () => Record<string, number>,
    exposuresDropped: () => number = () => 0,
    /** the exposure batcher's buffer and its consecutive failed writes (a store outage shows before anything drops) */
    exposureBuffer: () => { buffered: number; failures: number; uncertain?: number } = () => ({ buffered: 0, failures: 0 }),
  ) {
    this.registry.setDefaultLabels({ experiment });
    const variants = this.#variants;
    this.registry.registerMetric({
      name: "abgate_requests_total",
      async get() {
        const values: { labels: Record<string, string>; value: number }[] = [];
        for (const [variant, c] of variants) for (const [status, n] of c.byStatus) values.push({ labels: { variant, status: String(status) }, value: n });
        return { name: "abgate_requests_total", help: "Proxied requests by served variant and status", type: "counter", values, aggregator: "sum" };
      },
    } as unknown as Parameters<Registry["registerMetric"]>[0]);
    this.registry.registerMetric({
      name: "abgate_request_duration_seconds",
      async get() {
        const values: { labels: Record<string, string | number>; value: number; metricName: string }[] = [];
        for (const [variant, c] of variants) {
          let acc = 0;
          LATENCY_BUCKETS_S.forEach((le, i) => {
            acc += c.buckets[i];
            values.push({ labels: { le, variant }, value: acc, metricName: "abgate_request_duration_seconds_bucket" });
          });
          values.push({ labels: { le: "+Inf", variant }, value: c.count, metricName: "abgate_request_duration_seconds_bucket" });
          values.push({ labels: { variant }, value: c.sumMs / 1000, metricName: "abgate_request_duration_seconds_sum" });
          values.push({ labels: { variant }, value: c.count, metricName: "abgate_request_duration_seconds_count" });
        }
        return { name: "abgate_request_duration_seconds", help: "Time from request to last response byte, by served variant", type: "histogram", values, aggregator: "sum" };
      },
    } as unknown as Parameters<Registry["registerMetric"]>[0]);
    this.#events = new Counter({ name: "abgate_events_ingested_total", help: "Outcome events stored", labelNames: ["event"], registers: [this.registry] });
    // Counters kept elsewhere, read at scrape time.
    const countedBy = (name: string, help: string, read: () => number) =>
      new Counter({
        name,
        help,
        registers: [this.registry],
        collect() {
          this.reset();
          this.inc(read());
        },
      });
    countedBy("abgate_exposures_dropped_total", "Exposures dropped because the store could not keep up", exposuresDropped);
    countedBy("abgate_exposures_uncertain_total", "Exposures of writes whose outcome the store could not learn (maybe stored), not retried", () => exposureBuffer().uncertain ?? 0);
    new Gauge({
      name: "abgate_exposures_buffered",
      help: "Exposures recorded and not yet written to the store",
      registers: [this.registry],
      collect() {
        this.set(exposureBuffer().buffered);
      },
    });
    new Gauge({
      name: "abgate_store_write_failures",
      help: "Consecutive failed exposure writes (0 once one succeeds): above 0, the store is failing",
      registers: [this.registry],
      collect() {
        this.set(exposureBuffer().failures);
      },
    });
    countedBy("abgate_log_lines_dropped_total", "Log lines dropped because stderr was not read as fast as they were written", logLinesDropped);
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
    let c = this.#variants.get(variant);
    if (!c) this.#variants.set(variant, (c = new VariantCounters()));
    c.byStatus.set(status, (c.byStatus.get(status) ?? 0) + 1);
    let b = 0;
    while (b < LATENCY_BOUNDS_MS.length && latencyMs > LATENCY_BOUNDS_MS[b]) b++;
    c.buckets[b]++;
    c.sumMs += latencyMs;
    c.count++;
  }

  eventsIngested(counts: Map<string, number>): void {
    for (const [event, n] of counts) this.#events.inc({ event }, n);
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }
}
