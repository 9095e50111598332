import type { Clock, TimerHandle } from "../clock.ts";
import { healthSchema, type HealthConfig } from "../config/schema.ts";
import type { Endpoint } from "../engines/types.ts";
import { AbgateError, InvalidArgumentError } from "../errors.ts";
import { check, type Probe, type ProbeResult } from "./probe.ts";

/** What is checked on a variant's replicas: its `health:` (a GET of `path`), or with `path` null a TCP connect. */
export type CheckConfig = Omit<HealthConfig, "path"> & { path: string | null };

/**
 * The check of replicas that abgate starts (process, docker, swarm engines) when their variant has no `health:`:
 * a TCP connect, with `health:`'s default interval, timeout, rise and fall. Without it such a replica counted as
 * healthy from its first moment, before it listened: `abgate up` said all were healthy at once, and the first
 * requests got 502s.
 */
export const CONNECT_CHECK: CheckConfig = { ...healthSchema.parse({}), path: null };

/**
 * - unknown: has active checks, none has finished yet
 * - healthy / unhealthy: by active checks (rise/fall); always healthy without a health config
 * - ejected: taken out by passive outlier detection (for `ejectionMs` times its ejections in a row, at most
 *   `maxEjectionMs`), whatever the active checks say
 */
export type HealthState = "healthy" | "unhealthy" | "ejected" | "unknown";

export interface HealthChange {
  id: string;
  variant: string;
  /** null when the endpoint was just added */
  from: HealthState | null;
  /** null when the endpoint was removed */
  to: HealthState | null;
  /** with a change to unhealthy or ejected: why its last failed check or request failed */
  lastError?: string | null;
  /** with a change to ejected: for how long, and how many ejections in a row this one makes (1: the first) */
  ejectionMs?: number;
  ejections?: number;
}

export interface EndpointHealth {
  id: string;
  variant: string;
  state: HealthState;
  /** consecutive failed active checks */
  consecutiveFailures: number;
  /** consecutive failures reported by the proxy (passive); ejection at `ejectAfterFailures` */
  passiveFailures: number;
  /** clock time of the last finished active check, or null */
  lastCheckMs: number | null;
  /** why the last failed check or passive failure failed, or null */
  lastError: string | null;
  /** clock time at which an ejection ends, or null */
  ejectedUntilMs: number | null;
}

