import { createRequire } from "node:module";
import { Socket } from "node:net";
import type pgModule from "pg";
import type { MetricConfig } from "../../config/index.ts";
import { InvalidArgumentError, StoreError } from "../../errors.ts";
import { aggregateExperiment, experimentCounts, minuteSeries, RECENT_UNITS_SQL_PG, recentUnits, totalsBefore, type Query } from "../aggregate.ts";
import { checkSchemaReadOnly, foreignMigrationsTable, latestSchemaVersion, migrations, notAbgateStore } from "../migrations.ts";
import {
  checkEvent,
  checkExposures,
  HIST_UPSERT,
  MINUTE_UPSERT,
  type RollupUpsert,
  rollupExposures,
  UNIT_UPSERT,
} from "../rollup.ts";
import { UnitCache } from "../unit-cache.ts";
import type { AggregateOptions, CarriedTotals, ExperimentAggregates, Exposure, MinuteBucket, OutcomeEvent, Store } from "../types.ts";

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
  /** units remembered per experiment to skip redundant `units` upserts (see UnitCache; default 100,000: at most 4 MiB); 0 disables */
  unitCacheSize?: number;
  /** how long opening a connection may take, TCP and start-up handshake (default 5,000 ms) */
  connectTimeoutMs?: number;
  /** the server's `statement_timeout` for each statement of a write (default 15,000 ms) */
  writeTimeoutMs?: number;
  /** the server's `statement_timeout` for each query of a read: report, dashboard, counts, state (default 60,000 ms) */
  readTimeoutMs?: number;
  /**
   * Only read (`abgate report`): init() runs no migration (so a role with SELECT rights alone will do; an older
   * schema is an error that says to open it writable once) and every write is refused with a StoreError.
   */
  readOnly?: boolean;
}

/*
 * Timeouts, so that a server that stops answering (hung, SIGSTOPped, behind a network partition that drops packets)
 * fails writes and reads with a StoreError instead of leaving them, and shutdown, waiting forever.
 * - Writes: a 2,000-row exposure batch (the batcher's largest write) took 70 ms (median; at most 100 ms) and a
 *   10,000-event batch 160-190 ms on a local PostgreSQL 15 here, so 15 s per statement leaves a margin of over 75x
 *   for a loaded or remote server.
 * - Reads: the report's queries scan every event of an experiment (issue 4's target: under 5 s for 10M exposures
 *   and 1M events), so they get 60 s each.
 * The server enforces these (`statement_timeout`): it cancels the statement and answers an error, and the connection
 * stays usable. The client gives up CLIENT_GRACE_MS later (pg's `query_timeout`), which only a server that answers
 * nothing at all reaches; that connection is then in an unknown state and is discarded.
 */
const CONNECT_TIMEOUT_MS = 5_000;
const WRITE_TIMEOUT_MS = 15_000;
const READ_TIMEOUT_MS = 60_000;
const CLIENT_GRACE_MS = 2_000;
/** How often #settle asks for the status of a transaction whose COMMIT failed. */
const SETTLE_POLL_MS = 50;
/**
 * A transaction left open by a client that vanished (abgate killed, or cut off by a partition, mid-write) would hold
 * its row locks on the rollups, blocking every other abgate's writes, until the server's TCP keepalive noticed:
 * hours by default. Ours run their statements back to back, so a minute idle inside one means it is abandoned.
 */
const IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000;
/**
 * `close()` lets queries in flight finish for this long past their own client-side timeout, then destroys the
 * sockets: a server that stopped answering neither answers them nor acknowledges a goodbye.
 */
const CLOSE_GRACE_MS = 1_000;
/** pg's per-query `query_timeout` falls back to the pool's when 0, and Node timers hold at most 2^31 - 1 ms (24.8 days). */
const NO_CLIENT_TIMEOUT_MS = 2 ** 31 - 1;

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

