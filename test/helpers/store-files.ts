import { createHash } from "node:crypto";
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before } from "node:test";
import Database from "better-sqlite3";
import { migrations } from "../../src/store/migrations.ts";
import type { Exposure, OutcomeEvent } from "../../src/store/types.ts";

/**
 * Rows for the read-only store's tests: unit u<k> is exposed at t0 + k s (odd k control, even k treatment) and
 * sends "watched" half a second later.
 */
export function storeRows(experiment: string, t0: number): {
  exposures: (from: number, n: number) => Exposure[];
  events: (from: number, n: number) => OutcomeEvent[];
} {
  return {
    exposures: (from, n) =>
      Array.from({ length: n }, (_, i): Exposure => {
        const k = from + i;
        const v = k % 2 ? "control" : "treatment";
        return { experiment, ts: t0 + k * 1000, requestId: `r${k}`, unit: `u${k}`, assigned: v, served: v, replica: `${v}-0`, status: 200, latencyMs: 5, forced: false };
      }),
    events: (from, n) =>
      Array.from({ length: n }, (_, i) => ({ experiment, unit: `u${from + i}`, event: "watched", value: 1, ts: t0 + (from + i) * 1000 + 500, requestId: null })),
  };
}

/** Each file of `dir` with a hash of its bytes ("" for the -shm, which readers write by design: it is no data). */
export function snapshot(dir: string): Record<string, string> {
  return Object.fromEntries(
    readdirSync(dir).sort().map((f) => [f, f.endsWith("-shm") ? "" : createHash("sha256").update(readFileSync(join(dir, f))).digest("hex")]),
  );
}

/**
 * A temp folder for a describe block's tests (made before them, removed after), open to others (r-x) for a child
 * run as another user; `fresh()` makes one new folder in it per call.
 */
export function tempFolders(prefix: string): { fresh: () => string } {
  let root = "";
  let n = 0;
  before(() => {
    root = mkdtempSync(join(tmpdir(), prefix));
    chmodSync(root, 0o755);
  });
  after(() => rmSync(root, { recursive: true, force: true }));
  return {
    fresh: () => {
      const dir = join(root, `t${++n}`);
      mkdirSync(dir);
      return dir;
    },
  };
}

/** A version-1 database, as an abgate before migration 2 left it. */
export function versionOneStore(path: string): void {
  const db = new Database(path);
  db.pragma("journal_mode = WAL");
  db.exec(`CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)`);
  for (const sql of migrations[0]!.sqlite) db.exec(sql);
  db.prepare(`INSERT INTO schema_migrations VALUES (1, ?, 0)`).run(migrations[0]!.name);
  db.close();
}
