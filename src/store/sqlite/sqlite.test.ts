import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import fc from "fast-check";
import { openStore } from "../index.ts";
import { StoreError } from "../../errors.ts";
import { storeConformance } from "../conformance.ts";
import { latestSchemaVersion, migrations } from "../migrations.ts";
import { isError, latencyBucket, minuteOf } from "../rollup.ts";
import type { Exposure } from "../types.ts";
import { SqliteStore, type CloseCheckpointEvent } from "./sqlite-store.ts";

const root = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
let n = 0;

storeConformance({
  name: "SQLite (file in a temp dir)",
  async fresh() {
    const path = join(root, `t${++n}`, "abgate.db");
    return { open: () => new SqliteStore(path), dispose: async () => {} };
  },
  async teardown() {
    rmSync(root, { recursive: true, force: true });
  },
});

describe("SqliteStore specifics", () => {
  it("records each migration once, in WAL mode", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      for (let i = 0; i < 2; i++) {
        const s = openStore(`sqlite:${path}`);
        await s.init();
        await s.close();
      }
      const db = new Database(path, { readonly: true });
      assert.deepEqual(
        (db.prepare("SELECT version FROM schema_migrations ORDER BY version").all() as { version: number }[]).map((r) => r.version),
        Array.from({ length: latestSchemaVersion }, (_, i) => i + 1),
      );
      assert.equal(db.pragma("journal_mode", { simple: true }), "wal");
      db.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("keeps the rows of a version-1 database (a table of exposures) visible, in order, beside the new chunks", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      const db = new Database(path);
      db.exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`);
      for (const sql of migrations[0]!.sqlite) db.exec(sql);
      db.prepare(`INSERT INTO schema_migrations VALUES (1, ?, 0)`).run(migrations[0]!.name);
      const old = db.prepare(`INSERT INTO exposures (experiment, ts, request_id, unit, assigned, served, replica, status, latency_ms, forced)
                              VALUES ('exp', ?, ?, 'u1', 'control', 'control', 'control-0', 200, 1.5, 0)`);
      for (let i = 1; i <= 3; i++) old.run(1e12 + i, `old-${i}`);
      db.close();
      const store = new SqliteStore(path);
      await store.init();
      assert.equal(store.migratedFrom, 1, "the gateway says it upgraded the store");
      await store.writeExposures([1, 2].map((i) => ({
        experiment: "exp", ts: 1e12 + 10 + i, requestId: `new-${i}`, unit: "u2", assigned: "treatment", served: "treatment",
        replica: "treatment-0", status: 200, latencyMs: 2.25, forced: false,
      })));
      await store.close();
      const ro = new Database(path, { readonly: true });
      const rows = ro.prepare(`SELECT id, request_id, ts, typeof(latency_ms) AS t FROM exposures ORDER BY id`).all() as { id: number; request_id: string; ts: number; t: string }[];
      ro.close();
      assert.deepEqual(rows.map((r) => r.request_id), ["old-1", "old-2", "old-3", "new-1", "new-2"]);
      assert.deepEqual(rows.map((r) => r.ts), [1, 2, 3, 11, 12].map((d) => 1e12 + d));
      assert.ok(rows.every((r) => r.t === "real"));
      assert.ok(rows[3]!.id > rows[2]!.id);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a new store and a current one were not migrated (migratedFrom unset)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      for (let i = 0; i < 2; i++) {
        const s = new SqliteStore(path);
        await s.init();
        assert.equal(s.migratedFrom, undefined);
        await s.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses a database written by a newer abgate", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      const s = new SqliteStore(path);
      await s.init();
      await s.close();
      const db = new Database(path);
      db.prepare("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)").run(latestSchemaVersion + 1);
      db.close();
      const t = new SqliteStore(path);
      await assert.rejects(t.init(), /newer than this abgate understands/);
      await t.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("leaves another application's database alone, and says what to do about a file it cannot open or that is no database", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "theirs.db");
      const theirs = new Database(path);
      theirs.exec("CREATE TABLE customers (id INTEGER, name TEXT); INSERT INTO customers VALUES (1, 'alice')");
      theirs.close();
      const s = new SqliteStore(path);
      await assert.rejects(s.init(), /theirs\.db is not an abgate store: it has tables \(customers\) and no abgate schema; abgate leaves it alone\. Point store: at a new file$/);
      await s.close().catch(() => {});
      const after = new Database(path, { readonly: true });
      const tables = after.prepare(`SELECT name FROM sqlite_schema WHERE type = 'table'`).all().map((r) => (r as { name: string }).name);
      after.close();
      assert.deepEqual(tables, ["customers"], "nothing added");
      // another tool's migrations table of the same name (Rails: one column, version)
      const rails = join(dir, "rails.db");
      const r = new Database(rails);
      r.exec("CREATE TABLE schema_migrations (version TEXT PRIMARY KEY); INSERT INTO schema_migrations VALUES ('20240101000000'); CREATE TABLE users (id INTEGER)");
      r.close();
      const t = new SqliteStore(rails);
      await assert.rejects(t.init(), /rails\.db is not an abgate store: it has tables \(schema_migrations, users\) and no abgate schema/);
      await t.close().catch(() => {});
      const ro = new SqliteStore(rails, { readOnly: true });
      await assert.rejects(ro.init(), /rails\.db is not an abgate store: its schema_migrations table is another tool's/);
      await ro.close().catch(() => {});

      const garbage = join(dir, "garbage.db");
      writeFileSync(garbage, "x".repeat(8192));
      assert.throws(() => new SqliteStore(garbage), /cannot open SQLite store .*garbage\.db: file is not a database \(it is not an SQLite database: point store: at another file, or move this one away\)/);
      assert.throws(() => new SqliteStore(dir), /cannot open SQLite store .*: unable to open database file \(abgate creates the file and its -wal and -shm beside it: the folder must exist and be writable\)/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses writes once its file was deleted or replaced under it (they went to a file no one could open)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    const path = join(dir, "a.db");
    const event = (unit: string) => ({ experiment: "x", unit, event: "watched", value: null, ts: 1, requestId: null });
    const exposure = { experiment: "x", ts: 1, requestId: "r", unit: "u", assigned: "a", served: "a", replica: "a-0", status: 200, latencyMs: 1, forced: false };
    const s = new SqliteStore(path);
    try {
      await s.init();
      await s.writeEvents([event("u1")]);
      for (const f of ["a.db", "a.db-wal", "a.db-shm"]) rmSync(join(dir, f), { force: true });
      await assert.rejects(s.writeEvents([event("u2")]), (err: Error) => err instanceof StoreError && /^cannot write 1 events: the SQLite store .*a\.db was deleted while abgate had it open/.test(err.message));
      await assert.rejects(s.writeExposures([exposure]), /was deleted while abgate had it open/);
      await assert.rejects(s.setState("x", "k", "v"), /was deleted while abgate had it open/);
      // another file in its place is no better
      new Database(path).close();
      await assert.rejects(s.writeEvents([event("u3")]), /was replaced by another file while abgate had it open/);
    } finally {
      await s.close().catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    }
  });

  // The checkpoints run on a thread of their own, or between the writes of a store that is itself on one.
  for (const checkpointBetweenWrites of [false, true]) {
    const how = checkpointBetweenWrites ? " (checkpoints between writes, which may also keep it under the cap)" : "";
    it(`under writes that never pause the WAL is emptied once past walCapBytes, instead of growing without end${how}`, async () => {
      const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
      const path = join(dir, "a.db");
      // (a PASSIVE checkpoint never finishes while writes go on, so the WAL never started over: 218 MB in 12 s)
      const s = new SqliteStore(path, { busyTimeoutMs: 100, checkpointIntervalMs: 20, walCapBytes: 2 ** 20, checkpointBetweenWrites });
      const walSize = () => {
        try {
          return statSync(`${path}-wal`).size;
        } catch {
          return 0;
        }
      };
      try {
        await s.init();
        let unit = 0;
        let largest = 0;
        let emptied = false;
        const t0 = Date.now();
        // (until it was emptied once, at most 10 s: the checkpointer runs at nice 19, slower on a busy machine)
        let batches = 0;
        // Between writes a PASSIVE checkpoint has no writer to race and copies the whole WAL, which then starts over
        // from its beginning: on a slow machine it may never reach the cap, and need not be emptied to stay small.
        const bounded = () => checkpointBetweenWrites && batches >= 200 && largest <= 2 * 2 ** 20;
        while (!emptied && !bounded() && Date.now() - t0 < 10_000) {
          batches++;
          const rows: Exposure[] = Array.from({ length: 1000 }, () => {
            const id = `user-${unit++}`;
            return { experiment: "x", ts: 1e12 + unit, requestId: id, unit: id, assigned: "a", served: "a", replica: "a-0", status: 200, latencyMs: 1, forced: false };
          });
          // (a write refused while the checkpoint holds the lock is retried, as the exposure batcher does)
          for (let tries = 0; ; tries++) {
            try {
              await s.writeExposures(rows);
              break;
            } catch (err) {
              assert.match((err as Error).message, /locked|busy/i);
              assert.ok(tries < 100, "a write got through within 100 tries");
              await new Promise((r) => setTimeout(r, 10));
            }
          }
          const size = walSize();
          if (size < largest / 2) emptied = true;
          largest = Math.max(largest, size);
        }
        assert.ok(emptied || bounded(), `the WAL was never emptied in 10 s of writes (largest ${largest} bytes, ${batches} batches)`);
        assert.equal((await s.counts("x")).exposures, unit, "every row written");
      } finally {
        await s.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it(`past walCapBytes, a reader mid-read does not make the emptying checkpoint hold the write lock all the while${how}`, async () => {
      const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
      const path = join(dir, "a.db");
      const s = new SqliteStore(path, { busyTimeoutMs: 100, checkpointIntervalMs: 20, walCapBytes: 2 ** 20, checkpointBetweenWrites });
      let unit = 0;
      const batch = (): Exposure[] =>
        Array.from({ length: 1000 }, () => {
          const id = `user-${unit++}`;
          return { experiment: "x", ts: 1e12 + unit, requestId: id, unit: id, assigned: "a", served: "a", replica: "a-0", status: 200, latencyMs: 1, forced: false };
        });
      try {
        await s.init();
        for (let i = 0; i < 30; i++) await s.writeExposures(batch()).catch(() => {});
        // a report mid-read, for 2 s, while the WAL is past the cap
        const reader = new Database(path, { readonly: true });
        reader.prepare("BEGIN").run();
        reader.prepare("SELECT count(*) FROM exposure_chunks").get();
        let ok = 0;
        let failed = 0;
        const t0 = Date.now();
        while (Date.now() - t0 < 2000) {
          try {
            await s.writeExposures(batch());
            ok++;
          } catch {
            failed++;
            await new Promise((r) => setTimeout(r, 10));
          }
        }
        reader.prepare("COMMIT").run();
        reader.close();
        // (tried back to back, the TRUNCATE checkpoint kept the lock: 0 writes of 244 went through in 3 s)
        assert.ok(ok > failed, `${ok} writes went through, ${failed} failed`);
      } finally {
        await s.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }

  it("events acknowledged by writeEvents survive SIGKILL of the writing process (no close, no checkpoint)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      const storeModule = new URL("./sqlite-store.ts", import.meta.url).href;
      // The child writes 3 batches, says "written" after the last one resolves, then keeps the store open and busy.
      const script = `
        const { SqliteStore } = await import(${JSON.stringify(storeModule)});
        const s = new SqliteStore(${JSON.stringify(path)});
        await s.init();
        for (let b = 0; b < 3; b++) {
          await s.writeEvents(Array.from({ length: 1000 }, (_, i) => ({
            experiment: "exp", unit: "u" + i, event: "watched", value: b, ts: 1e12 + i, requestId: null })));
        }
        process.stdout.write("written\\n");
        setInterval(() => {}, 1000);`;
      const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      await new Promise<void>((resolve, reject) => {
        child.stdout.on("data", (d: Buffer) => {
          if (d.toString().includes("written")) {
            child.kill("SIGKILL");
            resolve();
          }
        });
        child.on("exit", (code) => reject(new Error(`child exited early with ${code}`)));
      });
      await new Promise((r) => child.once("close", r));
      const s = new SqliteStore(path);
      await s.init();
      assert.deepEqual(await s.counts("exp"), { exposures: 0, events: 3000 });
      await s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("checkpoints the WAL from its worker thread (automatic checkpoints are off on the writer)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      const s = new SqliteStore(path, { checkpointIntervalMs: 10 });
      await s.init();
      const before = statSync(path).size;
      await s.writeEvents(Array.from({ length: 5000 }, (_, i) => ({
        experiment: "exp", unit: `u${i}`, event: "watched", value: i, ts: 1e12 + i, requestId: null,
      })));
      // A real thread on a real interval: wait (bounded) for it to copy the WAL into the database file.
      const deadline = Date.now() + 10_000;
      while (statSync(path).size === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.ok(statSync(path).size > before, "the database file grew: the checkpointer ran");
      // It runs at the lowest CPU priority, alone: one thread of this process has nice 19, and this one has not.
      const nice = (stat: string) => Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[16]);
      const threads = readdirSync("/proc/self/task").map((tid) => nice(readFileSync(`/proc/self/task/${tid}/stat`, "utf8")));
      assert.ok(threads.includes(19), `thread nice values: ${threads.join(",")}`);
      assert.equal(nice(readFileSync("/proc/thread-self/stat", "utf8")), 0);
      await s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a unit seen again with nothing new for its row leaves the row as it is (no page rewritten for it)", async () => {
    // Without the unit cache every exposure's unit is upserted, as for the units a full cache forgot: with a million
    // users and the cache's 100,000, nearly all of them. Each such upsert rewrote its row, and so its page: 1 MiB of WAL
    // per 1,000 exposures of 300,000 users seen before, against 80 KiB with only the real changes written.
    const path = join(root, "untouched.db");
    const store = new SqliteStore(path, { unitCacheSize: 0 });
    await store.init();
    const spy = new Database(path);
    spy.exec(`CREATE TABLE unit_updates (unit TEXT, multi INTEGER, first_ts INTEGER);
              CREATE TRIGGER count_unit_updates AFTER UPDATE ON units BEGIN
                INSERT INTO unit_updates VALUES (new.unit, new.multi, new.first_ts);
              END;`);
    const seen = (unit: string, ts: number, variant: string): Exposure => ({
      experiment: "e", ts, requestId: `r${ts}`, unit, assigned: variant, served: variant, replica: `${variant}-0`, status: 200, latencyMs: 1, forced: false,
    });
    const updates = () => spy.prepare("SELECT unit, multi, first_ts FROM unit_updates ORDER BY rowid").all();
    try {
      await store.writeExposures([seen("u1", 1000, "a"), seen("u2", 1000, "a")]);
      await store.writeExposures([seen("u1", 2000, "a"), seen("u2", 2000, "a")]);
      assert.deepEqual(updates(), [], "the same variant later: nothing to change");
      await store.writeExposures([seen("u1", 3000, "b")]);
      await store.writeExposures([seen("u1", 4000, "a"), seen("u1", 5000, "b")]);
      assert.deepEqual(updates(), [{ unit: "u1", multi: 1, first_ts: 1000 }], "multi once, then nothing");
      await store.writeExposures([seen("u2", 500, "b")]);
      assert.deepEqual(updates().slice(1), [{ unit: "u2", multi: 1, first_ts: 500 }], "an earlier first exposure");
      assert.deepEqual(spy.prepare("SELECT unit, first_ts, first_variant, multi FROM units ORDER BY unit").all(), [
        { unit: "u1", first_ts: 1000, first_variant: "a", multi: 1 },
        { unit: "u2", first_ts: 500, first_variant: "b", multi: 1 },
      ]);
    } finally {
      spy.close();
      await store.close();
    }
  });

  it("stores every exposure as given, and rollups that match them, however rows are batched, with or without the unit cache", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    const t0 = 28_333_334 * 60_000;
    const exposure = fc.record({
      experiment: fc.constantFrom("e1", "e2"),
      dt: fc.oneof(fc.integer({ min: 0, max: 180_000 }), fc.constantFrom(0, 0.5, 60_000, 59_999.9)),
      unit: fc.integer({ min: 0, max: 29 }),
      // mostly the unit's own variant, as a sticky strategy gives, so that some units stay single-variant
      other: fc.option(fc.constantFrom("a", "b", "c"), { freq: 8 }),
      fallback: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
      // 12 replicas: more (assigned, served, replica) triples than a chunk's dictionary holds
      replica: fc.constantFrom("", ...Array.from({ length: 11 }, (_, i) => `r-${i}`)),
      status: fc.constantFrom(200, 200, 404, 503, 0),
      // whole µs (as the proxy records them), any double, and whole numbers too big to count in µs
      latencyMs: fc.oneof(
        fc.integer({ min: 0, max: 5_000_000 }).map((us) => us / 1000),
        fc.double({ min: 0, max: 5000, noNaN: true }),
        fc.constantFrom(0, 1e12, 1e13, 2 ** 60, 3e21, 1e-7),
      ),
      forced: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
    });
    let run = 0;
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(exposure, { minLength: 1, maxLength: 300, size: "medium" }), fc.array(fc.integer({ min: 1, max: 60 }), { minLength: 1 }), async (raw, cuts) => {
          const rows: Exposure[] = raw.map((r, i) => {
            const assigned = r.other ?? "abc"[r.unit % 3]!;
            return {
            experiment: r.experiment,
            ts: t0 + r.dt,
            requestId: `q${i}`,
            // a few units that JSON must escape, one with a surrogate pair, and one with a backslash before "ud"
            // (a lone surrogate is refused by every store: PostgreSQL would store it as U+FFFD)
            unit: r.unit >= 25 ? ["pair\ud83d\ude00x", "bs\\ud83d", 'q"u\\o', "é☃\u0001", "tab\tnl\n"][r.unit - 25]! : `u${r.unit}`,
            assigned,
            served: r.fallback ? "c" : assigned,
            replica: r.replica,
            status: r.status,
            latencyMs: r.latencyMs,
            forced: r.forced,
            };
          });
          const batches: Exposure[][] = [];
          for (let i = 0, k = 0; i < rows.length; k++) {
            const n = cuts[k % cuts.length]!;
            batches.push(rows.slice(i, i + n));
            i += n;
          }
          const tables: Record<string, Record<string, unknown>[]>[] = [];
          for (const unitCacheSize of [100, 0]) {
            const path = join(dir, `p${++run}.db`);
            // A clock on which every slice seems to take 1 ms: slices shrink to 50 rows, so batches span several.
            let fakeMs = 0;
            const store = new SqliteStore(path, { unitCacheSize, checkpointIntervalMs: 0, monotonicMs: () => (fakeMs += 1) });
            await store.init();
            for (const b of batches) await store.writeExposures(b);
            await store.close();
            const db = new Database(path, { readonly: true });
            tables.push({
              exposures: db.prepare(`SELECT experiment, ts, request_id, unit, assigned, served, replica, status, latency_ms, forced,
                                            typeof(ts) || typeof(status) || typeof(latency_ms) || typeof(forced) AS types
                                     FROM exposures ORDER BY id`).all() as Record<string, unknown>[],
              units: db.prepare("SELECT * FROM units ORDER BY experiment, unit").all() as Record<string, unknown>[],
              minutes: db.prepare("SELECT * FROM minute_stats ORDER BY experiment, minute, variant").all() as Record<string, unknown>[],
              hist: db.prepare("SELECT * FROM latency_hist ORDER BY experiment, variant, bucket").all() as Record<string, unknown>[],
              counters: db.prepare("SELECT * FROM counters ORDER BY experiment").all() as Record<string, unknown>[],
            });
            db.close();
          }
          assert.deepEqual(tables[0]!.units, tables[1]!.units, "the unit cache changes no unit row");
          const [got] = tables;
          assert.deepEqual(
            got!.exposures,
            rows.map((e) => ({
              experiment: e.experiment,
              ts: Math.trunc(e.ts),
              request_id: e.requestId,
              // what binding the string gives (a lone surrogate is not valid UTF-8 and reads back as U+FFFDs)
              unit: bound(e.unit),
              assigned: e.assigned,
              served: e.served,
              replica: e.replica,
              status: e.status,
              latency_ms: e.latencyMs,
              forced: e.forced ? 1 : 0,
              types: "integerintegerrealinteger",
            })),
          );
          assert.deepEqual(got!.units, expectedUnits(rows.map((e) => ({ ...e, unit: bound(e.unit) }))));
          assert.deepEqual(roundSums(got!.minutes), roundSums(expectedMinutes(rows)));
          assert.deepEqual(got!.hist, expectedHist(rows));
          assert.deepEqual(got!.counters, expectedCounters(rows));
        }),
        { numRuns: 60 },
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  const x = (i: number, experiment = "exp"): Exposure => ({
    experiment,
    ts: 1e12 + i,
    requestId: `r${i}`,
    unit: `u${i % 300}`,
    assigned: i % 2 === 0 ? "control" : "treatment",
    served: i % 2 === 0 ? "control" : "treatment",
    replica: "control-0",
    status: 200,
    latencyMs: 1 + (i % 20) / 10,
    forced: false,
  });
  const rowsOf = (n: number) => Array.from({ length: n }, (_, i) => x(i));

  /** Counts the turns of the event loop from now until stop(), which returns the count. */
  const countTurns = () => {
    let turns = 0;
    let stopped = false;
    const tick = () => {
      turns++;
      if (!stopped) setImmediate(tick);
    };
    setImmediate(tick);
    return {
      stop: () => {
        stopped = true;
        return turns;
      },
    };
  };

  describe("a big exposure write", () => {
    /** A clock on which every slice seems to take 1 ms, twice the default budget: slices shrink to 50 rows. */
    const slowClock = () => {
      let ms = 0;
      return () => (ms += 1);
    };

    it("goes in slices, one per turn of the event loop, and its rollups only with its commit", async () => {
      const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
      try {
        const store = new SqliteStore(join(dir, "a.db"), { monotonicMs: slowClock() });
        await store.init();
        const loop = countTurns();
        await store.counts("exp"); // the reader thread is up
        const seen: number[] = [];
        let written = false;
        // 6,000 rows: well over 100 turns of the loop, time for several reads' round trips to the reader thread
        const write = store.writeExposures(rowsOf(6000)).then(() => (written = true));
        // Reads run meanwhile and see the rollups as they were: all of the batch, or none of it.
        while (!written) {
          const { exposures } = await store.counts("exp");
          if (!written) seen.push(exposures);
        }
        await write;
        const turns = loop.stop();
        assert.ok(turns >= 100, `6,000 rows in slices of 50 or so take many turns of the loop, took ${turns}`);
        assert.ok(seen.length >= 1, `reads answered while the write ran: ${seen.length}`);
        assert.deepEqual(new Set(seen), new Set([0]));
        assert.equal((await store.counts("exp")).exposures, 6000);
        await store.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("upserts new units in slices too (a batch of units new to the database held the loop 4-7 ms in one go)", async () => {
      const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
      try {
        const store = new SqliteStore(join(dir, "a.db"), { monotonicMs: slowClock() });
        await store.init();
        // 1,000 units, each new: 1,000 upserts besides the rows, 16 per look at the (slow) clock
        const fresh = (tag: string) => Array.from({ length: 1000 }, (_, i) => ({ ...x(i), unit: `${tag}-${i}` }));
        const turnsOf = async (rows: Exposure[]) => {
          const loop = countTurns();
          await store.writeExposures(rows);
          return loop.stop();
        };
        const known = await turnsOf(rowsOf(1000)); // 300 units, none known yet: a few slices of them
        const allNew = await turnsOf(fresh("new"));
        assert.ok(allNew >= known + 1000 / 16 - 300 / 16 - 5, `new units took ${allNew} turns, against ${known} for 300 of them`);
        assert.deepEqual((await store.aggregate("exp", ["control", "treatment"], [])).variants.map((v) => v.units), [650, 650]);
        await store.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("an events batch too goes in slices, all or nothing: a failure in a late slice leaves no event, and the counter as it was", async () => {
      const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
      try {
        const path = join(dir, "a.db");
        const store = new SqliteStore(path);
        await store.init();
        const events = (n: number, tag: string) => Array.from({ length: n }, (_, i) => ({ experiment: "exp", unit: `${tag}${i}`, event: "watched", value: i, ts: 1_700_000_000_000 + i, requestId: null }));
        const loop = countTurns();
        await store.writeEvents(events(10_000, "ok"));
        const turns = loop.stop();
        assert.ok(turns >= 20, `10,000 events in slices of 250 take many turns of the loop, took ${turns}`);
        assert.equal((await store.counts("exp")).events, 10_000);
        const db = new Database(path);
        db.exec(`CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.unit = 'bad9000' BEGIN SELECT RAISE(ABORT, 'refused'); END`);
        db.close();
        await assert.rejects(store.writeEvents(events(10_000, "bad")), (err: unknown) => err instanceof StoreError && /refused/.test(err.message));
        assert.equal((await store.counts("exp")).events, 10_000, "nothing of the failed batch");
        const check = new Database(path, { readonly: true });
        assert.equal((check.prepare("SELECT count(*) AS n FROM events WHERE unit LIKE 'bad%'").get() as { n: number }).n, 0);
        check.close();
        await store.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("is all or nothing: a failure in a late slice leaves no row of the batch", async () => {
      const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
      try {
        const path = join(dir, "a.db");
        const store = new SqliteStore(path, { monotonicMs: slowClock() });
        await store.init();
        // The database refuses one row, as a full disk would refuse a page.
        const db = new Database(path);
        db.exec(`CREATE TRIGGER refuse BEFORE INSERT ON exposure_chunks WHEN NEW.rows LIKE '%"r1500"%' BEGIN SELECT RAISE(ABORT, 'refused'); END`);
        db.close();
        await assert.rejects(store.writeExposures(rowsOf(2000)), (err: unknown) => err instanceof StoreError && /refused/.test(err.message));
        assert.deepEqual(await store.counts("exp"), { exposures: 0, events: 0 });
        assert.deepEqual((await store.aggregate("exp", ["control", "treatment"], [])).variants.map((v) => v.units), [0, 0]);
        // The unit cache learnt nothing from the failed write: every unit still reaches the database.
        await store.writeExposures(rowsOf(1000));
        assert.deepEqual((await store.aggregate("exp", ["control", "treatment"], [])).variants.map((v) => v.units), [150, 150]);
        await store.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("holds back writes made meanwhile (events, state) until it commits, and close() until it is done", async () => {
      const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
      try {
        const store = new SqliteStore(join(dir, "a.db"), { monotonicMs: slowClock() });
        await store.init();
        const order: string[] = [];
        const exposures = store.writeExposures(rowsOf(2000)).then(() => order.push("exposures"));
        await new Promise((r) => setImmediate(r));
        const events = store
          .writeEvents([{ experiment: "exp", unit: "u1", event: "watched", value: 1, ts: 1e12, requestId: null }])
          .then(() => order.push("events"));
        const state = store.setState("exp", "k", "v").then(() => order.push("state"));
        const closed = store.close().then(() => order.push("closed"));
        await Promise.all([exposures, events, state, closed]);
        assert.deepEqual(order, ["exposures", "events", "state", "closed"]);
        await assert.rejects(store.writeExposures(rowsOf(1)), /closed/);
        const reopened = new SqliteStore(join(dir, "a.db"));
        await reopened.init();
        assert.deepEqual(await reopened.counts("exp"), { exposures: 2000, events: 1 });
        assert.equal(await reopened.getState("exp", "k"), "v");
        await reopened.close();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  it("runs report queries on its reader thread: a slow one does not hold the event loop", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const store = new SqliteStore(join(dir, "a.db"));
      await store.init();
      const T0 = 1_700_000_000_000;
      const units = 60_000;
      for (let b = 0; b < units / 1000; b++) {
        await store.writeExposures(
          Array.from({ length: 1000 }, (_, i): Exposure => {
            const k = b * 1000 + i;
            const v = k % 2 ? "control" : "treatment";
            return { experiment: "exp", ts: T0 + k, requestId: `r${k}`, unit: `u${k}`, assigned: v, served: v, replica: `${v}-0`, status: 200, latencyMs: 5, forced: false };
          }),
        );
      }
      for (let b = 0; b < 20; b++) {
        await store.writeEvents(Array.from({ length: 10_000 }, (_, i) => ({ experiment: "exp", unit: `u${(b * 10_000 + i) % units}`, event: "watched", value: 1, ts: T0 + 100_000 + b * 10_000 + i, requestId: null })));
      }
      const metrics = [
        { name: "w", kind: "conversion" as const, event: "watched", windowMs: 3_600_000 },
        { name: "m", kind: "mean" as const, event: "watched" },
      ];
      await store.counts("exp"); // the reader thread is up
      let longestGapMs = 0;
      let last = performance.now();
      const ticker = setInterval(() => {
        const now = performance.now();
        longestGapMs = Math.max(longestGapMs, now - last);
        last = now;
      }, 2);
      const t0 = performance.now();
      const agg = await store.aggregate("exp", ["control", "treatment"], metrics);
      const queryMs = performance.now() - t0;
      await new Promise((r) => setTimeout(r, 10)); // a tick after the query, to see a gap that ends with it
      clearInterval(ticker);
      assert.equal(agg.variants[0]!.units + agg.variants[1]!.units, units);
      // On this thread the query held the loop for all of queryMs (1.4 s at a few times this size).
      assert.ok(longestGapMs < Math.max(50, queryMs / 3), `the event loop waited ${longestGapMs.toFixed(0)} ms during a ${queryMs.toFixed(0)} ms query`);
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("reads on the writing connection (a memory store) wait for a write under way: none sees its uncommitted rows", async () => {
    const store = new SqliteStore(":memory:");
    await store.init();
    const T0 = 1_700_000_000_000;
    const rows = Array.from({ length: 3000 }, (_, k): Exposure => ({ experiment: "exp", ts: T0 + k, requestId: `r${k}`, unit: `u${k}`, assigned: "control", served: "control", replica: "control-0", status: 200, latencyMs: 5, forced: false }));
    let done = false;
    const writing = store.writeExposures(rows).then(() => void (done = true));
    // a read at every turn of the loop while the write runs in slices (its rollups, counters included, come a turn
    // before its commit)
    const seen: [number, boolean][] = [];
    while (!done) {
      seen.push([(await store.counts("exp")).exposures, done]);
      await new Promise((r) => setImmediate(r));
    }
    await writing;
    assert.ok(seen.length > 0);
    assert.deepEqual(seen.filter(([n, finished]) => n > 0 && !finished), [], "a count of the write's rows before it committed");
    assert.deepEqual(await store.counts("exp"), { exposures: 3000, events: 0 });
    await store.close();
  });

  it("with a short busyTimeoutMs, a write blocked by another process's lock fails soon instead of holding the thread", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      const store = new SqliteStore(path, { busyTimeoutMs: 100 });
      await store.init();
      const other = new Database(path);
      other.exec("BEGIN IMMEDIATE");
      const t0 = performance.now();
      await assert.rejects(store.writeExposures(rowsOf(10)), (err: unknown) => err instanceof StoreError && /locked|busy/i.test(err.message));
      const waitedMs = performance.now() - t0;
      assert.ok(waitedMs < 1000, `waited ${waitedMs.toFixed(0)} ms for the lock`);
      other.exec("COMMIT");
      await store.writeExposures(rowsOf(10));
      assert.equal((await store.counts("exp")).exposures, 10, "written once the lock is free");
      other.close();
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a write waits for another connection's lock without sleeping the thread, and goes through once it is free", async () => {
    // The lock's holder is on this very thread: a write that slept the thread for the lock (SQLite's busy_timeout)
    // would keep it from ever letting go, and fail after busyTimeoutMs. A checkpointer's TRUNCATE, which holds the
    // lock while it copies the WAL, held a gateway's proxy this way up to 100 ms at a time.
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      const store = new SqliteStore(path, { busyTimeoutMs: 1000 });
      await store.init();
      const other = new Database(path);
      other.exec("BEGIN IMMEDIATE");
      const loop = countTurns();
      const released = new Promise<void>((resolve) =>
        setTimeout(() => {
          other.exec("COMMIT");
          resolve();
        }, 60),
      );
      const t0 = performance.now();
      await store.writeExposures(rowsOf(10));
      const waitedMs = performance.now() - t0;
      const turns = loop.stop();
      await released;
      assert.ok(waitedMs >= 50 && waitedMs < 900, `waited ${waitedMs.toFixed(0)} ms for the lock`);
      assert.ok(turns >= 4, `the loop turned ${turns} times while the write waited`);
      assert.equal((await store.counts("exp")).exposures, 10);
      // An events batch waits the same way.
      other.exec("BEGIN IMMEDIATE");
      setTimeout(() => other.exec("COMMIT"), 30);
      await store.writeEvents([{ experiment: "exp", unit: "u1", event: "watched", value: 1, ts: 1e12, requestId: null }]);
      assert.equal((await store.counts("exp")).events, 1);
      // And a report's saved state (an UPSERT of its own), which slept the thread up to busyTimeoutMs before.
      other.exec("BEGIN IMMEDIATE");
      const stateLoop = countTurns();
      setTimeout(() => other.exec("COMMIT"), 30);
      const t1 = performance.now();
      await store.setState("exp", "k", "v");
      const stateWaitedMs = performance.now() - t1;
      const stateTurns = stateLoop.stop();
      assert.ok(stateWaitedMs >= 20 && stateTurns >= 3, `setState waited ${stateWaitedMs.toFixed(0)} ms, ${stateTurns} turns`);
      assert.equal(await store.getState("exp", "k"), "v");
      other.close();
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("init() waits for another process's lock (two gateways starting), the second call too", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      const store = new SqliteStore(path, { busyTimeoutMs: 5000 });
      await store.init();
      // Another process holds the write lock for 300 ms; init's migration transaction needs it.
      const holder = spawn(process.execPath, [
        "-e",
        `const D = require("better-sqlite3"); const db = new D(${JSON.stringify(path)}); db.exec("BEGIN IMMEDIATE"); console.log("held"); setTimeout(() => { db.exec("COMMIT"); db.close(); }, 300);`,
      ], { stdio: ["ignore", "pipe", "inherit"] });
      await new Promise<void>((resolve) => holder.stdout!.once("data", () => resolve()));
      const t0 = performance.now();
      await store.init();
      const waitedMs = performance.now() - t0;
      assert.ok(waitedMs >= 100, `init() went on after ${waitedMs.toFixed(0)} ms, with the lock held for 300`);
      await new Promise((resolve) => holder.once("exit", resolve));
      await store.writeExposures(rowsOf(3));
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("after a write failed on another process's lock, queued writes fail at once (not busyTimeoutMs each) until one succeeds", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      const store = new SqliteStore(path, { busyTimeoutMs: 100 });
      await store.init();
      const event = (i: number) => ({ experiment: "exp", unit: `u${i}`, event: "watched", value: null, ts: 1_700_000_000_000 + i, requestId: null });
      const other = new Database(path);
      other.exec("BEGIN IMMEDIATE");
      // Five events POSTs at once, as clients retrying: SQLite's wait sleeps the thread, the proxy's.
      const t0 = performance.now();
      const results = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => store.writeEvents([event(i)])));
      const waitedMs = performance.now() - t0;
      assert.deepEqual(results.map((r) => r.status), new Array(5).fill("rejected"));
      assert.ok(waitedMs < 250, `the five failed writes held the thread ${waitedMs.toFixed(0)} ms (one wait of 100 ms, not five)`);
      other.exec("COMMIT");
      await store.writeEvents([event(5)]);
      // The wait is back after a success: a write under a new lock waits about busyTimeoutMs before it fails.
      other.exec("BEGIN IMMEDIATE");
      const t1 = performance.now();
      await assert.rejects(store.writeEvents([event(6)]));
      assert.ok(performance.now() - t1 >= 80, "waited for the lock again");
      other.exec("ROLLBACK");
      await store.writeExposures(rowsOf(3));
      assert.equal((await store.counts("exp")).events, 1);
      other.close();
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("close() does not wait for another connection's readers to checkpoint (a live gateway's writer would wait with it)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      const path = join(dir, "a.db");
      const store = new SqliteStore(path);
      await store.init();
      await store.writeExposures(rowsOf(10));
      // A reader of the current snapshot, then more writes: a TRUNCATE checkpoint must wait for that reader.
      const reader = new Database(path);
      reader.exec("BEGIN");
      reader.prepare("SELECT COUNT(*) FROM units").get();
      await store.writeExposures(rowsOf(10));
      const t0 = performance.now();
      await store.close();
      const closeMs = performance.now() - t0;
      reader.exec("COMMIT");
      reader.close();
      assert.ok(closeMs < 1000, `close() took ${closeMs.toFixed(0)} ms`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("close() with closeCheckpointWaitMs (a gateway) waits for another process's read to end, so the file alone holds every commit", async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-sqlite-"));
    try {
      /** exposures in a copy of the file alone, as read by someone given just abgate.db */
      const inFileAlone = (path: string) => {
        const copy = join(dir, `copy-${Math.random().toString(36).slice(2)}.db`);
        copyFileSync(path, copy);
        const db = new Database(copy, { readonly: true });
        try {
          return (db.prepare("SELECT exposures FROM counters WHERE experiment = 'exp'").get() as { exposures: number }).exposures;
        } catch (err) {
          return (err as Error).message; // a file checkpointed only in part may not read at all ("malformed")
        } finally {
          db.close();
        }
      };
      for (const waitMs of [0, 3000]) {
        const path = join(dir, `wait-${waitMs}.db`);
        const told: CloseCheckpointEvent[] = [];
        const store = new SqliteStore(path, { checkpointIntervalMs: 0, closeCheckpointWaitMs: waitMs, onCloseCheckpoint: (e) => told.push(e) });
        await store.init();
        await store.writeExposures(rowsOf(10));
        // abgate report's read-only connection, in the middle of a read when the gateway stops
        const report = new Database(path, { readonly: true });
        report.exec("BEGIN");
        report.prepare("SELECT COUNT(*) FROM units").get();
        await store.writeExposures(rowsOf(10));
        const done = setTimeout(() => report.exec("COMMIT"), 200);
        const t0 = performance.now();
        await store.close();
        const closeMs = performance.now() - t0;
        clearTimeout(done);
        if (report.inTransaction) report.exec("COMMIT");
        report.close();
        if (waitMs === 0) {
          assert.notEqual(inFileAlone(path), 20, "one try: the last commits stay in the -wal (what the option is for)");
          assert.equal(told.length, 1, JSON.stringify(told));
          const [e] = told;
          assert.ok(e?.kind === "incomplete" && e.framesLeft !== null && e.framesLeft > 0, `told that commits are left in the -wal: ${JSON.stringify(told)}`);
        } else {
          assert.equal(inFileAlone(path), 20, "every commit in the file");
          assert.deepEqual(told, [{ kind: "waiting", waitMs: 3000 }], "told once that it waits, and not that anything was left");
          assert.ok(closeMs >= 150 && closeMs < 2000, `close() took ${closeMs.toFixed(0)} ms, until the read ended`);
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("openStore rejects what it cannot open", () => {
    assert.throws(() => openStore("sqlite:"), /expected sqlite:<path>/);
    assert.throws(() => openStore("mysql://x"), /expected sqlite:<path> or postgres:\/\//);
  });
});

/** The rollups, worked out naively from the rows in arrival order, for the property test above. */
function expectedUnits(rows: Exposure[]): Record<string, unknown>[] {
  const units = new Map<string, { experiment: string; unit: string; first_ts: number; first_variant: string; variants: Set<string> }>();
  for (const e of rows) {
    if (e.forced) continue;
    const key = `${e.experiment}/${e.unit}`;
    const ts = Math.trunc(e.ts);
    const u = units.get(key);
    if (u === undefined) units.set(key, { experiment: e.experiment, unit: e.unit, first_ts: ts, first_variant: e.assigned, variants: new Set([e.assigned]) });
    else {
      u.variants.add(e.assigned);
      // ties keep the exposure that arrived first
      if (ts < u.first_ts) {
        u.first_ts = ts;
        u.first_variant = e.assigned;
      }
    }
  }
  return [...units.values()]
    .sort((a, b) => cmp(a.experiment, b.experiment) || cmp(a.unit, b.unit))
    .map((u) => ({ experiment: u.experiment, unit: u.unit, first_ts: u.first_ts, first_variant: u.first_variant, multi: u.variants.size > 1 ? 1 : 0 }));
}

function expectedMinutes(rows: Exposure[]): Record<string, unknown>[] {
  const out = new Map<string, { [k: string]: string | number | null }>();
  for (const e of rows) {
    const ts = Math.trunc(e.ts);
    const key = `${e.experiment}/${minuteOf(ts)}/${e.assigned}`;
    let m = out.get(key);
    if (m === undefined) {
      m = { experiment: e.experiment, minute: minuteOf(ts), variant: e.assigned, requests: 0, fallback: 0, forced: 0, errors: 0, latency_n: 0, latency_sum: 0, latency_sum_sq: 0, min_ts: null, max_ts: null };
      out.set(key, m);
    }
    const n = (k: string) => m![k] as number;
    if (e.forced) {
      m.forced = n("forced") + 1;
      continue;
    }
    m.requests = n("requests") + 1;
    if (e.served !== e.assigned) m.fallback = n("fallback") + 1;
    else {
      m.latency_n = n("latency_n") + 1;
      m.latency_sum = n("latency_sum") + e.latencyMs;
      m.latency_sum_sq = n("latency_sum_sq") + e.latencyMs * e.latencyMs;
    }
    if (isError(e.status)) m.errors = n("errors") + 1;
    m.min_ts = m.min_ts === null ? ts : Math.min(n("min_ts"), ts);
    m.max_ts = m.max_ts === null ? ts : Math.max(n("max_ts"), ts);
  }
  return [...out.values()].sort((a, b) => cmp(a.experiment as string, b.experiment as string) || (a.minute as number) - (b.minute as number) || cmp(a.variant as string, b.variant as string));
}

function expectedHist(rows: Exposure[]): Record<string, unknown>[] {
  const out = new Map<string, { experiment: string; variant: string; bucket: number; count: number }>();
  for (const e of rows) {
    if (e.forced || e.served !== e.assigned) continue;
    const bucket = latencyBucket(e.latencyMs);
    const key = `${e.experiment}/${e.assigned}/${bucket}`;
    const h = out.get(key);
    if (h === undefined) out.set(key, { experiment: e.experiment, variant: e.assigned, bucket, count: 1 });
    else h.count++;
  }
  return [...out.values()].sort((a, b) => cmp(a.experiment, b.experiment) || cmp(a.variant, b.variant) || a.bucket - b.bucket);
}

function expectedCounters(rows: Exposure[]): Record<string, unknown>[] {
  const out = new Map<string, number>();
  for (const e of rows) out.set(e.experiment, (out.get(e.experiment) ?? 0) + 1);
  return [...out].sort(([a], [b]) => cmp(a, b)).map(([experiment, exposures]) => ({ experiment, exposures, events: 0 }));
}

/** Sums of doubles depend on the order they were added in: compare them to 9 significant digits. */
function roundSums(rows: Record<string, unknown>[]): Record<string, unknown>[] {
  return rows.map((r) => ({ ...r, latency_sum: Number((r.latency_sum as number).toPrecision(9)), latency_sum_sq: Number((r.latency_sum_sq as number).toPrecision(9)) }));
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** A string as SQLite gives it back after binding it as a parameter. */
function bound(s: string): string {
  const db = (bound.db ??= new Database(":memory:"));
  return db.prepare("SELECT ?").pluck().get(s) as string;
}
bound.db = undefined as Database.Database | undefined;
