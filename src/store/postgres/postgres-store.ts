import { createRequire } from "node:module";
import type pgModule from "pg";
import type { MetricConfig } from "../../config/index.ts";
import { StoreError } from "../../errors.ts";
import { aggregateExperiment, experimentCounts, minuteSeries, type Query } from "../aggregate.ts";
import { latestSchemaVersion, migrations } from "../migrations.ts";
import {
  checkEvent,
  checkExposure,
  HIST_UPSERT,
  MINUTE_UPSERT,
  type RollupUpsert,
  rollupExposures,
  UNIT_UPSERT,
} from "../rollup.ts";
import { UnitCache } from "../unit-cache.ts";
import type { ExperimentAggregates, Exposure, MinuteBucket, OutcomeEvent, Store } from "../types.ts";

/**
 * One statement for all of a batch's rows of a rollup: each column's values as one array parameter, zipped back
 * into rows by `unnest`.
 */
function unnestUpsert<T>(upsert: RollupUpsert<T>, rows: readonly T[], returning = ""): [string, unknown[][]] {
  const arrays = upsert.columns.map(([, , type], i) => `$${i + 1}::${type}[]`).join(", ");
  return [
    `${upsert.head} SELECT * FROM unnest(${arrays}) ${upsert.tail} ${returning}`,
    upsert.columns.map(([, field]) => rows.map((r) => r[field])),
  ];
}

export interface PostgresStoreOptions {
  /** pool size (default 4) */
  maxConnections?: number;
  /** units remembered per experiment to skip redundant `units` upserts (see UnitCache; default 100,000, at most 16 MiB for ids of up to 44 characters); 0 disables */
  unitCacheSize?: number;
}

/** Any fixed 64-bit number: the advisory lock that serialises concurrent `init()`s of several abgate processes. */
const MIGRATION_LOCK_ID = 0x61626761_7465n; // "abgate"

const INT8_OID = 20;
const NUMERIC_OID = 1700;

/**
 * COUNT and BIGINT columns come back from `pg` as strings (they may exceed 2^53); every count and millisecond
 * timestamp here is far below that, so they are parsed as numbers, as are NUMERIC sums of BIGINTs.
 */
/**
 * `pg` is loaded when a PostgreSQL store is opened, not when abgate starts: most runs use SQLite, and every module
 * loaded at start-up stays in the resident memory of a proxy that may hold thousands of idle connections.
 */
let pgLoaded: typeof pgModule | undefined;
function pgLib(): typeof pgModule {
  return (pgLoaded ??= createRequire(import.meta.url)("pg") as typeof pgModule);
}

const types = {
  getTypeParser(oid: number, format?: "text" | "binary") {
    if (oid === INT8_OID || oid === NUMERIC_OID) return (v: string) => Number(v);
    return pgLib().types.getTypeParser(oid, format as "text");
  },
};

/** Numbers the shared queries' `?` placeholders as `$1, $2, ...` (none of those queries has `?` in a literal). */
export function toPgPlaceholders(sql: string): string {
  let i = 0;
  return sql.replace(/\?/g, () => `$${++i}`);
}

function byKey<T>(key: (t: T) => string): (a: T, b: T) => number {
  return (a, b) => {
    const ka = key(a);
    const kb = key(b);
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  };
}

/**
 * The same store on PostgreSQL (`pg` pool). Each write is one transaction of a few array-parameter statements
 * (`unnest`), so a 1,000-row batch is a handful of round trips, not a thousand. Events are durable when COMMIT
 * returns: the event transaction sets `synchronous_commit = on` locally, so the WAL is flushed before the commit is
 * acknowledged even where the server or role defaults to asynchronous commit. Exposures keep the server's default.
 * Upserted rows are sorted by key so that concurrent writers lock rows in the same order and cannot deadlock.
 */
export class PostgresStore implements Store {
  readonly url: string;
  #pool: pgModule.Pool;
  #cache: UnitCache;
  #initialised = false;
  #closed = false;

  constructor(url: string, options: PostgresStoreOptions = {}) {
    this.url = url;
    this.#cache = new UnitCache(options.unitCacheSize ?? 100_000);
    this.#pool = new (pgLib().Pool)({ connectionString: url, max: options.maxConnections ?? 4, types });
    // An idle client that loses its server emits 'error' on the pool; without a listener that would crash the process.
    this.#pool.on("error", () => {});
  }

