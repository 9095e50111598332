import { existsSync } from "node:fs";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { type ResourceLimits, Worker } from "node:worker_threads";
import type { MetricConfig } from "../../config/index.ts";
import { InvalidArgumentError, isStoreErrorCode, StoreError } from "../../errors.ts";
import { type ExposureBlock, partsBuffers } from "../exposure-block.ts";
import type { AggregateOptions, CarriedTotals, ExperimentAggregates, Exposure, MinuteBucket, OutcomeEvent, Store } from "../types.ts";
import { aggregateExperiment, experimentCounts, minuteSeries, totalsBefore, type Query } from "../aggregate.ts";
import { checkSameFile, type CloseCheckpointEvent, DEFAULT_CACHE_SIZE_MIB, type FileId, ReaderThread, type SqliteStoreOptions } from "./sqlite-store.ts";

/**
 * Where a writable SQLite store writes: on a thread of its own (`thread`), on the caller's (`inline`), or `auto`:
 * a thread when the process may run on more than one core (ABGATE_SQLITE_WRITER=thread|inline overrides).
 *
 * Why a thread: SQLite's writes are synchronous system calls, and a stalled disk (a frozen or failing filesystem,
 * a saturated network volume) stalls the thread that makes them. On the proxy's thread that froze every request
 * and the admin API for the whole stall (20-36 s in a storage audit). On a thread of its own only the writes wait:
 * the batcher keeps exposures (bounded) and events POSTs wait, while requests go on.
 *
 * Why not always: on a single core the thread competes with the proxy for it, and the kernel lets it finish its
 * scheduler slice before the woken proxy runs (see the note above SqliteStore: the proxy's p99 was 6.4 ms against
 * 5.8 ms with writes sliced on its thread). With a second core it runs beside the proxy instead.
 */
export type SqliteWriter = "thread" | "inline" | "auto";

/** The thread's entry: beside this module in the sources, and in a build the bundle named sqlite-writer (tsup.config.ts). */
const fromSources = import.meta.url.endsWith(".ts");
const ENTRY = new URL(fromSources ? "./writer-worker.ts" : "./sqlite-writer.js", import.meta.url).href;

export function writerOnThread(writer: SqliteWriter = "inline"): boolean {
  if (writer === "auto") {
    const env = process.env.ABGATE_SQLITE_WRITER;
    if (env === "thread" || env === "inline") return env === "thread";
    // A bundle made without the thread's entry (see ENTRY) writes inline rather than fail every write.
    return availableParallelism() > 1 && existsSync(fileURLToPath(ENTRY));
  }
  return writer === "thread";
}

/**
 * A batch of exposures as it crosses to the thread: the six strings of each row joined by NUL, which neither units
 * nor request ids may hold (the proxy and the batcher refuse them) and names from the config cannot, and the four
 * numbers in a transferred buffer. Cloning 1,000 exposure objects took 1.6 ms of the proxy's thread; this, 0.26 ms.
 */
export interface PackedExposures {
  rows: number;
  strings: string;
  /** per row: ts, latencyMs, status, forced (1 or 0) */
  numbers: Float64Array;
}

const STRINGS_PER_ROW = 6;

/**
 * Whether packing keeps the row as it is: strings without NUL (the separator), numbers, a boolean. Other rows cross
 * as objects, for the thread's store to judge them as the store on this thread would (exposureProblem: the batcher
 * has checked the gateway's rows already; the ranges it checks survive packing).
 */
function packable(r: Exposure): boolean {
  return (
    typeof r.ts === "number" &&
    typeof r.latencyMs === "number" &&
    typeof r.status === "number" &&
    typeof r.forced === "boolean" &&
    noNul(r.experiment) &&
    noNul(r.requestId) &&
    noNul(r.unit) &&
    noNul(r.assigned) &&
    noNul(r.served) &&
    noNul(r.replica)
  );
}

const noNul = (x: unknown): boolean => typeof x === "string" && !x.includes("\0");

/** Null when a row is not packable: the rows then cross as objects. */
export function packExposures(rows: readonly Exposure[]): PackedExposures | null {
  const strings = new Array<string>(rows.length * STRINGS_PER_ROW);
  const numbers = new Float64Array(rows.length * 4);
  for (let i = 0, s = 0, n = 0; i < rows.length; i++) {
    const r = rows[i]!;
    if (!packable(r)) return null;
    strings[s++] = r.experiment;
    strings[s++] = r.requestId;
    strings[s++] = r.unit;
    strings[s++] = r.assigned;
    strings[s++] = r.served;
    strings[s++] = r.replica;
    numbers[n++] = r.ts;
    numbers[n++] = r.latencyMs;
    numbers[n++] = r.status;
    numbers[n++] = r.forced ? 1 : 0;
  }
  return { rows: rows.length, strings: strings.join("\0"), numbers };
}

