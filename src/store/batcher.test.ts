import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { postgresInstalled, postgresRequired, startPostgres, type PostgresCluster } from "../../test/helpers/postgres.ts";
import { ManualClock } from "../clock.ts";
import { StoreError } from "../errors.ts";
import { ExposureBatcher, type BatcherLog } from "./batcher.ts";
import { PostgresStore } from "./postgres/index.ts";
import { checkExposures } from "./rollup.ts";
import { SqliteStore } from "./sqlite/index.ts";
import type { Exposure } from "./types.ts";

function exposure(i: number): Exposure {
  return {
    experiment: "exp",
    ts: 1_700_000_000_000 + i,
    requestId: `r${i}`,
    unit: `u${i % 7}`,
    assigned: i % 2 === 0 ? "control" : "treatment",
    served: i % 2 === 0 ? "control" : "treatment",
    replica: "control-0",
    status: 200,
    latencyMs: 1.5,
    forced: false,
  };
}

/** A store that records each write and fails while `failing` is set (the real stores cannot be made to fail on cue). */
/** Refuses what the stores refuse (checkExposures), as they do; records the batches it takes. */
class RecordingStore {
  writes: Exposure[][] = [];
  failing = false;
  attempts = 0;
  async writeExposures(rows: Exposure[]): Promise<void> {
    this.attempts++;
    if (this.failing) throw new Error("database is locked");
    checkExposures(rows);
    this.writes.push(rows);
  }
  get rows(): Exposure[] {
    return this.writes.flat();
  }
}

/** Lets the promise chain of a write settle (the store's promises resolve in microtasks, not timers). */
const settle = () => new Promise<void>((r) => setImmediate(r));
/** Lets a write to the SQLite store, which yields to the event loop between its slices, finish. */
async function settleAll(): Promise<void> {
  for (let i = 0; i < 100; i++) await settle();
}

/** A store whose first write waits for `release()`; `writes` holds the row count of each write. */
function firstWriteHeld() {
  const writes: number[] = [];
  let releaseFirst: (() => void) | undefined;
  const slow = {
    async writeExposures(rows: Exposure[]) {
      writes.push(rows.length);
      if (writes.length === 1) await new Promise<void>((r) => (releaseFirst = r));
    },
  };
  return { slow, writes, release: () => releaseFirst?.() };
}

const logs: Parameters<BatcherLog>[] = [];
const log: BatcherLog = (...args) => void logs.push(args);