  /** The URL without its password, for messages. */
  get #where(): string {
    try {
      const u = new URL(this.url);
      u.password = "";
      return u.toString();
    } catch {
      return "postgres";
    }
  }

  async #tx<T>(fn: (client: pgModule.PoolClient) => Promise<T>, what: string): Promise<T> {
    if (this.#closed) throw new StoreError(`PostgreSQL store ${this.#where} is closed`);
    let client: pgModule.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (err) {
      throw new StoreError(`cannot connect to ${this.#where} to ${what}: ${(err as Error).message}`, { cause: err });
    }
    try {
      await client.query("BEGIN");
      const result = await fn(client);
      await client.query("COMMIT");
      return result;
    } catch (err) {
      await client.query("ROLLBACK").catch(() => {});
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot ${what} on ${this.#where}: ${(err as Error).message}`, { cause: err });
    } finally {
      client.release();
    }
  }

  async init(): Promise<void> {
    await this.#tx(async (c) => {
      await c.query(`SELECT pg_advisory_xact_lock($1)`, [MIGRATION_LOCK_ID.toString()]);
      await c.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`);
      const res = await c.query<{ version: number }>(`SELECT version FROM schema_migrations`);
      const applied = new Set(res.rows.map((r) => r.version));
      const newest = Math.max(0, ...applied);
      if (newest > latestSchemaVersion) {
        throw new StoreError(
          `${this.#where} has schema version ${newest}, newer than this abgate understands (${latestSchemaVersion}); upgrade abgate`,
        );
      }
      for (const m of migrations) {
        if (applied.has(m.version)) continue;
        for (const sql of m.postgres) await c.query(sql);
        await c.query(`INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`, [m.version, m.name, Date.now()]);
      }
    }, "migrate the schema");
    this.#initialised = true;
  }

  #ready(): void {
    if (this.#closed) throw new StoreError(`PostgreSQL store ${this.#where} is closed`);
    if (!this.#initialised) throw new StoreError(`PostgreSQL store ${this.#where} is not initialised: call init() first`);
  }

  async writeExposures(rows: Exposure[]): Promise<void> {
    if (rows.length === 0) return;
    this.#ready();
    rows.forEach(checkExposure);
    const roll = rollupExposures(rows, this.#cache);
    roll.units.sort(byKey((u) => `${u.experiment}\u0000${u.unit}`));
    roll.minutes.sort(byKey((m) => `${m.experiment}\u0000${m.minute}\u0000${m.variant}`));
    roll.hist.sort(byKey((h) => `${h.experiment}\u0000${h.variant}\u0000${String(h.bucket).padStart(6, "0")}`));
    const counts = [...roll.counts].sort(byKey(([e]) => e));

    const col = <K extends keyof Exposure>(k: K) => rows.map((r) => r[k]);
    const written = await this.#tx(async (c) => {
      await c.query(
        `INSERT INTO exposures (experiment, ts, request_id, unit, assigned, served, replica, status, latency_ms, forced)
         SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                              $8::int[], $9::float8[], $10::smallint[])`,
        [
          col("experiment"),
          rows.map((r) => Math.trunc(r.ts)),
          col("requestId"),
          col("unit"),
          col("assigned"),
          col("served"),
          col("replica"),
          col("status"),
          col("latencyMs"),
          rows.map((r) => (r.forced ? 1 : 0)),
        ],
      );
      let unitRows: { experiment: string; unit: string; first_ts: number; first_variant: string; multi: number }[] = [];
      if (roll.units.length > 0) {
        const res = await c.query(...unnestUpsert(UNIT_UPSERT, roll.units, "RETURNING experiment, unit, first_ts, first_variant, multi"));
        unitRows = res.rows;
      }
      await c.query(...unnestUpsert(MINUTE_UPSERT, roll.minutes));
      if (roll.hist.length > 0) await c.query(...unnestUpsert(HIST_UPSERT, roll.hist));
      await c.query(
        `INSERT INTO counters (experiment, exposures, events) SELECT e, n, 0 FROM unnest($1::text[], $2::bigint[]) AS t(e, n)
         ON CONFLICT (experiment) DO UPDATE SET exposures = counters.exposures + excluded.exposures`,
        [counts.map(([e]) => e), counts.map(([, n]) => n)],
      );
      return unitRows;
    }, `write ${rows.length} exposures`);
    for (const u of written) this.#cache.remember(u.experiment, u.unit, u.first_ts, u.first_variant, u.multi === 1);
  }

  async writeEvents(rows: OutcomeEvent[]): Promise<void> {
    if (rows.length === 0) return;
    this.#ready();
    rows.forEach(checkEvent);
    const counts = new Map<string, number>();
    for (const e of rows) counts.set(e.experiment, (counts.get(e.experiment) ?? 0) + 1);
    const sorted = [...counts].sort(byKey(([e]) => e));
    await this.#tx(async (c) => {
      // Durable at COMMIT even if the server or role defaults to asynchronous commit.
      await c.query(`SET LOCAL synchronous_commit = on`);
      await c.query(
        `INSERT INTO events (experiment, unit, event, value, ts, request_id)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::bigint[], $6::text[])`,
        [
          rows.map((r) => r.experiment),
          rows.map((r) => r.unit),
          rows.map((r) => r.event),
          rows.map((r) => r.value),
          rows.map((r) => Math.trunc(r.ts)),
          rows.map((r) => r.requestId),
        ],
      );
      await c.query(
        `INSERT INTO counters (experiment, exposures, events) SELECT e, 0, n FROM unnest($1::text[], $2::bigint[]) AS t(e, n)
         ON CONFLICT (experiment) DO UPDATE SET events = counters.events + excluded.events`,
        [sorted.map(([e]) => e), sorted.map(([, n]) => n)],
      );
    }, `write ${rows.length} events`);
  }

  async getState(experiment: string, key: string): Promise<string | null> {
    const rows = await this.#query(`SELECT value FROM state WHERE experiment = ? AND key = ?`, [experiment, key]);
    return rows.length > 0 ? String(rows[0]!.value) : null;
  }

  async setState(experiment: string, key: string, value: string): Promise<void> {
    await this.#query(
      `INSERT INTO state (experiment, key, value, updated_at) VALUES (?, ?, ?, ?)
       ON CONFLICT (experiment, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
      [experiment, key, value, Date.now()],
    );
  }

  #query: Query = async (sql, params) => {
    this.#ready();
    try {
      const res = await this.#pool.query(toPgPlaceholders(sql), params);
      return res.rows as Record<string, unknown>[];
    } catch (err) {
      throw new StoreError(`PostgreSQL query failed on ${this.#where}: ${(err as Error).message}`, { cause: err });
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

  /** Waits for queries in flight, then closes the pool. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#pool.end();
  }
}
