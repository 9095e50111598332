import { mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { Worker } from "node:worker_threads";
import Database from "better-sqlite3";
import type { MetricConfig } from "../../config/index.ts";
import { StoreError } from "../../errors.ts";
import { aggregateExperiment, experimentCounts, minuteSeries, type Query } from "../aggregate.ts";
import { latestSchemaVersion, migrations } from "../migrations.ts";
import {
  checkEvent,
  checkExposure,
  HIST_UPSERT_SET,
  MINUTE_UPSERT_SET,
  rollupExposures,
  UNIT_UPSERT_SET,
  UnitCache,
} from "../rollup.ts";
import type { ExperimentAggregates, Exposure, MinuteBucket, OutcomeEvent, Store } from "../types.ts";

export interface SqliteStoreOptions {
  /** units remembered to skip redundant `units` upserts (see UnitCache; default 100,000, about 16 MiB); 0 disables */
  unitCacheSize?: number;
  /** SQLite page cache in MiB (default 32; the report's joins like a warm cache, the proxy likes a small RSS) */
  cacheSizeMiB?: number;
  /**
   * How often a background thread checkpoints the WAL into the main file (default 1,000). 0 leaves checkpoints to
   * SQLite's automatic ones, which run inside a commit on the calling (proxy) thread.
   */
  checkpointIntervalMs?: number;
}

/**
 * The checkpointer thread: its own connection, PASSIVE checkpoints (they never block the writer) on an interval.
 * Kept as source text so it needs no build step; better-sqlite3's path comes in `workerData`.
 */
const CHECKPOINTER = `
const { workerData } = require("node:worker_threads");
const Database = require(workerData.driver);
const db = new Database(workerData.path);
db.pragma("busy_timeout = 1000");
setInterval(() => {
  try { db.pragma("wal_checkpoint(PASSIVE)"); } catch {}
}, workerData.intervalMs);
`;
const driverPath = createRequire(import.meta.url).resolve("better-sqlite3");

type Statement = Database.Statement<unknown[], unknown>;
type Statements = Record<
  "exposure" | "exposureChunk" | "unit" | "minute" | "hist" | "countExposures" | "event" | "countEvents" | "getState" | "setState",
  Statement
>;

const INSERT_EXPOSURES =
  "INSERT INTO exposures (experiment, ts, request_id, unit, assigned, served, replica, status, latency_ms, forced)";
const EXPOSURE_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const EXPOSURE_COLUMNS = 10;
/** 50 rows x 10 columns stays far below SQLite's 32,766 bound parameters. */
const EXPOSURE_CHUNK = 50;

function exposureParams(e: Exposure, out: unknown[], at: number): void {
  out[at] = e.experiment;
  out[at + 1] = Math.trunc(e.ts);
  out[at + 2] = e.requestId;
  out[at + 3] = e.unit;
  out[at + 4] = e.assigned;
  out[at + 5] = e.served;
  out[at + 6] = e.replica;
  out[at + 7] = e.status;
  out[at + 8] = e.latencyMs;
  out[at + 9] = e.forced ? 1 : 0;
}

/**
 * The default store: one SQLite file in WAL mode through better-sqlite3.
 *
 * Durability: the connection runs with `synchronous = NORMAL`, under which a WAL commit survives a crash of the
 * process (SIGKILL) but not necessarily of the machine, because the WAL is only fsync'd at checkpoints. That is
 * right for exposures, which are best-effort telemetry written many times a second. Outcome events are a promise
 * to a client (`{"accepted": N}`), so `writeEvents` switches the connection to `synchronous = FULL` for its one
 * transaction: SQLite then fsyncs the WAL as part of the commit, before `writeEvents` resolves. better-sqlite3 is
 * synchronous and this store owns its connection, so nothing else can run on it between the two pragma switches.
 * (A checkpoint per event batch would also be durable, but would copy pages into the main file on every request.)
 *
 * better-sqlite3 runs queries on the calling thread; the methods are async only to share the Store interface with
 * PostgreSQL. A batch of 1,000 exposures takes about 2 ms here, most of it the raw insert. Copying the WAL back
 * into the database file (a checkpoint, with its fsyncs) is what took 20-40 ms, every ~60 batches, when SQLite did
 * it automatically inside a commit; so automatic checkpoints are off on this connection and a worker thread with
 * its own connection runs PASSIVE checkpoints instead, off the proxy's event loop.
 */
export class SqliteStore implements Store {
  readonly path: string;
  #db: Database.Database;
  #cache: UnitCache;
  #closed = false;
  #stmts: Statements | null = null;
  #checkpointer: Worker | null = null;
  #checkpointIntervalMs: number;

  constructor(path: string, options: SqliteStoreOptions = {}) {
    this.path = path;
    this.#cache = new UnitCache(options.unitCacheSize ?? 100_000);
    this.#checkpointIntervalMs = path === ":memory:" ? 0 : (options.checkpointIntervalMs ?? 1000);
    try {
      if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
      this.#db = new Database(path);
      this.#db.pragma("journal_mode = WAL");
      this.#db.pragma("synchronous = NORMAL");
      // Another process (a second abgate, `abgate report`) may hold the write lock briefly.
      this.#db.pragma("busy_timeout = 5000");
      this.#db.pragma(`cache_size = ${-1024 * (options.cacheSizeMiB ?? 32)}`);
      this.#db.pragma("temp_store = MEMORY");
      // The WAL restarts from its beginning after each complete checkpoint but keeps its size; cap what it keeps.
      this.#db.pragma(`journal_size_limit = ${64 * 2 ** 20}`);
    } catch (err) {
      throw new StoreError(`cannot open SQLite store ${path}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Applies pending migrations in one IMMEDIATE transaction, so two processes starting at once do not race. */
  async init(): Promise<void> {
    this.#open();
    try {
      const db = this.#db;
      db.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`);
      db.transaction(() => {
        const applied = new Set(
          (db.prepare(`SELECT version FROM schema_migrations`).all() as { version: number }[]).map((r) => r.version),
        );
        const newest = Math.max(0, ...applied);
        if (newest > latestSchemaVersion) {
          throw new StoreError(
            `${this.path} has schema version ${newest}, newer than this abgate understands (${latestSchemaVersion}); upgrade abgate`,
          );
        }
        for (const m of migrations) {
          if (applied.has(m.version)) continue;
          for (const sql of m.sqlite) db.exec(sql);
          db.prepare(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`).run(m.version, m.name, Date.now());
        }
      }).immediate();
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot migrate SQLite store ${this.path}: ${(err as Error).message}`, { cause: err });
    }
    this.#prepare();
    this.#startCheckpointer();
  }

  #startCheckpointer(): void {
    if (this.#checkpointIntervalMs <= 0 || this.#checkpointer !== null) return;
    this.#db.pragma("wal_autocheckpoint = 0");
    const worker = new Worker(CHECKPOINTER, {
      eval: true,
      workerData: { driver: driverPath, path: this.path, intervalMs: this.#checkpointIntervalMs },
    });
    worker.unref();
    // Without the thread the WAL would grow without bound: fall back to SQLite's own checkpoints.
    const fallback = () => {
      if (this.#checkpointer !== worker) return;
      this.#checkpointer = null;
      if (!this.#closed) this.#db.pragma("wal_autocheckpoint = 1000");
    };
    worker.on("error", fallback);
    worker.on("exit", fallback);
    this.#checkpointer = worker;
  }

  #open(): void {
    if (this.#closed) throw new StoreError(`SQLite store ${this.path} is closed`);
  }

  #prepare(): void {
    const db = this.#db;
    this.#stmts = {
      exposure: db.prepare(`${INSERT_EXPOSURES} VALUES ${EXPOSURE_VALUES}`),
      exposureChunk: db.prepare(`${INSERT_EXPOSURES} VALUES ${Array(EXPOSURE_CHUNK).fill(EXPOSURE_VALUES).join(", ")}`),
      unit: db.prepare(
        `INSERT INTO units (experiment, unit, first_ts, first_variant, multi) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (experiment, unit) DO UPDATE SET ${UNIT_UPSERT_SET}
         RETURNING first_ts, first_variant, multi`,
      ),
      minute: db.prepare(
        `INSERT INTO minute_stats (experiment, minute, variant, requests, fallback, forced, errors, latency_n,
                                   latency_sum, latency_sum_sq, min_ts, max_ts)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (experiment, minute, variant) DO UPDATE SET ${MINUTE_UPSERT_SET}`,
      ),
      hist: db.prepare(
        `INSERT INTO latency_hist (experiment, variant, bucket, count) VALUES (?, ?, ?, ?)
         ON CONFLICT (experiment, variant, bucket) DO UPDATE SET ${HIST_UPSERT_SET}`,
      ),
      countExposures: db.prepare(
        `INSERT INTO counters (experiment, exposures, events) VALUES (?, ?, 0)
         ON CONFLICT (experiment) DO UPDATE SET exposures = counters.exposures + excluded.exposures`,
      ),
      event: db.prepare(
        `INSERT INTO events (experiment, unit, event, value, ts, request_id) VALUES (?, ?, ?, ?, ?, ?)`,
      ),
      countEvents: db.prepare(
        `INSERT INTO counters (experiment, exposures, events) VALUES (?, 0, ?)
         ON CONFLICT (experiment) DO UPDATE SET events = counters.events + excluded.events`,
      ),
      getState: db.prepare(`SELECT value FROM state WHERE experiment = ? AND key = ?`),
      setState: db.prepare(
        `INSERT INTO state (experiment, key, value, updated_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (experiment, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
      ),
    };
  }

  #s(): Statements {
    this.#open();
    if (this.#stmts === null) throw new StoreError(`SQLite store ${this.path} is not initialised: call init() first`);
    return this.#stmts;
  }

  async writeExposures(rows: Exposure[]): Promise<void> {
    if (rows.length === 0) return;
    const s = this.#s();
    rows.forEach(checkExposure);
    const roll = rollupExposures(rows, this.#cache);
    const written: { experiment: string; unit: string; row: { first_ts: number; first_variant: string; multi: number } }[] = [];
    try {
      this.#db.transaction(() => {
        // Rows go in EXPOSURE_CHUNK at a time through one multi-row INSERT: about 40% cheaper than a statement per
        // row, and this is the part of a batch that grows with traffic.
        const params = new Array<unknown>(EXPOSURE_CHUNK * EXPOSURE_COLUMNS);
        let i = 0;
        for (; i + EXPOSURE_CHUNK <= rows.length; i += EXPOSURE_CHUNK) {
          for (let j = 0; j < EXPOSURE_CHUNK; j++) exposureParams(rows[i + j]!, params, j * EXPOSURE_COLUMNS);
          s.exposureChunk.run(params);
        }
        const one = new Array<unknown>(EXPOSURE_COLUMNS);
        for (; i < rows.length; i++) {
          exposureParams(rows[i]!, one, 0);
          s.exposure.run(one);
        }
        for (const u of roll.units) {
          const row = s.unit.get(u.experiment, u.unit, u.firstTs, u.firstVariant, u.multi) as {
            first_ts: number;
            first_variant: string;
            multi: number;
          };
          written.push({ experiment: u.experiment, unit: u.unit, row });
        }
        for (const m of roll.minutes) {
          s.minute.run(
            m.experiment,
            m.minute,
            m.variant,
            m.requests,
            m.fallback,
            m.forced,
            m.errors,
            m.latencyN,
            m.latencySum,
            m.latencySumSq,
            m.minTs,
            m.maxTs,
          );
        }
        for (const h of roll.hist) s.hist.run(h.experiment, h.variant, h.bucket, h.count);
        for (const [experiment, n] of roll.counts) s.countExposures.run(experiment, n);
      })();
    } catch (err) {
      throw new StoreError(`cannot write ${rows.length} exposures to ${this.path}: ${(err as Error).message}`, { cause: err });
    }
    for (const w of written) this.#cache.remember(w.experiment, w.unit, w.row.first_ts, w.row.first_variant, w.row.multi === 1);
  }

  async writeEvents(rows: OutcomeEvent[]): Promise<void> {
    if (rows.length === 0) return;
    const s = this.#s();
    rows.forEach(checkEvent);
    const counts = new Map<string, number>();
    for (const e of rows) counts.set(e.experiment, (counts.get(e.experiment) ?? 0) + 1);
    try {
      this.#db.pragma("synchronous = FULL");
      try {
        this.#db.transaction(() => {
          for (const e of rows) s.event.run(e.experiment, e.unit, e.event, e.value, Math.trunc(e.ts), e.requestId);
          for (const [experiment, n] of counts) s.countEvents.run(experiment, n);
        })();
      } finally {
        this.#db.pragma("synchronous = NORMAL");
      }
    } catch (err) {
      throw new StoreError(`cannot write ${rows.length} events to ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  async getState(experiment: string, key: string): Promise<string | null> {
    const row = this.#s().getState.get(experiment, key) as { value: string } | undefined;
    return row?.value ?? null;
  }

  async setState(experiment: string, key: string, value: string): Promise<void> {
    try {
      this.#s().setState.run(experiment, key, value, Date.now());
    } catch (err) {
      throw new StoreError(`cannot save state ${experiment}/${key}: ${(err as Error).message}`, { cause: err });
    }
  }

  #query: Query = async (sql, params) => {
    this.#s();
    try {
      return this.#db.prepare(sql).all(...params) as Record<string, unknown>[];
    } catch (err) {
      throw new StoreError(`SQLite query failed on ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  };

  aggregate(experiment: string, variants: string[], metrics: MetricConfig[]): Promise<ExperimentAggregates> {
    return aggregateExperiment(this.#query, experiment, variants, metrics);
  }

  minutes(experiment: string, metrics: MetricConfig[], sinceMs: number): Promise<MinuteBucket[]> {
    return minuteSeries(this.#query, experiment, metrics, sinceMs);
  }

  counts(experiment: string): Promise<{ exposures: number; events: number }> {
    return experimentCounts(this.#query, experiment);
  }

  /** Runs a checkpoint so the file is self-contained, then closes. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stmts = null;
    const worker = this.#checkpointer;
    this.#checkpointer = null;
    if (worker !== null) await worker.terminate();
    try {
      if (this.#db.open) {
        this.#db.pragma("wal_checkpoint(TRUNCATE)");
        this.#db.close();
      }
    } catch (err) {
      throw new StoreError(`cannot close SQLite store ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }
}
