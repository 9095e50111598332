/**
 * `abgate report` opens the store read-only: on a live gateway's store it changes neither the file nor its -wal and
 * records no state; an older schema is an error until `report --writable` (or up/serve) migrates it; a copy in a
 * folder it may not write is read without a file made there. Real SQLite files, the CLI run as a process.
 */
import assert from "node:assert/strict";
import { chmodSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { CLI, runCli } from "../../test/helpers/cli.ts";
import { unprivileged, unwritableFolder } from "../../test/helpers/unwritable.ts";
import { latestSchemaVersion } from "../store/migrations.ts";
import { SqliteStore } from "../store/sqlite/index.ts";
import { snapshot, storeRows, tempFolders, versionOneStore } from "../../test/helpers/store-files.ts";

const T0 = Date.now() - 3_600_000;

const { exposures, events } = storeRows("rep", T0);


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
  const { fresh } = tempFolders("abgate-cli-report-");

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
    versionOneStore(path);
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

  const as = unprivileged([process.execPath, "--import", "tsx", CLI, "--version"]);
  it("on a copy in a folder it may not write (the file alone): reports it and makes no file there", { skip: as === undefined ? "running as root, and neither setpriv nor user nobody can run this checkout's code unprivileged" : false }, async () => {
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
