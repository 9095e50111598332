import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { openStore } from "../index.ts";
import { storeConformance } from "../conformance.ts";
import { latestSchemaVersion } from "../migrations.ts";
import { SqliteStore } from "./sqlite-store.ts";

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

  it("openStore rejects what it cannot open", () => {
    assert.throws(() => openStore("sqlite:"), /expected sqlite:<path>/);
    assert.throws(() => openStore("mysql://x"), /expected sqlite:<path> or postgres:\/\//);
  });
});