/** The columns of the schema_migrations table that unqualified names reach (the search path's first schema that has one). */
const MIGRATION_COLUMNS_SQL = `SELECT a.attname AS column_name FROM pg_attribute a
  WHERE a.attrelid = to_regclass('schema_migrations') AND a.attnum > 0 AND NOT a.attisdropped`;

/**
 * The same store on PostgreSQL (`pg` pool). Each write is one transaction of a few array-parameter statements
 * (`unnest`), so a 1,000-row batch is a handful of round trips, not a thousand. Events are durable when COMMIT
 * returns: the event transaction sets `synchronous_commit = on` locally, so the WAL is flushed before the commit is
 * acknowledged even where the server or role defaults to asynchronous commit. Exposures keep the server's default.
 * Upserted rows are sorted by key so that concurrent writers lock rows in the same order and cannot deadlock.
 */
export class PostgresStore implements Store {
  readonly url: string;
  /** opened with `readOnly`: no migration, writes refused */
  readonly readOnly: boolean;
  migratedFrom?: number;
  #pool: pgModule.Pool;
  #cache: UnitCache;
  #initialised = false;
  #closed = false;
  readonly #writeTimeoutMs: number;
  readonly #readTimeoutMs: number;
  /** reads running, at most #maxReads (one connection is always left for writes), and those waiting for a turn */
  #readsRunning = 0;
  readonly #maxReads: number;
  readonly #readWaiters = new Set<{ go: () => void }>();
  /** every socket the pool opened and that has not closed yet, each with a promise of its 'close' */
  readonly #sockets = new Map<Socket, Promise<void>>();

