import type { AddressInfo } from "node:net";
import type { Server } from "node:net";
import { randomBytes } from "node:crypto";
import { systemClock, type Clock, type RandomSource, type TimerHandle } from "./clock.ts";
import { ownerAliveHere, ownerLabel } from "./owner.ts";
import type { Config } from "./config/index.ts";
import { configuredReplicas, createEngine } from "./engines/index.ts";
import type { Endpoint, Engine } from "./engines/types.ts";
import { CONNECT_CHECK, HealthTracker } from "./health/index.ts";
import { createLogger, type Logger } from "./log/index.ts";
import { LogThrottle } from "./log/throttle.ts";
import { Balancer } from "./proxy/balancer.ts";
import { LiveStats } from "./proxy/live.ts";
import { createProxyServer } from "./proxy/server.ts";
import { createStrategy, DEFAULT_MAX_SEEN_UNITS, type Strategy, type StrategyState } from "./strategies/index.ts";
import { ExposureBatcher, openStore, type SqliteWriter } from "./store/index.ts";
import type { Store } from "./store/types.ts";
import { latestSchemaVersion } from "./store/migrations.ts";
import { GatewayMetrics } from "./admin/metrics.ts";
import { bearerMatches } from "./admin/auth.ts";
import type { AdminContext, ExperimentView, ReplicaView } from "./admin/context.ts";
import { createAdminServer } from "./admin/server.ts";
import { experimentReport, recordBanditWeights, recordWeightChange } from "./admin/report.ts";

/**
 * How long GET /v1/experiment (and the dashboard's live view) waits for the store's counts. Not shorter: the SQLite
 * store's reads queue on one reader thread, behind a big report's queries (about 1.4 s over 400,000 exposures), and
 * a busy store is not a failed one.
 */
const COUNTS_WAIT_MS = 3_000;

export interface GatewayOptions {
  /** an engine whose `start()` the caller already awaited; without one, the gateway creates and starts its own */
  engine?: Engine;
  store?: Store;
  log?: Logger;
  clock?: Clock;
  random?: RandomSource;
  /** where a SQLite store is written (default auto: on a thread of its own when there is a second core; see SqliteWriter) */
  sqliteWriter?: SqliteWriter;
  /** record exposures (default: on, unless ABGATE_EXPOSURES=off) */
  exposures?: boolean;
  /** receives the generated admin token when the config has none (default: printed once on stderr) */
  onGeneratedToken?: (token: string) => void;
  /** progress lines while the engine starts */
  onProgress?: (line: string) => void;
  /**
   * Runs once everything but the proxy's listener is up (the admin listener included), and the proxy listens only
   * when it resolves: `abgate up` waits there for its replicas to be healthy, so that no client is answered 503 (and
   * recorded) meanwhile. When it rejects, the gateway is stopped and startGateway rejects with its error.
   */
  beforeServing?: (health: HealthTracker) => Promise<void>;
  /** how often a store's init that has not finished is logged (default STORE_INIT_NOTICE_MS) */
  storeInitNoticeMs?: number;
}

export interface Gateway {
  proxyUrl: string;
  adminUrl: string;
  adminToken: string;
  engine: Engine;
  store: Store;
  strategy: Strategy;
  health: HealthTracker;
  /** Stop accepting, finish in-flight requests, flush exposures, stop the engine if the gateway started it. */
  stop(): Promise<void>;
}

const STRATEGY_STATE_KEY = "strategy";
/** Where a running gateway notes itself in the store (see the beat in startGateway), and how often. */
const GATEWAY_STATE_KEY = "gateway";
const GATEWAY_BEAT_MS = 30_000;
/** How often a store's init that has not finished is logged (see startGateway). */
const STORE_INIT_NOTICE_MS = 5_000;
/**
 * How long a stopping gateway waits for other readers of its SQLite store (an `abgate report` mid-read) so that its
 * last checkpoint can copy every commit into the file: a read-only report cannot finish that copy afterwards.
 */
const CLOSE_CHECKPOINT_WAIT_MS = 3000;

function listen(server: Server, host: string, port: number): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen({ host, port }, () => {
      server.removeListener("error", reject);
      resolve(server.address() as AddressInfo);
    });
  });
}

function urlOf(a: AddressInfo): string {
  return `http://${a.family === "IPv6" ? `[${a.address}]` : a.address}:${a.port}`;
}