export type HealthLog = (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

export interface HealthTrackerOptions {
  clock: Clock;
  /** one active check; defaults to `check`: an HTTP GET of the path, or a TCP connect when the path is null */
  probe?: Probe;
  /** passive ejection after this many consecutive failures (connect errors, 5xx) */
  ejectAfterFailures: number;
  /** how long an ejected endpoint stays out the first time; each ejection in a row lasts this much longer */
  ejectionMs: number;
  /** the longest ejection (default: 300,000 ms or ejectionMs, whichever is longer) */
  maxEjectionMs?: number;
  log?: HealthLog;
}

type ActiveState = "healthy" | "unhealthy" | "unknown";

/**
 * How often a replica that has never passed a check yet (one starting) is checked, when its `intervalMs` is longer:
 * its first check runs as it is spawned, before it listens, and at `intervalMs` alone it then sat out of rotation for
 * a whole interval (10 s with `intervalMs: 10000`) after it was ready, at every start and every restart. HAProxy's
 * `fastinter` and Docker's `start_interval` do the same. It is called unhealthy no sooner than before: only once its
 * failures span the `fall` checks at `intervalMs` that would have said so.
 */
export const STARTING_INTERVAL_MS = 200;
/**
 * How often one that was called unhealthy before it ever passed (still starting after `fall` checks: a model that
 * loads for a minute) is checked, when `intervalMs` is longer; it too is up at its first pass, not after `rise` at
 * `intervalMs` (16.9 s after it answered, with intervalMs 10000 and rise 2).
 */
export const NEVER_HEALTHY_INTERVAL_MS = 1000;
/** Envoy's default max_ejection_time. */
export const DEFAULT_MAX_EJECTION_MS = 300_000;

interface Entry {
  endpoint: Endpoint;
  config: CheckConfig | undefined;
  active: ActiveState;
  state: HealthState;
  /**
   * While it has never been healthy (unknown): the failed checks that count toward `fall`, those at least intervalMs
   * apart as the checks at intervalMs were (from the end of one to the start of the next), and when the last ended.
   */
  startFailures: number;
  lastCountedEndMs: number;
  /** clock time the check in flight (or the last one) started */
  checkStartMs: number;
  /** it has passed a check (or has no checks): until then it is starting, and up at its first pass */
  everHealthy: boolean;
  /** consecutive active results of the current kind */
  successes: number;
  failures: number;
  passiveFailures: number;
  lastCheckMs: number | null;
  lastError: string | null;
  ejectedUntilMs: number | null;
  /** how long the current ejection lasts, as decided (the change reports this, not a difference of clock reads) */
  ejectionForMs: number;
  ejectionTimer: TimerHandle | null;
  /** ejections in a row (see reportFailure), and when the last one ended */
  ejections: number;
  unejectedAtMs: number;
  /** the next check, or the timeout of the check in flight */
  checkTimer: TimerHandle | null;
  /** bumped whenever a check result must be ignored (endpoint removed or replaced, config changed, stop) */
  generation: number;
}

/**
 * Health of every endpoint: active checks (interval, timeout, rise, fall, as HAProxy's `check inter rise fall`)
 * and passive outlier ejection (Envoy's consecutive_5xx: after `ejectAfterFailures` consecutive failures the
 * endpoint is out for a while, then returns to whatever its active state is; see reportFailure for how long).
 *
 * Scheduling runs on the injected clock: the next check is due `intervalMs` after the previous one finished (sooner
 * for a replica never healthy yet: see nextCheckInMs), and
 * a check that has not answered after `timeoutMs` (clock time) counts as failed even if the probe never settles.
 * `isHealthy` is a single map lookup, for the proxy's hot path.
 */
export class HealthTracker {
  readonly #clock: Clock;
  readonly #probe: Probe;
  readonly #ejectAfterFailures: number;
  readonly #ejectionMs: number;
  readonly #maxEjectionMs: number;
  readonly #log: HealthLog;
  readonly #entries = new Map<string, Entry>();
  /** id -> healthy, kept in step with the entries so that isHealthy does one lookup */
  readonly #healthy = new Map<string, boolean>();
  readonly #listeners = new Set<(change: HealthChange) => void>();
  /** pending waitHealthy calls, rejected by stop() */
  readonly #waiters = new Set<() => void>();
  #stopped = false;

  constructor(options: HealthTrackerOptions) {
    if (!Number.isInteger(options.ejectAfterFailures) || options.ejectAfterFailures < 1) {
      throw new InvalidArgumentError(`ejectAfterFailures must be an integer >= 1, got ${options.ejectAfterFailures}`);
    }
    if (!(options.ejectionMs > 0)) throw new InvalidArgumentError(`ejectionMs must be > 0, got ${options.ejectionMs}`);
    this.#clock = options.clock;
    this.#probe = options.probe ?? check;
    this.#ejectAfterFailures = options.ejectAfterFailures;
    this.#ejectionMs = options.ejectionMs;
    this.#maxEjectionMs = options.maxEjectionMs ?? Math.max(DEFAULT_MAX_EJECTION_MS, options.ejectionMs);
    if (!(this.#maxEjectionMs >= this.#ejectionMs)) {
      throw new InvalidArgumentError(`maxEjectionMs must be at least ejectionMs (${this.#ejectionMs}), got ${options.maxEjectionMs}`);
    }
    this.#log = options.log ?? (() => {});
  }

  /**
   * The endpoints that exist now, and the health config of each variant. New endpoints with a health config start
   * "unknown" and are checked at once; removed ones stop their checks and timers. An endpoint whose address
   * changed counts as new. A variant's config may change: checks pick it up from the next one on.
   */
  setEndpoints(endpoints: Endpoint[], healthByVariant: Record<string, CheckConfig | undefined>): void {
    if (this.#stopped) return;
    const next = new Map(endpoints.map((e) => [e.id, e]));
    for (const [id, entry] of this.#entries) {
      const e = next.get(id);
      if (!e || e.host !== entry.endpoint.host || e.port !== entry.endpoint.port || e.variant !== entry.endpoint.variant) this.#remove(entry);
    }
    for (const endpoint of endpoints) {
      const config = healthByVariant[endpoint.variant];
      const entry = this.#entries.get(endpoint.id);
      if (!entry) {
        this.#add(endpoint, config);
        continue;
      }
      entry.endpoint = endpoint;
      if (sameConfig(entry.config, config)) continue;
      const hadChecks = entry.config !== undefined;
      entry.config = config;
      if (!config) {
        // no checks any more: healthy unless ejected
        entry.generation++;
        entry.checkTimer?.cancel();
        entry.checkTimer = null;
        entry.successes = entry.failures = 0;
        this.#setActive(entry, "healthy");
      } else if (!hadChecks) {
        // checks start now, from the current state (it was serving traffic), with rise/fall as usual
        this.#check(entry);
      }
    }
  }

  /** O(1): true when the endpoint is known, healthy by its checks and not ejected. */
  isHealthy(id: string): boolean {
    return this.#healthy.get(id) === true;
  }

  /** The endpoint's state; "unknown" for an id the tracker does not know. */
  state(id: string): HealthState {
    return this.#entries.get(id)?.state ?? "unknown";
  }

  /** A request to the endpoint went well: the passive failure streak ends. */
  reportSuccess(id: string): void {
    const entry = this.#entries.get(id);
    if (entry) entry.passiveFailures = 0;
  }

  /**
   * A request to the endpoint failed (connect error, 5xx); ejects after `ejectAfterFailures` in a row.
   *
   * As Envoy's outlier detection does, an endpoint ejected again soon after it came back stays out longer each time:
   * `ejectionMs` times its ejections in a row, at most `maxEjectionMs`; the count falls by one for each `ejectionMs`
   * it has been back since its last ejection. A replica that keeps failing (a model that crashes on every request)
   * then fails `ejectAfterFailures` users' requests every few minutes, instead of every `ejectionMs`, and the log
   * says so at that pace.
   */
  reportFailure(id: string, error = "request failed"): void {
    const entry = this.#entries.get(id);
    if (!entry || this.#stopped) return;
    entry.passiveFailures++;
    entry.lastError = error;
    if (entry.ejectedUntilMs !== null || entry.passiveFailures < this.#ejectAfterFailures) return;
    const now = this.#clock.now();
    const backFor = Math.floor((now - entry.unejectedAtMs) / this.#ejectionMs);
    const most = Math.ceil(this.#maxEjectionMs / this.#ejectionMs);
    entry.ejections = Math.min(most, Math.max(0, entry.ejections - backFor) + 1);
    const ms = Math.min(this.#ejectionMs * entry.ejections, this.#maxEjectionMs);
    entry.ejectedUntilMs = now + ms;
    entry.ejectionForMs = ms;
    entry.ejectionTimer = this.#clock.setTimeout(() => this.#uneject(entry), ms);
    this.#update(entry);
  }

  /** Every endpoint's health, in the order they were added. */
  snapshot(): EndpointHealth[] {
    return [...this.#entries.values()].map((e) => ({
      id: e.endpoint.id,
      variant: e.endpoint.variant,
      state: e.state,
      consecutiveFailures: e.failures,
      passiveFailures: e.passiveFailures,
      lastCheckMs: e.lastCheckMs,
      lastError: e.lastError,
      ejectedUntilMs: e.ejectedUntilMs,
    }));
  }

  /** Called on every state change of any endpoint (including being added or removed). Returns an unsubscribe. */
  onChange(listener: (change: HealthChange) => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /**
   * Resolves once every id is healthy; rejects with code ABGATE_ERR_HEALTH_TIMEOUT after `timeoutMs` (clock time),
   * naming the endpoints that are not, with their last error. Ids not known yet are waited for.
   */
  waitHealthy(ids: string[], timeoutMs: number): Promise<void> {
    if (ids.every((id) => this.isHealthy(id))) return Promise.resolve();
    if (this.#stopped) return Promise.reject(new AbgateError("health tracker stopped", "ABGATE_ERR_HEALTH_STOPPED"));
    return new Promise((resolve, reject) => {
      const finish = (err?: Error): void => {
        unsubscribe();
        timer.cancel();
        this.#waiters.delete(stopWaiter);
        if (err) reject(err);
        else resolve();
      };
      const unsubscribe = this.onChange(() => {
        if (ids.every((id) => this.isHealthy(id))) finish();
      });
      const timer = this.#clock.setTimeout(() => {
        // (by id, numbers as numbers: the ids come in the order replicas registered, which varies from run to run)
        const bad = ids
          .filter((id) => !this.isHealthy(id))
          .sort((a, b) => a.localeCompare(b, "en", { numeric: true }))
          .map((id) => {
            const e = this.#entries.get(id);
            return e ? `${id} (${e.state}${e.lastError ? `: ${e.lastError}` : ""})` : `${id} (not running: it exited, or never started)`;
          });
        finish(new AbgateError(`not healthy after ${timeoutMs} ms: ${bad.join(", ")}`, "ABGATE_ERR_HEALTH_TIMEOUT"));
      }, timeoutMs);
      const stopWaiter = (): void => finish(new AbgateError("health tracker stopped", "ABGATE_ERR_HEALTH_STOPPED"));
      this.#waiters.add(stopWaiter);
    });
  }

  /** Stop every check and timer; pending waitHealthy calls reject. Results of checks in flight are ignored. */
  stop(): void {
    if (this.#stopped) return;
    for (const w of [...this.#waiters]) w();
    this.#stopped = true;
    for (const entry of this.#entries.values()) this.#cancel(entry);
  }

  #add(endpoint: Endpoint, config: CheckConfig | undefined): void {
    const entry: Entry = {
      endpoint,
      config,
      active: config ? "unknown" : "healthy",
      state: config ? "unknown" : "healthy",
      startFailures: 0,
      lastCountedEndMs: 0,
      checkStartMs: 0,
      everHealthy: !config,
      successes: 0,
      failures: 0,
      passiveFailures: 0,
      lastCheckMs: null,
      lastError: null,
      ejectedUntilMs: null,
      ejectionForMs: 0,
      ejectionTimer: null,
      ejections: 0,
      unejectedAtMs: 0,
      checkTimer: null,
      generation: 0,
    };
    this.#entries.set(endpoint.id, entry);
    this.#healthy.set(endpoint.id, entry.state === "healthy");
    this.#emit({ id: endpoint.id, variant: endpoint.variant, from: null, to: entry.state });
    if (config) this.#check(entry);
  }

  #remove(entry: Entry): void {
    this.#cancel(entry);
    this.#entries.delete(entry.endpoint.id);
    this.#healthy.delete(entry.endpoint.id);
    this.#emit({ id: entry.endpoint.id, variant: entry.endpoint.variant, from: entry.state, to: null });
  }

  #cancel(entry: Entry): void {
    entry.generation++;
    entry.checkTimer?.cancel();
    entry.checkTimer = null;
    entry.ejectionTimer?.cancel();
    entry.ejectionTimer = null;
  }

  /** Run one check now; the result (or the clock timeout, whichever is first) schedules the next. */
  #check(entry: Entry): void {
    const config = entry.config;
    if (!config || this.#stopped) return;
    const generation = ++entry.generation;
    entry.checkStartMs = this.#clock.now();
    let done = false;
    const finish = (result: ProbeResult): void => {
      if (done || generation !== entry.generation || this.#stopped) return;
      done = true;
      entry.checkTimer?.cancel();
      this.#record(entry, result);
      entry.checkTimer = this.#clock.setTimeout(() => {
        entry.checkTimer = null;
        this.#check(entry);
      }, nextCheckInMs(entry, config));
    };
    entry.checkTimer = this.#clock.setTimeout(() => finish({ ok: false, error: `timeout after ${config.timeoutMs} ms` }), config.timeoutMs);
    let pending: Promise<boolean | ProbeResult>;
    try {
      pending = this.#probe(entry.endpoint, config.path, config.timeoutMs);
    } catch (err) {
      pending = Promise.resolve({ ok: false, error: errorText(err) });
    }
    pending.then(
      (r) => finish(typeof r === "boolean" ? (r ? { ok: true } : { ok: false, error: "check failed" }) : r),
      (err: unknown) => finish({ ok: false, error: errorText(err) }),
    );
  }

  #record(entry: Entry, result: ProbeResult): void {
    const config = entry.config!;
    entry.lastCheckMs = this.#clock.now();
    if (result.ok) {
      entry.successes++;
      entry.failures = 0;
    } else {
      entry.failures++;
      entry.successes = 0;
      entry.lastError = result.error ?? "check failed";
    }
    // Never healthy yet (a replica starting, a model loading): one good check makes it healthy at once, so it takes
    // traffic without waiting for `rise`; failures leave it unknown (not healthy either: no traffic) until `fall` of
    // them in a row, over the time `fall` checks at intervalMs take (it is checked more often meanwhile: see
    // STARTING_INTERVAL_MS), so that a replica still starting is not reported down, nor its variant as falling back.
    if (entry.active === "unknown") {
      if (result.ok) this.#setActive(entry, "healthy");
      else {
        // Counted as the checks at intervalMs would have come, timeouts included: no sooner than they would say so.
        if (entry.startFailures === 0 || entry.checkStartMs - entry.lastCountedEndMs >= config.intervalMs) {
          entry.startFailures++;
          entry.lastCountedEndMs = entry.lastCheckMs;
        }
        if (entry.startFailures >= config.fall) this.#setActive(entry, "unhealthy");
      }
    }
    else if (entry.active === "unhealthy" && (entry.successes >= config.rise || (result.ok && !entry.everHealthy))) this.#setActive(entry, "healthy");
    else if (entry.active === "healthy" && entry.failures >= config.fall) this.#setActive(entry, "unhealthy");
  }

  #setActive(entry: Entry, active: ActiveState): void {
    if (entry.active === active) return;
    entry.active = active;
    if (active === "healthy") entry.everHealthy = true;
    this.#update(entry);
  }

  #uneject(entry: Entry): void {
    entry.ejectionTimer = null;
    entry.ejectedUntilMs = null;
    entry.unejectedAtMs = this.#clock.now();
    entry.passiveFailures = 0;
    this.#update(entry);
  }

  /** Derive the visible state; notify when it changed. */
  #update(entry: Entry): void {
    const state: HealthState = entry.ejectedUntilMs !== null ? "ejected" : entry.active;
    if (state === entry.state) return;
    const from = entry.state;
    entry.state = state;
    this.#healthy.set(entry.endpoint.id, state === "healthy");
    const out = state === "unhealthy" || state === "ejected";
    const ejection = state === "ejected" ? { ejectionMs: entry.ejectionForMs, ejections: entry.ejections } : {};
    this.#emit({ id: entry.endpoint.id, variant: entry.endpoint.variant, from, to: state, ...(out ? { lastError: entry.lastError } : {}), ...ejection });
  }

  #emit(change: HealthChange): void {
    for (const l of [...this.#listeners]) {
      try {
        l(change);
      } catch (err) {
        this.#log("error", "health listener threw", { error: errorText(err) });
      }
    }
  }
}

/** When the next check is due after one finished: sooner for a replica that has never passed one (it is starting). */
function nextCheckInMs(entry: Entry, config: CheckConfig): number {
  if (entry.everHealthy) return config.intervalMs;
  return Math.min(config.intervalMs, entry.active === "unknown" ? STARTING_INTERVAL_MS : NEVER_HEALTHY_INTERVAL_MS);
}

function sameConfig(a: CheckConfig | undefined, b: CheckConfig | undefined): boolean {
  if (a === b) return true;
  if (!a || !b) return false;
  return a.path === b.path && a.intervalMs === b.intervalMs && a.timeoutMs === b.timeoutMs && a.rise === b.rise && a.fall === b.fall;
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
