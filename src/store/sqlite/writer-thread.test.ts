import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { StoreError } from "../../errors.ts";
import { storeConformance } from "../conformance.ts";
import { openStore } from "../index.ts";
import type { Exposure } from "../types.ts";
import { SqliteStore } from "./sqlite-store.ts";
import { packExposures, packPairs, SqliteThreadStore, unpackExposures, unpackPairs } from "./writer-thread.ts";

const root = mkdtempSync(join(tmpdir(), "abgate-sqlite-thread-"));
let n = 0;

storeConformance({
  name: "SQLite written on a thread of its own",
  async fresh() {
    const path = join(root, `t${++n}`, "abgate.db");
    return { open: () => new SqliteThreadStore(path), dispose: async () => {} };
  },
  async teardown() {
    rmSync(root, { recursive: true, force: true });
  },
});

const exposure = (i: number, over: Partial<Exposure> = {}): Exposure => ({
  experiment: "exp",
  ts: 1_700_000_000_000 + i,
  requestId: `r${i}`,
  unit: `u${i}`,
  assigned: "control",
  served: i % 3 === 0 ? "treatment" : "control",
  replica: i % 2 === 0 ? "control-0" : "",
  status: i % 7 === 0 ? 502 : 200,
  latencyMs: i / 4,
  forced: i % 5 === 0,
  ...over,
});

