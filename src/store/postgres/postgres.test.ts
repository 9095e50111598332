import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import pg from "pg";
import { StoreError } from "../../errors.ts";
import { postgresInstalled, postgresRequired, startPostgres, type PostgresCluster } from "../../../test/helpers/postgres.ts";
import { storeConformance } from "../conformance.ts";
import { openStore } from "../index.ts";
import { latestSchemaVersion } from "../migrations.ts";
import type { Exposure } from "../types.ts";
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
  /** postgres-store.ts's advisory lock for migrations */
  const MIGRATION_LOCK_ID = 0x61626761_7465n;

  /** The postmaster and its children (backends, checkpointer, ...), to freeze the whole server with SIGSTOP. */
  async function clusterPids(): Promise<number[]> {
    const dir = await admin(async (c) => (await c.query(`SHOW data_directory`)).rows[0].data_directory as string);
    const postmaster = Number(readFileSync(`${dir}/postmaster.pid`, "utf8").split("\n")[0]);
    const children = readdirSync("/proc")
      .filter((d) => /^\d+$/.test(d))
      .filter((d) => {
        try {
          // /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so read after its closing parenthesis.
          const stat = readFileSync(`/proc/${d}/stat`, "utf8");
          return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === postmaster;
        } catch {
          return false; // exited meanwhile
        }
      })
      .map(Number);
    return [postmaster, ...children];
  }

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

    it("recentUnits breaks ties on first exposure by the unit's bytes, as SQLite does, whatever the database's collation", async () => {
      // en-US sorts "a" before "B"; bytes (and SQLite) the other way round
      await admin((c) => c.query(`CREATE DATABASE abgate_icu TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C.utf8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'`));
      const s = new PostgresStore(cluster.urlFor("abgate_icu"));
      await s.init();
      try {
        const at = (unit: string, variant: string) => ({ experiment: "exp", ts: 1_700_000_000_000, requestId: unit, unit, assigned: variant, served: variant, replica: `${variant}-0`, status: 200, latencyMs: 1, forced: false });
        await s.writeExposures([at("B", "control"), at("a", "treatment")]);
        assert.deepEqual(await s.recentUnits("exp", 1), [["a", "treatment"]]);
        assert.deepEqual(await s.recentUnits("exp", 2), [["B", "control"], ["a", "treatment"]]);
      } finally {
        await s.close();
      }
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

    it("a unit seen again with nothing new for its row leaves the row as it is (no new row version)", async () => {
      const s = new PostgresStore(url, { unitCacheSize: 0 });
      await s.init();
      const seen = (unit: string, ts: number, variant: string): Exposure => ({
        experiment: "untouched", ts, requestId: `r${ts}`, unit, assigned: variant, served: variant, replica: `${variant}-0`, status: 200, latencyMs: 1, forced: false,
      });
      const c = new pg.Client({ connectionString: url });
      await c.connect();
      // xmin: the transaction that wrote the row's current version; an UPDATE makes a new version.
      const version = async () => (await c.query(`SELECT xmin::text AS v, multi, first_ts FROM units WHERE experiment = 'untouched' AND unit = 'u1'`)).rows[0];
      try {
        await s.writeExposures([seen("u1", 1000, "a")]);
        const first = await version();
        await s.writeExposures([seen("u1", 2000, "a")]);
        assert.deepEqual(await version(), first, "the same variant later: nothing to change");
        await s.writeExposures([seen("u1", 3000, "b")]);
        const multi = await version();
        assert.notEqual(multi.v, first.v);
        assert.equal(multi.multi, 1);
        await s.writeExposures([seen("u1", 4000, "a")]);
        assert.deepEqual(await version(), multi, "multi already: nothing to change");
      } finally {
        await c.end();
        await s.close();
      }
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
      // libpq also takes the password as a parameter: masked too, and so is any parameter named as a secret
      const q = new PostgresStore("postgres://someone@127.0.0.1:1/nowhere?password=secret&sslpassword=s2&application_name=x");
      await assert.rejects(q.init(), (err: Error) => /cannot connect to postgres:\/\/someone@127\.0\.0\.1:1\/nowhere\?password=\*\*\*&sslpassword=\*\*\*&application_name=x/.test(err.message) && !/secret|s2/.test(err.message));
      await q.close();
    });

    it("fails writes and reads with a StoreError in bounded time when the server stops answering, and close() returns", async () => {
      await admin((c) => c.query(`CREATE DATABASE abgate_hung`));
      const s = new PostgresStore(cluster.urlFor("abgate_hung"), {
        maxConnections: 3,
        connectTimeoutMs: 500,
        writeTimeoutMs: 500,
        readTimeoutMs: 500,
      });
      await s.init();
      // Three connections in the pool, idle: one for the write, one for the read, one left for close() to end.
      await Promise.all(["a", "b", "c"].map((e) => s.counts(e)));
      const pids = await clusterPids();
      // A backend of an earlier connection may exit between the listing and the signal: ESRCH is no failure.
      const signal = (sig: NodeJS.Signals) => {
        for (const pid of pids) {
          try {
            process.kill(pid, sig);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== "ESRCH") throw err;
          }
        }
      };
      try {
        signal("SIGSTOP");
        // The server cannot cancel anything now: these hit the client-side timeout, 500 ms + 2 s of grace.
        const t0 = Date.now();
        await assert.rejects(s.writeEvents([{ experiment: "x", unit: "u", event: "e", value: 1, ts: 1e12, requestId: null }]), StoreError);
        assert.ok(Date.now() - t0 < 4_000, `write failed after ${Date.now() - t0} ms`);
        const t1 = Date.now();
        await assert.rejects(s.counts("x"), StoreError);
        assert.ok(Date.now() - t1 < 4_000, `read failed after ${Date.now() - t1} ms`);
        // The idle connection's goodbye is never acknowledged.
        const t2 = Date.now();
        await s.close();
        assert.ok(Date.now() - t2 < 3_000, `close() took ${Date.now() - t2} ms`);
      } finally {
        // Every process, whatever failed above: a cluster left stopped would fail the tests after this one.
        signal("SIGCONT");
      }
    });

    it("fails init() within connectTimeoutMs on a server that accepts connections and never answers", async () => {
      const sockets = new Set<Socket>();
      const server = createServer((socket) => {
        sockets.add(socket);
        socket.on("error", () => {});
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const { port } = server.address() as { port: number };
      try {
        const s = new PostgresStore(`postgres://postgres@127.0.0.1:${port}/silent`, { connectTimeoutMs: 300 });
        const t0 = Date.now();
        await assert.rejects(s.init(), (err: Error) => err instanceof StoreError && /cannot connect/.test(err.message));
        assert.ok(Date.now() - t0 < 2_000, `init() failed after ${Date.now() - t0} ms`);
        const t1 = Date.now();
        await s.close();
        assert.ok(Date.now() - t1 < 2_000, `close() took ${Date.now() - t1} ms`);
      } finally {
        for (const socket of sockets) socket.destroy();
        server.close();
      }
    });

    it("has the server cancel a write statement that runs past writeTimeoutMs, and keeps the connection", async () => {
      const s = new PostgresStore(`${url}?application_name=abgate_locked`, { maxConnections: 1, writeTimeoutMs: 300 });
      await s.init();
      const ev = { experiment: "locked", unit: "u", event: "e", value: 1, ts: 1e12, requestId: null };
      await s.writeEvents([ev]);
      const before = await s.counts("locked");
      const backends = () =>
        admin(async (c) => (await c.query(`SELECT pid FROM pg_stat_activity WHERE application_name = 'abgate_locked'`)).rows.map((r) => r.pid));
      const backend = await backends();
      assert.equal(backend.length, 1);
      // Another session holds the experiment's counters row, which the write must update.
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      try {
        await holder.query(`BEGIN`);
        await holder.query(`SELECT * FROM counters WHERE experiment = 'locked' FOR UPDATE`);
        await assert.rejects(s.writeEvents([ev]), (err: Error) => err instanceof StoreError && /statement timeout/.test(err.message));
        await holder.query(`ROLLBACK`);
      } finally {
        await holder.end();
      }
      assert.deepEqual(await s.counts("locked"), before, "the cancelled write left nothing behind");
      await s.writeEvents([ev]);
      assert.equal((await s.counts("locked")).events, before.events + 1);
      assert.deepEqual(await backends(), backend, "rolled back and pooled, not reconnected");
      await s.close();
    });

    it("lets init() wait for another instance's migration longer than the statement timeouts", async () => {
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      try {
        await holder.query(`SELECT pg_advisory_lock($1)`, [MIGRATION_LOCK_ID.toString()]);
        const s = new PostgresStore(url, { writeTimeoutMs: 200, readTimeoutMs: 200 });
        const init = s.init();
        await new Promise((resolve) => setTimeout(resolve, 2_500)); // past 200 ms + 2 s of client-side grace
        await holder.query(`SELECT pg_advisory_unlock($1)`, [MIGRATION_LOCK_ID.toString()]);
        await init;
        await s.close();
      } finally {
        await holder.end();
      }
    });

    it("reads hung on a lock leave a connection for writes: events to a free table are stored at once", async () => {
      await admin((c) => c.query(`CREATE DATABASE abgate_starve`));
      const s = new PostgresStore(cluster.urlFor("abgate_starve"), { maxConnections: 4, readTimeoutMs: 3_000, writeTimeoutMs: 2_000 });
      await s.init();
      const holder = new pg.Client({ connectionString: cluster.urlFor("abgate_starve") });
      await holder.connect();
      try {
        await holder.query("BEGIN");
        await holder.query("LOCK TABLE state IN ACCESS EXCLUSIVE MODE");
        // as many reads as there are connections, each hung on the lock (reports, dashboards)
        const reads = Array.from({ length: 4 }, () => s.getState("starve", "k").then(() => "read", () => "failed"));
        await new Promise((r) => setTimeout(r, 200));
        const t0 = Date.now();
        await s.writeEvents([{ experiment: "starve", unit: "u", event: "e", value: 1, ts: 1e12, requestId: null }]);
        assert.ok(Date.now() - t0 < 1_500, `the write took ${Date.now() - t0} ms`);
        await holder.query("ROLLBACK");
        assert.deepEqual(await Promise.all(reads), ["read", "read", "read", "read"], "the waiting read ran once a slot was free");
        assert.equal((await s.counts("starve")).events, 1);
      } finally {
        await holder.end();
        await s.close();
      }
    });

    it("a gateway whose store waits on another instance's migration lock says so while it waits", async () => {
      const { startGateway } = await import("../../gateway.ts");
      const { validateConfig } = await import("../../config/index.ts");
      const { pino } = await import("pino");
      const holder = new pg.Client({ connectionString: url });
      await holder.connect();
      const lines: { level: number; msg: string }[] = [];
      try {
        await holder.query(`SELECT pg_advisory_lock($1)`, [MIGRATION_LOCK_ID.toString()]);
        const config = validateConfig(
          { experiment: "waits", listen: "127.0.0.1:0", admin: { listen: "127.0.0.1:0", token: "t".repeat(12) }, store: url, engine: "static", variants: [{ name: "control", url: "http://127.0.0.1:9" }] },
          "/tmp",
        );
        const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
        const starting = startGateway(config, { log, storeInitNoticeMs: 200 });
        await new Promise((resolve) => setTimeout(resolve, 700));
        assert.ok(lines.some((l) => l.level === 40 && /^still opening the store: another abgate may be migrating it/.test(l.msg)), JSON.stringify(lines));
        await holder.query(`SELECT pg_advisory_unlock($1)`, [MIGRATION_LOCK_ID.toString()]);
        const gw = await starting;
        await gw.stop();
      } finally {
        await holder.end();
      }
    });

    /**
     * A TCP relay in front of the cluster that can lose one COMMIT: `lose("answer")` passes the next COMMIT to the
     * server and drops the connection before its answer comes back (it committed, the client cannot know);
     * `lose("commit")` drops the connection instead of passing the COMMIT on (it did not commit).
     */
    async function commitLosingRelay(target: string) {
      const t = new URL(target);
      let mode: "answer" | "commit" | undefined;
      const sockets = new Set<Socket>();
      const server = createServer((client) => {
        const upstream = connect(Number(t.port), t.hostname);
        let cut = false;
        for (const s of [client, upstream]) {
          sockets.add(s);
          s.on("error", () => {});
          s.on("close", () => (client.destroy(), upstream.destroy()));
        }
        upstream.on("data", (d: Buffer) => void (cut || client.write(d)));
        client.on("data", (d: Buffer) => {
          if (mode !== undefined && d[0] === 0x51 /* Q */ && d.includes("COMMIT")) {
            const m = mode;
            mode = undefined;
            cut = true;
            if (m === "answer") upstream.write(d);
            // Time for the server to commit; then the client sees its connection end without an answer.
            setTimeout(() => (client.destroy(), upstream.destroy()), m === "answer" ? 300 : 0);
            return;
          }
          if (!cut) upstream.write(d);
        });
      });
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
      const relayed = new URL(target);
      relayed.host = `127.0.0.1:${(server.address() as { port: number }).port}`;
      return {
        url: relayed.toString(),
        lose(what: "answer" | "commit") {
          mode = what;
        },
        close() {
          for (const s of sockets) s.destroy();
          server.close();
        },
      };
    }

    it("a write whose COMMIT answer is lost is settled by txid_status: acknowledged once, stored once", async () => {
      await admin((c) => c.query(`CREATE DATABASE abgate_lost_commit`));
      const relay = await commitLosingRelay(cluster.urlFor("abgate_lost_commit"));
      const s = new PostgresStore(relay.url, { writeTimeoutMs: 3_000 });
      try {
        await s.init();
        const ev = (unit: string) => ({ experiment: "lost", unit, event: "e", value: 1, ts: 1e12, requestId: null });
        relay.lose("answer");
        await s.writeEvents([ev("a"), ev("b"), ev("c")]); // committed: not an error, so no client resends them
        const x = (i: number) => ({ experiment: "lost", ts: 1e12 + i, requestId: `r${i}`, unit: `u${i}`, assigned: "control", served: "control", replica: "control-0", status: 200, latencyMs: 1, forced: false });
        relay.lose("answer");
        await s.writeExposures([x(1), x(2)]);
        assert.deepEqual(await s.counts("lost"), { exposures: 2, events: 3 });
        // State (a weight change) too: a lost answer to a committed save is no error (it was answered 503, and the
        // stored weights then took effect only at the next restart)
        relay.lose("answer");
        await s.setState("lost", "strategy", "saved");
        assert.equal(await s.getState("lost", "strategy"), "saved");

        // A COMMIT that never reached the server: the write fails, nothing is stored, and a retry stores it once.
        relay.lose("commit");
        await assert.rejects(s.writeEvents([ev("d")]), (err: Error) => err instanceof StoreError);
        assert.deepEqual(await s.counts("lost"), { exposures: 2, events: 3 });
        await s.writeEvents([ev("d")]);
        const direct = new pg.Client({ connectionString: cluster.urlFor("abgate_lost_commit") });
        await direct.connect();
        const rows = (await direct.query(`SELECT unit FROM events ORDER BY unit`)).rows.map((r) => r.unit as string);
        await direct.end();
        assert.deepEqual(rows, ["a", "b", "c", "d"]);
      } finally {
        await s.close();
        relay.close();
      }
    });

    it("leaves another tool's schema_migrations alone (Rails: one column), writable or read-only", async () => {
      await admin((c) => c.query(`CREATE DATABASE abgate_rails`));
      const theirs = cluster.urlFor("abgate_rails");
      const c = new pg.Client({ connectionString: theirs });
      await c.connect();
      try {
        await c.query(`CREATE TABLE schema_migrations (version TEXT PRIMARY KEY); INSERT INTO schema_migrations VALUES ('20240101000000'); CREATE TABLE users (id INTEGER)`);
        for (const readOnly of [false, true]) {
          const s = new PostgresStore(theirs, { readOnly });
          await assert.rejects(s.init(), (err: unknown) => err instanceof StoreError && /is not an abgate store: its schema_migrations table is another tool's/.test(err.message));
          await s.close();
        }
        const tables = await c.query(`SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`);
        assert.deepEqual(tables.rows.map((r) => r.tablename), ["schema_migrations", "users"], "nothing added");
      } finally {
        await c.end();
      }
    });

    it("readOnly: reads with SELECT rights alone (init() migrates nothing), refuses writes, and refuses a schema it would have to migrate", async () => {
      await admin((c) => c.query(`CREATE DATABASE abgate_readonly`));
      const owner = cluster.urlFor("abgate_readonly");
      const s = new PostgresStore(owner);
      await s.init();
      await s.writeEvents([{ experiment: "exp", unit: "u1", event: "watched", value: 1, ts: 1e12, requestId: null }]);
      await s.setState("exp", "strategy", "{}");
      await s.close();
      const c = new pg.Client({ connectionString: owner });
      await c.connect();
      try {
        await c.query(`DROP ROLE IF EXISTS abgate_reader`);
        await c.query(`CREATE ROLE abgate_reader LOGIN`);
        await c.query(`GRANT SELECT ON ALL TABLES IN SCHEMA public TO abgate_reader`);
        const reader = owner.replace("postgres@", "abgate_reader@");
        // A writable open needs more than SELECT: its migration's CREATE TABLE IF NOT EXISTS is refused.
        const writable = new PostgresStore(reader);
        await assert.rejects(writable.init(), /permission denied/);
        await writable.close();
        const ro = openStore(reader, { readOnly: true });
        await ro.init();
        assert.deepEqual(await ro.counts("exp"), { exposures: 0, events: 1 });
        assert.equal(await ro.getState("exp", "strategy"), "{}");
        const refused = (err: unknown) => err instanceof StoreError && /open read-only: cannot/.test(err.message);
        await assert.rejects(ro.writeEvents([{ experiment: "exp", unit: "u2", event: "watched", value: 1, ts: 1e12, requestId: null }]), refused);
        await assert.rejects(ro.writeExposures([]), refused);
        await assert.rejects(ro.setState("exp", "strategy", "{}"), refused);
        await ro.close();
        // an older schema (the last migration's record removed) is not migrated: an error says how to
        await c.query(`DELETE FROM schema_migrations WHERE version = $1`, [latestSchemaVersion]);
        const old = new PostgresStore(reader, { readOnly: true });
        await assert.rejects(old.init(), (err: unknown) => err instanceof StoreError && /older than this abgate's .*Open it writable once/.test(err.message));
        await old.close();
        const versions = await c.query(`SELECT version FROM schema_migrations`);
        assert.equal(versions.rows.length, latestSchemaVersion - 1, "nothing was migrated");
      } finally {
        await c.query(`DROP OWNED BY abgate_reader`);
        await c.query(`DROP ROLE abgate_reader`);
        await c.end();
      }
    });

    it("numbers placeholders", () => {
      assert.equal(toPgPlaceholders("a = ? AND b = ? OR c = ?"), "a = $1 AND b = $2 OR c = $3");
    });
  });
}