export function unpackExposures(packed: PackedExposures): Exposure[] {
  const strings = packed.rows === 0 ? [] : packed.strings.split("\0");
  if (strings.length !== packed.rows * STRINGS_PER_ROW) {
    throw new StoreError(`exposures packed for the writer thread do not unpack: ${strings.length} strings for ${packed.rows} rows (a NUL in a name?)`);
  }
  const rows = new Array<Exposure>(packed.rows);
  const x = packed.numbers;
  for (let i = 0, s = 0, n = 0; i < packed.rows; i++) {
    rows[i] = {
      experiment: strings[s++]!,
      requestId: strings[s++]!,
      unit: strings[s++]!,
      assigned: strings[s++]!,
      served: strings[s++]!,
      replica: strings[s++]!,
      ts: x[n++]!,
      latencyMs: x[n++]!,
      status: x[n++]!,
      forced: x[n++]! === 1,
    };
  }
  return rows;
}

/** `recentUnits`' answer as one string (unit, variant, unit, ...), or the pairs themselves when one holds a NUL. */
export function packPairs(pairs: [string, string][]): string | [string, string][] {
  const flat = new Array<string>(pairs.length * 2);
  for (let i = 0; i < pairs.length; i++) {
    const [a, b] = pairs[i]!;
    if (a.includes("\0") || b.includes("\0")) return pairs;
    flat[2 * i] = a;
    flat[2 * i + 1] = b;
  }
  return flat.join("\0");
}

export function unpackPairs(packed: string | [string, string][]): [string, string][] {
  if (typeof packed !== "string") return packed;
  if (packed === "") return [];
  const flat = packed.split("\0");
  const pairs = new Array<[string, string]>(flat.length / 2);
  for (let i = 0; i < pairs.length; i++) pairs[i] = [flat[2 * i]!, flat[2 * i + 1]!];
  return pairs;
}

/** An error as it crosses from the thread: the store's errors keep their class, code and message. */
export interface WireError {
  name: string;
  message: string;
  code?: string;
}

export function toWire(err: unknown): WireError {
  if (err instanceof Error) return { name: err.name, message: err.message, code: (err as { code?: string }).code };
  return { name: "Error", message: String(err) };
}

/** The store's errors as their classes; anything else (a bug: a TypeError) as a plain error, not as a store outage. */
function fromWire(e: WireError): Error {
  if (e.name === "InvalidArgumentError") return new InvalidArgumentError(e.message);
  if (e.name === "StoreError") return new StoreError(e.message, { code: isStoreErrorCode(e.code) ? e.code : undefined });
  const err = e.name === "TypeError" ? new TypeError(e.message) : e.name === "RangeError" ? new RangeError(e.message) : new Error(e.message);
  if (err.name !== e.name) err.name = e.name;
  return err;
}

/** Calls whose effect may have happened when the thread stopped before answering them. */
const WRITES = new Set(["exposuresPacked", "exposureBlock", "writeExposures", "writeEvents", "setState", "close"]);

/** What the thread is asked: `op` names a Store method (or `exposuresPacked`), `args` its arguments. */
export interface WriterRequest {
  id: number;
  op: string;
  args: unknown[];
}

export type WriterReply =
  | { id: number; result: unknown }
  | { id: number; error: WireError }
  | { closeCheckpoint: CloseCheckpointEvent };

/** What the thread's store is opened with: the options that cross a thread (no functions). */
export type ThreadStoreOptions = Omit<SqliteStoreOptions, "monotonicMs" | "onCloseCheckpoint" | "readOnly">;

export interface SqliteThreadStoreOptions extends SqliteStoreOptions {
  /** the writer thread's heap limits (Node's Worker resourceLimits; default none): past them the thread stops */
  threadResourceLimits?: ResourceLimits;
}

/**
 * Runs the thread's entry, compiled (dist/sqlite-writer.js) or as TypeScript: a process started from the sources by
 * bin/abgate.js, or by node --import tsx, has tsx on its own thread only (an eval'd thread does not get it), so the
 * thread registers it when Node cannot load the .ts entry (Node 20: an unknown extension; a Node that strips types:
 * syntax it does not strip), and loads the entry again under another URL (the failed load is remembered under the
 * first). Kept as source text, like the store's other threads.
 */
const BOOT = `
const { workerData } = require("node:worker_threads");
import(workerData.entry).catch(async (err) => {
  if (workerData.tsxApi === null) throw err;
  (await import(workerData.tsxApi)).register();
  await import(workerData.entry + "?tsx");
});
`;


