/**
 * `abgate report` opens the store read-only: on a live gateway's store it changes neither the file nor its -wal and
 * records no state; an older schema is an error until `report --writable` (or up/serve) migrates it; a copy in a
 * folder it may not write is read without a file made there. Real SQLite files, the CLI run as a process.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import Database from "better-sqlite3";
import { runCli } from "../../test/helpers/cli.ts";
import { unprivileged, unwritableFolder } from "../../test/helpers/unwritable.ts";
import { latestSchemaVersion, migrations } from "../store/migrations.ts";
import { SqliteStore } from "../store/sqlite/index.ts";
import type { Exposure, OutcomeEvent } from "../store/types.ts";

const T0 = Date.now() - 3_600_000;

function exposures(from: number, n: number): Exposure[] {
  return Array.from({ length: n }, (_, i): Exposure => {
    const k = from + i;
    const v = k % 2 ? "control" : "treatment";
    return { experiment: "rep", ts: T0 + k * 1000, requestId: `r${k}`, unit: `u${k}`, assigned: v, served: v, replica: `${v}-0`, status: 200, latencyMs: 5, forced: false };
  });
}

function events(from: number, n: number): OutcomeEvent[] {
  return Array.from({ length: n }, (_, i) => ({ experiment: "rep", unit: `u${from + i}`, event: "watched", value: 1, ts: T0 + (from + i) * 1000 + 500, requestId: null }));
}

/** Each file of `dir` with a hash of its bytes; the -shm, which readers write by design, without one. */
function snapshot(dir: string): Record<string, string> {
  return Object.fromEntries(
    readdirSync(dir).sort().map((f) => [f, f.endsWith("-shm") ? "" : createHash("sha256").update(readFileSync(join(dir, f))).digest("hex")]),
  );
}

function writeConfig(dir: string): string {
  const file = join(dir, "abgate.yaml");
  writeFileSync(
    file,
    [
      "experiment: rep",
      "engine: static",
      "store: sqlite:./a.db",
      "variants:",
      "  - { name: control, url: 'http://127.0.0.1:9' }",
      "  - { name: treatment, url: 'http://127.0.0.1:9' }",
      "metrics:",
      "  - { name: watched, kind: conversion, event: watched }",
      "",
    ].join("\n"),
  );
  return file;
}

/** 200 units and 60 conversions, then closed: the file alone holds them. */
async function closedStore(path: string): Promise<void> {
  const s = new SqliteStore(path);
  await s.init();
  await s.writeExposures(exposures(0, 200));
  await s.writeEvents(events(0, 60));
  await s.close();
}

describe("abgate report opens the store read-only", () => {
  let root: string;
  let n = 0;
  const fresh = () => {
    const dir = join(root, `t${++n}`);
    mkdirSync(dir);
    return dir;
  };
  before(() => {
    root = mkdtempSync(join(tmpdir(), "abgate-cli-report-"));
    chmodSync(root, 0o755); // for the CLI run as nobody
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it("on a live gateway's store: reports its WAL's commits too, leaves the file and its -wal as they were and records no state; --writable does", async () => {
    const dir = fresh();
    const file = writeConfig(dir);
    const path = join(dir, "a.db");
    await closedStore(path);
    // the gateway: more units committed to the WAL only (no checkpointer, too few pages for an automatic checkpoint)
    const live = new SqliteStore(path, { checkpointIntervalMs: 0 });
    await live.init();
    try {
      await live.writeExposures(exposures(200, 100));
      const before = snapshot(dir);
      assert.deepEqual(Object.keys(before), ["a.db", "a.db-shm", "a.db-wal", "abgate.yaml"]);
      const res = await runCli(["report", "-c", file, "--json"]);
      assert.equal(res.code, 0, res.stderr);
      const report = JSON.parse(res.stdout) as { variants: { name: string; units: number }[] };
      assert.deepEqual(report.variants.map((v) => [v.name, v.units]), [["control", 150], ["treatment", 150]]);
      assert.deepEqual(snapshot(dir), before, "no checkpoint, no state saved: the file and the -wal are unchanged");
      assert.equal(await live.getState("rep", "sequential"), null);
      const writable = await runCli(["report", "-c", file, "--writable"]);
      assert.equal(writable.code, 0, writable.stderr);
      assert.notEqual(await live.getState("rep", "sequential"), null, "report --writable records its sequential state, as before");
    } finally {
      await live.close();
    }
  });

  it("on an older schema: an error that says how to migrate it, the file unchanged; report --writable migrates it", async () => {
    const dir = fresh();
    const file = writeConfig(dir);
    const path = join(dir, "a.db");
    const db = new Database(path);
    db.pragma("journal_mode = WAL");
    db.exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`);
    for (const sql of migrations[0]!.sqlite) db.exec(sql);
    db.prepare(`INSERT INTO schema_migrations VALUES (1, ?, 0)`).run(migrations[0]!.name);
    db.close();
    const before = snapshot(dir)["a.db"];
    const res = await runCli(["report", "-c", file]);
    assert.equal(res.code, 1, res.stdout);
    assert.match(res.stderr, new RegExp(`^abgate: .*a\\.db has schema version 1, older than this abgate's \\(${latestSchemaVersion}\\): it needs migrating, which a read-only open does not do\\. Open it writable once: abgate report --writable, or abgate up or serve`));
    assert.equal(snapshot(dir)["a.db"], before);
    const version = () => {
      const ro = new Database(path, { readonly: true });
      const v = ro.prepare(`SELECT max(version) FROM schema_migrations`).pluck().get();
      ro.close();
      return v;
    };
    assert.equal(version(), 1);
    const migrated = await runCli(["report", "-c", file, "--writable"]);
    assert.equal(migrated.code, 0, migrated.stderr);
    assert.equal(version(), latestSchemaVersion);
    const again = await runCli(["report", "-c", file]);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /rep/);
  });

  const as = unprivileged();
  it("on a copy in a folder it may not write (the file alone): reports it and makes no file there", { skip: as === undefined ? "running as root, and neither user nobody nor setpriv can run this checkout's code" : false }, async () => {
    const dir = fresh();
    const file = writeConfig(dir);
    const path = join(dir, "a.db");
    await closedStore(path);
    for (const f of readdirSync(dir)) chmodSync(join(dir, f), 0o644);
    const before = snapshot(dir);
    assert.deepEqual(Object.keys(before), ["a.db", "abgate.yaml"]);
    const res = await unwritableFolder(dir, () => runCli(["report", "-c", file, "--json"], { ...as, env: { SQLITE_USE_URI: undefined } }));
    assert.equal(res.code, 0, res.stderr);
    const report = JSON.parse(res.stdout) as { variants: { name: string; units: number }[] };
    assert.deepEqual(report.variants.map((v) => [v.name, v.units]), [["control", 100], ["treatment", 100]]);
    assert.deepEqual(snapshot(dir), before);
  });
});