describe("ExposureBatcher", () => {
  it("gives the store every field exactly as pushed: fallback rows, forced rows, after a failed write and around the ring", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    const b = new ExposureBatcher(store, { clock, log, maxBatch: 3, maxBuffered: 5 });
    const rows: Exposure[] = [];
    for (let i = 0; i < 12; i++) {
      const fallback = i % 3 === 1;
      rows.push({
        experiment: i < 6 ? "exp" : "other",
        ts: 1_700_000_000_000 + i + 0.25,
        requestId: `id-${i}`,
        unit: i % 4 === 0 ? "ünït ✓" : `u${i}`,
        assigned: i % 2 === 0 ? "control" : "treatment",
        served: fallback ? "fallback-variant" : i % 2 === 0 ? "control" : "treatment",
        replica: fallback ? "" : `r-${i % 3}`,
        status: [200, 502, 499, 204][i % 4]!,
        latencyMs: i * 1.125,
        forced: i % 5 === 0,
      });
    }
    store.failing = true;
    for (const r of rows.slice(0, 3)) b.push(r);
    clock.advance(0);
    await settle();
    store.failing = false;
    for (const r of rows.slice(3, 5)) b.push(r);
    await b.flush();
    for (const r of rows.slice(5)) {
      b.push(r);
      if (b.stats().buffered === 3) await b.flush();
    }
    await b.close();
    assert.deepEqual(store.rows, rows);
  });

  it("gives back any unit and request id exactly, whether the ring kept it as characters, as a number or as a string (property)", async () => {
    // The ring keeps a short latin1 unit as bytes and an id `<prefix>-<base 36>` as its number; everything else must
    // fall back to the string, and nothing may come back different (a leading zero, upper case, a lone surrogate).
    const idArb = fc.oneof(
      fc.string({ maxLength: 14 }),
      fc.string({ unit: fc.constantFrom(..."pq-0129azAZ".split("")), maxLength: 16 }),
      fc.tuple(fc.constantFrom("pq", "pq-x", "PQ", ""), fc.constantFrom("-", "_"), fc.string({ unit: fc.constantFrom(..."00019azZ".split("")), maxLength: 12 })).map(([a, b, c]) => a + b + c),
      fc.nat({ max: Number.MAX_SAFE_INTEGER }).map((n) => `pq-${n.toString(36)}`),
    );
    const unitArb = fc.oneof(
      fc.string({ maxLength: 45 }),
      fc.string({ unit: "binary", maxLength: 45 }),
      fc.string({ unit: fc.constantFrom("a", "\u00ff", "\u0100", "\ud800", "\udc00", "\0"), maxLength: 45 }),
      fc.uuid(),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(idArb, unitArb), { minLength: 1, maxLength: 30 }), async (pairs) => {
        // (no checks: the stores refuse a NUL or a lone surrogate, but the ring must not change them either)
        const written: Exposure[] = [];
        const store = { writeExposures: async (rows: Exposure[]) => void written.push(...rows) };
        const b = new ExposureBatcher(store, { clock: new ManualClock(0), log, maxBatch: 1000, maxBuffered: 1000 });
        const rows = pairs.map(([requestId, unit], i) => ({ ...exposure(i), requestId, unit }));
        for (const r of rows) b.push(r);
        await b.flush();
        assert.deepEqual(
          written.map((r) => [r.requestId, r.unit]),
          rows.map((r) => [r.requestId, r.unit]),
        );
        await b.close();
      }),
      { numRuns: 300 },
    );
  });

  it("takes a request id's number from the exposure when it gives the prefix the first id set, else reads the id", async () => {
    const written: Exposure[] = [];
    const store = { writeExposures: async (rows: Exposure[]) => void written.push(...rows) };
    const b = new ExposureBatcher(store, { clock: new ManualClock(0), log });
    const proxy = (i: number, seq: number, prefix: string): Exposure => ({ ...exposure(i), requestId: `${prefix}${seq.toString(36)}`, requestSeq: seq, requestIdPrefix: prefix });
    const rows = [
      proxy(0, 7, "ab-"), // the first: read, and it sets the prefix
      proxy(1, 36 ** 4, "ab-"),
      proxy(2, Number.MAX_SAFE_INTEGER, "ab-"),
      proxy(3, 5, "other-"), // another prefix: read from the id (kept as a string)
      { ...exposure(4), requestId: "ab-zz" },
      proxy(5, 0, "ab-"),
      // (an exposure that breaks the type's promise: the number is what is kept, which shows it was not read)
      { ...proxy(6, 5, "ab-"), requestId: "ab-999" },
    ];
    for (const r of rows) b.push(r);
    await b.flush();
    assert.deepEqual(
      written.map((r) => r.requestId),
      ["ab-7", "ab-10000", `ab-${Number.MAX_SAFE_INTEGER.toString(36)}`, "other-5", "ab-zz", "ab-0", "ab-5"],
    );
    await b.close();
  });

  it("writes nothing before 100 ms, then everything within 100 ms of the first row", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    const b = new ExposureBatcher(store, { clock, log });
    b.push(exposure(0));
    clock.advance(60);
    b.push(exposure(1));
    clock.advance(39);
    await settle();
    assert.equal(store.writes.length, 0);
    clock.advance(1);
    await settle();
    assert.deepEqual(store.writes.map((w) => w.length), [2]);
    assert.equal(clock.pendingTimers(), 0, "no timer left once the buffer is empty");
  });

  it("starts a write on the next tick once 1,000 rows wait, without writing inside push", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    const b = new ExposureBatcher(store, { clock, log });
    for (let i = 0; i < 999; i++) b.push(exposure(i));
    await settle();
    assert.equal(store.writes.length, 0);
    b.push(exposure(999));
    assert.equal(store.writes.length, 0, "push itself never writes");
    clock.advance(0);
    await settle();
    assert.deepEqual(store.writes.map((w) => w.length), [1000]);
    assert.deepEqual(store.rows.map((r) => r.requestId), Array.from({ length: 1000 }, (_, i) => `r${i}`));
  });

  it("keeps rows when the store fails, retries with backoff, and writes them in order once it recovers", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    logs.length = 0;
    const b = new ExposureBatcher(store, { clock, log });
    store.failing = true;
    for (let i = 0; i < 10; i++) b.push(exposure(i));
    clock.advance(100);
    await settle();
    assert.equal(b.stats().failures, 1);
    assert.equal(b.stats().buffered, 10);
    for (let i = 10; i < 2000; i++) b.push(exposure(i)); // a full batch must not defeat the backoff
    clock.advance(99);
    await settle();
    assert.equal(b.stats().failures, 1, "first retry after 100 ms");
    clock.advance(1);
    await settle();
    assert.equal(b.stats().failures, 2);
    clock.advance(199);
    await settle();
    assert.equal(b.stats().failures, 2, "second retry after 200 ms");
    store.failing = false;
    clock.advance(1);
    await settle();
    assert.equal(b.stats().failures, 0);
    assert.equal(b.stats().buffered, 0);
    assert.deepEqual(store.rows.map((r) => r.requestId), Array.from({ length: 2000 }, (_, i) => `r${i}`));
    assert.equal(logs.filter(([level]) => level === "error").length, 1, "one error line per failure streak");
    assert.ok(logs.some(([level, msg]) => level === "info" && /recovered/.test(msg)));
  });

  it("bounds the buffer: drops the oldest rows and counts them", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    const b = new ExposureBatcher(store, { clock, log, maxBuffered: 1000, maxBatch: 100 });
    store.failing = true;
    for (let i = 0; i < 1500; i++) b.push(exposure(i));
    clock.advance(0);
    await settle();
    assert.equal(b.stats().buffered, 1000);
    assert.equal(b.stats().dropped, 500);
    store.failing = false;
    await b.flush();
    assert.deepEqual(store.rows.map((r) => r.requestId), Array.from({ length: 1000 }, (_, i) => `r${i + 500}`));
  });

  it("rows pushed during a write go into the next write, within 100 ms of the start of the one under way", async () => {
    const clock = new ManualClock(0);
    const { slow, writes, release } = firstWriteHeld();
    const b = new ExposureBatcher(slow, { clock, log });
    b.push(exposure(0));
    clock.advance(100);
    await settle();
    clock.advance(30);
    for (let i = 1; i <= 5; i++) b.push(exposure(i));
    assert.equal(clock.pendingTimers(), 0, "no timer while the write runs");
    release();
    await settle();
    assert.deepEqual(writes, [1], "the write took the rows that waited when it started");
    clock.advance(69);
    await settle();
    assert.deepEqual(writes, [1]);
    clock.advance(1);
    await settle();
    assert.deepEqual(writes, [1, 5], "100 ms after the first write started, so no row waited longer");
  });

  it("a full batch pushed during a write is written as soon as that write ends", async () => {
    const clock = new ManualClock(0);
    const { slow, writes, release } = firstWriteHeld();
    const b = new ExposureBatcher(slow, { clock, log });
    b.push(exposure(0));
    clock.advance(100);
    await settle();
    for (let i = 1; i <= 1000; i++) b.push(exposure(i));
    release();
    await settle();
    clock.advance(0);
    await settle();
    assert.deepEqual(writes, [1, 1000]);
  });

  it("catches up on a backlog maxWriteRows at a time, and flush() writes until the buffer is empty", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    const b = new ExposureBatcher(store, { clock, log, maxWriteRows: 400 });
    for (let i = 0; i < 1000; i++) b.push(exposure(i));
    await b.flush();
    assert.deepEqual(store.writes.map((w) => w.length), [400, 400, 200]);
    assert.deepEqual(store.rows.map((r) => r.requestId), Array.from({ length: 1000 }, (_, i) => `r${i}`));
  });

  it("close() writes what is buffered, then drops (and counts) late rows", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    const b = new ExposureBatcher(store, { clock, log });
    for (let i = 0; i < 3; i++) b.push(exposure(i));
    await b.close();
    assert.equal(store.rows.length, 3);
    b.push(exposure(3));
    assert.equal(b.stats().dropped, 1);
    assert.equal(clock.pendingTimers(), 0);
  });

  /** Runs `close()` while the manual clock moves `stepMs` a turn; resolves with the clock time it took. */
  async function closeOnClock(b: ExposureBatcher, clock: ManualClock, stepMs: number, onTurn?: () => void): Promise<number> {
    const startedMs = clock.now();
    let done = false;
    const closing = b.close().then(() => void (done = true));
    for (let i = 0; i < 1000 && !done; i++) {
      await settle();
      onTurn?.();
      if (!done) clock.advance(stepMs);
    }
    await closing;
    return clock.now() - startedMs;
  }

  it("close() with a store that keeps failing retries for closeRetryMs, then reports the loss instead of throwing", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    logs.length = 0;
    const b = new ExposureBatcher(store, { clock, log, closeRetryMs: 3000 });
    store.failing = true;
    for (let i = 0; i < 3; i++) b.push(exposure(i));
    const tookMs = await closeOnClock(b, clock, 50);
    assert.ok(tookMs >= 3000 && tookMs <= 3100, `gave up after ${tookMs} ms`);
    assert.equal(b.stats().dropped, 3);
    assert.ok(logs.some(([level, msg]) => level === "warn" && /retrying before stopping/.test(msg)));
    assert.ok(logs.some(([level, msg]) => level === "error" && /lost at shutdown/.test(msg)));
    assert.equal(clock.pendingTimers(), 0);
  });

  it("a failure streak is logged when it starts and then once a minute with the rows dropped so far, not once per 100 tries", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    logs.length = 0;
    const b = new ExposureBatcher(store, { clock, log, maxBatch: 10, maxBuffered: 20 });
    store.failing = true;
    const lines = () => logs.filter(([level, msg]) => level === "error" && /cannot write exposures/.test(msg));
    for (let s = 0; s < 150; s++) {
      // 10 rows a second, against room for 20: the rest are dropped
      for (let i = 0; i < 10; i++) b.push(exposure(s * 10 + i));
      clock.advance(1000);
      await settle();
    }
    const said = lines();
    assert.ok(said.length >= 3 && said.length <= 4, `${said.length} lines in 150 s`);
    const last = said[said.length - 1]![2] as { dropped: number };
    assert.ok(last.dropped > 1000, JSON.stringify(last));
    store.failing = false;
    await b.close();
  });

  it("close() keeps the process alive while it retries: the system clock's timers do not (exit 13, no last line, before)", async () => {
    const { execFileSync } = await import("node:child_process");
    // A process with nothing else to do, as a gateway is once its listeners closed: the top-level await of close().
    const script = [
      `import { ExposureBatcher } from ${JSON.stringify(new URL("./batcher.ts", import.meta.url).href)};`,
      `const store = { writeExposures: async () => { throw new Error("disk I/O error"); } };`,
      `const b = new ExposureBatcher(store, { closeRetryMs: 300, log: (level, msg) => console.log(level, msg) });`,
      `for (let i = 0; i < 3; i++) b.push({ experiment: "x", ts: 1, requestId: "r" + i, unit: "u", assigned: "a", served: "a", replica: "a-0", status: 200, latencyMs: 1, forced: false });`,
      `await b.close();`,
      `console.log("closed");`,
    ].join("\n");
    const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8", timeout: 20_000 });
    assert.match(out, /error exposures lost at shutdown/);
    assert.match(out, /closed\n$/);
  });

  it("close() with a store locked for a while writes every row once it takes them again (nothing lost)", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    logs.length = 0;
    const b = new ExposureBatcher(store, { clock, log });
    store.failing = true;
    for (let i = 0; i < 5; i++) b.push(exposure(i));
    // The lock goes after 1.5 s of the stop.
    const tookMs = await closeOnClock(b, clock, 50, () => {
      if (clock.now() >= 1500) store.failing = false;
    });
    assert.ok(tookMs < 5000, `stopped after ${tookMs} ms`);
    assert.deepEqual(store.rows.map((r) => r.requestId), ["r0", "r1", "r2", "r3", "r4"]);
    assert.equal(b.stats().dropped, 0);
    assert.equal(clock.pendingTimers(), 0);
  });

  it("feeds a real SQLite store", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-batcher-"));
    try {
      const store = new SqliteStore(join(dir, "a.db"));
      await store.init();
      const sizes: number[] = [];
      const write = store.writeExposures.bind(store);
      store.writeExposures = (rows) => {
        sizes.push(rows.length);
        return write(rows);
      };
      const clock = new ManualClock(0);
      const b = new ExposureBatcher(store, { clock, log });
      for (let i = 0; i < 2500; i++) b.push(exposure(i));
      clock.advance(0);
      await settleAll();
      assert.equal((await store.counts("exp")).exposures, 2500);
      assert.deepEqual(sizes, [2000, 500], "the 2,500 waiting rows, maxWriteRows at a time");
      await b.close();
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a write whose outcome the store cannot learn is not retried (it may have been stored): counted as uncertain", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-batcher-"));
    // A real store whose first write commits and then loses its answer, as a PostgreSQL COMMIT whose reply is lost
    // (the real stores cannot be made to lose one on cue).
    const store = new SqliteStore(join(dir, "a.db"));
    try {
      await store.init();
      const write = store.writeExposures.bind(store);
      let lost = 0;
      store.writeExposures = async (rows) => {
        await write(rows);
        if (lost++ === 0) throw new StoreError("the answer to COMMIT was lost", { code: "ABGATE_ERR_STORE_OUTCOME_UNKNOWN" });
      };
      logs.length = 0;
      const clock = new ManualClock(0);
      const b = new ExposureBatcher(store, { clock, log });
      for (let i = 0; i < 3; i++) b.push(exposure(i));
      await b.flush();
      assert.deepEqual(b.stats(), { buffered: 0, written: 0, dropped: 0, uncertain: 3, failures: 0, lastError: null });
      assert.ok(logs.some(([level, msg]) => level === "error" && /may or may not have been stored/.test(msg)));
      b.push(exposure(3));
      await b.flush();
      clock.advance(60_000);
      await settleAll();
      // before, the batch was put back and written again: 3 rows pushed, 6 stored, and counted twice in the rollups
      assert.equal((await store.counts("exp")).exposures, 4);
      assert.equal(b.stats().written, 1);
      await b.close();
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("drops malformed rows (counted, logged) instead of failing their batch forever", async () => {
    const clock = new ManualClock(0);
    const store = new RecordingStore();
    logs.length = 0;
    const b = new ExposureBatcher(store, { clock, log });
    b.push(exposure(0));
    b.push({ ...exposure(1), latencyMs: Number.NaN });
    b.push(exposure(2));
    await b.flush();
    assert.deepEqual(store.rows.map((r) => r.requestId), ["r0", "r2"]);
    assert.equal(store.attempts, 2, "refused once, then the rest written at once");
    assert.deepEqual(b.stats(), { buffered: 0, written: 2, dropped: 1, uncertain: 0, failures: 0, lastError: null });
    assert.ok(logs.some(([level, msg]) => level === "error" && /malformed/.test(msg)));
  });

  it("drops malformed rows refused by a real SQLite store too, and writes the rest", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-batcher-"));
    const store = new SqliteStore(join(dir, "x.db"));
    await store.init();
    try {
      logs.length = 0;
      const b = new ExposureBatcher(store, { log, maxRetryDelayMs: 50 });
      b.push(exposure(0));
      b.push({ ...exposure(1), unit: "u\u0000" });
      b.push({ ...exposure(2), ts: Number.POSITIVE_INFINITY });
      b.push(exposure(3));
      await b.flush();
      assert.deepEqual(b.stats(), { buffered: 0, written: 2, dropped: 2, uncertain: 0, failures: 0, lastError: null });
      assert.equal((await store.counts("exp")).exposures, 2);
      await b.close();
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("keeps push order through any mix of pushes, timed and full-batch writes, failures and flushes (property)", async () => {
    // A small ring wraps often; a drain that empties it starts it again at its first slot (for the CPU caches).
    const op = fc.oneof(
      fc.record({ push: fc.integer({ min: 1, max: 9 }) }),
      fc.record({ advanceMs: fc.constantFrom(0, 40, 100, 400) }),
      fc.constant({ turn: true }),
      fc.record({ failing: fc.boolean() }),
      fc.constant({ flush: true }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 40 }), async (ops) => {
        const clock = new ManualClock(0);
        let failing = false;
        const written: string[] = [];
        // Each write yields a turn first, so that pushes and timers can come while it is under way.
        const store = {
          async writeExposures(rows: Exposure[]) {
            await settle();
            if (failing) throw new Error("database is locked");
            for (const r of rows) written.push(r.requestId);
          },
        };
        const said: string[] = [];
        const b = new ExposureBatcher(store, { clock, log: (_level, msg) => void said.push(msg), maxBatch: 4, maxBuffered: 7, maxWriteRows: 5, flushIntervalMs: 100 });
        let pushed = 0;
        for (const o of ops) {
          if ("push" in o) for (let i = 0; i < o.push; i++) b.push(exposure(pushed++));
          else if ("advanceMs" in o) clock.advance(o.advanceMs);
          else if ("turn" in o) await settle();
          else if ("failing" in o) failing = o.failing;
          else await b.flush();
        }
        failing = false;
        // (flush() waits for a write under way, then writes the rest)
        await b.flush();
        const ids = written.map((id) => Number(id.slice(1)));
        assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]!), `written out of order or twice: ${ids.join(",")}`);
        assert.equal(b.stats().buffered, 0);
        assert.equal(written.length + b.stats().dropped, pushed);
        if (b.stats().dropped === 0) assert.deepEqual(ids, Array.from({ length: pushed }, (_, i) => i));
        // Every row pushed is well formed: a slot read after it was emptied would show up as a malformed row.
        assert.ok(!said.some((m) => /malformed/.test(m)), said.join("; "));
        await b.close();
      }),
      { numRuns: 300 },
    );
  });

  it("rejects nonsensical options", () => {
    assert.throws(() => new ExposureBatcher(new RecordingStore(), { maxBatch: 0 }), /maxBatch must be a positive integer/);
    assert.throws(() => new ExposureBatcher(new RecordingStore(), { maxBatch: 10, maxBuffered: 5 }), /exceeds maxBuffered/);
    assert.throws(() => new ExposureBatcher(new RecordingStore(), { closeRetryMs: -1 }), /closeRetryMs must be from 0/);
  });
});