  constructor(url: string, options: PostgresStoreOptions = {}) {
    this.url = url;
    this.readOnly = options.readOnly ?? false;
    this.#cache = new UnitCache(options.unitCacheSize ?? 100_000);
    const connectTimeoutMs = timeoutOption(options, "connectTimeoutMs", CONNECT_TIMEOUT_MS);
    this.#writeTimeoutMs = timeoutOption(options, "writeTimeoutMs", WRITE_TIMEOUT_MS);
    this.#readTimeoutMs = timeoutOption(options, "readTimeoutMs", READ_TIMEOUT_MS);
    const maxConnections = options.maxConnections ?? 4;
    this.#maxReads = Math.max(1, maxConnections - 1);
    this.#pool = new (pgLib().Pool)({
      connectionString: url,
      max: maxConnections,
      types,
      connectionTimeoutMillis: connectTimeoutMs,
      // The connection's statement_timeout is the read timeout (reads go through pool.query, one statement each);
      // write transactions lower it with SET LOCAL in the same round trip as their BEGIN. The client-side default
      // is the writes'; reads and migrations name their own.
      statement_timeout: this.#readTimeoutMs,
      query_timeout: this.#writeTimeoutMs + CLIENT_GRACE_MS,
      idle_in_transaction_session_timeout: IDLE_IN_TRANSACTION_TIMEOUT_MS,
      // pg's own socket, made here so that close() can destroy what a hung server never closes.
      stream: () => {
        const socket = new Socket();
        this.#sockets.set(socket, new Promise((resolve) => socket.once("close", () => {
          this.#sockets.delete(socket);
          resolve();
        })));
        return socket;
      },
    });
    // An idle client that loses its server emits 'error' on the pool; without a listener that would crash the process.
    this.#pool.on("error", () => {});
  }

  /** The URL without its password, for messages. */
  get #where(): string {
    return redactedUrl(this.url);
  }

  /**
   * Runs `fn` in a transaction whose statements each get `statementTimeoutMs` on the server (0: none). On the client
   * each query gets writeTimeoutMs + CLIENT_GRACE_MS (the pool's `query_timeout`) unless it names its own.
   *
   * With `settle`, the transaction's id is read in the BEGIN round trip. Why: when COMMIT fails (the connection
   * dropped after it was sent, no answer in time, a FATAL at shutdown), the transaction may or may not have
   * committed, and the caller's retry would then write the rows twice (exposures counted twice; events answered
   * with an error, resent by the client, stored twice). txid_status settles it, as PostgreSQL's documentation
   * suggests for a commit whose answer was lost (§9.27.11): see #settle.
   */
  async #tx<T>(fn: (client: pgModule.PoolClient) => Promise<T>, what: string, statementTimeoutMs = this.#writeTimeoutMs, settle = false): Promise<T> {
    if (this.#closed) throw new StoreError(`PostgreSQL store ${this.#where} is closed`);
    let client: pgModule.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (err) {
      throw new StoreError(`cannot connect to ${this.#where} to ${what}: ${(err as Error).message}`, { cause: err });
    }
    /** set when the connection cannot be trusted any more: release() then closes it instead of pooling it */
    let broken: Error | undefined;
    // A connection that ends while checked out fails its query and also emits 'error', which the pool listens for
    // only on idle clients: unheard, it would be an uncaught exception.
    const onError = (err: Error) => void (broken ??= err);
    client.on("error", onError);
    const release = () => {
      client.removeListener("error", onError);
      client.release(broken);
    };
    /** the transaction's id (txid_current), when it is to be settled */
    let txid: string | undefined;
    /** set once COMMIT is on its way: a failure from then on leaves the outcome unknown */
    let committing = false;
    let result: T;
    try {
      // One round trip: the simple query protocol runs every statement of the string.
      if (settle) {
        const begun = (await client.query(`BEGIN; SET LOCAL statement_timeout = ${statementTimeoutMs}; SELECT txid_current() AS txid`)) as unknown as pgModule.QueryResult[];
        txid = String(begun[begun.length - 1]!.rows[0].txid);
      } else {
        await client.query(`BEGIN; SET LOCAL statement_timeout = ${statementTimeoutMs}`);
      }
      result = await fn(client);
      committing = true;
      await client.query("COMMIT");
    } catch (err) {
      // An error the server answered (pg's DatabaseError: a constraint, a statement timeout) or one of our own
      // checks leaves the connection usable and the transaction to roll back. Anything else (no answer in time, a
      // dropped socket) leaves it in an unknown state, mid-statement maybe, where a ROLLBACK would only queue behind
      // that statement: the connection is closed instead, which ends the transaction on the server.
      if (err instanceof pgLib().DatabaseError || err instanceof StoreError) {
        await client.query("ROLLBACK").catch((e: Error) => (broken = e));
      } else {
        broken = err as Error;
      }
      release();
      if (err instanceof StoreError) throw err;
      if (committing && txid !== undefined) {
        const outcome = await this.#settle(txid);
        if (outcome === "committed") return result!;
        if (outcome === "unknown") {
          throw new StoreError(`cannot ${what} on ${this.#where}: COMMIT failed (${reason(err)}) and whether it committed could not be learnt`, {
            cause: err,
            code: "ABGATE_ERR_STORE_OUTCOME_UNKNOWN",
          });
        }
      }
      throw new StoreError(`cannot ${what} on ${this.#where}: ${reason(err)}`, { cause: err });
    }
    release();
    return result;
  }

  /**
   * Whether transaction `txid`, whose COMMIT failed, committed: txid_status on another connection, asked until it
   * is no longer "in progress" (the old backend may still be committing, or not yet have noticed that its client is
   * gone, which closing the connection made sure it will). "unknown" when that is not learnt within writeTimeoutMs.
   * The status is the cluster's, so a pooler in front (another backend answers) does not change it.
   */
  async #settle(txid: string): Promise<"committed" | "aborted" | "unknown"> {
    const deadline = Date.now() + this.#writeTimeoutMs;
    while (!this.#closed && Date.now() < deadline) {
      try {
        const res = await this.#pool.query(withQueryTimeout(`SELECT txid_status($1) AS status`, [txid], Math.max(1, deadline - Date.now())));
        const status = res.rows[0]?.status as string | null | undefined;
        if (status === "committed" || status === "aborted") return status;
        // null: the id is older than the commit log the server keeps; impossible seconds later, but not a yes
        if (status !== "in progress") return "unknown";
      } catch {
        // unreachable for now: try again until the deadline
      }
      await new Promise((resolve) => setTimeout(resolve, SETTLE_POLL_MS));
    }
    return "unknown";
  }

  async init(): Promise<void> {
    if (this.readOnly) return this.#checkSchema();
    await this.#tx(async (c) => {
      // No timeouts here: a migration may rewrite a big table, and a second abgate waits on this lock until the
      // first one's migration is done. A server that hangs before init() connects fails it in connectTimeoutMs.
      const q = (text: string, values: unknown[] = []) => c.query(withQueryTimeout(text, values, NO_CLIENT_TIMEOUT_MS));
      await q(`SELECT pg_advisory_xact_lock($1)`, [MIGRATION_LOCK_ID.toString()]);
      const columns = (await q(MIGRATION_COLUMNS_SQL)).rows.map((r) => String(r.column_name));
      if (columns.length > 0 && foreignMigrationsTable(columns)) throw notAbgateStore(this.#where);
      await q(`CREATE TABLE IF NOT EXISTS schema_migrations (
        version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)`);
      const res = await q(`SELECT version FROM schema_migrations`);
      const applied = new Set(res.rows.map((r) => Number(r.version)));
      const newest = Math.max(0, ...applied);
      if (newest > latestSchemaVersion) {
        throw new StoreError(
          `${this.#where} has schema version ${newest}, newer than this abgate understands (${latestSchemaVersion}); upgrade abgate`,
        );
      }
      if (newest > 0 && newest < latestSchemaVersion) this.migratedFrom = newest;
      for (const m of migrations) {
        if (applied.has(m.version)) continue;
        for (const sql of m.postgres) await q(sql);
        await q(`INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)`, [m.version, m.name, Date.now()]);
      }
    }, "migrate the schema", 0);
    this.#initialised = true;
  }

  /** A read-only store's init: no migration (nor the lock and CREATE TABLE it takes), only the version check. */
  async #checkSchema(): Promise<void> {
    if (this.#closed) throw new StoreError(`PostgreSQL store ${this.#where} is closed`);
    let applied: Set<number>;
    try {
      const q = (text: string) => this.#pool.query(withQueryTimeout(text, [], this.#readTimeoutMs + CLIENT_GRACE_MS));
      const present = (await q(`SELECT to_regclass('schema_migrations') IS NOT NULL AS present`)).rows[0]?.present === true;
      if (present && foreignMigrationsTable((await q(MIGRATION_COLUMNS_SQL)).rows.map((r) => String(r.column_name)))) throw notAbgateStore(this.#where);
      applied = new Set(present ? (await q(`SELECT version FROM schema_migrations`)).rows.map((r) => Number(r.version)) : []);
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot read the schema version of ${this.#where}: ${reason(err)}`, { cause: err });
    }
    checkSchemaReadOnly(this.#where, applied);
    this.#initialised = true;
  }

  /** Refuses a write to a read-only store (before the server would, with a message that says why). */
  #writable(what: string): void {
    if (this.readOnly) throw new StoreError(`PostgreSQL store ${this.#where} is open read-only: cannot ${what}`);
  }

  #ready(): void {
    if (this.#closed) throw new StoreError(`PostgreSQL store ${this.#where} is closed`);
    if (!this.#initialised) throw new StoreError(`PostgreSQL store ${this.#where} is not initialised: call init() first`);
  }

  async writeExposures(rows: Exposure[]): Promise<void> {
    this.#writable(`write ${rows.length} exposures`);
    if (rows.length === 0) return;
    this.#ready();
    checkExposures(rows);
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
    }, `write ${rows.length} exposures`, this.#writeTimeoutMs, true);
    for (const u of written) this.#cache.remember(u.experiment, u.unit, u.first_ts, u.first_variant, u.multi === 1);
  }

  async writeEvents(rows: OutcomeEvent[]): Promise<void> {
    this.#writable(`write ${rows.length} events`);
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
    }, `write ${rows.length} events`, this.#writeTimeoutMs, true);
  }

  async getState(experiment: string, key: string): Promise<string | null> {
    const rows = await this.#query(`SELECT value FROM state WHERE experiment = ? AND key = ?`, [experiment, key]);
    return rows.length > 0 ? String(rows[0]!.value) : null;
  }

  async setState(experiment: string, key: string, value: string): Promise<void> {
    this.#writable(`save state ${experiment}/${key}`);
    // A write like the others (the write timeout, and a COMMIT whose answer is lost settled): as a plain query, a
    // weight change whose acknowledgement was lost was answered 503 but stored, and took effect at the next restart.
    await this.#tx(
      (c) =>
        c.query(
          `INSERT INTO state (experiment, key, value, updated_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (experiment, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
          [experiment, key, value, Date.now()],
        ),
      `save state ${experiment}/${key}`,
      this.#writeTimeoutMs,
      true,
    );
  }

  #query: Query = async (sql, params) => {
    this.#ready();
    // Reads take at most all connections but one (with two or more): reports hung on a lock (GET /v1/report needs no token, and an open
    // dashboard asks every 5 s) took all four, and the exposures' and events' writes then failed on tables that were
    // free. A read waits for its turn here, within the read timeout, holding no connection.
    await this.#readSlot();
    try {
      // pool.query discards a connection whose query failed, so one that timed out on the client is not reused.
      return await this.#read(this.#pool, sql, params);
    } finally {
      this.#releaseReadSlot();
    }
  };

  /** A read in the shared SQL on `on` (the pool, or a snapshot's connection), within the read timeout. */
  async #read(on: pgModule.Pool | pgModule.PoolClient, sql: string, params: unknown[]): Promise<Record<string, unknown>[]> {
    try {
      // The server's statement_timeout is the connection's default, the read timeout.
      const res = await on.query(withQueryTimeout(toPgPlaceholders(sql), params, this.#readTimeoutMs + CLIENT_GRACE_MS));
      return res.rows as Record<string, unknown>[];
    } catch (err) {
      throw new StoreError(`PostgreSQL query failed on ${this.#where}: ${reason(err)}`, { cause: err });
    }
  }

  /** Waits until fewer than #maxReads reads run, at most the read timeout (then a StoreError). */
  #readSlot(): Promise<void> {
    if (this.#readsRunning < this.#maxReads) {
      this.#readsRunning++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiter = {
        go: () => {
          clearTimeout(timer);
          resolve();
        },
      };
      const timer = setTimeout(() => {
        this.#readWaiters.delete(waiter);
        reject(new StoreError(`PostgreSQL store ${this.#where}: ${this.#maxReads} reads already running for ${this.#readTimeoutMs} ms (the database is slow or locked)`));
      }, this.#readTimeoutMs);
      timer.unref?.();
      this.#readWaiters.add(waiter);
    });
  }

  #releaseReadSlot(): void {
    const next = this.#readWaiters.values().next();
    if (next.done) {
      this.#readsRunning--;
      return;
    }
    // (the slot passes on: the count stays)
    this.#readWaiters.delete(next.value);
    next.value.go();
  }

  aggregate(experiment: string, variants: string[], metrics: MetricConfig[], options?: AggregateOptions): Promise<ExperimentAggregates> {
    return this.snapshot((query) => aggregateExperiment(query, experiment, variants, metrics, options));
  }

  minutes(experiment: string, metrics: MetricConfig[], sinceMs: number): Promise<MinuteBucket[]> {
    return this.snapshot((query) => minuteSeries(query, experiment, metrics, sinceMs));
  }

  totalsBefore(experiment: string, metrics: MetricConfig[], beforeMs: number): Promise<Record<string, CarriedTotals>> {
    return this.snapshot((query) => totalsBefore(query, experiment, metrics, beforeMs));
  }

  /**
   * Runs `fn`'s queries on one snapshot (a REPEATABLE READ, READ ONLY transaction on one connection, in one read slot):
   * each pool.query had a snapshot of its own, so a batch committed between the report's statements showed in some
   * of its figures and not in others (a treatment with 1 unit and 2 conversions).
   */
  async snapshot<T>(fn: (query: Query) => Promise<T>): Promise<T> {
    this.#ready();
    await this.#readSlot();
    try {
      return await this.#tx(
        async (client) => {
          await client.query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");
          return fn((sql, params) => this.#read(client, sql, params));
        },
        "read a snapshot",
        this.#readTimeoutMs,
      );
    } finally {
      this.#releaseReadSlot();
    }
  }

  counts(experiment: string): Promise<{ exposures: number; events: number }> {
    return experimentCounts(this.#query, experiment);
  }

  recentUnits(experiment: string, limit: number): Promise<[string, string][]> {
    return recentUnits(this.#query, experiment, limit, RECENT_UNITS_SQL_PG);
  }

  /**
   * Waits for queries in flight (a write gets its whole timeout, so the last exposures of a shutdown are not cut
   * short), then closes the pool. Whatever a server that stopped answering still holds open after that is
   * destroyed, so close() returns within writeTimeoutMs plus a few seconds however the server behaves. Idempotent.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const ended = this.#pool.end();
    if (!(await settlesWithin(ended, this.#writeTimeoutMs + CLIENT_GRACE_MS + CLOSE_GRACE_MS))) {
      // Queries on destroyed sockets fail at once, so their clients are released and the pool ends.
      this.#destroySockets();
      await settlesWithin(ended, CLOSE_GRACE_MS);
    }
    // pool.end() resolves once every client is released; their goodbyes (Terminate, then FIN) may still be in flight.
    if (!(await settlesWithin(Promise.all(this.#sockets.values()), CLOSE_GRACE_MS))) this.#destroySockets();
  }

  #destroySockets(): void {
    for (const socket of this.#sockets.keys()) socket.destroy();
  }
}

/** pg's message, and what its client-side timeout means (its message, "Query read timeout", does not say). */
function reason(err: unknown): string {
  const message = (err as Error).message;
  return message === "Query read timeout" ? "the server did not answer in time (hung or unreachable?): query read timeout" : message;
}

/** pg honours a per-query `query_timeout` (lib/client.js, `config.query_timeout`) that its types do not declare. */
function withQueryTimeout(text: string, values: unknown[], queryTimeoutMs: number): pgModule.QueryConfig {
  return { text, values, query_timeout: queryTimeoutMs } as pgModule.QueryConfig;
}

function timeoutOption(options: PostgresStoreOptions, key: "connectTimeoutMs" | "writeTimeoutMs" | "readTimeoutMs", fallback: number): number {
  const v = options[key] ?? fallback;
  if (!Number.isSafeInteger(v) || v <= 0 || v > NO_CLIENT_TIMEOUT_MS - CLIENT_GRACE_MS) {
    throw new InvalidArgumentError(`PostgresStore: ${key} must be a positive integer of milliseconds, got ${v}`);
  }
  return v;
}

/** Whether `p` settles within `ms`. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A PostgreSQL URL for messages, which reach logs and unauthenticated answers (GET /v1/experiment's storeError): no
 * password, neither in the userinfo nor as a `password` or `sslpassword` parameter (libpq takes both), nor any other
 * parameter whose name says it is a secret.
 */
export function redactedUrl(url: string): string {
  try {
    const u = new URL(url);
    u.password = "";
    for (const name of [...u.searchParams.keys()]) if (/pass|secret|token|key$/i.test(name) && !/^sslkey$/i.test(name)) u.searchParams.set(name, "***");
    return u.toString();
  } catch {
    return "postgres";
  }
}