describe("SqliteThreadStore", () => {
  it("packs exposures losslessly, lone surrogates and empty strings too, and refuses to pack a NUL", () => {
    const rows = [exposure(0), exposure(1, { unit: "\ud800x", requestId: "", replica: "" }), exposure(2, { latencyMs: -0.5, status: 0 })];
    assert.deepEqual(unpackExposures(packExposures(rows)!), rows);
    assert.deepEqual(unpackExposures(packExposures([])!), []);
    assert.equal(packExposures([exposure(3, { unit: "a\0b" })]), null);
    assert.equal(packExposures([exposure(3, { requestId: "\0" })]), null);
    const pairs: [string, string][] = [["u1", "control"], ["", "treatment"]];
    assert.deepEqual(unpackPairs(packPairs(pairs)), pairs);
    assert.deepEqual(unpackPairs(packPairs([])), []);
    assert.deepEqual(unpackPairs(packPairs([["a\0", "b"]])), [["a\0", "b"]]);
  });

  it("is what openStore gives a gateway with a second core, and never for reading or memory", () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-thread-"));
    try {
      const path = join(dir, "a.db");
      assert.ok(openStore(`sqlite:${path}`, { sqliteWriter: "thread" }) instanceof SqliteThreadStore);
      assert.ok(openStore(`sqlite:${path}`) instanceof SqliteStore);
      assert.ok(openStore(`sqlite:${path}`, { sqliteWriter: "inline" }) instanceof SqliteStore);
      assert.ok(openStore("sqlite::memory:", { sqliteWriter: "thread" }) instanceof SqliteStore);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses a row with a NUL as the store on the caller's thread does, whole, and writes the next batch", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-thread-"));
    const path = join(dir, "a.db");
    const store = new SqliteThreadStore(path);
    try {
      await store.init();
      await assert.rejects(store.writeExposures([exposure(1), exposure(2, { unit: "a\0b" })]), (err: unknown) => err instanceof StoreError && err.code === "ABGATE_ERR_STORE_INVALID_EXPOSURE" && /exposure 1: unit and requestId must not contain NUL/.test(err.message));
      await store.writeExposures([exposure(1), exposure(2)]);
      assert.deepEqual(await store.counts("exp"), { exposures: 2, events: 0 });
      await assert.rejects(store.recentUnits("exp", -1), /limit/);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a thread that dies during a write: the write's outcome is unknown (it may have committed), a read's is a plain failure, and the next call starts a new thread", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-thread-"));
    // A heap small enough that a big batch of events runs the thread out of memory: a real death mid-write.
    const store = new SqliteThreadStore(join(dir, "a.db"), { threadResourceLimits: { maxOldGenerationSizeMb: 16, maxYoungGenerationSizeMb: 4 } });
    try {
      await store.init();
      const unit = "u".repeat(500);
      const huge = Array.from({ length: 200_000 }, (_, i) => ({ experiment: "exp", unit: `${unit}${i}`, event: "watched", value: i, ts: 1e12 + i, requestId: `${unit}${i}` }));
      const getState = store.getState("exp", "k");
      await assert.rejects(store.writeEvents(huge), (err: unknown) => err instanceof StoreError && err.code === "ABGATE_ERR_STORE_OUTCOME_UNKNOWN" && /may or may not have been stored/.test(err.message));
      // (the read sent before the write was answered before it, or failed plainly with it)
      await getState.then(
        (v) => assert.equal(v, null),
        (err: unknown) => assert.ok(err instanceof StoreError && err.code === "ABGATE_ERR_STORE", String(err)),
      );
      await store.writeExposures([exposure(1)]);
      assert.deepEqual(await store.counts("exp"), { exposures: 1, events: 0 });
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("keeps the class of errors that are not the store's, refuses arguments a thread cannot take, and judges rows that do not pack as the store on this thread does", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-thread-"));
    const inline = new SqliteStore(join(dir, "inline.db"));
    const thread = new SqliteThreadStore(join(dir, "thread.db"));
    try {
      await inline.init();
      await thread.init();
      const outcome = (p: Promise<unknown>) =>
        p.then(
          () => "ok",
          (err: Error & { code?: string }) => `${err.constructor.name} ${err.name} ${err.code ?? "-"} ${err.message}`,
        );
      const notAString = [exposure(1, { experiment: 5 as unknown as string })];
      assert.equal(await outcome(thread.writeExposures(notAString)), await outcome(inline.writeExposures(notAString)));
      const tsAsString = [exposure(1, { ts: "1700000000000" as unknown as number })];
      assert.equal(await outcome(thread.writeExposures(tsAsString)), await outcome(inline.writeExposures(tsAsString)));
      const nulInName = [exposure(1, { assigned: "a\0b" })];
      assert.equal(await outcome(thread.writeExposures(nulInName)), await outcome(inline.writeExposures(nulInName)));
      assert.deepEqual(await thread.counts("exp"), await inline.counts("exp"));
      // a bug's TypeError stays one (the admin API answers 500, not a 503 that says to retry)
      const badVariants = null as unknown as string[];
      assert.match(await outcome(thread.aggregate("exp", badVariants, [])), /^TypeError TypeError - /);
      // a function cannot be copied to the thread: refused as the store's error, and nothing is left pending
      const withFunction = [{ experiment: "exp", unit: "u", event: "watched", value: null, ts: 1e12, requestId: null, extra: () => 1 }];
      assert.match(await outcome(thread.writeEvents(withFunction)), /^StoreError StoreError ABGATE_ERR_STORE .*cannot pass writeEvents's arguments to the writer thread/);
    } finally {
      await inline.close();
      await thread.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a read made as the store closes is refused, and leaves no reader thread with the file open", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-thread-"));
    const path = join(dir, "a.db");
    try {
      for (const readDuringInit of [false, true]) {
        const store = new SqliteThreadStore(path);
        const init = store.init();
        if (!readDuringInit) await init;
        const read = store.counts("exp");
        read.catch(() => {}); // (judged below, after the close)
        await store.close();
        await init;
        await assert.rejects(read, /is closed/);
      }
      // every connection closed: the last close folded the WAL into the file and removed it
      assert.deepEqual(readdirSync(dir), ["a.db"]);
      // a query whose parameters a thread cannot take is refused, and leaves nothing pending (the test ends)
      const store = new SqliteThreadStore(path);
      await store.init();
      await assert.rejects(store.counts((() => 1) as unknown as string), (err: unknown) => err instanceof StoreError && /cannot pass its parameters to the reader thread/.test(err.message));
      assert.deepEqual(await store.counts("exp"), { exposures: 0, events: 0 });
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("says why it cannot open a file, and opens once the cause is gone", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-thread-"));
    const path = join(dir, "a.db");
    try {
      // another application's database
      const foreign = new SqliteStore(path);
      await foreign.init();
      await foreign.close();
      const db = new (await import("better-sqlite3")).default(path);
      db.exec("DROP TABLE schema_migrations; CREATE TABLE schema_migrations (version TEXT PRIMARY KEY)");
      db.close();
      const store = new SqliteThreadStore(path);
      await assert.rejects(store.init(), (err: unknown) => err instanceof StoreError && /is not an abgate store/.test(err.message));
      rmSync(path);
      rmSync(`${path}-wal`, { force: true });
      rmSync(`${path}-shm`, { force: true });
      await store.init();
      await store.writeExposures([exposure(1)]);
      assert.deepEqual(await store.counts("exp"), { exposures: 1, events: 0 });
      await store.close();
      await assert.rejects(store.writeExposures([exposure(2)]), /is closed/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
