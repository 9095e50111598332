import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
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
      await s.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("openStore rejects what it cannot open", () => {
    assert.throws(() => openStore("sqlite:"), /expected sqlite:<path>/);
    assert.throws(() => openStore("mysql://x"), /expected sqlite:<path> or postgres:\/\//);
  });
});