// Skipped without PostgreSQL, unless ABGATE_REQUIRE_POSTGRES=1: then starting the cluster fails the suite.
describe("ExposureBatcher on a real PostgreSQL", { skip: postgresInstalled() || postgresRequired ? false : "PostgreSQL is not installed" }, () => {
  let cluster: PostgresCluster;
  before(async () => {
    cluster = await startPostgres();
  });
  after(async () => {
    await cluster?.stop();
  });

  it("drops rows PostgreSQL would refuse or merge, so the rows behind them are written instead of retried forever", async () => {
    const store = new PostgresStore(cluster.url);
    await store.init();
    logs.length = 0;
    const b = new ExposureBatcher(store, { log, maxRetryDelayMs: 50 });
    try {
      // Alone, 1e154 squares to 1e308, which float8 holds; a second one in the same minute row overflows the sum.
      b.push({ ...exposure(0), latencyMs: 1e154 });
      await b.flush();
      b.push({ ...exposure(1), latencyMs: 1e154 });
      b.push({ ...exposure(2), ts: 1e300 }); // beyond bigint
      b.push({ ...exposure(3), unit: "u\ud800" }); // these two would both be stored as "u\ufffd": one unit
      b.push({ ...exposure(4), unit: "u\ud801" });
      b.push({ ...exposure(5), requestId: "r\udfff" });
      for (let i = 6; i < 16; i++) b.push(exposure(i));
      await b.flush();
      assert.deepEqual(b.stats(), { buffered: 0, written: 10, dropped: 6, uncertain: 0, failures: 0, lastError: null });
      assert.equal((await store.counts("exp")).exposures, 10);
      assert.ok(logs.some(([level, msg]) => level === "error" && /malformed/.test(msg)));
    } finally {
      await b.close();
      await store.close();
    }
  });
});