/** Wire engine -> health -> balancer -> proxy, the store behind exposures and events, and the admin listener. */
export async function startGateway(config: Config, options: GatewayOptions = {}): Promise<Gateway> {
  const log = options.log ?? createLogger(config.logLevel, { experiment: config.experiment });
  const clock = options.clock ?? systemClock;
  const random = options.random ?? Math.random;
  const exposuresOn = options.exposures ?? process.env.ABGATE_EXPOSURES !== "off";
  const cleanups: (() => Promise<void> | void)[] = [];
  const cleanup = async () => {
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch((err) => log.error({ err }, "cleanup failed"));
  };

  try {
    // Writes may run on the proxy's thread (sqliteWriter), which SQLite's wait for a lock would hold: see busyTimeoutMs.
    const store =
      options.store ??
      openStore(config.store, {
        sqliteWriter: options.sqliteWriter ?? "auto",
        busyTimeoutMs: 100,
        closeCheckpointWaitMs: CLOSE_CHECKPOINT_WAIT_MS,
        onCloseCheckpoint: (event) => {
          if (event.kind === "waiting") {
            log.info({ store: config.store, waitMs: event.waitMs }, "another reader has the store open (abgate report?): waiting for it, so that the file holds every commit");
          } else {
            log.warn(
              { store: config.store, waitedMs: event.waitedMs, framesLeft: event.framesLeft },
              "the store's last commits are still in its -wal file, because another connection kept it: copy the -wal along with the file (the next gateway to open it folds them in)",
            );
          }
        },
      });
    if (!options.store) cleanups.push(() => store.close());
    if (config.strategy.salt === "") {
      // An empty salt means the default now; an experiment that ran with "" (an unset ${SALT}) hashes its units anew.
      log.warn({ salt: config.salt }, "strategy.salt is empty: the experiment's name is the salt (sticky units of a run with an empty salt move)");
    }
    // Init may wait on another process (PostgreSQL: another abgate's migration holds the lock; it has no timeout, a
    // migration may rewrite a big table): said every few seconds, not a silent hang at start.
    const initStartedMs = Date.now();
    const slowInit = setInterval(
      () => log.warn({ waitedMs: Date.now() - initStartedMs }, "still opening the store: another abgate may be migrating it (its lock is waited for), or the database is slow to answer"),
      options.storeInitNoticeMs ?? STORE_INIT_NOTICE_MS,
    );
    try {
      await store.init();
    } finally {
      clearInterval(slowInit);
    }
    if (store.migratedFrom !== undefined) {
      log.info({ from: store.migratedFrom, to: latestSchemaVersion }, "upgraded the store's schema; earlier abgate versions can no longer open it");
    }

    const variantNames = config.variants.map((v) => v.name);
    const saved = await store.getState(config.experiment, STRATEGY_STATE_KEY);
    let restore: StrategyState | undefined;
    if (saved) {
      try {
        restore = JSON.parse(saved) as StrategyState;
      } catch {
        log.warn("saved strategy state is unreadable; starting from the configured weights");
      }
    }
    // The bandit keeps each seen unit in its first variant; across a restart it remembers them from the store.
    const loadSeenUnits = async (): Promise<[string, string][] | undefined> => {
      try {
        return await store.recentUnits(config.experiment, DEFAULT_MAX_SEEN_UNITS);
      } catch (err) {
        log.warn({ err: err instanceof Error ? err.message : String(err) }, "cannot load the units seen so far; the bandit starts without them");
        return undefined;
      }
    };
    const strategyFrom = (from: StrategyState | undefined, seen?: [string, string][]) =>
      createStrategy(config.strategy.kind, {
        variants: config.variants.map((v) => ({ name: v.name, weight: v.weight })),
        salt: config.salt,
        hash: config.strategy.hash,
        random,
        restore: from,
        floor: config.strategy.floor,
        burnInUnits: config.strategy.burnInUnits,
        seenUnits: seen,
        onWarning: (message) => log.warn(message),
      });
    const hashing = { salt: config.salt, hash: config.strategy.hash };
    const savedHashing = restore?.hashing;
    if (savedHashing && typeof savedHashing === "object" && (savedHashing.salt !== hashing.salt || savedHashing.hash !== hashing.hash) && config.strategy.kind === "sticky") {
      // As with edited weights: said at start, not found later as units seen in more than one variant. (The bandit
      // keeps the units it has seen where they were, whatever their new bucket.)
      const what = [
        ...(savedHashing.salt !== hashing.salt ? [`strategy.salt ${JSON.stringify(savedHashing.salt)} -> ${JSON.stringify(hashing.salt)}`] : []),
        ...(savedHashing.hash !== hashing.hash ? [`strategy.hash ${savedHashing.hash} -> ${hashing.hash}`] : []),
      ];
      log.warn(
        { savedHashing, hashing },
        `${what.join(", ")} since the last run: every unit gets a new bucket, so about as many units as the variants' shares put elsewhere (half, at 50/50) now go to another variant, and the report counts them as seen in more than one variant. Keep the old value to keep units in place; use a new experiment name (or store) to start afresh`,
      );
    }
    const strategy = strategyFrom(restore, config.strategy.kind === "bandit" ? await loadSeenUnits() : undefined);
    if (restore) log.info({ weights: strategy.weights() }, "assignment state restored from the store");
    // A strategy without a range table (random, round-robin) saves the one a sticky or bandit run left, so that a
    // switch back finds it (the SPEC: the table survives restarts); saved over, it was rebuilt from scratch, and a
    // fragmented table's units moved (48.6% of them in the audit's case) with no weight change and no warning.
    const keptRanges = Array.isArray(restore?.ranges) ? restore.ranges : undefined;
    const saveStrategy = (from = strategy) => {
      const snapshot = from.snapshot();
      if (snapshot.ranges === undefined && keptRanges !== undefined) snapshot.ranges = keptRanges;
      // (kept as it was by a strategy that hashes nothing, as the ranges are: a switch back is then compared to it)
      snapshot.hashing = config.strategy.kind === "sticky" || config.strategy.kind === "bandit" ? hashing : (savedHashing ?? undefined);
      if (snapshot.hashing === undefined) delete snapshot.hashing;
      return store.setState(config.experiment, STRATEGY_STATE_KEY, JSON.stringify(snapshot));
    };
    await saveStrategy();

    const engineLog = (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => log[level](fields ?? {}, msg);
    let engine = options.engine;
    if (!engine) {
      engine = await createEngine(config, { log: engineLog, clock });
      cleanups.push(() => engine!.stop());
      await engine.start(options.onProgress);
    }

    const health = new HealthTracker({
      clock,
      ejectAfterFailures: config.limits.ejectAfterFailures,
      ejectionMs: config.limits.ejectionMs,
      maxEjectionMs: config.limits.maxEjectionMs,
      log: engineLog,
    });
    cleanups.push(() => health.stop());
    // Replicas abgate starts are always checked, by a TCP connect when their variant names no health path; static
    // endpoints without `health:` exist already, and are left to passive ejection (HAProxy without `check`).
    const healthByVariant = Object.fromEntries(config.variants.map((v) => [v.name, v.health ?? (config.engine === "static" ? undefined : CONNECT_CHECK)]));
    const balancer = new Balancer(variantNames, random, { connectTimeoutMs: config.limits.connectTimeoutMs, responseTimeoutMs: config.limits.responseTimeoutMs }, health);
    cleanups.push(() => balancer.close());
    // The SPEC's "(logged)" for fallback: one line when a variant loses its last healthy replica (its requests now go
    // to the fallback, or get 503s), whether its replicas failed their checks or its engine removed them (a crashed
    // process), and one when it has one again; not a line per request. A variant whose replicas have not all been
    // checked once yet is not called down (at start that would be every checked variant), nor any while stopping.
    // A variant down maps to what its line said happens to its requests: when that changes (its fallback goes down
    // or comes back), another line says so. The fallback is not judged while its own replicas are unchecked (at
    // start, every checked variant's are): that said "503" for requests the fallback then served.
    const variantsDown = new Map<string, string>();
    let shuttingDown = false;
    const unchecked = (endpoints: Endpoint[], variant: string) => endpoints.some((e) => e.variant === variant && health.state(e.id) === "unknown");
    const reviewVariants = () => {
      if (shuttingDown) return;
      const endpoints = engine!.endpoints();
      for (const variant of variantNames) {
        if (balancer.hasHealthy(variant)) {
          if (variantsDown.delete(variant)) log.info({ variant }, `variant ${variant} has a healthy replica again and serves its own units`);
          continue;
        }
        const fallback = config.fallback;
        if (unchecked(endpoints, variant) || (fallback !== variant && fallback !== "reject" && !balancer.hasHealthy(fallback) && unchecked(endpoints, fallback))) continue;
        const instead = fallbackOutcome(variant, fallback, balancer.hasHealthy(fallback));
        const said = variantsDown.get(variant);
        if (said === instead) continue;
        variantsDown.set(variant, instead);
        log.warn({ variant, fallback }, `variant ${variant} ${said === undefined ? "has" : "still has"} no healthy replica: ${instead}`);
      }
    };
    const follow = (endpoints = engine!.endpoints()) => {
      health.setEndpoints(endpoints, healthByVariant);
      balancer.setEndpoints(endpoints);
      reviewVariants();
    };
    health.onChange((change) => {
      balancer.refreshHealth();
      // Endpoints added or removed are announced before the balancer has them; follow reviews the variants after.
      if (change.from === null || change.to === null) return;
      // The one line per change (the tracker says nothing itself): why, when it is out.
      const out = change.to === "unhealthy" || change.to === "ejected";
      const why = out && change.lastError ? `: ${change.lastError}` : "";
      const again = (change.ejections ?? 1) > 1 ? ` (ejection ${change.ejections} in a row: each lasts longer)` : "";
      const detail = change.to === "ejected" ? ` for ${Math.round(change.ejectionMs ?? 0)} ms${again}, after ${config.limits.ejectAfterFailures} failed requests in a row` : "";
      log[out ? "warn" : "info"]({ replica: change.id, from: change.from, to: change.to, ...(out ? { lastError: change.lastError } : {}) }, `replica ${change.id} is ${change.to}${detail}${why}`);
      reviewVariants();
    });
    const unfollow = engine.onChange((eps) => follow(eps));
    cleanups.push(unfollow);
    follow();

    const live = new LiveStats(variantNames, () => clock.now());
    const batcher = exposuresOn ? new ExposureBatcher(store, { clock, log: engineLog }) : null;
    // The engines list only replicas that run. One that crashed, crash-loops or never started has no health entry
    // and no endpoint, but must still show: as 0 in the health metric (an alert on 0 must fire) and as "not running"
    // in the experiment view (or a variant with every replica dead reads 0/0 instead of 0/2).
    const configured = configuredReplicas(config);
    const notRunning = (running: Iterable<string>) => {
      const ids = new Set(running);
      return configured.filter((c) => !ids.has(c.id));
    };
    const metrics = new GatewayMetrics(
      config.experiment,
      () => {
        const known = health.snapshot().map((h) => ({ variant: h.variant, replica: h.id, healthy: h.state === "healthy" }));
        for (const c of notRunning(known.map((k) => k.replica))) known.push({ variant: c.variant, replica: c.id, healthy: false });
        return known;
      },
      () => strategy.weights(),
      () => batcher?.stats().dropped ?? 0,
      () => {
        const stats = batcher?.stats();
        return { buffered: stats?.buffered ?? 0, failures: stats?.failures ?? 0, uncertain: stats?.uncertain ?? 0 };
      },
    );
    if (batcher) cleanups.push(() => batcher.close());

    // Admin token: configured, or generated and shown once.
    let adminToken = config.admin.token;
    if (!adminToken) {
      adminToken = randomBytes(24).toString("base64url");
      (options.onGeneratedToken ?? ((t: string) => process.stderr.write(`abgate: no admin.token configured; generated one for this run (shown once): ${t}\n`)))(adminToken);
    }
    const token = adminToken;

    let setWeightsChain: Promise<void> = Promise.resolve();
    // readAt: when the store last answered (ISO time); null before it ever has. With storeError, the counts are that old.
    let lastCounts: { exposures: number; events: number; readAt: string | null } = { exposures: 0, events: 0, readAt: null };
    let countsInFlight: Promise<{ exposures: number; events: number; readAt: string | null; storeError?: string }> | null = null;
    const startedAt = new Date(clock.now()).toISOString();
    const adminCtx: AdminContext = {
      config,
      store,
      liveStats: () => live.snapshot(),
      isAdmin: (authorization) => bearerMatches(authorization, token),
      async setWeights(weights) {
        // Serialized, so that two quick changes persist in the order they were applied.
        const run = setWeightsChain.then(async () => {
          // Saved before it is applied: on a copy first (the change is deterministic given the state), so that a
          // store that cannot save it leaves the live weights as they were, instead of a change answered with an
          // error that takes effect anyway and is then lost at the next restart.
          const trial = strategyFrom(strategy.snapshot());
          trial.setWeights(weights);
          await saveStrategy(trial);
          strategy.setWeights(weights);
          // Not so for the bandit: its snapshot keeps no counts, so its trial applied the configured weights (a change
          // of nothing saved 50/50 beside a live 3/97, and a restart then went back to it). The state in force is
          // saved once more.
          if (config.strategy.kind === "bandit") {
            await saveStrategy().catch((err: unknown) => log.warn({ err: err instanceof Error ? err.message : String(err) }, "cannot save the bandit's weights after a change"));
          }
          // When, for the report's SRM check and its periods (which units were assigned under these weights). The
          // change stands without it: the report then counts from the first report that sees the new weights.
          const record = config.strategy.kind === "bandit" ? recordBanditWeights : recordWeightChange;
          await record(store, config, strategy.weights(), clock.now()).catch((err: unknown) =>
            log.warn({ err: err instanceof Error ? err.message : String(err) }, "cannot record the time of the weight change"),
          );
        });
        setWeightsChain = run.catch(() => undefined);
        await run;
      },
      async experimentView(): Promise<ExperimentView> {
        const weights = strategy.weights();
        const liveByVariant = new Map(live.snapshot().map((l) => [l.variant, l]));
        // The view is how an operator sees replicas and health, which matter most while the database is down:
        // then it shows the counts read last, and says why they are not current.
        // A store that hangs (a database stopped, a network partition) must not hold the view either: after
        // COUNTS_WAIT_MS the counts read last are shown, and the one query in flight goes on for the next view.
        let counts: { exposures: number; events: number; readAt: string | null; storeError?: string };
        countsInFlight ??= store.counts(config.experiment).then(
          (c) => (lastCounts = { exposures: c.exposures, events: c.events, readAt: new Date(clock.now()).toISOString() }),
          (err: unknown) => ({ ...lastCounts, storeError: err instanceof Error ? err.message : String(err) }),
        ).finally(() => (countsInFlight = null));
        let timer: TimerHandle | undefined;
        const waited = new Promise<"timeout">((resolve) => (timer = clock.setTimeout(() => resolve("timeout"), COUNTS_WAIT_MS)));
        const got = await Promise.race([countsInFlight, waited]);
        timer?.cancel();
        counts = got === "timeout" ? { ...lastCounts, storeError: `the store did not answer within ${COUNTS_WAIT_MS} ms` } : got;
        // A store that answers reads but refuses writes (a full disk) is an outage too: the counts then lag.
        const writes = batcher?.stats();
        if (counts.storeError === undefined && writes !== undefined && writes.failures > 0) {
          counts = { ...counts, storeError: `exposure writes are failing (${writes.buffered} buffered, ${writes.dropped} dropped): ${writes.lastError}` };
        }
        let requests = 0;
        return {
          experiment: config.experiment,
          engine: config.engine,
          strategy: config.strategy.kind,
          control: config.control,
          fallback: config.fallback,
          allowForce: config.allowForce,
          listen: proxyUrl,
          startedAt,
          variants: variantNames.map((name) => {
            const checks = healthByVariant[name] !== undefined ? "active" : "passive";
            const replicas: ReplicaView[] = balancer.replicas(name).map((r) => ({
              id: r.id,
              variant: name,
              replica: r.endpoint.replica,
              address: `${r.endpoint.host}:${r.endpoint.port}`,
              health: health.state(r.id),
              checks,
              outstanding: r.outstanding,
            }));
            for (const c of notRunning(replicas.map((r) => r.id))) {
              if (c.variant === name) replicas.push({ id: c.id, variant: name, replica: c.replica, address: "", health: "not running", checks, outstanding: 0 });
            }
            replicas.sort((a, b) => a.replica - b.replica);
            const req = liveByVariant.get(name)?.requests ?? 0;
            requests += req;
            return { name, weight: weights[name] ?? 0, replicas, requests: req, healthyReplicas: replicas.filter((r) => r.health === "healthy").length };
          }),
          ranges: strategy.ranges(),
          counts: { exposures: counts.exposures, events: counts.events, requests, readAt: counts.readAt, ...(counts.storeError !== undefined ? { storeError: counts.storeError } : {}) },
          metrics: config.metrics.map((m) => ({ name: m.name, kind: m.kind })),
        };
      },
      report: () =>
        experimentReport(config, store, strategy.weights(), clock.now(), {
          onSaveError: (err) =>
            throttledLog.warn("report-save", { err: err instanceof Error ? err.message : String(err) }, "the report is answered, but what it records for later reports (sequential p-value minima, weights seen) could not be saved"),
        }),
    };

    const throttledLog = new LogThrottle(log, { clock });
    const proxy = createProxyServer({ config, strategy, balancer, exposures: batcher, live, metrics, log, throttledLog, counters: { inFlight: 0 } });
    const { server: adminServer, dashboard, inFlight: adminInFlight } = createAdminServer({
      ...adminCtx,
      metrics,
      log,
      throttledLog,
      isIngestToken: (authorization) => config.admin.ingestToken !== undefined && bearerMatches(authorization, config.admin.ingestToken),
    });
    const { server: proxyServer, inFlight, closeTunnels } = proxy;
    const adminAddr = await listen(adminServer, config.admin.listen.host, config.admin.listen.port);
    // Ends the dashboard's event streams (they never finish by themselves), stops accepting and closes idle
    // connections; resolves once every connection is gone.
    let adminClosed: Promise<void> | null = null;
    const closeAdmin = () =>
      (adminClosed ??= (() => {
        dashboard.close();
        return new Promise<void>((r) => adminServer.close(() => r()));
      })());
    cleanups.push(() => {
      const closed = closeAdmin();
      adminServer.closeAllConnections();
      return closed;
    });
    const adminUrl = urlOf(adminAddr);
    if (options.beforeServing) await options.beforeServing(health);
    const proxyAddr = await listen(proxyServer, config.listen.host, config.listen.port);
    cleanups.push(() => new Promise<void>((r) => proxyServer.close(() => r())));
    const proxyUrl = urlOf(proxyAddr);

    // Bandit: weights follow the posterior of the first (or chosen) conversion metric.
    let banditTimer: TimerHandle | null = null;
    let banditStopped = false;
    /** the update in flight, which a stop waits for before the store closes */
    let banditUpdate: Promise<void> = Promise.resolve();
    if (strategy.observe) {
      const metric = config.metrics.find((m) => m.name === config.strategy.metric) ?? config.metrics.find((m) => m.kind === "conversion");
      const tick = async () => {
        try {
          const agg = await store.aggregate(config.experiment, variantNames, metric ? [metric] : []);
          const m = agg.metrics[0];
          if (m && m.kind === "conversion") {
            strategy.observe!(variantNames.map((v) => ({ variant: v, units: m.byVariant[v]?.units ?? 0, conversions: m.byVariant[v]?.conversions ?? 0 })));
            // (when they took effect: units exposed while the state is saved are assigned under them already)
            const weights = strategy.weights();
            const at = clock.now();
            // The new weights are in force whether or not they are saved: their period is recorded either way (units
            // exposed from now on are assigned under them, and the report must not pool them with the last period's).
            const saved = saveStrategy().then(
              () => undefined,
              (err: unknown) => err,
            );
            // For the report, which compares the arms within periods of like weights; in turn with the changes made
            // through the admin API, which record theirs too (each a read and a write of the same state). The update
            // stands without it.
            const recorded = setWeightsChain.then(() => recordBanditWeights(store, config, weights, at));
            setWeightsChain = recorded.catch(() => undefined);
            await recorded.catch((err: unknown) =>
              log.warn({ err: err instanceof Error ? err.message : String(err) }, "cannot record the bandit's weights for the report"),
            );
            const saveFailed = await saved;
            if (saveFailed !== undefined) throw saveFailed;
          }
        } catch (err) {
          log.warn({ err }, "bandit update failed");
        }
        // (an update in flight when the gateway stops must not schedule another, on a closed store)
        if (!banditStopped) banditTimer = clock.setTimeout(run, config.strategy.updateIntervalMs);
      };
      const run = () => void (banditUpdate = tick());
      // The first update at once: the weights restored from the store are the last run's, and until an update has
      // counts, a weight change (PUT /v1/weights) can only apply the configured weights.
      run();
      cleanups.push(async () => {
        banditStopped = true;
        banditTimer?.cancel();
        await banditUpdate;
      });
    }

    log.info({ proxy: proxyUrl, admin: adminUrl, engine: engine.kind, strategy: strategy.kind, weights: strategy.weights() }, "abgate is serving");

    // Another gateway of this experiment on this store: each keeps the weights and ranges it loaded, and a change
    // made through one never reaches the other (units then served in two variants). Each running gateway notes
    // itself in the store every GATEWAY_BEAT_MS; one that finds another's recent note says so, once.
    const run = { id: randomBytes(8).toString("hex"), pid: process.pid, owner: ownerLabel(), admin: adminUrl };
    let beatTimer: TimerHandle | null = null;
    let warnedOf: string | null = null;
    const beat = async (): Promise<void> => {
      try {
        const raw = await store.getState(config.experiment, GATEWAY_STATE_KEY);
        const other = raw ? (JSON.parse(raw) as { id?: string; pid?: number; host?: string; owner?: string; admin?: string; at?: number; stopped?: boolean }) : null;
        const now = clock.now();
        // (one of this host whose process is gone, or whose pid is now another process's, was killed, not stopped:
        // a restart after kill -9, or of its container, is no second gateway; a note of the version before has only
        // host and pid)
        const owner = other?.owner ?? (typeof other?.host === "string" && typeof other.pid === "number" ? `${other.host}/${other.pid}/?` : undefined);
        const gone = owner !== undefined && ownerAliveHere(owner) === false;
        if (other && other.id !== run.id && !other.stopped && !gone && typeof other.at === "number" && now - other.at < 2 * GATEWAY_BEAT_MS && warnedOf !== other.id) {
          warnedOf = other.id ?? null;
          log.warn(
            { otherPid: other.pid, otherAdmin: other.admin, secondsAgo: Math.round((now - other.at) / 1000) },
            "another abgate serves this experiment on this store: each keeps its own weights and sticky ranges, so a weight change made through one does not reach the other, and units are served in two variants; run one gateway per experiment and store",
          );
        }
        await store.setState(config.experiment, GATEWAY_STATE_KEY, JSON.stringify({ ...run, at: now }));
      } catch {
        // (a store that cannot answer now: the exposures' and events' own errors say so)
      }
    };
    await beat();
    const nextBeat = (): void => {
      beatTimer = clock.setTimeout(() => void beat().finally(() => !shuttingDown && nextBeat()), GATEWAY_BEAT_MS);
    };
    nextBeat();
    cleanups.push(async () => {
      beatTimer?.cancel();
      // (a clean stop: the next start, here or elsewhere, is not taken for a second gateway)
      await store.setState(config.experiment, GATEWAY_STATE_KEY, JSON.stringify({ ...run, at: clock.now(), stopped: true })).catch(() => undefined);
    });

    let stopping: Promise<void> | null = null;
    const stop = () =>
      (stopping ??= (async () => {
        shuttingDown = true;
        log.info({ inFlight: inFlight(), adminInFlight: adminInFlight() }, "draining: no new connections; finishing in-flight requests");
        // Stop accepting; idle keep-alive connections close now, busy ones after their response. The admin listener
        // drains the same way rather than being cut off: a POST /v1/events whose write has started is stored even if
        // its connection is closed, and a client that saw no {"accepted": N} would retry it and store it twice.
        proxy.close();
        void closeAdmin();
        const deadline = Date.now() + config.limits.drainTimeoutMs;
        while ((inFlight() > 0 || adminInFlight() > 0) && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, 20));
          proxy.closeIdleConnections();
          adminServer.closeIdleConnections();
        }
        if (inFlight() > 0 || adminInFlight() > 0) {
          log.warn({ inFlight: inFlight(), adminInFlight: adminInFlight() }, "drain timeout: closing remaining connections");
        }
        proxy.closeAllConnections();
        adminServer.closeAllConnections();
        closeTunnels();
        // What was cut records itself as its socket closes, a moment later: wait for that (briefly), or the store
        // would be closed first and those exposures lost.
        const recordedBy = Date.now() + 1000;
        while (inFlight() > 0 && Date.now() < recordedBy) await new Promise((r) => setTimeout(r, 5));
        throttledLog.flush();
        await cleanup();
        log.info("stopped");
      })());

    return { proxyUrl, adminUrl, adminToken: token, engine, store, strategy, health, stop };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** What happens to the requests of a variant without a healthy replica, in words (the log's, the CLI's). */
export function fallbackOutcome(variant: string, fallback: string, fallbackHealthy: boolean): string {
  if (fallback === "reject" || fallback === variant) return "its requests get 503";
  return fallbackHealthy
    ? `its requests are served by ${fallback} (fallback), recorded as assigned ${variant}, served ${fallback}`
    : `its requests get 503 (the fallback ${fallback} has no healthy replica either)`;
}