function tsxApi(): string | null {
  if (!fromSources) return null;
  try {
    return import.meta.resolve("tsx/esm/api");
  } catch {
    return null;
  }
}

interface Pending {
  op: string;
  resolve(value: unknown): void;
  reject(err: Error): void;
}

/**
 * A writable SQLite store whose connection lives on a thread of its own (see SqliteWriter for why). It is a
 * SqliteStore there, so it behaves as one: each call crosses as a message and its answer (or error, with its class
 * and code) comes back. A thread that dies fails the calls it had; the next call starts a new one.
 */
export class SqliteThreadStore implements Store {
  readonly path: string;
  readonly readOnly = false;
  migratedFrom?: number;
  readonly #options: ThreadStoreOptions;
  readonly #resourceLimits: ResourceLimits | undefined;
  readonly #onCloseCheckpoint: ((event: CloseCheckpointEvent) => void) | undefined;
  #worker: Worker | null = null;
  /** the report's queries' thread (see #query); null: none yet */
  #reader: ReaderThread | null = null;
  /** the file the thread's store opened (see checkSameFile); null until it is open */
  #fileId: FileId | null = null;
  /** resolves once the current thread's store is open (init), for calls made meanwhile */
  #ready: Promise<void> | null = null;
  readonly #pending = new Map<number, Pending>();
  #lastId = 0;
  /** init() was called: until then calls are refused, as SqliteStore's are */
  #initCalled = false;
  #closed = false;
  #closing: Promise<void> | null = null;

  constructor(path: string, options: SqliteThreadStoreOptions = {}) {
    if (path === ":memory:") throw new InvalidArgumentError("SqliteThreadStore: an in-memory database cannot be shared with a thread");
    if (options.readOnly) throw new InvalidArgumentError("SqliteThreadStore: a read-only store writes nothing; open a SqliteStore");
    this.path = path;
    const { monotonicMs: _clock, onCloseCheckpoint, readOnly: _readOnly, threadResourceLimits, ...rest } = options;
    this.#options = rest;
    this.#resourceLimits = threadResourceLimits;
    this.#onCloseCheckpoint = onCloseCheckpoint;
  }

