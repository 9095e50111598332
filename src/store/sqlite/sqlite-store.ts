import { accessSync, closeSync, constants as fsConstants, mkdirSync, openSync, readSync, realpathSync, statSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { pathToFileURL } from "node:url";
import { performance } from "node:perf_hooks";
import { Worker } from "node:worker_threads";
import Database from "better-sqlite3";
import type { MetricConfig } from "../../config/index.ts";
import { StoreError } from "../../errors.ts";
import { nextTurn } from "../../turn.ts";
import { aggregateExperiment, checkRecentUnitsLimit, experimentCounts, minuteSeries, RECENT_UNITS_SQL, totalsBefore, type Query } from "../aggregate.ts";
import { BLOCK_HEADER_BYTES, BLOCK_MAX_ROWS, BLOCK_ROW_BYTES, checkSchemaReadOnly, foreignMigrationsTable, latestSchemaVersion, migrations, notAbgateStore } from "../migrations.ts";
import {
  checkEvent,
  checkExposures,
  type ExposureRollup,
  ExposureRollupBuilder,
  HIST_UPSERT,
  MAX_ABS_TS_MS,
  MINUTE_UPSERT,
  type RollupUpsert,
  UNIT_UPSERT,
  type UnitDelta,
} from "../rollup.ts";
import { type ExposureBlock, UNIT_SLOT_CHARS } from "../exposure-block.ts";
import { UnitCache } from "../unit-cache.ts";
import type { AggregateOptions, CarriedTotals, ExperimentAggregates, Exposure, MinuteBucket, OutcomeEvent, Store } from "../types.ts";

/** What `close()` tells `onCloseCheckpoint` about its last checkpoint. */
export type CloseCheckpointEvent =
  | { kind: "waiting"; waitMs: number }
  | { kind: "incomplete"; waitedMs: number; framesLeft: number | null };

export interface SqliteStoreOptions {
  /** units remembered per experiment to skip redundant `units` upserts (see UnitCache; default 100,000: at most 4 MiB); 0 disables */
  unitCacheSize?: number;
  /** SQLite page cache in MiB (default 32; the report's joins like a warm cache, the proxy likes a small RSS) */
  cacheSizeMiB?: number;
  /**
   * How often a background thread checkpoints the WAL into the main file (default 1,000). 0 leaves checkpoints to
   * SQLite's automatic ones, which run inside a commit on the calling (proxy) thread.
   */
  checkpointIntervalMs?: number;
  /**
   * The WAL's size past which the checkpointer empties it even if the writer must wait (default 64 MiB; see
   * CHECKPOINTER). Below it checkpoints never hold up a write.
   */
  walCapBytes?: number;
  /**
   * Run those checkpoints on this store's own connection, between its writes, instead of on a thread (default
   * false): for a store that itself runs on a thread of its own (SqliteThreadStore), where a checkpoint holds up only
   * the writes, and another thread would cost memory (each one's heap: about 4 MB).
   */
  checkpointBetweenWrites?: boolean;
  /**
   * How long `writeExposures` keeps the event loop busy at a time, on average (default 0.5): it writes a big batch
   * in slices of about that, with a turn of the event loop between them, all in one transaction. The slower slices
   * (cold caches, a GC pause, rows of new units) take up to about twice as long. Smaller slices cost next to no CPU
   * (bench/store/exposures.ts: the same CPU per row at 0.5, 1 and 2 ms); the default keeps the longest near 1 ms.
   */
  writeSliceMs?: number;
  /** a monotonic clock in ms, to time those slices (default performance.now); tests inject one */
  monotonicMs?: () => number;
  /**
   * How long a write waits for another connection's write lock (default 5,000). SQLite waits by sleeping the
   * calling thread: a gateway, whose writes run on the proxy's thread, sets it short and lets its retries wait
   * instead (the exposure batcher backs off; an events POST gets a 503 to retry).
   */
  busyTimeoutMs?: number;
  /**
   * How long `close()` keeps trying to copy the WAL into the file (default 0: one try). The copy must wait for
   * other processes' reads of older snapshots to end; a gateway sets a few seconds, so that a report reading the
   * file while it stops (read-only, it cannot finish the copy after the gateway is gone) does not leave commits
   * in the -wal alone, where a copy of the file without it would miss them.
   */
  closeCheckpointWaitMs?: number;
  /**
   * Told when `close()` starts waiting for other readers (`"waiting"`, once) and when it stops with commits still
   * only in the -wal (`"incomplete"`: its wait ran out, or another connection keeps the file): the store has no
   * logger of its own, and a stop that pauses for seconds with nothing said looks hung. A gateway logs both.
   */
  onCloseCheckpoint?: (event: CloseCheckpointEvent) => void;
  /**
   * Open an existing store only to read it (`abgate report`): the file is opened read-only, no migration runs (an
   * older schema is an error that says to open it writable once), no checkpoint is run or started, and every write
   * is refused with a StoreError. The file and its -wal are left as they were; see `openReadOnly` for the -wal and
   * -shm files SQLite itself needs.
   */
  readOnly?: boolean;
}

/**
 * The checkpointer thread: its own connection, PASSIVE checkpoints (they never block the writer) on an interval.
 * Kept as source text so it needs no build step; better-sqlite3's path comes in `workerData`.
 */
const CHECKPOINTER = `
const { workerData } = require("node:worker_threads");
// Lowest CPU priority for this thread alone (Linux: the nice value is per thread, and /proc/thread-self names it):
// a checkpoint is maintenance, and on a busy core it would otherwise take turns of several ms with the proxy's
// thread, which shows in the proxy's p99. It keeps up anyway: a checkpoint is mostly waiting on the disk.
try {
  const tid = Number(require("node:fs").readlinkSync("/proc/thread-self").split("/").pop());
  if (tid > 0) require("node:os").setPriority(tid, 19);
} catch {}
const Database = require(workerData.driver);
const { statSync } = require("node:fs");
const db = new Database(workerData.path);
db.pragma("busy_timeout = " + workerData.truncateWaitMs);
// A PASSIVE checkpoint copies what is in the WAL when it starts; under writes that never pause, some frames always
// came after, the WAL is never all copied, so it never starts over, and it grew by 18 MB a second (75,000 new units a
// second: 218 MB in 12 s). Past walCapBytes a TRUNCATE checkpoint waits for the writer's transaction to end, holds
// off the next (the writer's retries wait meanwhile), copies everything and empties the WAL. A reader mid-read (a
// report) keeps it from finishing, and it holds the write lock while it waits for the reader (busy_timeout, 1 s): so
// after one that did not finish it does not try again for 10 s. Tried back to back it held the lock nearly all the
// time a reader read, and a writer that waits for the lock sleeps the proxy's thread (for at most its busyTimeoutMs).
let truncateAfter = 0;
setInterval(() => {
  try {
    db.pragma("wal_checkpoint(PASSIVE)");
    if (Date.now() >= truncateAfter && statSync(workerData.path + "-wal").size > workerData.walCapBytes) {
      const [r] = db.pragma("wal_checkpoint(TRUNCATE)");
      if (r && r.busy) truncateAfter = Date.now() + workerData.truncateRetryMs;
    }
  } catch {}
}, workerData.intervalMs);
`;
const driverPath = createRequire(import.meta.url).resolve("better-sqlite3");

/**
 * The reader thread: the report's, the dashboard's and the admin API's queries, on a connection of its own. On the
 * proxy's thread a report over a big experiment held every request: 1.4 s for aggregate() over 400,000 exposures,
 * 1,000,000 events and 200,000 units, repeated every 5 s by an open dashboard. WAL lets it read while the proxy's
 * connection writes; it sees what is committed. Kept as source text, like the checkpointer.
 */
const READER = `
const { parentPort, workerData } = require("node:worker_threads");
const Database = require(workerData.driver);
const db = new Database(workerData.path, workerData.readOnly ? { readonly: true, fileMustExist: true } : {});
db.pragma("busy_timeout = 5000");
db.pragma("query_only = ON");
db.pragma("cache_size = " + -1024 * workerData.cacheSizeMiB);
// The report's few query texts, prepared once each (bounded: a text made per call would otherwise pile up).
const prepared = new Map();
parentPort.on("message", ({ id, sql, params }) => {
  try {
    let statement = prepared.get(sql);
    if (statement === undefined) {
      statement = db.prepare(sql);
      if (prepared.size < 200) prepared.set(sql, statement);
    }
    // (BEGIN and COMMIT of a snapshot return no rows)
    parentPort.postMessage({ id, rows: statement.reader ? statement.all(...params) : (statement.run(...params), []) });
  } catch (err) {
    parentPort.postMessage({ id, error: err instanceof Error ? err.message : String(err) });
  }
});
`;

interface PendingQuery {
  resolve(rows: Record<string, unknown>[]): void;
  reject(err: Error): void;
}

/**
 * A READER thread and the queries it has: started on the first query (a proxy never asked for a report does not pay
 * for the thread), referenced only while it has work (an idle reader never keeps the process alive). When the thread
 * stops, its pending queries fail and `onStopped` is told, once; the caller decides where later queries go.
 */
export class ReaderThread {
  readonly #path: string;
  readonly #workerData: Record<string, unknown>;
  readonly #onStopped: () => void;
  #worker: Worker | null = null;
  #stopped = false;
  readonly #pending = new Map<number, PendingQuery>();
  #lastId = 0;
  /** snapshots under way, which share one read transaction */
  #snapshots = 0;

  /** `path`: for messages; `openName`: what the connection opens (see SqliteStore's #openName) */
  constructor(options: { path: string; openName: string; readOnly: boolean; cacheSizeMiB: number; onStopped?: () => void }) {
    this.#path = options.path;
    this.#workerData = { driver: driverPath, path: options.openName, readOnly: options.readOnly, cacheSizeMiB: options.cacheSizeMiB };
    this.#onStopped = options.onStopped ?? (() => {});
  }

  /** The thread stopped (an error, or close): queries are refused. */
  get stopped(): boolean {
    return this.#stopped;
  }

  query: Query = (sql, params) => {
    if (this.#stopped) return Promise.reject(new StoreError(`SQLite query failed on ${this.#path}: the reader thread stopped`));
    const worker = this.#start();
    return new Promise((resolve, reject) => {
      const id = ++this.#lastId;
      try {
        worker.postMessage({ id, sql, params });
      } catch (err) {
        // (parameters a thread cannot take; the thread never saw the query)
        return reject(new StoreError(`SQLite query failed on ${this.#path}: cannot pass its parameters to the reader thread: ${(err as Error).message}`, { cause: err }));
      }
      this.#pending.set(id, { resolve, reject });
      if (this.#pending.size === 1) worker.ref();
    });
  };

  /**
   * Runs `fn` inside one read transaction of this thread, so that its queries see one state of the store; snapshots
   * that overlap share it (a later one sees the same, slightly older, state). BEGIN and COMMIT go to this thread
   * only: sent the way the caller's queries go, they could land on a writing connection once this thread stopped.
   */
  async snapshot<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#snapshots++ === 0) {
      try {
        await this.query("BEGIN", []);
      } catch (err) {
        this.#snapshots--;
        throw err;
      }
    }
    try {
      return await fn();
    } finally {
      // (a thread that stopped meanwhile took its transaction with it)
      if (--this.#snapshots === 0 && !this.#stopped) await this.query("COMMIT", []).catch(() => {});
    }
  }

  #start(): Worker {
    if (this.#worker !== null) return this.#worker;
    const worker = new Worker(READER, { eval: true, workerData: this.#workerData });
    worker.unref();
    worker.on("message", (m: { id: number; rows?: Record<string, unknown>[]; error?: string }) => {
      const pending = this.#pending.get(m.id);
      if (pending === undefined) return;
      this.#pending.delete(m.id);
      if (this.#pending.size === 0) worker.unref();
      if (m.error !== undefined) pending.reject(new StoreError(`SQLite query failed on ${this.#path}: ${m.error}`));
      else pending.resolve(m.rows!);
    });
    const failed = (why: string) => {
      if (this.#stopped) return;
      this.#stopped = true;
      this.#failPending(`the reader thread stopped (${why})`);
      this.#onStopped();
    };
    worker.on("error", (err) => failed(err.message));
    worker.on("exit", (code) => failed(`exit code ${code}`));
    this.#worker = worker;
    return worker;
  }

  #failPending(why: string): void {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of pending) p.reject(new StoreError(`SQLite query failed on ${this.#path}: ${why}`));
  }

  async close(): Promise<void> {
    const worker = this.#worker;
    this.#stopped = true;
    this.#failPending("the store is closing");
    this.#worker = null;
    if (worker !== null) await worker.terminate();
  }
}

type Statement = Database.Statement<unknown[], unknown>;
type Statements = Record<"event" | "countEvents" | "getState" | "setState", Statement>;

const placeholders = (n: number) => `(${Array(n).fill("?").join(", ")})`;
const valuesOf = (rows: number, columns: number) => Array(rows).fill(placeholders(columns)).join(", ");

/**
 * Upserts of rollup rows, `chunkRows` rows per statement run: one prepared statement per row count, prepared on
 * first use and kept with a parameter array of its exact length. A statement run costs about a microsecond whatever
 * it holds, so a chunk of rows goes in one run and the remainder in one statement of its size.
 *
 * Statements are run with spread arguments, `st.run(...params)`, not `st.run(params)`: better-sqlite3 reads an
 * array argument element by element through V8's generic property lookup, and that made binding the largest cost
 * of the row-per-exposure insert abgate had before ExposureChunkInsert; spread arguments are read straight off the
 * call frame (a third less per inserted row).
 */
class ChunkedUpsert<T> {
  readonly #db: Database.Database;
  readonly #upsert: RollupUpsert<T>;
  readonly #fields: readonly (keyof T & string)[];
  readonly #byRows: ({ st: Statement; params: unknown[] } | undefined)[] = [];
  readonly #chunkRows: number;

  constructor(db: Database.Database, upsert: RollupUpsert<T>, chunkRows: number) {
    this.#db = db;
    this.#upsert = upsert;
    this.#fields = upsert.columns.map(([, field]) => field);
    this.#chunkRows = chunkRows;
  }

  /** Upserts items[from] to items[to - 1] (all of them by default). */
  run(items: readonly T[], from = 0, to = items.length): void {
    for (let i = from; i < to; i += this.#chunkRows) {
      const { st, params } = this.#chunk(items, i, to);
      st.run(...params);
    }
  }

  #chunk(items: readonly T[], from: number, to: number): { st: Statement; params: unknown[] } {
    const n = Math.min(this.#chunkRows, to - from);
    const fields = this.#fields;
    let s = this.#byRows[n];
    if (s === undefined) {
      const sql = `${this.#upsert.head} VALUES ${valuesOf(n, fields.length)} ${this.#upsert.tail}`;
      s = { st: this.#db.prepare(sql), params: new Array<unknown>(n * fields.length) };
      this.#byRows[n] = s;
    }
    for (let j = 0, at = 0; j < n; j++) {
      const item = items[from + j]!;
      for (const f of fields) s.params[at++] = item[f];
    }
    return s;
  }
}

/** Rows per exposure chunk: about 10 KB of JSON. */
const EXPOSURE_CHUNK = BLOCK_MAX_ROWS;
/** Distinct (assigned, served, replica) a chunk's dictionary takes before the next row starts a new chunk. */
const DICTIONARY_SIZE = 64;
/** A chunk stores its rows' times as differences from its first; a row further away than this starts a new one. */
const MAX_TS_DELTA_MS = 2 ** 30;
/** A batch's rollups are a few dozen rows (mostly latency buckets), and a batch usually has fewer new units. */
const ROLLUP_CHUNK = 16;

/**
 * The raw exposures, written as chunks: one `exposure_chunks` row per up to EXPOSURE_CHUNK exposures, which are a
 * JSON array of `[ts - base_ts, request_id, unit, triple, status, latency, forced]`, where `triple` indexes the
 * chunk's dictionary of (assigned, served, replica) names; the `exposures` view (migration 2) unpacks them with
 * json_each into the columns, types and order of a plain table.
 *
 * Why: an exposure is written for every proxied request, on the proxy's thread, and with a row each the INSERT was
 * the largest part of logging's cost: every row a trip through the statement's VM, ten values bound (two strings
 * converted to UTF-8 and copied twice) and a B-tree cell. Building the JSON text in JS and inserting it as one value
 * took 0.3-0.4 µs less per exposure in bench/store/exposures.ts (work/ref 0.87-0.98 above the generator's floor, five
 * runs).
 * The price is paid by readers of the raw rows, who go through json_each (a few µs a row); abgate itself reads
 * only the rollups.
 *
 * The JSON is JSON.stringify's, of one reused array per row: V8 writes it in one native pass, where building it
 * with template strings made a dozen intermediate strings per row and flattened every request id (a concatenation)
 * to test it for characters to escape: the store's CPU per row, new/old, 0.66, 0.84 and 0.85 in three runs of
 * bench/store/write-cpu.ts (A/A runs of that harness: 1.01-1.11).
 *
 * Exactness: numbers are written in JS's shortest round-trip form, which SQLite 3.53 parses back to the same double
 * (checked on 10^6 values, extremes included); a latency of whole µs is written as the integer µs and divided by
 * 1000.0 in the view, the same IEEE division as in JS, any other as itself. Strings are escaped as JSON.stringify
 * does, lone surrogates as \uXXXX escapes, which SQLite decodes to the same bytes as binding the string (so a unit
 * reads back from the view as it does from the `units` table, and joins on it work).
 */
class ExposureChunkInsert {
  readonly #insert: Statement;
  readonly #assigned = new Array<string>(DICTIONARY_SIZE);
  readonly #served = new Array<string>(DICTIONARY_SIZE);
  readonly #replica = new Array<string>(DICTIONARY_SIZE);
  /** one array per row of a chunk, reused from chunk to chunk: JSON.stringify of these is the chunk's JSON */
  readonly #rowArrays: ChunkRow[] = Array.from({ length: EXPOSURE_CHUNK }, (): ChunkRow => [0, "", "", 0, 0, 0, 0]);
  readonly #rows: ChunkRow[] = [];

  constructor(db: Database.Database) {
    this.#insert = db.prepare("INSERT INTO exposure_chunks (experiment, base_ts, triples, rows) VALUES (?, ?, ?, ?)");
  }

  /** Inserts rows[from] to rows[to - 1]. */
  run(rows: readonly Exposure[], from: number, to: number): void {
    for (let i = from; i < to; ) i = this.#chunk(rows, i, Math.min(to, i + EXPOSURE_CHUNK));
  }

  /** Writes one chunk from rows[from] on, ending before `to` or before the first row that does not fit; returns its end. */
  #chunk(rows: readonly Exposure[], from: number, to: number): number {
    const first = rows[from]!;
    const experiment = first.experiment;
    const baseTs = Math.trunc(first.ts);
    const smallDeltas = Number.isSafeInteger(baseTs);
    const assigned = this.#assigned;
    const served = this.#served;
    const replica = this.#replica;
    const pool = this.#rowArrays;
    const out = this.#rows;
    out.length = 0;
    let triples = 0;
    let plain = true;
    let i = from;
    for (; i < to; i++) {
      const e = rows[i]!;
      const dt = Math.trunc(e.ts) - baseTs;
      if (i > from && (e.experiment !== experiment || !smallDeltas || !withinChunk(dt))) break;
      const k = tripleIndex(assigned, served, replica, triples, e.assigned, e.served, e.replica);
      if (k === -1) break;
      if (k === triples) triples++;
      // The proxy's latencies are whole µs: written as that integer (formatting a fraction costs several times more),
      // any other as itself, which then has a fraction, so the view tells the two apart by type; but a whole number
      // of ms too big to count in µs must be written with a ".0", which only the text path below does.
      const latencyUs = Math.round(e.latencyMs * 1000);
      let latency: number | string = e.latencyMs;
      if (Number.isSafeInteger(latencyUs) && latencyUs / 1000 === e.latencyMs) latency = latencyUs;
      else if (Number.isInteger(latency) && latency < 1e21 && latency > -1e21) {
        latency = `${latency}.0`;
        plain = false;
      }
      const a = pool[i - from]!;
      a[0] = dt;
      a[1] = e.requestId;
      a[2] = e.unit;
      a[3] = k;
      a[4] = e.status;
      a[5] = latency;
      a[6] = e.forced ? 1 : 0;
      out.push(a);
    }
    const json = plain ? JSON.stringify(out) : chunkText(out);
    const dictionary: string[] = [];
    for (let k = 0; k < triples; k++) dictionary.push(assigned[k]!, served[k]!, replica[k]!);
    this.#insert.run(experiment, baseTs, JSON.stringify(dictionary), json);
    return i;
  }
}

/** Whether a row `dt` ms from its chunk's first may share that chunk (both kinds of chunk). */
function withinChunk(dt: number): boolean {
  return dt < MAX_TS_DELTA_MS && dt > -MAX_TS_DELTA_MS;
}

/**
 * The index of (a, s, r) among a chunk's first `size` (assigned, served, replica) triples; a new triple is written at
 * `size` (the caller counts it), or is -1 when the dictionary is full and the row must start a new chunk.
 */
function tripleIndex<T>(assigned: { [k: number]: T }, served: { [k: number]: T }, replica: { [k: number]: T }, size: number, a: T, s: T, r: T): number {
  let k = 0;
  while (k < size && !(assigned[k] === a && served[k] === s && replica[k] === r)) k++;
  if (k === size) {
    if (size === DICTIONARY_SIZE) return -1;
    assigned[k] = a;
    served[k] = s;
    replica[k] = r;
  }
  return k;
}

/**
 * A chunk's row: [ts - base_ts, request_id, unit, triple, status, latency, forced]; the latency is whole µs, ms with
 * a fraction, or the text of a whole number of ms too big for µs, with ".0" (written as it is, by chunkText only).
 */
type ChunkRow = [number, string, string, number, number, number | string, number];

/** The rows' JSON as JSON.stringify writes it, but for latencies given as text (whole ms too big for µs, with ".0"). */
function chunkText(out: readonly ChunkRow[]): string {
  let json = "[";
  for (let j = 0; j < out.length; j++) {
    const [dt, requestId, unit, k, status, latency, forced] = out[j]!;
    json += `${j === 0 ? "[" : ",["}${dt},${jsonString(requestId)},${jsonString(unit)},${k},${status},${latency},${forced}]`;
  }
  return `${json}]`;
}

/** A string as JSON.stringify writes it (it escapes lone surrogates). */
function jsonString(s: string): string {
  if (!NEEDS_ESCAPE.test(s)) return `"${s}"`;
  return JSON.stringify(s);
}

/** What JSON.stringify escapes (quote, backslash, control characters), and surrogates, which may be lone. */
const NEEDS_ESCAPE = /["\\\u0000-\u001f\ud800-\udfff]/;

/** A binary chunk's text (request ids and units) holds at most this many bytes: its offsets are 16-bit. */
const BLOCK_TEXT_BYTES = 65_536;
/** A binary chunk stores its rows' times as offsets from its first plus this, in 32 bits (see MAX_TS_DELTA_MS). */
const BLOCK_TS_BIAS = 2 ** 31;

/**
 * The raw exposures of an ExposureBlock, written as binary chunks in `exposure_chunks`: the same table, dictionary and
 * chunk boundaries as ExposureChunkInsert's JSON (so the `exposures` view gives the same ids), but `rows` is a BLOB:
 * - a header: the row count (16 bits);
 * - per row, BLOCK_ROW_BYTES: ts - base_ts + 2^31 (32 bits), latency in whole µs (32), status (16), the triple's
 *   index with forced in the top bit (8), the request id's length (8), where the row's text starts (16), the unit's
 *   length (8), and a zero byte;
 * - the rows' text: each row's request id, then its unit, all ASCII.
 * Numbers are big-endian, the order the view adds bytes up in (migration 3).
 *
 * Why: the block's columns go straight into a buffer, with no object, string or JSON text per row. With the proxy
 * passing its request ids' numbers (Exposure.requestSeq), a proxy on one core under bench/proxy's load did 1.021
 * times the requests/s (1.029 per CPU-second) of JSON chunks made from objects, and logging's cost against logging
 * off fell from 10.1% to 7.6% of requests/s (bench/proxy/ab.sh, same-core pairs, 10 rounds each, one session).
 *
 * `fits` says whether a block's rows can all be written so: latencies of whole µs below 2^32, statuses 0-65535,
 * times that exposureProblem accepts; anything else goes the JSON way.
 */
class ExposureBlockInsert {
  readonly #insert: Statement;
  /** the triples of the chunk being written, as the block's name indexes */
  readonly #assigned = new Uint32Array(DICTIONARY_SIZE);
  readonly #served = new Uint32Array(DICTIONARY_SIZE);
  readonly #replica = new Uint32Array(DICTIONARY_SIZE);
  readonly #out = Buffer.alloc(BLOCK_HEADER_BYTES + EXPOSURE_CHUNK * BLOCK_ROW_BYTES + BLOCK_TEXT_BYTES);
  readonly #text = Buffer.alloc(BLOCK_TEXT_BYTES);
  /** the request ids' prefix as bytes, and the string it was made of */
  #prefix = Buffer.alloc(0);
  #prefixOf: string | null = null;
  /** base-36 digits of a request id's number, last first */
  readonly #digits = new Uint8Array(11);

  constructor(db: Database.Database) {
    this.#insert = db.prepare("INSERT INTO exposure_chunks (experiment, base_ts, triples, rows) VALUES (?, ?, ?, ?)");
  }

  static fits(block: ExposureBlock): boolean {
    if (block.idPrefix.length > 200) return false;
    for (const name of block.names) if (typeof name !== "string") return false;
    for (let i = 0; i < block.rows; i++) {
      const ts = block.ts[i]!;
      const latencyUs = Math.round(block.latencyMs[i]! * 1000);
      const status = block.status[i]!;
      if (!(Math.abs(ts) <= MAX_ABS_TS_MS)) return false;
      if (!(latencyUs >= 0 && latencyUs <= 0xffffffff && latencyUs / 1000 === block.latencyMs[i])) return false;
      if (!(Number.isInteger(status) && status >= 0 && status <= 0xffff)) return false;
    }
    return true;
  }

  /** Inserts the block's rows from to to - 1. */
  run(block: ExposureBlock, from: number, to: number): void {
    if (block.idPrefix !== this.#prefixOf) {
      this.#prefixOf = block.idPrefix;
      this.#prefix = Buffer.from(block.idPrefix, "latin1");
    }
    for (let i = from; i < to; ) i = this.#chunk(block, i, Math.min(to, i + EXPOSURE_CHUNK));
  }

  #chunk(block: ExposureBlock, from: number, to: number): number {
    const names = block.names;
    const experiment = block.experiment[from]!;
    const baseTs = Math.trunc(block.ts[from]!);
    const assigned = this.#assigned;
    const served = this.#served;
    const replica = this.#replica;
    const out = this.#out;
    const text = this.#text;
    const prefix = this.#prefix;
    const digits = this.#digits;
    const unitBytes = block.unitBytes;
    let triples = 0;
    let o = BLOCK_HEADER_BYTES;
    let t = 0;
    let i = from;
    for (; i < to; i++) {
      const dt = Math.trunc(block.ts[i]!) - baseTs;
      // (the JSON chunks' bounds and dictionary, so that a row has the same id whichever way it is written)
      if (i > from && (block.experiment[i] !== experiment || !withinChunk(dt))) break;
      const k = tripleIndex(assigned, served, replica, triples, block.assigned[i]!, block.served[i]!, block.replica[i]!);
      if (k === -1) break;
      if (k === triples) triples++;
      const nDigits = base36Digits(block.requestSeq[i]!, digits);
      const unitLength = block.unitLength[i]!;
      const idLength = prefix.length + nDigits;
      if (t + idLength + unitLength > BLOCK_TEXT_BYTES) break;
      const biased = dt + BLOCK_TS_BIAS;
      const latencyUs = Math.round(block.latencyMs[i]! * 1000);
      const status = block.status[i]!;
      out[o] = biased >>> 24;
      out[o + 1] = biased >>> 16;
      out[o + 2] = biased >>> 8;
      out[o + 3] = biased;
      out[o + 4] = latencyUs >>> 24;
      out[o + 5] = latencyUs >>> 16;
      out[o + 6] = latencyUs >>> 8;
      out[o + 7] = latencyUs;
      out[o + 8] = status >>> 8;
      out[o + 9] = status;
      out[o + 10] = k | (block.forced[i]! << 7);
      out[o + 11] = idLength;
      out[o + 12] = t >>> 8;
      out[o + 13] = t;
      out[o + 14] = unitLength;
      out[o + 15] = 0;
      o += BLOCK_ROW_BYTES;
      for (let c = 0; c < prefix.length; c++) text[t++] = prefix[c]!;
      for (let d = nDigits - 1; d >= 0; d--) text[t++] = digits[d]!;
      for (let c = 0, at = i * UNIT_SLOT_CHARS; c < unitLength; c++) text[t++] = unitBytes[at + c]!;
    }
    const rows = i - from;
    out[0] = rows >>> 8;
    out[1] = rows;
    text.copy(out, o, 0, t);
    const dictionary: string[] = [];
    for (let k = 0; k < triples; k++) dictionary.push(names[assigned[k]!]!, names[served[k]!]!, names[replica[k]!]!);
    this.#insert.run(names[experiment]!, baseTs, JSON.stringify(dictionary), out.subarray(0, o + t));
    return i;
  }
}

/** Writes n's base-36 digits (lower case) to `digits`, last first; returns how many. */
function base36Digits(n: number, digits: Uint8Array): number {
  let count = 0;
  // (in int32 when it fits: a double's % is a call to fmod, several times slower)
  let big = n;
  while (big > 0x7fffffff) {
    const d = big % 36;
    digits[count++] = d < 10 ? 48 + d : 87 + d;
    big = (big - d) / 36;
  }
  let small = big | 0;
  do {
    const q = (small / 36) | 0;
    const d = small - q * 36;
    digits[count++] = d < 10 ? 48 + d : 87 + d;
    small = q;
  } while (small > 0);
  return count;
}

/** Whether a store error came of another connection's lock (SQLITE_BUSY, SQLITE_LOCKED and their extended codes). */
function lockedOut(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && (code.startsWith("SQLITE_BUSY") || code.startsWith("SQLITE_LOCKED"))) return true;
  }
  return false;
}

/** A write transaction that the store spreads over several turns of the event loop (exposures, events). */
interface WriteTransaction {
  begin(): void;
  commit(): void;
  /** (nothing to undo when the failure ended the transaction already) */
  rollback(): void;
}

function writeTransaction(db: Database.Database): WriteTransaction {
  // IMMEDIATE: take the write lock now, so that a busy database fails the write before any row is inserted.
  const begin = db.prepare("BEGIN IMMEDIATE");
  const commit = db.prepare("COMMIT");
  const rollback = db.prepare("ROLLBACK");
  return {
    begin: () => void begin.run(),
    commit: () => void commit.run(),
    rollback: () => {
      if (db.inTransaction) rollback.run();
    },
  };
}

/**
 * The statements of an exposure write, which the store spreads over several turns of the event loop: `begin` a
 * transaction, `insert` the rows a slice at a time, then apply the batch's `rollups` and `commit`.
 */
interface ExposureWriter extends WriteTransaction {
  insert(rows: readonly Exposure[], from: number, to: number): void;
  insertBlock(block: ExposureBlock, from: number, to: number): void;
  /** upserts units[from] to units[to - 1], inside the batch's transaction */
  units(units: readonly UnitDelta[], from: number, to: number): void;
  /** the batch's other rollup upserts (minutes, latency buckets, counters), inside its transaction */
  rollups(roll: ExposureRollup): void;
}

function exposureWriter(db: Database.Database, transaction: WriteTransaction): ExposureWriter {
  const exposures = new ExposureChunkInsert(db);
  const blocks = new ExposureBlockInsert(db);
  // No RETURNING on the units upsert (it made a new unit's upsert half again as expensive): the unit cache learns
  // from the deltas.
  const units = new ChunkedUpsert(db, UNIT_UPSERT, ROLLUP_CHUNK);
  const minutes = new ChunkedUpsert(db, MINUTE_UPSERT, ROLLUP_CHUNK);
  const hist = new ChunkedUpsert(db, HIST_UPSERT, ROLLUP_CHUNK);
  const count = db.prepare(
    `INSERT INTO counters (experiment, exposures, events) VALUES (?, ?, 0)
     ON CONFLICT (experiment) DO UPDATE SET exposures = counters.exposures + excluded.exposures`,
  );
  return {
    ...transaction,
    insert: (rows, from, to) => exposures.run(rows, from, to),
    insertBlock: (block, from, to) => blocks.run(block, from, to),
    units: (deltas, from, to) => units.run(deltas, from, to),
    rollups(roll) {
      minutes.run(roll.minutes);
      hist.run(roll.hist);
      for (const [experiment, n] of roll.counts) count.run(experiment, n);
    },
  };
}

/** The columns of the database's schema_migrations table. */
function migrationColumns(db: Database.Database): string[] {
  return db.prepare(`SELECT name FROM pragma_table_info('schema_migrations')`).all().map((r) => (r as { name: string }).name);
}

/** What to do about an SQLite error that says the file cannot be opened or is not a database (its code), or "". */
function fileHint(err: unknown): string {
  const code = (err as { code?: string }).code ?? "";
  if (code.startsWith("SQLITE_CANTOPEN")) return " (abgate creates the file and its -wal and -shm beside it: the folder must exist and be writable)";
  if (code === "SQLITE_NOTADB") return " (it is not an SQLite database: point store: at another file, or move this one away)";
  if (code.startsWith("SQLITE_CORRUPT")) return " (the file is damaged: restore it from a copy, or move it away and start a new store)";
  return "";
}

/** What the WAL is cut back to after a checkpoint, and the size past which the checkpointer empties it. */
const WAL_CAP_BYTES = 64 * 2 ** 20;
/** How long an emptying (TRUNCATE) checkpoint waits for a lock, and how long after one that could not finish the next
 * is tried (see CHECKPOINTER, and checkpointBetweenWrites, which do the same). */
const TRUNCATE_WAIT_MS = 1000;
const TRUNCATE_RETRY_MS = 10_000;
/** SqliteStoreOptions.cacheSizeMiB's default, for this store's connections and a SqliteThreadStore's reader. */
export const DEFAULT_CACHE_SIZE_MIB = 32;

export interface FileId {
  dev: number;
  ino: number;
}

/**
 * Throws when the file at `path` is no longer the one opened (`fileId`): deleted, or replaced by another. SQLite goes
 * on writing to the file it has open, which no one can open any more: events were answered `accepted` and lost with
 * it (a storage audit deleted abgate.db with its -wal and -shm; nothing said so). A stat: a few µs, per batch.
 */
export function checkSameFile(path: string, fileId: FileId, what: string): void {
  let now: FileId | undefined;
  try {
    now = statSync(path);
  } catch {
    now = undefined;
  }
  if (now !== undefined && now.dev === fileId.dev && now.ino === fileId.ino) return;
  throw new StoreError(
    `cannot ${what}: the SQLite store ${path} was ${now === undefined ? "deleted" : "replaced by another file"} while abgate had it open, ` +
      "and what is written to the open file would be lost with it; stop abgate (and restore the file, if it was not meant to go)",
  );
}

/** The size of a store's -wal file, 0 when there is none. */
function walBytes(path: string): number {
  try {
    return statSync(`${path}-wal`).size;
  } catch {
    return 0;
  }
}

/** Slice size before any slice has been timed: about half a millisecond of this store's work (3 µs a row, cold). */
const INITIAL_SLICE_ROWS = 150;
/** The longest timer between two tries of a write lock another connection holds (see SqliteStore.#begin). */
const MAX_LOCK_RETRY_MS = 16;
/** Units upserted between two looks at the clock: one chunked statement (ROLLUP_CHUNK), 20-100 µs of new units. */
const UNIT_SLICE_ROWS = ROLLUP_CHUNK;
/** Below this a slice is mostly the cost of a statement run and a turn of the event loop. */
const MIN_SLICE_ROWS = 50;
/**
 * Weights of the newest slice in the time-per-row estimate: a slower slice counts more, because a slice that runs
 * long is the stall this is for; a faster one less, so one lucky slice does not make the next ones too big.
 */
const SLOWER_WEIGHT = 0.5;
const FASTER_WEIGHT = 0.25;

/** Events inserted per turn of the event loop: about half a millisecond of inserts. */
const EVENT_SLICE_ROWS = 250;

/**
 * Sizes the slices of exposure writes from how long they take on this machine, with this data: an exponentially
 * weighted average of the time per row of the slices so far, and of the time of the final step (rollups and commit).
 */
class WritePacer {
  readonly #budgetMs: number;
  #msPerRow: number;
  #finishMs: number;

  constructor(budgetMs: number) {
    this.#budgetMs = budgetMs;
    this.#msPerRow = budgetMs / INITIAL_SLICE_ROWS;
    this.#finishMs = budgetMs / 2;
  }

  get budgetMs(): number {
    return this.#budgetMs;
  }

  get sliceRows(): number {
    return Math.max(MIN_SLICE_ROWS, Math.floor(this.#budgetMs / this.#msPerRow));
  }

  /** Whether the final step fits in what this turn has left after `usedMs`. */
  finishFits(usedMs: number): boolean {
    return usedMs + this.#finishMs <= this.#budgetMs;
  }

  /** A slice's time; slices much smaller than the current size (a batch's last) say little about the rest. */
  sliced(rows: number, ms: number): void {
    if (rows * 2 < this.sliceRows || !(ms >= 0)) return;
    this.#msPerRow = ewma(this.#msPerRow, ms / rows);
  }

  finished(ms: number): void {
    if (ms >= 0) this.#finishMs = ewma(this.#finishMs, ms);
  }
}

function ewma(average: number, sample: number): number {
  return average + (sample > average ? SLOWER_WEIGHT : FASTER_WEIGHT) * (sample - average);
}

/**
 * Opens the store at `path` read-only, for a reader that must not change it: a copy on a read-only mount, a file
 * it may not write, or a live gateway's store. The connection never writes the file or its -wal (SQLite opens the
 * file O_RDONLY and a read-only connection neither commits nor checkpoints), but reading a WAL-mode database takes
 * its -wal and -shm files (https://www.sqlite.org/wal.html, "Read-Only Databases"): SQLite uses them where they
 * exist, a private copy of the -shm's index where it may not write that, and creates them where they are missing
 * and it may write the folder (an empty -wal and a -shm, which it leaves behind, as every SQLite reader does, for
 * the next writer to use). That takes part in SQLite's locking, so a report on a live gateway's store reads a
 * consistent snapshot.
 *
 * Where they are missing and the folder is not writable (a read-only mount, another user's folder), SQLite cannot
 * open the file at all; where they are missing and the store is another user's, the files SQLite made would be this
 * user's, and would keep the store's owner from writing it (see immutableReason). Then, if the -wal is missing or
 * empty, the file holds every commit (the last writer to close checkpointed it; and no writer has it open, or it
 * would have a -wal), and it is read as `immutable`: no locks, no -wal or -shm. Immutable means the file must not
 * change meanwhile, which nothing enforces: a gateway may start on it during the read. So every read of it checks
 * (`unchanged`) that the file and its -wal are as they were at the open, and fails otherwise. That takes an
 * SQLite URI filename, and better-sqlite3 enables those for the whole process, from its first connection on, only
 * with SQLITE_USE_URI=1 in the environment: this sets it then (where it is unset; `abgate report` opens no SQLite
 * connection before), and if this process opened SQLite before without it, the open fails and the error says what
 * to do. If the -wal does hold commits, they cannot be read without a -shm: that is an error saying what to copy.
 *
 * Returns the name to open (also the reader thread's) and the connection. Throws StoreError.
 */
function openReadOnly(path: string): { name: string; db: Database.Database; unchanged: (() => boolean) | null } {
  if (path === ":memory:") {
    throw new StoreError(`an in-memory SQLite store (sqlite::memory:) is new and empty in every process: there is nothing to open read-only`);
  }
  let real: string;
  try {
    // SQLite keeps the -wal and -shm beside the file a link points to: look for them there, and at its owner.
    real = realpathSync(path);
    if (!statSync(real).isFile()) throw new StoreError(`cannot open SQLite store ${path} read-only: it is not a file`);
  } catch (err) {
    if (err instanceof StoreError) throw err;
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new StoreError(`no SQLite store at ${path} (a read-only open does not create one)`, { cause: err });
    throw new StoreError(`cannot open SQLite store ${path} read-only: ${(err as Error).message}`, { cause: err });
  }
  // Immutable reads take no locks: a gateway that commits to the store meanwhile (its -wal grows) or changes the
  // file would go unseen, so every read checks that neither happened (SqliteStore's #readUnchanged). Taken before
  // the checks below, so that a -wal that grows between them and the open counts too. A -wal that is missing or
  // empty holds no commit: another reader may make an empty one.
  const stamp = (): string => {
    try {
      const st = statSync(real, { throwIfNoEntry: false });
      return `${st?.size}:${st?.mtimeMs}:${sizeOrNull(`${real}-wal`) ?? 0}`;
    } catch {
      return "unreadable";
    }
  };
  const atOpen = stamp();
  const immutable = immutableReason(real);
  let name = path;
  let unchanged: (() => boolean) | null = null;
  if (immutable !== undefined) {
    process.env.SQLITE_USE_URI ??= "1";
    name = `${pathToFileURL(real).href}?immutable=1`;
    unchanged = () => stamp() === atOpen;
  }
  try {
    return { name, db: new Database(name, { readonly: true, fileMustExist: true }), unchanged };
  } catch (err) {
    if (immutable !== undefined) {
      throw new StoreError(
        `cannot open SQLite store ${path} read-only: it is in WAL mode without its -wal and -shm files, and SQLite must not make them (${immutable.why}); ` +
          `such a store is read as immutable, through an SQLite URI filename, and that failed (${(err as Error).message}): URI filenames are off in a ` +
          `process unless SQLITE_USE_URI=1 is set before it first opens SQLite. ${immutable.otherUser ? "Read it as the store's owner, or copy" : "Copy"} ` +
          `the store (the file alone will do) to ${immutable.copyTo} and read it there`,
        { cause: err },
      );
    }
    throw new StoreError(`cannot open SQLite store ${path} read-only: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Why `path` (a real path) is to be read (read-only) as immutable, and what to do instead, or undefined when not:
 * a WAL-mode file whose -wal or -shm is missing, which SQLite would create, where this process may not (a folder it
 * cannot write) or should not: another user's store, whose -wal and -shm would then be this user's, and its owner's
 * gateway could no longer open it for writing. Throws StoreError when it cannot be read at all: its -wal holds
 * commits but its -shm is missing.
 */
function immutableReason(path: string): ImmutableReason | undefined {
  if (!walModeFile(path)) return undefined;
  const walBytes = sizeOrNull(`${path}-wal`);
  const shmBytes = sizeOrNull(`${path}-shm`);
  if (walBytes !== null && shmBytes !== null) return undefined;
  const reason: ImmutableReason | undefined = othersStore(path)
    ? { why: "this user does not own the store, and files it made there would keep its owner from writing it", otherUser: true, copyTo: "a folder of your own" }
    : folderReadOnly(path);
  if (reason === undefined) return undefined;
  if (walBytes !== null && walBytes > 0) {
    throw new StoreError(
      `cannot open SQLite store ${path} read-only: its -wal holds commits not yet in the file, which SQLite reads only through a -shm file, ` +
        `and ${path}-shm is missing, which SQLite must not make (${reason.why}). ${reason.otherUser ? "Read it as the store's owner, or copy" : "Copy"} ` +
        `the store with its -wal to ${reason.copyTo} and read it there (SQLite then makes the -shm)`,
    );
  }
  return reason;
}

/** Why a store is read as immutable, and where a copy of it could be read as usual. */
interface ImmutableReason {
  why: string;
  otherUser: boolean;
  copyTo: string;
}

/**
 * Whether another user owns `path` than the one files this process makes belong to, its effective user (root reads
 * any as itself: SQLite gives the files it makes to the store's owner).
 */
function othersStore(path: string): boolean {
  const uid = process.geteuid?.();
  return uid !== undefined && uid !== 0 && statSync(path).uid !== uid;
}

/** Why SQLite cannot make files beside `path` (its folder is not writable), or undefined when it can. */
function folderReadOnly(path: string): ImmutableReason | undefined {
  try {
    accessSync(dirname(path), fsConstants.W_OK);
    return undefined;
  } catch {
    return { why: `${dirname(path)} is not writable`, otherUser: false, copyTo: "a writable folder" };
  }
}

/** Whether the file's header says WAL mode (file format versions 2 at offsets 18 and 19); false for anything else. */
function walModeFile(path: string): boolean {
  const header = Buffer.alloc(20);
  let fd: number | undefined;
  try {
    fd = openSync(path, "r");
    if (readSync(fd, header, 0, 20, 0) < 20) return false;
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  return header.toString("latin1", 0, 16) === "SQLite format 3\u0000" && header[18] === 2 && header[19] === 2;
}

function sizeOrNull(path: string): number | null {
  try {
    return statSync(path).size;
  } catch {
    return null;
  }
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
 * PostgreSQL. An exposure costs about 2.4 µs in bench/store/exposures.ts, where caches are cold between writes, and
 * 1.6 µs back to back (bench/store/write-cpu.ts). In a proxy under load it costs more: with parts stubbed out
 * (bench/proxy/ab.sh), the whole write took about 12% of its throughput, folding rows into the rollups about 6% (the
 * unit-cache lookup 2.5-4% of that), the raw chunks about 4.5%, the rollup upserts under 1%. A batch of 1,000 rows
 * is thus a few ms of work, which the store does in slices of a couple of hundred rows, each under a millisecond,
 * rather than in one stall. Copying the WAL back into the database file (a checkpoint, with its fsyncs) is what took
 * 20-40 ms, every ~60 batches, when SQLite did it automatically inside a commit; so automatic checkpoints are off on
 * this connection and a worker thread with its own connection runs PASSIVE checkpoints instead, off the proxy's
 * event loop.
 *
 * Why the exposure writes themselves stay on the proxy's thread: a writer thread with its own connection (batches
 * posted to it as packed columns) was measured with the proxy pinned to one core, as in bench/proxy. At nice 0 the
 * proxy's p99 got worse (median of 6 interleaved rounds, as bench/proxy/rounds.sh runs them: 6.4 ms, against 5.8 ms
 * for these slices), presumably because the kernel lets the writer finish its scheduler slice before the woken
 * proxy thread runs; at nice 19 it was worse still (p99 8.1 ms in one run); as SCHED_IDLE the writer made the
 * proxy's own scavenges 2.5 times longer (p50 2.2 ms against 0.9 ms), held up by a thread that seldom runs. Slices
 * on this thread bound each stall instead.
 */
export class SqliteStore implements Store {
  readonly path: string;
  /** opened with `readOnly`: no migration, no checkpoint, writes refused */
  readonly readOnly: boolean;
  migratedFrom?: number;
  #db: Database.Database;
  /** the name the connections open: the path, or an `immutable` URI for a read-only store (see openReadOnly) */
  #openName: string;
  #cache: UnitCache;
  #closed = false;
  /** the file's device and inode when it was opened for writing (see #sameFile); null: in memory or read-only */
  #fileId: FileId | null = null;
  #stmts: Statements | null = null;
  #transaction: WriteTransaction | null = null;
  #exposures: ExposureWriter | null = null;
  #checkpointer: Worker | null = null;
  /** the checkpoints' timer when they run between writes (checkpointBetweenWrites) */
  #checkpointTimer: NodeJS.Timeout | null = null;
  readonly #checkpointBetweenWrites: boolean;
  #checkpointIntervalMs: number;
  readonly #walCapBytes: number;
  readonly #closeCheckpointWaitMs: number;
  readonly #onCloseCheckpoint: ((event: CloseCheckpointEvent) => void) | undefined;
  /** a store read as immutable: whether it is as it was when opened (see openReadOnly); null otherwise */
  #unchanged: (() => boolean) | null = null;
  /** the report's queries' thread (see ReaderThread); null: none yet */
  #reader: ReaderThread | null = null;
  /** queries run on this thread instead: an in-memory database (a second connection would see another one), or
   * a reader thread that failed */
  #readInThread: boolean;
  readonly #cacheSizeMiB: number;
  readonly #pacer: WritePacer;
  readonly #now: () => number;
  /** the last operation queued by #serial */
  #tail: Promise<unknown> = Promise.resolve();
  /** busyTimeoutMs: how long a write waits for another connection's lock, while none has failed on one */
  #lockWaitMs = 5000;
  /** a write failed on a lock and none has succeeded since: writes do not wait for the lock (see #serial) */
  #lockFailFast = false;
  #closing: Promise<void> | null = null;

  constructor(path: string, options: SqliteStoreOptions = {}) {
    this.path = path;
    this.#cache = new UnitCache(options.unitCacheSize ?? 100_000);
    const writeSliceMs = options.writeSliceMs ?? 0.5;
    if (!(writeSliceMs > 0)) throw new StoreError(`SQLite store: writeSliceMs must be positive, got ${writeSliceMs}`);
    this.#pacer = new WritePacer(writeSliceMs);
    this.#now = options.monotonicMs ?? (() => performance.now());
    this.#checkpointIntervalMs = path === ":memory:" ? 0 : (options.checkpointIntervalMs ?? 1000);
    this.#walCapBytes = options.walCapBytes ?? WAL_CAP_BYTES;
    this.#checkpointBetweenWrites = options.checkpointBetweenWrites ?? false;
    this.#readInThread = path === ":memory:";
    this.#cacheSizeMiB = options.cacheSizeMiB ?? DEFAULT_CACHE_SIZE_MIB;
    this.#closeCheckpointWaitMs = options.closeCheckpointWaitMs ?? 0;
    this.#onCloseCheckpoint = options.onCloseCheckpoint;
    this.readOnly = options.readOnly ?? false;
    this.#openName = path;
    if (this.readOnly) {
      this.#checkpointIntervalMs = 0;
      const { name, db, unchanged } = openReadOnly(path);
      this.#openName = name;
      this.#unchanged = unchanged;
      this.#db = db;
      try {
        this.#tune(options);
        db.pragma("query_only = ON");
      } catch (err) {
        db.close();
        throw new StoreError(`cannot open SQLite store ${path} read-only: ${(err as Error).message}`, { cause: err });
      }
      return;
    }
    try {
      if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
      this.#db = new Database(path);
      this.#db.pragma("journal_mode = WAL");
      this.#db.pragma("synchronous = NORMAL");
      this.#tune(options);
      // The WAL restarts from its beginning after each complete checkpoint but keeps its size; cap what it keeps.
      this.#db.pragma(`journal_size_limit = ${WAL_CAP_BYTES}`);
      if (path !== ":memory:") {
        const st = statSync(path);
        this.#fileId = { dev: st.dev, ino: st.ino };
      }
    } catch (err) {
      throw new StoreError(`cannot open SQLite store ${path}: ${(err as Error).message}${fileHint(err)}`, { cause: err });
    }
  }

  /** What every connection of this store sets, read-only or not. */
  #tune(options: SqliteStoreOptions): void {
    // Another process (a second abgate, `abgate report --writable`) may hold the write lock briefly.
    this.#lockWaitMs = options.busyTimeoutMs ?? 5000;
    this.#db.pragma(`busy_timeout = ${this.#lockWaitMs}`);
    this.#db.pragma(`cache_size = ${-1024 * this.#cacheSizeMiB}`);
    this.#db.pragma("temp_store = MEMORY");
  }

  /**
   * Applies pending migrations in one IMMEDIATE transaction, so two processes starting at once do not race. A
   * read-only store only checks that the file has this abgate's schema.
   */
  async init(): Promise<void> {
    this.#open();
    if (this.readOnly) {
      this.#checkSchema();
      this.#prepare();
      return;
    }
    try {
      const db = this.#db;
      // Two processes starting at once take turns here, the second one asleep until the first has migrated (before
      // the gateway listens: nothing else waits on this thread). A second init() finds the wait set to 0 below.
      db.pragma(`busy_timeout = ${this.#lockWaitMs}`);
      // A database with tables but no abgate schema is another application's: abgate would add its tables beside
      // them and write there (a typo in store: that names someone's data).
      const foreign = db
        .prepare(`SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name`)
        .all()
        .map((r) => (r as { name: string }).name);
      const ours = foreign.includes("schema_migrations") && !foreignMigrationsTable(migrationColumns(db));
      if (foreign.length > 0 && !ours) {
        throw new StoreError(
          `${this.path} is not an abgate store: it has tables (${foreign.slice(0, 5).join(", ")}${foreign.length > 5 ? ", ..." : ""}) and no abgate schema; abgate leaves it alone. Point store: at a new file`,
        );
      }
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
        if (newest > 0 && newest < latestSchemaVersion) this.migratedFrom = newest;
        for (const m of migrations) {
          if (applied.has(m.version)) continue;
          for (const sql of m.sqlite) db.exec(sql);
          db.prepare(`INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)`).run(m.version, m.name, Date.now());
        }
      }).immediate();
    } catch (err) {
      if (err instanceof StoreError) throw err;
      throw new StoreError(`cannot migrate SQLite store ${this.path}: ${(err as Error).message}${fileHint(err)}`, { cause: err });
    }
    // From here on no statement of this connection sleeps for a lock: the writes wait for one in #waitForLock,
    // with timers, and the reads of a WAL database take none (SQLite's busy handler sleeps the calling thread, and
    // with inline writes that is the proxy's). Setting the wait once, rather than around each write, also saves the
    // two PRAGMA statements each one cost (prepared anew each time: a PRAGMA takes effect when it is prepared).
    if (this.#lockWaitMs > 0) this.#db.pragma("busy_timeout = 0");
    this.#prepare();
    this.#startCheckpointer();
  }

  /** A read-only store's init: it cannot migrate, so the file's schema must be exactly this abgate's. */
  #checkSchema(): void {
    const db = this.#db;
    let applied: Set<number>;
    try {
      const table = db.prepare(`SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_migrations'`).get();
      if (table !== undefined && foreignMigrationsTable(migrationColumns(db))) throw notAbgateStore(this.path);
      const rows = table === undefined ? [] : (db.prepare(`SELECT version FROM schema_migrations`).all() as { version: number }[]);
      applied = new Set(rows.map((r) => r.version));
    } catch (err) {
      if (err instanceof StoreError) throw err;
      const code = (err as { code?: string }).code;
      const hint = code === "SQLITE_CANTOPEN" || code === "SQLITE_READONLY_DIRECTORY"
        ? " (reading a WAL-mode store takes its -wal and -shm files, or a folder where SQLite may create them)"
        : "";
      throw new StoreError(`cannot read SQLite store ${this.path} read-only: ${(err as Error).message}${hint}`, { cause: err });
    }
    checkSchemaReadOnly(this.path, applied);
  }

  #startCheckpointer(): void {
    if (this.#checkpointIntervalMs <= 0 || this.#checkpointer !== null || this.#checkpointTimer !== null) return;
    this.#db.pragma("wal_autocheckpoint = 0");
    if (this.#checkpointBetweenWrites) {
      // What CHECKPOINTER does, on this connection, in the writes' queue (a TRUNCATE would otherwise wait, on this
      // thread, for a transaction this thread holds open between slices).
      let truncateAfter = 0;
      this.#checkpointTimer = setInterval(() => {
        void this.#serial(() => {
          if (this.#closed) return;
          this.#db.pragma("wal_checkpoint(PASSIVE)");
          if (Date.now() < truncateAfter || walBytes(this.path) <= this.#walCapBytes) return;
          this.#db.pragma(`busy_timeout = ${Math.min(this.#lockWaitMs, TRUNCATE_WAIT_MS)}`);
          try {
            const [r] = this.#db.pragma("wal_checkpoint(TRUNCATE)") as { busy: number }[];
            if (r?.busy) truncateAfter = Date.now() + TRUNCATE_RETRY_MS;
          } finally {
            this.#db.pragma("busy_timeout = 0");
          }
        }).catch(() => {});
      }, this.#checkpointIntervalMs);
      this.#checkpointTimer.unref();
      return;
    }
    const worker = new Worker(CHECKPOINTER, {
      eval: true,
      workerData: {
        driver: driverPath,
        path: this.path,
        intervalMs: this.#checkpointIntervalMs,
        walCapBytes: this.#walCapBytes,
        truncateWaitMs: TRUNCATE_WAIT_MS,
        truncateRetryMs: TRUNCATE_RETRY_MS,
      },
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

  /** Refuses a write to a read-only store (before SQLite would, with a message that says why). */
  #writable(what: string): void {
    this.#open();
    if (this.readOnly) throw new StoreError(`SQLite store ${this.path} is open read-only: cannot ${what}`);
    this.#sameFile(what);
  }

  /**
   * Refuses a write once the file was deleted or replaced under this store (see checkSameFile).
   */
  #sameFile(what: string): void {
    if (this.#fileId !== null) checkSameFile(this.path, this.#fileId, what);
  }

  /** The file's identity when it was opened for writing (see #sameFile); null: in memory or read-only. */
  get fileId(): FileId | null {
    return this.#fileId;
  }

  #prepare(): void {
    const db = this.#db;
    this.#transaction = writeTransaction(db);
    this.#exposures = exposureWriter(db, this.#transaction);
    this.#stmts = {
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

  /**
   * Runs `fn` once every write queued before it has finished. Writes take turns because an exposure write keeps its
   * transaction open across turns of the event loop: a statement run meanwhile on this connection would join it,
   * so an event batch would be committed (and made durable) only with the exposures, and undone with them. Reads
   * need no turn: they see the committed rollups, and at most some raw exposure rows not yet committed.
   */
  #serial<T>(fn: () => T | Promise<T>): Promise<T> {
    const run = this.#tail.then(() => this.#lockAware(fn));
    this.#tail = run.catch(() => {});
    return run;
  }

  /**
   * Begins a write transaction, waiting for another connection's write lock without sleeping this thread: SQLite
   * waits for a lock (busyTimeoutMs) by sleeping the calling thread, and inline that is the proxy's. The lock is
   * tried with no wait (busy_timeout is 0 once the store is open), then again after timers of 1, 2, 4... up to 16 ms,
   * until busyTimeoutMs has passed, and the loop runs meanwhile. The checkpointer's emptying (TRUNCATE) checkpoint
   * holds that lock while it copies the WAL (with inline writes it is the only other connection of a gateway that
   * takes it): with a million users, mostly new, the WAL grew by 3 MiB per 1,000 exposures, enough to reach its cap
   * about once a second, and BEGIN took up to 102 ms with the proxy's thread asleep (a p99 of 62-87 ms at the proxy).
   */
  async #begin(transaction: WriteTransaction): Promise<void> {
    return this.#waitForLock(() => transaction.begin());
  }

  /**
   * Runs `take` (a statement that may find another connection's lock) until it does not fail on a lock, with timers
   * in between (see #begin), for at most busyTimeoutMs; once writes fail fast (see #lockAware), once.
   */
  async #waitForLock<T>(take: () => T): Promise<T> {
    const deadline = this.#now() + this.#lockWaitMs;
    for (let delayMs = 1; ; delayMs = Math.min(delayMs * 2, MAX_LOCK_RETRY_MS)) {
      try {
        return take();
      } catch (err) {
        if (!lockedOut(err) || this.#lockFailFast || this.#now() >= deadline) throw err;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(delayMs, deadline - this.#now()))));
    }
  }

  /**
   * Runs a write; once one has failed on another connection's lock, the next ones fail at once instead of each
   * waiting busyTimeoutMs, until one succeeds. A lock that another process holds for long (a report run with
   * --writable) would otherwise hold every queued write for busyTimeoutMs in turn: 30 events POSTs queued behind one
   * took about 2 s to be answered, 100 ms each, when the wait still slept the proxy's thread. Now a lock costs at
   * most one wait per spell; the writes that fail meanwhile are retried by their callers (the exposure batcher with
   * backoff; an events POST gets a 503).
   */
  async #lockAware<T>(fn: () => T | Promise<T>): Promise<T> {
    try {
      const result = await fn();
      this.#lockFailFast = false;
      return result;
    } catch (err) {
      if (this.#lockWaitMs > 0 && lockedOut(err)) this.#lockFailFast = true;
      throw err;
    }
  }

  /**
   * All or nothing, like a single transaction, but without holding the event loop for the whole batch: the rows go
   * in a slice at a time (writeSliceMs, sized by WritePacer), each slice in its own turn of the event loop, and the
   * batch's rollups (units, minutes, latency buckets, counters) in the last, and the commit in a turn of its own.
   * One transaction per call rather than per slice, because a commit writes every page it touched to the WAL and the
   * rollups touch the same few dozen rows whatever the slice: with a transaction each, 200-row slices took 7-30% more
   * CPU per row
   * (bench/store/exposures.ts, three runs). A failure anywhere rolls the whole call back, for the batcher to retry.
   */
  async writeExposures(rows: Exposure[]): Promise<void> {
    this.#writable(`write ${rows.length} exposures`);
    if (rows.length === 0) return;
    this.#s();
    checkExposures(rows);
    return this.#serial(() => this.#writeExposures(rows));
  }

  /**
   * `writeExposures` of a block's rows, as binary chunks (see ExposureBlockInsert) when they all fit in one, else as
   * Exposure objects (which checks them as `writeExposures` does).
   */
  async writeExposureBlock(block: ExposureBlock): Promise<void> {
    this.#writable(`write ${block.rows} exposures`);
    if (block.rows === 0) return;
    this.#s();
    if (!ExposureBlockInsert.fits(block)) return this.writeExposures(block.toExposures());
    return this.#serial(() => this.#writeExposures(block));
  }

  async #writeExposures(batch: Exposure[] | ExposureBlock): Promise<void> {
    this.#s();
    const writer = this.#exposures!;
    const pacer = this.#pacer;
    const roll = new ExposureRollupBuilder(this.#cache);
    const rows = Array.isArray(batch) ? batch.length : batch.rows;
    try {
      await this.#begin(writer);
      let usedMs = 0;
      for (let i = 0; i < rows; ) {
        if (i > 0) await nextTurn();
        const t0 = this.#now();
        const n = Math.min(pacer.sliceRows, rows - i);
        if (Array.isArray(batch)) {
          roll.add(batch, i, i + n);
          writer.insert(batch, i, i + n);
        } else {
          roll.addBlock(batch, i, i + n);
          writer.insertBlock(batch, i, i + n);
        }
        i += n;
        usedMs = this.#now() - t0;
        pacer.sliced(n, usedMs);
      }
      const result = roll.result();
      // The units new to the database, or changed, are upserted a few at a time, and the turn ends when it has had
      // its budget: each is an insert on a page of its own (the table is keyed by unit), and a batch of new units
      // (an experiment's first minutes, a million users) held the loop 4-7 ms in one go.
      for (let i = 0; i < result.units.length; ) {
        if (usedMs >= pacer.budgetMs) {
          await nextTurn();
          usedMs = 0;
        }
        const t0 = this.#now();
        const n = Math.min(UNIT_SLICE_ROWS, result.units.length - i);
        writer.units(result.units, i, i + n);
        i += n;
        usedMs += this.#now() - t0;
      }
      if (!pacer.finishFits(usedMs)) await nextTurn();
      const t1 = this.#now();
      writer.rollups(result);
      pacer.finished(this.#now() - t1);
      // The commit in a turn of its own: it writes every page the batch touched to the WAL, a stall of its own
      // (up to a few ms when the WAL file grows) that should not add to the rollups'.
      await nextTurn();
      writer.commit();
      for (const u of result.units) this.#cache.remember(u.experiment, u.unit, u.firstTs, u.firstVariant, u.multi === 1);
    } catch (err) {
      try {
        writer.rollback();
      } catch {
        // The connection is unusable; the error that got us here is the one to report.
      }
      throw new StoreError(`cannot write ${rows} exposures to ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  async writeEvents(rows: OutcomeEvent[]): Promise<void> {
    this.#writable(`write ${rows.length} events`);
    if (rows.length === 0) return;
    this.#s();
    rows.forEach(checkEvent);
    return this.#serial(() => this.#writeEvents(rows));
  }

  /**
   * One transaction, inserted EVENT_SLICE_ROWS at a time with a turn of the event loop between slices, as exposures
   * are: 10,000 events in one go held the proxy's thread about 50 ms. Other writes wait in #serial meanwhile, so
   * nothing else commits under `synchronous = FULL` or joins the transaction.
   */
  async #writeEvents(rows: OutcomeEvent[]): Promise<void> {
    const s = this.#s();
    const transaction = this.#transaction!;
    const counts = new Map<string, number>();
    for (const e of rows) counts.set(e.experiment, (counts.get(e.experiment) ?? 0) + 1);
    try {
      this.#db.pragma("synchronous = FULL");
      try {
        await this.#begin(transaction);
        try {
          for (let i = 0; i < rows.length; i += EVENT_SLICE_ROWS) {
            if (i > 0) await nextTurn();
            for (let j = i; j < Math.min(rows.length, i + EVENT_SLICE_ROWS); j++) {
              const e = rows[j]!;
              s.event.run(e.experiment, e.unit, e.event, e.value, Math.trunc(e.ts), e.requestId);
            }
          }
          for (const [experiment, n] of counts) s.countEvents.run(experiment, n);
          transaction.commit();
        } catch (err) {
          transaction.rollback();
          throw err;
        }
      } finally {
        this.#db.pragma("synchronous = NORMAL");
      }
    } catch (err) {
      throw new StoreError(`cannot write ${rows.length} events to ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  async getState(experiment: string, key: string): Promise<string | null> {
    // (a read of a WAL database waits for no lock, but for another connection's recovery of the WAL after a crash)
    const row = await this.#readUnchanged(() => this.#waitForLock(() => this.#s().getState.get(experiment, key) as { value: string } | undefined));
    return row?.value ?? null;
  }

  async setState(experiment: string, key: string, value: string): Promise<void> {
    this.#writable(`save state ${experiment}/${key}`);
    this.#s();
    return this.#serial(async () => {
      try {
        // (a statement of its own would take the write lock with no wait, as every statement here: see init)
        await this.#waitForLock(() => this.#s().setState.run(experiment, key, value, Date.now()));
      } catch (err) {
        if (err instanceof StoreError) throw err;
        throw new StoreError(`cannot save state ${experiment}/${key}: ${(err as Error).message}`, { cause: err });
      }
    });
  }

  #query: Query = (sql, params) => this.#readUnchanged(() => this.#run(sql, params));

  /**
   * A read of a store opened as immutable (see openReadOnly), which fails if the store changed since it was opened:
   * such a read takes no locks, so it may have seen a mix of old and new pages, or fail on them as "malformed".
   */
  async #readUnchanged<T>(read: () => T | Promise<T>): Promise<T> {
    const unchanged = this.#unchanged;
    if (unchanged === null) return read();
    const changed = (cause?: unknown) =>
      new StoreError(`SQLite store ${this.path} changed while it was read (it was written, replaced or removed): read it again`, { cause });
    let out: T;
    try {
      out = await read();
    } catch (err) {
      throw unchanged() ? err : changed(err);
    }
    if (!unchanged()) throw changed();
    return out;
  }

  #run: Query = async (sql, params) => {
    try {
      return await this.#runQuery(sql, params);
    } catch (err) {
      // A read that fails because the file went (its reader then sees a new, empty file) says so, as writes do.
      this.#sameFile("read the store");
      throw err;
    }
  };

  #runQuery: Query = async (sql, params) => {
    this.#s();
    if (this.#readInThread) {
      // On the writing connection a read between the slices of a write would see its uncommitted rows (units
      // upserted, minutes not yet): it waits for the writes under way to end.
      if (this.#db.inTransaction) return this.#serial(() => this.#runQuery(sql, params));
      try {
        return this.#db.prepare(sql).all(...params) as Record<string, unknown>[];
      } catch (err) {
        throw new StoreError(`SQLite query failed on ${this.path}: ${(err as Error).message}`, { cause: err });
      }
    }
    return this.#readerThread().query(sql, params);
  };

  #readerThread(): ReaderThread {
    this.#reader ??= new ReaderThread({
      path: this.path,
      openName: this.#openName,
      readOnly: this.readOnly,
      cacheSizeMiB: this.#cacheSizeMiB,
      // Queries go on, on this thread: slower for the proxy, but the report still answers.
      onStopped: () => {
        if (!this.#closed) this.#readInThread = true;
      },
    });
    return this.#reader;
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
   * Runs `fn`'s queries on one snapshot of the store: a write that commits meanwhile is seen by none of them. The
   * report's figures come from several statements (units, minutes, events, the latency histogram), and a batch that
   * committed between them gave a treatment 1 unit and 2 conversions, a comparison dropped as invalid input.
   * On the reader thread, one read transaction (ReaderThread.snapshot); on this thread (a memory store, or once the
   * reader stopped), after the writes under way and before the next, so `fn` must not wait for a write.
   */
  async snapshot<T>(fn: (query: Query) => Promise<T>): Promise<T> {
    this.#s();
    if (this.#readInThread) return this.#serial(() => fn(this.#query));
    return this.#readerThread().snapshot(() => fn(this.#query));
  }

  counts(experiment: string): Promise<{ exposures: number; events: number }> {
    return experimentCounts(this.#query, experiment);
  }

  /**
   * On this thread, as raw rows: it is read at start, before the gateway listens, and through the reader thread a
   * million units took 5.4 s and 434 MB more RSS at the peak, every row an object cloned across.
   */
  async recentUnits(experiment: string, limit: number): Promise<[string, string][]> {
    this.#s();
    checkRecentUnitsLimit(limit);
    if (limit === 0) return [];
    try {
      return (this.#db.prepare(RECENT_UNITS_SQL).raw().all(experiment, limit) as [string, string][]).reverse();
    } catch (err) {
      throw new StoreError(`SQLite query failed on ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Runs a checkpoint so the file is self-contained (not read-only), then closes. Idempotent. */
  close(): Promise<void> {
    // After the writes queued before it (an exposure write may be between two slices of its transaction); calls
    // made after it are refused.
    this.#closing ??= this.#serial(() => {
      this.#closed = true;
      return this.#close();
    });
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#stmts = null;
    this.#exposures = null;
    const reader = this.#reader;
    this.#reader = null;
    if (reader !== null) await reader.close();
    const worker = this.#checkpointer;
    this.#checkpointer = null;
    if (worker !== null) await worker.terminate();
    if (this.#checkpointTimer !== null) clearInterval(this.#checkpointTimer);
    this.#checkpointTimer = null;
    try {
      if (this.#db.open) {
        // A read-only store leaves the WAL as it found it (it cannot checkpoint anyway). Otherwise without a busy
        // wait: TRUNCATE takes the write lock and then waits for readers of older snapshots, and another process's
        // writer (a live gateway) would wait all that time; closeCheckpointWaitMs retries instead. If others still
        // use the file, the WAL stays for them to checkpoint.
        if (!this.readOnly) {
          this.#db.pragma("busy_timeout = 0");
          // Tries that find readers return at once (busy = 1) rather than hold the write lock, so a live gateway's
          // writes go on between them. Done when every frame is in the file (checkpointed = log), even if a reader
          // of the newest snapshot still keeps the truncation from happening.
          const startedMs = performance.now();
          const deadline = startedMs + this.#closeCheckpointWaitMs;
          for (let tries = 1; ; tries++) {
            const [r] = this.#db.pragma("wal_checkpoint(TRUNCATE)") as { busy: number; log: number; checkpointed: number }[];
            if (r === undefined || r.busy === 0 || (r.log >= 0 && r.checkpointed === r.log)) break;
            if (performance.now() >= deadline) {
              // log = -1: another connection holds the lock the checkpoint needs; what it left is then unknown.
              this.#onCloseCheckpoint?.({
                kind: "incomplete",
                waitedMs: Math.round(performance.now() - startedMs),
                framesLeft: r.log >= 0 ? r.log - Math.max(r.checkpointed, 0) : null,
              });
              break;
            }
            if (tries === 1) this.#onCloseCheckpoint?.({ kind: "waiting", waitMs: this.#closeCheckpointWaitMs });
            await new Promise((resolve) => setTimeout(resolve, 25));
          }
        }
        this.#db.close();
      }
    } catch (err) {
      throw new StoreError(`cannot close SQLite store ${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }
}
