import type { Config } from "../config/index.ts";
import type { Range } from "../strategies/types.ts";
import type { Store } from "../store/types.ts";

export interface ReplicaView {
  id: string;
  variant: string;
  replica: number;
  address: string;
  /** "healthy" | "unhealthy" | "ejected" | "unknown", or "not running" (a replica of the config the engine does not run now) */
  health: string;
  /**
   * "active": abgate checks it (its variant's `health:`, or a TCP check of a replica abgate runs); "passive": only
   * failed requests can take it out (a static URL without `health:`), so "healthy" means "not failing requests"
   */
  checks: "active" | "passive";
  outstanding: number;
}

/** Live traffic of one variant over the last few seconds, from the proxy's own counters. */
export interface LiveVariantStats {
  variant: string;
  requestsPerSecond: number;
  /** requests per second assigned to this variant and served by the fallback (it had no healthy replica) */
  fallbackPerSecond: number;
  /** null without requests in the window: no latency was measured (0 would read as an instant answer) */
  p50Ms: number | null;
  p99Ms: number | null;
  /** null without requests in the window */
  errorRate: number | null;
  /** requests since start */
  requests: number;
}

/** The body of GET /v1/experiment. */
export interface ExperimentView {
  experiment: string;
  engine: string;
  strategy: string;
  control: string;
  fallback: string;
  allowForce: boolean;
  listen: string;
  startedAt: string;
  variants: { name: string; weight: number; replicas: ReplicaView[]; requests: number; healthyReplicas: number }[];
  ranges?: Range[];
  /**
   * exposures and events as the store counted them at `readAt` (ISO time; null: the store has not answered yet);
   * requests counted live by this gateway. storeError: the store could not be read just now, so exposures and events
   * are the counts read last, as old as `readAt` says; or exposure writes are failing, so the counts lag.
   */
  counts: { exposures: number; events: number; requests: number; readAt: string | null; storeError?: string };
  metrics: { name: string; kind: string }[];
}

/** What the admin listener (and the dashboard routes it mounts) may use of the running gateway. */
export interface AdminContext {
  config: Config;
  store: Store;
  experimentView(): Promise<ExperimentView>;
  liveStats(): LiveVariantStats[];
  /** the report JSON of the spec (GET /v1/report) */
  report(): Promise<unknown>;
  /** throws InvalidArgumentError on unknown variants / bad sums */
  setWeights(weights: Record<string, number>): Promise<void>;
  /** true when the request carries the admin bearer token */
  isAdmin(authorization: string | undefined): boolean;
}
