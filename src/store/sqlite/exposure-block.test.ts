import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import Database from "better-sqlite3";
import fc from "fast-check";
import { ExposureBatcher } from "../batcher.ts";
import { migrations } from "../migrations.ts";
import type { Exposure, Store } from "../types.ts";
import { SqliteStore } from "./sqlite-store.ts";
import { SqliteThreadStore } from "./writer-thread.ts";

const root = mkdtempSync(join(tmpdir(), "abgate-block-"));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

/** Everything a reader sees of the exposures and the rollups, with each value's SQL type. */
function contents(path: string): Record<string, unknown[]> {
  const db = new Database(path, { readonly: true });
  try {
    const all = (sql: string) => db.prepare(sql).raw().all();
    return {
      exposures: all(`SELECT id, experiment, ts, request_id, unit, assigned, served, replica, status, latency_ms, forced,
        typeof(ts), typeof(request_id), typeof(unit), typeof(status), typeof(latency_ms), typeof(forced) FROM exposures ORDER BY id`),
      units: all("SELECT * FROM units ORDER BY experiment, unit"),
      minutes: all("SELECT * FROM minute_stats ORDER BY experiment, minute, variant"),
      hist: all("SELECT * FROM latency_hist ORDER BY experiment, variant, bucket"),
      counters: all("SELECT * FROM counters ORDER BY experiment"),
    };
  } finally {
    db.close();
  }
}

/** Writes `batches` through a batcher, one write per batch, to a new store; objects only unless `blocks`. */
async function written(batches: Exposure[][], blocks: boolean): Promise<{ path: string; blobRows: number; textRows: number }> {
  const path = join(root, `s${++n}.db`);
  // (a clock that stands still: the write slices, and so the chunks and ids, then depend only on the rows)
  const store = new SqliteStore(path, { monotonicMs: () => 0 });
  await store.init();
  const target: Pick<Store, "writeExposures" | "writeExposureBlock"> = blocks ? store : { writeExposures: (rows) => store.writeExposures(rows) };
  const max = Math.max(1, ...batches.map((b) => b.length));
  const logged: string[] = [];
  const batcher = new ExposureBatcher(target, { maxWriteRows: max, maxBatch: max, maxBuffered: max, log: (_l, msg, f) => logged.push(`${msg} ${JSON.stringify(f)}`) });
  for (const batch of batches) {
    for (const e of batch) batcher.push(e);
    await batcher.flush();
  }
  await batcher.close();
  assert.equal(batcher.stats().written, batches.flat().length, logged.join("; "));
  await store.close();
  const db = new Database(path, { readonly: true });
  // (a binary chunk starts with its row count, 16 bits)
  const chunks = db.prepare("SELECT rows FROM exposure_chunks").pluck().all() as (string | Buffer)[];
  db.close();
  let blobRows = 0;
  let textRows = 0;
  for (const c of chunks) {
    if (typeof c === "string") textRows += (JSON.parse(c) as unknown[]).length;
    else blobRows += c.readUInt16BE(0);
  }
  return { path, blobRows, textRows };
}

const T0 = 1_764_500_000_000;
const PREFIX = "AbCdEf-_12-";

function row(i: number, over: Partial<Exposure> = {}): Exposure {
  return {
    experiment: "exp",
    ts: T0 + i * 7,
    requestId: `${PREFIX}${(i + 1).toString(36)}`,
    unit: `user-${i % 97}`,
    assigned: i % 3 === 0 ? "treatment" : "control",
    served: i % 3 === 0 ? "treatment" : "control",
    replica: `r${i % 2}`,
    status: 200,
    latencyMs: (1234 + (i % 50)) / 1000,
    forced: false,
    ...over,
  };
}