  async init(): Promise<void> {
    this.#open();
    this.#initCalled = true;
    if (this.#ready === null) this.#start();
    await this.#ready;
  }

  #open(): void {
    if (this.#closed) throw new StoreError(`SQLite store ${this.path} is closed`);
  }

  /** Starts the thread and opens its store; `#ready` settles with that. */
  #start(): void {
    const worker = new Worker(BOOT, { eval: true, workerData: { entry: ENTRY, tsxApi: tsxApi(), path: this.path, options: this.#options }, resourceLimits: this.#resourceLimits });
    worker.unref();
    this.#worker = worker;
    worker.on("message", (m: WriterReply) => {
      if ("closeCheckpoint" in m) {
        this.#onCloseCheckpoint?.(m.closeCheckpoint);
        return;
      }
      const pending = this.#pending.get(m.id);
      if (pending === undefined) return;
      this.#pending.delete(m.id);
      if (this.#pending.size === 0) worker.unref();
      if ("error" in m) pending.reject(fromWire(m.error));
      else pending.resolve(m.result);
    });
    const stopped = (why: string) => {
      if (this.#worker !== worker) return;
      this.#worker = null;
      this.#ready = null;
      const pending = [...this.#pending.values()];
      this.#pending.clear();
      // A write the thread had may have committed before it stopped: its caller must not take it as refused (an
      // events POST answered 503 is retried by its client, and its events would then be stored twice).
      for (const p of pending) {
        p.reject(
          WRITES.has(p.op)
            ? new StoreError(`SQLite store ${this.path}: its writer thread stopped (${why}) during a write, which may or may not have been stored`, { code: "ABGATE_ERR_STORE_OUTCOME_UNKNOWN" })
            : new StoreError(`SQLite store ${this.path}: its writer thread stopped (${why})`),
        );
      }
    };
    worker.on("error", (err) => stopped(err.message));
    worker.on("exit", (code) => stopped(`exit code ${code}`));
    const ready = this.#send(worker, "init", []).then((opened) => {
      const { migratedFrom, fileId } = opened as { migratedFrom: number | null; fileId: FileId | null };
      if (migratedFrom !== null) this.migratedFrom = migratedFrom;
      this.#fileId = fileId;
    });
    // A failed open ends the thread: a later call starts afresh (the file may have been fixed meanwhile).
    ready.catch(() => {
      if (this.#worker === worker) {
        this.#worker = null;
        this.#ready = null;
        void worker.terminate();
      }
    });
    this.#ready = ready;
  }

  #send(worker: Worker, op: string, args: unknown[], transfer?: ArrayBuffer[]): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const id = ++this.#lastId;
      try {
        worker.postMessage({ id, op, args } satisfies WriterRequest, transfer);
      } catch (err) {
        // (arguments that cannot be copied to a thread: a function in a row; the thread never saw the call)
        return reject(new StoreError(`SQLite store ${this.path}: cannot pass ${op}'s arguments to the writer thread: ${(err as Error).message}`, { cause: err }));
      }
      this.#pending.set(id, { op, resolve, reject });
      // Referenced only while it has work (an idle store must not keep the process alive; a pending write must).
      if (this.#pending.size === 1) worker.ref();
    });
  }

  /** Waits for the thread's store to be open (starting a thread if the last one stopped); refused before init(). */
  async #opened(): Promise<void> {
    this.#open();
    if (!this.#initCalled) throw new StoreError(`SQLite store ${this.path} is not initialised: call init() first`);
    if (this.#ready === null) this.#start();
    await this.#ready;
  }

  async #call(op: string, args: unknown[], transfer?: ArrayBuffer[]): Promise<unknown> {
    await this.#opened();
    const worker = this.#worker;
    if (worker === null) throw new StoreError(`SQLite store ${this.path}: its writer thread stopped`);
    return this.#send(worker, op, args, transfer);
  }

  async writeExposures(rows: Exposure[]): Promise<void> {
    if (rows.length === 0) return void this.#open();
    const packed = packExposures(rows);
    if (packed === null) await this.#call("writeExposures", [rows]);
    else await this.#call("exposuresPacked", [packed], [packed.numbers.buffer as ArrayBuffer]);
  }

  /** The block's rows cross as copies of its columns (transferred), to the thread's SqliteStore.writeExposureBlock. */
  async writeExposureBlock(block: ExposureBlock): Promise<void> {
    if (block.rows === 0) return void this.#open();
    const parts = block.toParts();
    await this.#call("exposureBlock", [parts], partsBuffers(parts));
  }

  async writeEvents(rows: OutcomeEvent[]): Promise<void> {
    await this.#call("writeEvents", [rows]);
  }

  async getState(experiment: string, key: string): Promise<string | null> {
    return (await this.#call("getState", [experiment, key])) as string | null;
  }

  async setState(experiment: string, key: string, value: string): Promise<void> {
    await this.#call("setState", [experiment, key, value]);
  }

  /**
   * The report's queries go to a reader thread of this side's, as SqliteStore's do, not through the writer: a write
   * stuck on a stalled disk holds the writer thread, and the counts, the dashboard and the report would wait behind it.
   */
  #query: Query = async (sql, params) => {
    const reader = await this.#readerThread();
    try {
      return await reader.query(sql, params);
    } catch (err) {
      // A read that fails because the file went (its reader then sees a new, empty file) says so, as writes do.
      if (this.#fileId !== null) checkSameFile(this.path, this.#fileId, "read the store");
      throw err;
    }
  };

  async #readerThread(): Promise<ReaderThread> {
    // (the schema is there once the thread's store is open)
    await this.#opened();
    // (a close() meanwhile has closed the reader: a new one would be left open)
    this.#open();
    if (this.#reader === null || this.#reader.stopped) {
      this.#reader = new ReaderThread({ path: this.path, openName: this.path, readOnly: false, cacheSizeMiB: this.#options.cacheSizeMiB ?? DEFAULT_CACHE_SIZE_MIB });
    }
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

  /** `fn`'s queries on one snapshot, in one read transaction of the reader thread (see SqliteStore.snapshot). */
  async snapshot<T>(fn: (query: Query) => Promise<T>): Promise<T> {
    return (await this.#readerThread()).snapshot(() => fn(this.#query));
  }

  counts(experiment: string): Promise<{ exposures: number; events: number }> {
    return experimentCounts(this.#query, experiment);
  }

  async recentUnits(experiment: string, limit: number): Promise<[string, string][]> {
    return unpackPairs((await this.#call("recentUnits", [experiment, limit])) as string | [string, string][]);
  }

  /** After every call made before it, as SqliteStore's close; then the thread ends. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const worker = this.#worker;
      const ready = this.#ready;
      this.#closed = true;
      const reader = this.#reader;
      this.#reader = null;
      await reader?.close();
      if (worker === null || ready === null) return;
      try {
        await ready;
      } catch {
        return; // never opened: nothing to close
      }
      try {
        await this.#send(worker, "close", []);
      } finally {
        this.#worker = null;
        this.#ready = null;
        await worker.terminate();
      }
    })();
    return this.#closing;
  }
}
