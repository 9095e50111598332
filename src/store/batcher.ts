import { type Clock, systemClock, type TimerHandle } from "../clock.ts";
import { InvalidArgumentError, StoreError } from "../errors.ts";
import { ExposureBlock, isPlainAscii, UNIT_SLOT_CHARS } from "./exposure-block.ts";
import { exposureProblem } from "./rollup.ts";
import type { Exposure, Store } from "./types.ts";

export type BatcherLog = (level: "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

/** While exposure writes keep failing, how often the failure is logged again (with the rows dropped so far). */
const FAILURE_LOG_INTERVAL_MS = 60_000;

export interface ExposureBatcherOptions {
  clock?: Clock;
  /** a row waits at most this long before a write starts (default 100) */
  flushIntervalMs?: number;
  /** a write starts as soon as this many rows wait (default 1,000) */
  maxBatch?: number;
  /** rows kept while the store fails; beyond it the oldest are dropped and counted (default 100,000) */
  maxBuffered?: number;
  /**
   * rows per `writeExposures` call when catching up on a backlog (default 2,000: one transaction of the SQLite store,
   * whose commit writes every page the call filled in one go, about 0.5 ms for 2,000 rows)
   */
  maxWriteRows?: number;
  /** longest wait between retries while the store keeps failing (default 5,000) */
  maxRetryDelayMs?: number;
  /**
   * How long `close()` goes on retrying rows the store refuses (a lock another process holds, a full disk) before it
   * gives them up as lost (default 5,000; 0: one attempt)
   */
  closeRetryMs?: number;
  log?: BatcherLog;
}

export interface BatcherStats {
  buffered: number;
  written: number;
  /** rows lost: pushed out of a full buffer, or still buffered when `close()` gave up */
  dropped: number;
  /**
   * rows of writes whose outcome the store could not learn (ABGATE_ERR_STORE_OUTCOME_UNKNOWN: a lost COMMIT answer, a
   * writer thread that died mid-write): maybe stored, maybe not, and not retried, since a retry of a stored batch
   * counts every row twice
   */
  uncertain: number;
  /** consecutive failed writes (0 once a write succeeds) */
  failures: number;
  lastError: string | null;
}

function isInvalidExposure(err: unknown): boolean {
  return err instanceof StoreError && err.code === "ABGATE_ERR_STORE_INVALID_EXPOSURE";
}

function isOutcomeUnknown(err: unknown): boolean {
  return err instanceof StoreError && err.code === "ABGATE_ERR_STORE_OUTCOME_UNKNOWN";
}

const defaultLog: BatcherLog = (level, msg, fields) => {
  console.error(JSON.stringify({ level, component: "exposure-batcher", msg, ...fields }));
};

/**
 * Collects exposures from the proxy and writes them to the store in batches, off the request path.
 *
 * `push` only stores a reference in a preallocated ring buffer and maybe arms a timer: no await, no I/O, O(1).
 * A write starts `flushIntervalMs` after the first waiting row, or on the next timer tick once `maxBatch` rows wait
 * (a 0 ms timer rather than an inline call, because the SQLite store writes the first slice of a write synchronously
 * and would otherwise run inside the proxy's request handler). One write runs at a time; rows that arrive meanwhile
 * go in the next one.
 *
 * A timed write takes the rows that waited when it started; rows that arrive while it runs (the SQLite store yields
 * to the event loop between slices of a big write) wait for the next one, whose timer counts from the start of this
 * one, so none waits longer than flushIntervalMs and batches stay big. `flush()` writes until the buffer is empty.
 *
 * When the store fails, the rows go back to the front of the buffer and the write is retried with exponential
 * backoff (flushIntervalMs doubling up to maxRetryDelayMs). The buffer is bounded: once full, each new row pushes
 * out the oldest, and `stats().dropped` counts them. Errors are logged, never thrown at the proxy.
 */
export class ExposureBatcher {
  readonly #store: Pick<Store, "writeExposures" | "writeExposureBlock">;
  /** the rows of a write to a store that takes them by column (made at the first such write, reused after) */
  #block: ExposureBlock | null = null;
  readonly #clock: Clock;
  readonly #intervalMs: number;
  readonly #maxBatch: number;
  readonly #cap: number;
  readonly #maxWriteRows: number;
  readonly #maxRetryDelayMs: number;
  readonly #closeRetryMs: number;
  readonly #log: BatcherLog;

  #buf: ExposureColumns;
  #head = 0;
  #size = 0;

  #timer: TimerHandle | null = null;
  /** the armed timer is the 0 ms "batch is full" one */
  #timerIsImmediate = false;
  #draining = false;
  #chain: Promise<void> = Promise.resolve();
  #closed = false;

  #written = 0;
  #dropped = 0;
  #uncertain = 0;
  #failures = 0;
  #lastError: string | null = null;
  /** when the failure streak was last logged (clock ms) */
  #failureLoggedMs = 0;

  constructor(store: Pick<Store, "writeExposures" | "writeExposureBlock">, options: ExposureBatcherOptions = {}) {
    this.#store = store;
    this.#clock = options.clock ?? systemClock;
    this.#intervalMs = options.flushIntervalMs ?? 100;
    this.#maxBatch = options.maxBatch ?? 1000;
    this.#cap = options.maxBuffered ?? 100_000;
    this.#maxWriteRows = options.maxWriteRows ?? 2000;
    this.#maxRetryDelayMs = options.maxRetryDelayMs ?? 5000;
    this.#closeRetryMs = options.closeRetryMs ?? 5000;
    this.#log = options.log ?? defaultLog;
    for (const [k, v] of [
      ["flushIntervalMs", this.#intervalMs],
      ["maxBatch", this.#maxBatch],
      ["maxBuffered", this.#cap],
      ["maxWriteRows", this.#maxWriteRows],
    ] as const) {
      if (!Number.isInteger(v) || v <= 0) throw new InvalidArgumentError(`ExposureBatcher: ${k} must be a positive integer, got ${v}`);
    }
    if (!(this.#closeRetryMs >= 0 && this.#closeRetryMs <= 3_600_000)) throw new InvalidArgumentError(`ExposureBatcher: closeRetryMs must be from 0 to 3,600,000, got ${this.#closeRetryMs}`);
    if (this.#maxBatch > this.#cap) throw new InvalidArgumentError(`ExposureBatcher: maxBatch (${this.#maxBatch}) exceeds maxBuffered (${this.#cap})`);
    this.#buf = new ExposureColumns(this.#cap);
  }

  /** Queue one exposure. Never throws, never waits. */
  push(exposure: Exposure): void {
    if (this.#closed) {
      this.#dropped++;
      return;
    }
    if (this.#size === this.#cap) {
      // Full: the slot of the oldest row becomes the newest.
      this.#buf.set(this.#head, exposure);
      this.#head = this.#head + 1 === this.#cap ? 0 : this.#head + 1;
      this.#dropped++;
    } else {
      let tail = this.#head + this.#size;
      if (tail >= this.#cap) tail -= this.#cap;
      this.#buf.set(tail, exposure);
      this.#size++;
    }
    // While a drain runs it keeps taking rows until the buffer is empty; no timer needed.
    if (this.#draining) return;
    if (this.#size >= this.#maxBatch) {
      // After a failure the retry timer's backoff stands: a full batch must not turn it into a busy retry loop.
      if (!this.#timerIsImmediate && this.#failures === 0) this.#arm(0, true);
    } else if (this.#timer === null) {
      this.#arm(this.#intervalMs, false);
    }
  }

  /**
   * Write everything buffered now (and whatever arrives while writing). Resolves when the buffer is empty or a write
   * failed (the rows stay buffered and a retry is scheduled); never rejects.
   */
  flush(): Promise<void> {
    return this.#startDrain(true);
  }

  #startDrain(untilEmpty: boolean): Promise<void> {
    this.#cancelTimer();
    const run = this.#chain.then(() => this.#drain(untilEmpty));
    this.#chain = run;
    return run;
  }

  /**
   * Stop accepting rows, write what is buffered, and report anything that could not be written. Rows the store
   * refuses are retried for closeRetryMs (with backoff from flushIntervalMs up to 1 s): a lock that lasts a few seconds
   * (a report run with --writable, another writer) lost every buffered row of a stop that tried once.
   */
  async close(): Promise<void> {
    if (this.#closed) return this.#chain;
    this.#closed = true;
    await this.flush();
    const deadline = this.#clock.now() + this.#closeRetryMs;
    let waitMs = this.#intervalMs;
    if (this.#size > 0 && this.#clock.now() < deadline) {
      this.#log("warn", "the store does not take the exposures still buffered; retrying before stopping", { rows: this.#size, retryForMs: this.#closeRetryMs, error: this.#lastError });
    }
    // The clock's timers do not keep the process alive (they are unref'd), and at a stop nothing else may: the
    // listeners are closed. Without this the process ended in the middle of the retries, with exit code 13 (an
    // unsettled top-level await) and without the line below.
    const keepAlive = this.#size > 0 ? setInterval(() => {}, 1000) : undefined;
    try {
      while (this.#size > 0 && this.#clock.now() < deadline) {
        const delayMs = Math.min(waitMs, deadline - this.#clock.now());
        await new Promise<void>((resolve) => this.#clock.setTimeout(resolve, delayMs));
        waitMs = Math.min(waitMs * 2, 1000);
        await this.flush();
      }
    } finally {
      clearInterval(keepAlive);
    }
    this.#cancelTimer();
    if (this.#size > 0) {
      this.#log("error", "exposures lost at shutdown: the store did not accept them", { rows: this.#size, error: this.#lastError });
      this.#dropped += this.#size;
      this.#buf.clearAll();
      this.#size = 0;
      this.#head = 0;
    }
  }

  stats(): BatcherStats {
    return {
      buffered: this.#size,
      written: this.#written,
      dropped: this.#dropped,
      uncertain: this.#uncertain,
      failures: this.#failures,
      lastError: this.#lastError,
    };
  }

  #arm(delayMs: number, immediate: boolean): void {
    this.#cancelTimer();
    this.#timerIsImmediate = immediate;
    this.#timer = this.#clock.setTimeout(() => {
      this.#timer = null;
      this.#timerIsImmediate = false;
      void this.#startDrain(false);
    }, delayMs);
  }

  #cancelTimer(): void {
    this.#timer?.cancel();
    this.#timer = null;
    this.#timerIsImmediate = false;
  }

  /**
   * Writes the rows waiting now (all rows, until the buffer is empty, when `untilEmpty`), at most maxWriteRows per
   * call. Stops at the first failure, with the failed rows back at the front.
   */
  async #drain(untilEmpty: boolean): Promise<void> {
    this.#draining = true;
    const startedMs = this.#clock.now();
    let due = this.#size;
    try {
      while (this.#size > 0 && (untilEmpty || due > 0)) {
        const n = Math.min(this.#size, this.#maxWriteRows, untilEmpty ? Infinity : due);
        due -= n;
        const block = this.#takeBlock(n);
        // (made of the block only when a write of it failed: to put back, or to drop a row no store can take)
        let rows = block === null ? this.#take(n) : null;
        try {
          try {
            if (block !== null) await this.#store.writeExposureBlock!(block);
            else await this.#store.writeExposures(rows!);
          } catch (err) {
            // A row no store can take (NaN latency, a unit with a NUL) fails the whole batch before anything is
            // written: drop it and write the rest at once, or it would fail every retry forever. The store's own
            // check is the only one on the way: when every row was checked here first, the two checks took 0.8% of
            // the proxy's busy CPU samples (--cpu-prof, pinned to one core under bench/proxy's wrk and users.lua).
            if (!isInvalidExposure(err)) throw err;
            rows ??= block!.toExposures();
            const valid = this.#validRows(rows);
            if (valid.length === rows.length) throw err;
            rows = valid;
            if (rows.length === 0) continue;
            await this.#store.writeExposures(rows);
          }
        } catch (err) {
          rows ??= block!.toExposures();
          if (isOutcomeUnknown(err)) {
            this.#uncertain += rows.length;
            this.#log("error", "exposures may or may not have been stored (the store could not tell); not retried, so that none is counted twice", {
              rows: rows.length,
              uncertain: this.#uncertain,
              error: err instanceof Error ? err.message : String(err),
            });
            continue;
          }
          this.#putBack(rows);
          this.#failures++;
          this.#lastError = err instanceof Error ? err.message : String(err);
          // One line when a failure streak starts, then one a minute while it lasts, with the rows dropped so far: a
          // dead database must not flood the logs, but neither may rows be dropped for long unsaid (one line per 100
          // attempts, at the 5 s backoff, was one per 8 minutes; an audit saw 362,272 dropped with no line between).
          const nowMs = this.#clock.now();
          if (this.#failures === 1 || nowMs - this.#failureLoggedMs >= FAILURE_LOG_INTERVAL_MS) {
            this.#failureLoggedMs = nowMs;
            this.#log("error", "cannot write exposures; keeping them for a retry", {
              rows: rows.length,
              buffered: this.#size,
              failures: this.#failures,
              dropped: this.#dropped,
              error: this.#lastError,
            });
          }
          if (!this.#closed) {
            const delayMs = Math.min(this.#maxRetryDelayMs, this.#intervalMs * 2 ** Math.min(this.#failures - 1, 20));
            this.#arm(delayMs, false);
          }
          return;
        }
        this.#written += rows === null ? n : rows.length;
        if (this.#failures > 0) {
          this.#log("info", "exposure writes recovered", { failures: this.#failures, dropped: this.#dropped });
          this.#failures = 0;
        }
      }
    } finally {
      this.#draining = false;
      // Rows that arrived during a write that then failed are covered by the retry timer; otherwise make sure rows
      // pushed while draining get a timer. They all arrived after the drain started, so counting their interval from
      // then keeps the promise that a row waits at most flushIntervalMs.
      if (this.#size > 0 && this.#timer === null && !this.#closed) {
        if (this.#size >= this.#maxBatch) this.#arm(0, true);
        else this.#arm(Math.max(0, startedMs + this.#intervalMs - this.#clock.now()), false);
      }
    }
  }

  /**
   * Drops rows no store could accept (NaN latency, a missing unit): retrying them would fail the whole batch
   * forever. Checked only once the store refused a batch, rather than in `push` (the hot path) or before every write.
   */
  #validRows(rows: Exposure[]): Exposure[] {
    let bad: Exposure[] | null = null;
    for (const r of rows) {
      if (exposureProblem(r) !== null) (bad ??= []).push(r);
    }
    if (bad === null) return rows;
    this.#dropped += bad.length;
    this.#log("error", "dropping malformed exposures", { rows: bad.length, problem: exposureProblem(bad[0]!) });
    return rows.filter((r) => exposureProblem(r) === null);
  }

  #take(n: number): Exposure[] {
    const rows = new Array<Exposure>(n);
    for (let i = 0; i < n; i++) {
      rows[i] = this.#buf.take(this.#head);
      this.#head = this.#head + 1 === this.#cap ? 0 : this.#head + 1;
    }
    this.#taken(n);
    return rows;
  }

  /**
   * The next n rows as a block, taken out of the buffer, when the store takes blocks and every one of them fits in
   * one (see ExposureBlock); else null, and nothing is taken.
   */
  #takeBlock(n: number): ExposureBlock | null {
    if (this.#store.writeExposureBlock === undefined) return null;
    const firstPart = Math.min(n, this.#cap - this.#head);
    if (!this.#buf.packed(this.#head, firstPart) || !this.#buf.packed(0, n - firstPart)) return null;
    const block = (this.#block ??= new ExposureBlock(this.#maxWriteRows));
    this.#buf.copyTo(block, 0, this.#head, firstPart);
    this.#buf.copyTo(block, firstPart, 0, n - firstPart);
    this.#buf.describe(block);
    block.rows = n;
    this.#head = (this.#head + n) % this.#cap;
    this.#taken(n);
    return block;
  }

  #taken(n: number): void {
    this.#size -= n;
    // An empty ring starts again at its first slot: otherwise its ten columns are written at ever new places over
    // the whole capacity (about 6 MB at 100,000 rows), each row on cache lines that are cold again, and they push the
    // proxy's own data out of the caches. Same-core pairs (bench/proxy/ab.sh -r 8), this against without: 1.012 and 1.008 req/s.
    if (this.#size === 0) this.#head = 0;
  }

  /** Returns failed rows to the front, oldest first out; rows that no longer fit are the oldest, so they are dropped. */
  #putBack(rows: Exposure[]): void {
    for (let i = rows.length - 1; i >= 0; i--) {
      if (this.#size === this.#cap) {
        this.#dropped += i + 1;
        return;
      }
      this.#head = this.#head === 0 ? this.#cap - 1 : this.#head - 1;
      this.#buf.set(this.#head, rows[i]!);
      this.#size++;
    }
  }
}

/** #unitLength's mark for a unit kept as a string */
const UNIT_AS_STRING = 255;
/** Base-36 digits, at most this many: 36^10 < 2^53, so every such number is exact in a double. */
const MAX_ID_DIGITS = 10;

/**
 * The number written in lower-case base 36 from `from` to the end of `s`, or -1 when that is not exactly how
 * `n.toString(36)` writes a number: empty, a leading zero, another character, or too long.
 */
function base36(s: string, from: number): number {
  const digits = s.length - from;
  if (digits < 1 || digits > MAX_ID_DIGITS || (s.charCodeAt(from) === 48 && digits > 1)) return -1;
  let n = 0;
  for (let k = from; k < s.length; k++) {
    const c = s.charCodeAt(k);
    const d = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 122 ? c - 87 : -1;
    if (d === -1) return -1;
    n = n * 36 + d;
  }
  return n;
}

/**
 * The batcher's buffer, by column: numbers in typed arrays, the few distinct experiment, variant and replica names
 * as indexes into a table, a short unit as its characters, and a request id of the proxy's form as its number.
 *
 * Why not an array of the Exposure objects: rows wait here up to flushIntervalMs, long enough to live through a
 * young-generation GC or two, and every surviving object is copied by it. With an object and its strings per row,
 * the scavenges of a proxy at 40,000 requests/s took 1.5 ms (median) instead of 0.5 ms with logging off, and each
 * one holds every request in flight: the p99.
 *
 * Why not the unit and request id strings either: they were then the only objects a row kept alive, about 90 bytes
 * a row (an id as the proxy builds it is a concatenation of two strings), and at 30,000 requests/s still made the
 * median scavenge 0.9 ms against 0.55 with logging off. With a constant stored in their place, scavenges took
 * 0.51-0.64 ms (median of each of four 10 s runs, against 0.87-0.99) and their total time fell by a third.
 * A unit of up to UNIT_SLOT_CHARS ASCII characters other than NUL (user ids, UUIDs) is kept as bytes in the row's slot, and
 * an id `<prefix>-<n in base 36>` as n, once a first such id gave the prefix; the strings the store is given are made
 * again when a slice is taken (exactly: the forms are checked when a row is stored) and die young. Anything else
 * stays a string.
 */
class ExposureColumns {
  readonly #ts: Float64Array;
  readonly #latencyMs: Float64Array;
  readonly #status: Float64Array;
  readonly #forced: Uint8Array;
  readonly #experiment: Uint32Array;
  readonly #assigned: Uint32Array;
  readonly #served: Uint32Array;
  readonly #replica: Uint32Array;
  readonly #unit: (string | undefined)[];
  /** UNIT_SLOT_CHARS bytes per row: the unit's characters (latin1) when #unitLength says so */
  readonly #unitBytes: Buffer;
  /** the unit's length in #unitBytes, or UNIT_AS_STRING: it is in #unit */
  readonly #unitLength: Uint8Array;
  readonly #requestId: (string | undefined)[];
  /** the number of an id `${#idPrefix}${n.toString(36)}`, or -1: the id is in #requestId */
  readonly #requestSeq: Float64Array;
  /** "<prefix>-" of the proxy's request ids, from the first id of that form */
  #idPrefix: string | undefined;
  #idPrefixAscii = false;
  /** names by index; an index stays valid for the batcher's life (replica and variant names are few) */
  readonly #names: string[] = [];
  readonly #nameIds = new Map<string, number>();
  /** per column, the last name looked up: proxies pass the same string objects (from the config) row after row */
  readonly #lastName: (string | undefined)[] = [undefined, undefined, undefined, undefined];
  readonly #lastId = [-1, -1, -1, -1];

  constructor(capacity: number) {
    this.#ts = new Float64Array(capacity);
    this.#latencyMs = new Float64Array(capacity);
    this.#status = new Float64Array(capacity);
    this.#forced = new Uint8Array(capacity);
    this.#experiment = new Uint32Array(capacity);
    this.#assigned = new Uint32Array(capacity);
    this.#served = new Uint32Array(capacity);
    this.#replica = new Uint32Array(capacity);
    this.#unit = new Array<string | undefined>(capacity).fill(undefined);
    // (pages the ring never reaches are never touched: it starts again at its first slot whenever it empties)
    this.#unitBytes = Buffer.alloc(capacity * UNIT_SLOT_CHARS);
    this.#unitLength = new Uint8Array(capacity);
    this.#requestId = new Array<string | undefined>(capacity).fill(undefined);
    this.#requestSeq = new Float64Array(capacity);
  }

  #id(column: number, name: string): number {
    if (name === this.#lastName[column] && this.#lastId[column] !== -1) return this.#lastId[column]!;
    let id = this.#nameIds.get(name);
    if (id === undefined) {
      id = this.#names.length;
      this.#names.push(name);
      this.#nameIds.set(name, id);
    }
    this.#lastName[column] = name;
    this.#lastId[column] = id;
    return id;
  }

  set(i: number, e: Exposure): void {
    this.#ts[i] = e.ts;
    this.#latencyMs[i] = e.latencyMs;
    this.#status[i] = e.status;
    this.#forced[i] = e.forced ? 1 : 0;
    this.#experiment[i] = this.#id(0, e.experiment);
    this.#assigned[i] = this.#id(1, e.assigned);
    this.#served[i] = e.served === e.assigned ? this.#assigned[i]! : this.#id(2, e.served);
    this.#replica[i] = this.#id(3, e.replica);
    this.#setUnit(i, e.unit);
    this.#setRequestId(i, e);
  }

  #setUnit(i: number, unit: string): void {
    // (a malformed row, say one without a unit, is kept as it came, for the store to refuse: see #validRows)
    const n = typeof unit === "string" ? unit.length : Infinity;
    if (n <= UNIT_SLOT_CHARS) {
      const bytes = this.#unitBytes;
      const at = i * UNIT_SLOT_CHARS;
      let k = 0;
      for (; k < n; k++) {
        const c = unit.charCodeAt(k);
        if (c === 0 || c > 0x7f) break;
        bytes[at + k] = c;
      }
      if (k === n) {
        this.#unitLength[i] = n;
        this.#unit[i] = undefined;
        return;
      }
    }
    this.#unitLength[i] = UNIT_AS_STRING;
    this.#unit[i] = unit;
  }

  #setRequestId(i: number, e: Exposure): void {
    const id = e.requestId;
    const given = e.requestSeq;
    // A number given with the prefix the first id of the proxy's form set is the id's number, as the type says.
    const seq =
      given !== undefined && this.#idPrefix !== undefined && e.requestIdPrefix === this.#idPrefix && Number.isSafeInteger(given) && given >= 0
        ? given
        : typeof id === "string"
          ? this.#idNumber(id)
          : -1;
    this.#requestSeq[i] = seq;
    this.#requestId[i] = seq === -1 ? id : undefined;
  }

  /**
   * n when `id` is `${#idPrefix}${n.toString(36)}` (so that it is made again exactly: lower-case digits, no leading
   * zero, n a safe integer), else -1. The first id of the form `<prefix>-<n>` sets the prefix.
   */
  #idNumber(id: string): number {
    let prefix = this.#idPrefix;
    if (prefix === undefined) {
      const dash = id.lastIndexOf("-");
      if (dash === -1) return -1;
      prefix = id.slice(0, dash + 1);
      if (base36(id, prefix.length) === -1) return -1;
      // (a copy: a slice would keep the whole first id alive)
      this.#idPrefix = prefix = (" " + prefix).slice(1);
      this.#idPrefixAscii = isPlainAscii(prefix);
    }
    if (id.length <= prefix.length || !id.startsWith(prefix)) return -1;
    return base36(id, prefix.length);
  }

  /** The row at `i`, as an object; its slot no longer holds the strings. */
  take(i: number): Exposure {
    const names = this.#names;
    const e: Exposure = {
      experiment: names[this.#experiment[i]!]!,
      ts: this.#ts[i]!,
      requestId: this.#requestSeq[i] === -1 ? this.#requestId[i]! : this.#idPrefix! + this.#requestSeq[i]!.toString(36),
      unit: this.#unitLength[i] === UNIT_AS_STRING ? this.#unit[i]! : this.#unitBytes.toString("latin1", i * UNIT_SLOT_CHARS, i * UNIT_SLOT_CHARS + this.#unitLength[i]!),
      assigned: names[this.#assigned[i]!]!,
      served: names[this.#served[i]!]!,
      replica: names[this.#replica[i]!]!,
      status: this.#status[i]!,
      latencyMs: this.#latencyMs[i]!,
      forced: this.#forced[i] === 1,
    };
    this.#unit[i] = undefined;
    this.#requestId[i] = undefined;
    return e;
  }

  /** Whether rows from..from + n - 1 can go in an ExposureBlock: each unit in its slot, each request id as its n. */
  packed(from: number, n: number): boolean {
    if (n > 0 && !this.#idPrefixAscii) return false;
    const unitLength = this.#unitLength;
    const requestSeq = this.#requestSeq;
    for (let i = from; i < from + n; i++) if (unitLength[i] === UNIT_AS_STRING || requestSeq[i] === -1) return false;
    return true;
  }

  /** Copies rows from..from + n - 1 to the block's rows at..at + n - 1. */
  copyTo(block: ExposureBlock, at: number, from: number, n: number): void {
    if (n === 0) return;
    const to = from + n;
    block.ts.set(this.#ts.subarray(from, to), at);
    block.latencyMs.set(this.#latencyMs.subarray(from, to), at);
    block.status.set(this.#status.subarray(from, to), at);
    block.forced.set(this.#forced.subarray(from, to), at);
    block.experiment.set(this.#experiment.subarray(from, to), at);
    block.assigned.set(this.#assigned.subarray(from, to), at);
    block.served.set(this.#served.subarray(from, to), at);
    block.replica.set(this.#replica.subarray(from, to), at);
    block.unitLength.set(this.#unitLength.subarray(from, to), at);
    block.requestSeq.set(this.#requestSeq.subarray(from, to), at);
    this.#unitBytes.copy(block.unitBytes, at * UNIT_SLOT_CHARS, from * UNIT_SLOT_CHARS, to * UNIT_SLOT_CHARS);
  }

  /** Gives the block what its rows' indexes and numbers refer to. */
  describe(block: ExposureBlock): void {
    block.names = this.#names;
    block.idPrefix = this.#idPrefix ?? "";
  }

  clearAll(): void {
    this.#unit.fill(undefined);
    this.#requestId.fill(undefined);
  }
}