describe("exposures written by block (SqliteStore.writeExposureBlock)", () => {
  it("reads back through the view exactly as the same rows written as objects, with the same rollups", async () => {
    const rows = Array.from({ length: 700 }, (_, i) => row(i));
    const objects = await written([rows], false);
    const block = await written([rows], true);
    assert.deepEqual([objects.blobRows, objects.textRows], [0, 700]);
    assert.deepEqual([block.blobRows, block.textRows], [700, 0]);
    const expected = contents(objects.path);
    assert.deepEqual(contents(block.path), expected);
    assert.equal(expected.exposures!.length, 700);
    assert.deepEqual((expected.exposures![0] as unknown[]).slice(1, 11), ["exp", T0, `${PREFIX}1`, "user-0", "treatment", "treatment", "r0", 200, 1.234, 0]);
  });

  it("agrees with the objects' way for any rows: odd units, ids, times, latencies, statuses, many replicas", async () => {
    // Rows a binary chunk cannot hold (a unit too long or not ASCII, a foreign request id, a latency of no whole µs,
    // a status out of 16 bits) are rare, so that many batches have none and go as binary chunks.
    const rare = <T>(usual: fc.Arbitrary<T>, odd: fc.Arbitrary<T>) => fc.oneof({ arbitrary: usual, weight: 60 }, { arbitrary: odd, weight: 1 });
    const unit = rare(
      fc.oneof(fc.string({ unit: fc.constantFrom("a", "Z", "0", "-", "~", " ", "\u007f"), minLength: 0, maxLength: 40 }), fc.constant("x".repeat(40))),
      fc.constantFrom("y".repeat(41), "José", "ü", "名前", "a\u00ffb"),
    );
    const exposure = fc.record({
      dt: fc.oneof(fc.integer({ min: -5000, max: 5000 }), fc.constantFrom(2 ** 31, -(2 ** 31), 2 ** 31 - 1, 2 ** 40)),
      fraction: fc.constantFrom(0, 0, 0, 0.5),
      seq: fc.oneof(fc.integer({ min: 0, max: 2000 }), fc.constantFrom(36 ** 10 - 1, 2 ** 40)),
      foreignId: rare(fc.constant(false), fc.constant(true)),
      unit,
      assigned: fc.constantFrom("control", "treatment"),
      fallback: fc.boolean(),
      replica: fc.integer({ min: 0, max: 80 }),
      status: rare(fc.constantFrom(200, 404, 502, 0, 65535), fc.constantFrom(65536, -1, 2 ** 31 - 1)),
      latencyUs: fc.oneof(fc.integer({ min: 0, max: 10_000_000 }), fc.constantFrom(2 ** 32 - 1), rare(fc.constant(0), fc.constant(2 ** 32))),
      oddLatency: rare(fc.constant(false), fc.constant(true)),
      forced: fc.boolean(),
    });
    let blobRows = 0;
    let textRows = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(exposure, { minLength: 1, maxLength: 300 }), { minLength: 1, maxLength: 3 }), async (batches) => {
        const rows = batches.map((batch) =>
          batch.map(
            (x): Exposure => ({
              experiment: "exp",
              ts: T0 + x.dt + x.fraction,
              requestId: x.foreignId ? `client-id-${x.seq}` : `${PREFIX}${x.seq.toString(36)}`,
              unit: x.unit,
              assigned: x.assigned,
              served: x.fallback ? (x.assigned === "control" ? "treatment" : "control") : x.assigned,
              replica: `replica-${x.replica}`,
              status: x.status,
              latencyMs: x.oddLatency ? x.latencyUs / 7 : x.latencyUs / 1000,
              forced: x.forced,
            }),
          ),
        );
        const objects = await written(rows, false);
        const block = await written(rows, true);
        assert.deepEqual(contents(block.path), contents(objects.path));
        blobRows += block.blobRows;
        textRows += block.textRows;
      }),
      { numRuns: 25 },
    );
    assert.ok(blobRows > 0 && textRows > 0, `both ways taken: ${blobRows} rows in binary chunks, ${textRows} in JSON`);
  });

  it("writes most of a proxy's rows as binary chunks: a batch with one row that cannot be goes as JSON, the others not", async () => {
    const plain = Array.from({ length: 300 }, (_, i) => row(i));
    const odd = Array.from({ length: 300 }, (_, i) => row(300 + i, i === 150 ? { unit: "José" } : {}));
    const fractional = Array.from({ length: 300 }, (_, i) => row(600 + i, i === 10 ? { latencyMs: 0.0001 } : {}));
    const result = await written([plain, odd, fractional], true);
    assert.deepEqual([result.blobRows, result.textRows], [300, 600]);
    assert.deepEqual(contents(result.path), contents((await written([plain, odd, fractional], false)).path));
  });

  it("upgrades a version-2 database: its JSON chunks read back as before, beside binary ones written after", async () => {
    const rows = Array.from({ length: 400 }, (_, i) => row(i));
    const objects = await written([rows], false);
    const before = contents(objects.path);
    // Back to version 2 as it was: its view, no version 3.
    const db = new Database(objects.path);
    db.exec("DROP VIEW exposures");
    db.exec(migrations[1]!.sqlite.at(-1)!);
    db.prepare("DELETE FROM schema_migrations WHERE version = 3").run();
    assert.deepEqual(contents(objects.path), before, "version 2's view reads the JSON chunks as version 3's does");
    db.close();
    const store = new SqliteStore(objects.path);
    await store.init();
    assert.equal(store.migratedFrom, 2);
    const batcher = new ExposureBatcher(store, { maxWriteRows: 400, maxBatch: 400, log: () => {} });
    const more = Array.from({ length: 400 }, (_, i) => row(400 + i));
    for (const e of more) batcher.push(e);
    await batcher.close();
    await store.close();
    const check = new Database(objects.path, { readonly: true });
    assert.deepEqual(check.prepare("SELECT DISTINCT typeof(rows) FROM exposure_chunks ORDER BY 1").pluck().all(), ["blob", "text"]);
    check.close();
    const after = contents(objects.path).exposures!;
    assert.deepEqual(after.slice(0, 400), before.exposures);
    assert.deepEqual(
      after.slice(400).map((r) => (r as unknown[]).slice(1, 11)),
      contents((await written([rows, more], false)).path).exposures!.slice(400).map((r) => (r as unknown[]).slice(1, 11)),
    );
  });

  it("crosses to the writer thread as a block, and reads back as the same rows written as objects on this one", async () => {
    const rows = Array.from({ length: 900 }, (_, i) => row(i, i === 899 ? { forced: true, status: 503 } : {}));
    const path = join(root, `s${++n}.db`);
    const store = new SqliteThreadStore(path);
    await store.init();
    let blocks = 0;
    const counting: Pick<Store, "writeExposures" | "writeExposureBlock"> = {
      writeExposures: (r) => store.writeExposures(r),
      writeExposureBlock: (block) => {
        blocks++;
        return store.writeExposureBlock(block);
      },
    };
    const batcher = new ExposureBatcher(counting, { maxWriteRows: 300, maxBatch: 300, log: () => {} });
    for (const e of rows) batcher.push(e);
    await batcher.close();
    await store.close();
    assert.equal(blocks, 3);
    // (the thread's write slices follow its own clock, so its chunks, and the ids, may be cut elsewhere)
    const withoutIds = (c: Record<string, unknown[]>) => ({ ...c, exposures: c.exposures!.map((r) => (r as unknown[]).slice(1)) });
    assert.deepEqual(withoutIds(contents(path)), withoutIds(contents((await written([rows.slice(0, 300), rows.slice(300, 600), rows.slice(600)], false)).path)));
    const check = new Database(path, { readonly: true });
    assert.deepEqual(check.prepare("SELECT DISTINCT typeof(rows) FROM exposure_chunks").pluck().all(), ["blob"]);
    check.close();
  });

  it("drops a row no store can take and writes the rest, as with objects", async () => {
    const rows = Array.from({ length: 50 }, (_, i) => row(i, i === 20 ? { latencyMs: Number.NaN } : {}));
    const path = join(root, `s${++n}.db`);
    const store = new SqliteStore(path);
    await store.init();
    const batcher = new ExposureBatcher(store, { maxWriteRows: 50, maxBatch: 50, log: () => {} });
    for (const e of rows) batcher.push(e);
    await batcher.flush();
    assert.deepEqual([batcher.stats().written, batcher.stats().dropped], [49, 1]);
    assert.equal((await store.counts("exp")).exposures, 49);
    await store.close();
  });

  it("keeps a block's rows when the write fails, and writes them all once the store takes them", async () => {
    const path = join(root, `s${++n}.db`);
    const store = new SqliteStore(path);
    await store.init();
    const db = new Database(path);
    db.exec(`CREATE TRIGGER refuse BEFORE INSERT ON exposure_chunks BEGIN SELECT RAISE(ABORT, 'refused'); END`);
    const logged: string[] = [];
    const batcher = new ExposureBatcher(store, { maxWriteRows: 100, maxBatch: 100, log: (_l, msg, f) => logged.push(`${msg} ${JSON.stringify(f)}`) });
    const rows = Array.from({ length: 100 }, (_, i) => row(i));
    for (const e of rows) batcher.push(e);
    await batcher.flush();
    assert.deepEqual([batcher.stats().written, batcher.stats().buffered, batcher.stats().failures], [0, 100, 1]);
    db.exec("DROP TRIGGER refuse");
    db.close();
    await batcher.close();
    assert.equal(batcher.stats().written, 100, logged.join("; "));
    await store.close();
    const objects = await written([rows], false);
    assert.deepEqual(contents(path), contents(objects.path));
  });
});
