import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { postgresInstalled, postgresRequired, startPostgres, type PostgresCluster } from "../../../test/helpers/postgres.ts";
import { storeConformance } from "../conformance.ts";
import { openStore } from "../index.ts";
import { latestSchemaVersion } from "../migrations.ts";
import { PostgresStore, toPgPlaceholders } from "./postgres-store.ts";

/**
 * Runs against a real PostgreSQL: a private cluster started for this file (scripts/pg-cluster.sh), one database per
 * test. Without PostgreSQL installed the suite is skipped with a message — unless ABGATE_REQUIRE_POSTGRES=1, where
 * that is a failure.
 */
const installed = postgresInstalled();

if (!installed) {
  if (postgresRequired) {
    it("PostgreSQL is installed (ABGATE_REQUIRE_POSTGRES=1)", () => {
      assert.fail("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin; apt-get install postgresql");
    });
  } else {
    it("PostgreSQL store", { skip: "PostgreSQL is not installed (apt-get install postgresql); set ABGATE_REQUIRE_POSTGRES=1 to fail instead" }, () => {});
  }
} else {
  let cluster: PostgresCluster;
  let n = 0;

  async function admin<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
    const c = new pg.Client({ connectionString: cluster.url });
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end();
    }
  }

  // One cluster for the whole file (starting one costs seconds); each test gets its own database.
  before(async () => {
    cluster = await startPostgres();
  });
  after(async () => {
    await cluster.stop();
  });

  storeConformance({
    name: "PostgreSQL (private cluster)",
    async fresh() {
      const db = `abgate_t${++n}`;
      await admin((c) => c.query(`CREATE DATABASE ${db}`));
      return {
        open: () => new PostgresStore(cluster.urlFor(db)),
        // DROP DATABASE forces a checkpoint (seconds each); the whole cluster is deleted at teardown anyway.
        dispose: async () => {},
      };
    },
  });

  describe("PostgresStore specifics", () => {
    let url: string;
    before(async () => {
      await admin((c) => c.query(`CREATE DATABASE abgate_specifics`));
      url = cluster.urlFor("abgate_specifics");
    });

    it("records each migration once, through openStore", async () => {
      for (let i = 0; i < 2; i++) {
        const s = openStore(url);
        await s.init();
        await s.close();
      }
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      const res = await c.query("SELECT version FROM schema_migrations ORDER BY version");
      await c.end();
      assert.deepEqual(
        res.rows.map((r) => r.version),
        Array.from({ length: latestSchemaVersion }, (_, i) => i + 1),
      );
    });

    it("acknowledged events survive a server crash (immediate stop, WAL recovery)", async () => {
      const s = new PostgresStore(url);
      await s.init();
      const before = (await s.counts("crash")).events;
      await s.writeEvents(Array.from({ length: 500 }, (_, i) => ({
        experiment: "crash", unit: `u${i}`, event: "watched", value: i, ts: 1e12 + i, requestId: null,
      })));
      await s.close();
      await cluster.crashRestart();
      const t = new PostgresStore(url);
      await t.init();
      assert.equal((await t.counts("crash")).events, before + 500);
      await t.close();
    });

    it("reports an unreachable server as a StoreError naming it, without the password", async () => {
      const s = new PostgresStore("postgres://someone:secret@127.0.0.1:1/nowhere");
      await assert.rejects(s.init(), (err: Error) => /cannot connect to postgres:\/\/someone@127\.0\.0\.1:1\/nowhere/.test(err.message) && !/secret/.test(err.message));
      await s.close();
    });

    it("numbers placeholders", () => {
      assert.equal(toPgPlaceholders("a = ? AND b = ? OR c = ?"), "a = $1 AND b = $2 OR c = $3");
    });
  });
}
