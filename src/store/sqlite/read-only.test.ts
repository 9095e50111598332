/**
 * SqliteStore with `readOnly`, on real files: it reads what a writable store wrote (committed rows still in the WAL
 * too), changes neither the file nor its -wal, runs no migration and refuses every write; an older, newer or missing
 * schema, a missing file and a folder it may not write are each a StoreError that says what to do. The tests run as
 * root, which file modes do not stop: the refusals are the connection's own, and the unwritable folder is read by a
 * child process that runs as nobody (see test/helpers/unwritable.ts).
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, chownSync, copyFileSync, existsSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import Database from "better-sqlite3";
import { NOBODY, unprivileged, unprivilegedArgv, unwritableFolder, writableByAll } from "../../../test/helpers/unwritable.ts";
import { StoreError } from "../../errors.ts";
import { openStore } from "../index.ts";
import { latestSchemaVersion } from "../migrations.ts";
import { SqliteStore } from "./sqlite-store.ts";
import { snapshot, storeRows, tempFolders, versionOneStore } from "../../../test/helpers/store-files.ts";

const T0 = 1_700_000_000_000;
const METRICS = [{ name: "watched", kind: "conversion" as const, event: "watched", windowMs: 3_600_000 }];

const { exposures, events } = storeRows("exp", T0);


/**
 * That `after` has what `before` had, byte for byte (the -shm aside), and nothing more than what SQLite makes to
 * read a WAL-mode file in a writable folder where they were missing: an empty -wal and a -shm.
 */
function assertUnchanged(after: Record<string, string>, before: Record<string, string>): void {
  const EMPTY = createHash("sha256").digest("hex");
  for (const [f, hash] of Object.entries(before)) assert.equal(after[f], hash, `${f} is unchanged`);
  for (const [f, hash] of Object.entries(after)) {
    if (f in before) continue;
    assert.ok(f.endsWith("-shm") || (f.endsWith("-wal") && hash === EMPTY), `${f} (${hash}) is new`);
  }
}

/** A store with 100 exposures and 30 events, closed: the file alone holds them (the close checkpointed and removed the WAL). */
async function closedStore(path: string): Promise<void> {
  const s = new SqliteStore(path);
  await s.init();
  await s.writeExposures(exposures(0, 100));
  await s.writeEvents(events(0, 30));
  await s.setState("exp", "strategy", '{"weights":{"control":1,"treatment":1}}');
  await s.close();
}

/**
 * A store still open for writing, as a live gateway's is: the first 100 exposures and 30 events checkpointed into
 * the file, 50 more exposures and 10 more events committed in the WAL only (no checkpointer, and too few pages for
 * an automatic checkpoint).
 */
async function liveStore(path: string): Promise<SqliteStore> {
  await closedStore(path);
  const s = new SqliteStore(path, { checkpointIntervalMs: 0 });
  await s.init();
  await s.writeExposures(exposures(100, 50));
  await s.writeEvents(events(100, 10));
  return s;
}

describe("SqliteStore readOnly", () => {
  const { fresh } = tempFolders("abgate-sqlite-ro-");

  it("reads a live store, commits still in its WAL included, and leaves the file and its -wal byte for byte as they were", async () => {
    const dir = fresh();
    const path = join(dir, "a.db");
    const live = await liveStore(path);
    try {
      const before = snapshot(dir);
      assert.deepEqual(Object.keys(before), ["a.db", "a.db-shm", "a.db-wal"]);
      const ro = openStore(`sqlite:${path}`, { readOnly: true });
      await ro.init();
      // the report's reads: through the reader thread (aggregate, minutes, counts) and on this thread (state, units)
      assert.deepEqual(await ro.counts("exp"), { exposures: 150, events: 40 });
      assert.deepEqual(await ro.aggregate("exp", ["control", "treatment"], METRICS), await live.aggregate("exp", ["control", "treatment"], METRICS));
      assert.deepEqual(await ro.minutes("exp", METRICS, 0), await live.minutes("exp", METRICS, 0));
      assert.equal(await ro.getState("exp", "strategy"), '{"weights":{"control":1,"treatment":1}}');
      assert.deepEqual(await ro.recentUnits("exp", 2), [["u148", "treatment"], ["u149", "control"]]);
      await ro.close();
      assert.deepEqual(snapshot(dir), before, "no checkpoint, no write: the file and the -wal are unchanged, and no file came or went");
      // the writer goes on as before
      await live.writeExposures(exposures(150, 1));
      assert.equal((await live.counts("exp")).exposures, 151);
    } finally {
      await live.close();
    }
  });

  it("refuses every write with a StoreError, and the file keeps what it had", async () => {
    const dir = fresh();
    const path = join(dir, "a.db");
    await closedStore(path);
    const before = snapshot(dir)["a.db"];
    const ro = new SqliteStore(path, { readOnly: true });
    await ro.init();
    assert.equal(ro.readOnly, true);
    const refused = (err: unknown) => err instanceof StoreError && /open read-only: cannot/.test(err.message);
    await assert.rejects(ro.writeExposures(exposures(500, 3)), refused);
    await assert.rejects(ro.writeExposures([]), refused);
    await assert.rejects(ro.writeEvents(events(500, 3)), refused);
    await assert.rejects(ro.setState("exp", "strategy", "{}"), refused);
    assert.deepEqual(await ro.counts("exp"), { exposures: 100, events: 30 });
    assert.equal(await ro.getState("exp", "strategy"), '{"weights":{"control":1,"treatment":1}}');
    await ro.close();
    await ro.close();
    assert.equal(snapshot(dir)["a.db"], before);
  });

  it("does not migrate an older schema: a StoreError says to open it writable once, and the file stays at its version", async () => {
    const dir = fresh();
    const path = join(dir, "a.db");
    versionOneStore(path);
    const before = snapshot(dir);
    const ro = new SqliteStore(path, { readOnly: true });
    await assert.rejects(ro.init(), (err: unknown) => {
      assert.ok(err instanceof StoreError);
      assert.match(err.message, new RegExp(`schema version 1, older than this abgate's \\(${latestSchemaVersion}\\): it needs migrating, which a read-only open does not do`));
      assert.match(err.message, /abgate report --writable, or abgate up or serve/);
      return true;
    });
    await ro.close();
    assertUnchanged(snapshot(dir), before);
    const db = new Database(path, { readonly: true });
    assert.deepEqual(db.prepare(`SELECT version FROM schema_migrations`).pluck().all(), [1]);
    assert.equal(db.prepare(`SELECT type FROM sqlite_schema WHERE name = 'exposures'`).pluck().get(), "table", "migration 2 did not run");
    db.close();
    // a writable open migrates it, and then it reads
    const rw = new SqliteStore(path);
    await rw.init();
    await rw.close();
    const again = new SqliteStore(path, { readOnly: true });
    await again.init();
    assert.deepEqual(await again.counts("exp"), { exposures: 0, events: 0 });
    await again.close();
  });

  it("refuses a newer schema, one that is not abgate's, and a file that is not a database", async () => {
    const dir = fresh();
    const newer = join(dir, "newer.db");
    await closedStore(newer);
    const db = new Database(newer);
    db.prepare("INSERT INTO schema_migrations VALUES (?, 'from the future', 0)").run(latestSchemaVersion + 1);
    db.close();
    const other = join(dir, "other.db");
    const o = new Database(other);
    o.exec("CREATE TABLE notes (text TEXT)");
    o.close();
    const notDb = join(dir, "notes.txt");
    writeFileSync(notDb, "these are my notes, not a database ".repeat(100));
    const before = snapshot(dir);
    for (const [path, message] of [
      [newer, /newer than this abgate understands/],
      [other, /has no abgate schema: it is not an abgate store/],
      [notDb, /SQLite store .*notes\.txt read-only: file is not a database/],
    ] as const) {
      const opened = async () => {
        const s = new SqliteStore(path, { readOnly: true });
        try {
          await s.init();
        } finally {
          await s.close();
        }
      };
      await assert.rejects(opened(), (err: unknown) => err instanceof StoreError && message.test(err.message), path);
    }
    assertUnchanged(snapshot(dir), before);
  });

  it("a store that does not exist is a StoreError, and nothing is created (file or folder)", () => {
    const dir = fresh();
    for (const path of [join(dir, "nope.db"), join(dir, "typo", "nope.db")]) {
      assert.throws(() => openStore(`sqlite:${path}`, { readOnly: true }), (err: unknown) => err instanceof StoreError && /^no SQLite store at .*nope\.db/.test(err.message));
    }
    assert.deepEqual(readdirSync(dir), []);
    assert.throws(() => openStore(`sqlite:${dir}`, { readOnly: true }), (err: unknown) => err instanceof StoreError && /it is not a file/.test(err.message));
    assert.throws(() => openStore("sqlite::memory:", { readOnly: true }), (err: unknown) => err instanceof StoreError && /in-memory/.test(err.message));
  });

  describe("in a folder it may not write", () => {
    const as = unprivileged();
    const skip = as === undefined ? "running as root, and neither setpriv nor user nobody can run this checkout's code unprivileged" : false;
    const otherSkip = skip || (as?.otherUser ? false : "the child does not run as another user");
    const storeModule = new URL("./sqlite-store.ts", import.meta.url).href;

    /** Opens `path` read-only in a child process that may not write its folder; what it read, or its error. */
    /**
     * `folder`: the child may not write it, or anyone may; `owner`: whose the files in `dir` are, root's (the tests')
     * or the child's; `during`: runs after the child opened the store and before it reads.
     */
    async function readAsOther(
      dir: string,
      path: string,
      { env = { SQLITE_USE_URI: undefined }, folder = "unwritable", owner = "root", during }: {
        env?: NodeJS.ProcessEnv;
        folder?: "unwritable" | "writable by all";
        owner?: "root" | "the child";
        during?: () => Promise<void>;
      } = {},
    ): Promise<{ counts?: unknown; aggregate?: unknown; state?: unknown; error?: string; name?: string }> {
      for (const f of readdirSync(dir)) {
        chmodSync(join(dir, f), 0o644);
        if (owner === "the child" && as!.otherUser && process.getuid?.() === 0) chownSync(join(dir, f), NOBODY, NOBODY);
      }
      // A file, not -e: a worker thread (the store's reader) would take --input-type=module for its own code.
      const script = join(fresh(), "child.mts");
      writeFileSync(script, `
        const { SqliteStore } = await import(${JSON.stringify(storeModule)});
        try {
          const s = new SqliteStore(${JSON.stringify(path)}, { readOnly: true });
          await s.init();
          if (process.env.PAUSE_AFTER_OPEN) {
            process.stderr.write("opened\\n");
            await new Promise((resolve) => process.stdin.once("data", resolve));
          }
          const out = { counts: await s.counts("exp"), aggregate: await s.aggregate("exp", ["control", "treatment"], ${JSON.stringify(METRICS)}), state: await s.getState("exp", "strategy") };
          await s.close();
          process.stdout.write(JSON.stringify(out));
        } catch (err) {
          process.stdout.write(JSON.stringify({ error: err.message, name: err.name }));
        }`);
      chmodSync(script, 0o644);
      const inFolder = folder === "unwritable" ? unwritableFolder : writableByAll;
      return inFolder(dir, () => new Promise((resolve, reject) => {
        const [file, args] = unprivilegedArgv(as!, [process.execPath, "--import", "tsx", script]);
        const pause = during === undefined ? {} : { PAUSE_AFTER_OPEN: "1" };
        const child = spawn(file, args, { uid: as!.uid, gid: as!.gid, env: { ...process.env, ...env, ...pause }, stdio: [during === undefined ? "ignore" : "pipe", "pipe", "pipe"] });
        let out = "";
        let err = "";
        child.stdout!.on("data", (d: Buffer) => (out += d));
        child.stderr!.on("data", (d: Buffer) => {
          err += d;
          if (during !== undefined && err.includes("opened\n")) {
            err = err.replace("opened\n", "");
            // (end, not write: an open stdin would keep the child alive)
            during().then(() => child.stdin!.end("go\n"), reject);
          }
        });
        child.on("error", reject);
        child.on("close", (code) => {
          try {
            resolve(JSON.parse(out));
          } catch {
            reject(new Error(`child exited ${code}: ${out}\n${err}`));
          }
        });
      }));
    }

    it("without -wal and -shm: reads the file as immutable, and creates nothing", { skip }, async () => {
      const dir = fresh();
      const path = join(dir, "a.db");
      await closedStore(path);
      const expected = new SqliteStore(path, { readOnly: true });
      await expected.init();
      const aggregate = await expected.aggregate("exp", ["control", "treatment"], METRICS);
      await expected.close();
      // (that read, in a writable folder, made the -wal and -shm SQLite reads a WAL-mode database with; as a copy
      // of the file alone would have neither, remove them)
      rmSync(`${path}-wal`, { force: true });
      rmSync(`${path}-shm`, { force: true });
      const before = snapshot(dir);
      assert.deepEqual(Object.keys(before), ["a.db"]);
      const read = await readAsOther(dir, path, { owner: "the child" });
      assert.equal(read.error, undefined, read.error);
      assert.deepEqual(read.counts, { exposures: 100, events: 30 });
      assert.deepEqual(read.aggregate, JSON.parse(JSON.stringify(aggregate)));
      assert.equal(read.state, '{"weights":{"control":1,"treatment":1}}');
      assert.deepEqual(snapshot(dir), before);
      // Without URI filenames (SQLITE_USE_URI=0) it cannot: a StoreError that says what to do instead.
      const refused = await readAsOther(dir, path, { env: { SQLITE_USE_URI: "0" }, owner: "the child" });
      assert.equal(refused.name, "StoreError");
      assert.match(refused.error!, /in WAL mode without its -wal and -shm files, and SQLite must not make them \(.* is not writable\); such a store is read as immutable, .*Copy the store \(the file alone will do\) to a writable folder/);
      assert.deepEqual(snapshot(dir), before);
    });

    it("another user's store, in a folder that user may write: read as immutable, so that no -wal or -shm of that user's keeps the owner from writing it", { skip: otherSkip }, async () => {
      const dir = fresh();
      const path = join(dir, "a.db");
      await closedStore(path);
      const before = snapshot(dir);
      assert.deepEqual(Object.keys(before), ["a.db"]);
      const read = await readAsOther(dir, path, { folder: "writable by all" });
      assert.equal(read.error, undefined, read.error);
      assert.deepEqual(read.counts, { exposures: 100, events: 30 });
      assert.deepEqual(snapshot(dir), before, "no file made");
      const refused = await readAsOther(dir, path, { env: { SQLITE_USE_URI: "0" }, folder: "writable by all" });
      assert.match(refused.error!, /SQLite must not make them \(this user does not own the store, .*Read it as the store's owner, or copy the store \(the file alone will do\) to a folder of your own/);
    });

    it("another user's live store through a symlink: the -wal and -shm are looked for beside the file it points to", { skip: otherSkip }, async () => {
      const dir = fresh();
      const live = await liveStore(join(dir, "live.db"));
      try {
        const links = fresh();
        symlinkSync(join(dir, "live.db"), join(links, "a.db"));
        const before = snapshot(dir);
        const read = await readAsOther(links, join(links, "a.db"), { folder: "writable by all" });
        assert.equal(read.error, undefined, read.error);
        assert.deepEqual(read.counts, { exposures: 150, events: 40 }, "the commits in the WAL too");
        assert.deepEqual(snapshot(dir), before);
        assert.deepEqual(readdirSync(links), ["a.db"], "no file made beside the link");
      } finally {
        await live.close();
      }
    });

    it("a store read as immutable that its owner reads meanwhile (an empty -wal and a -shm appear): no error, nothing changed", { skip: otherSkip }, async () => {
      const dir = fresh();
      const path = join(dir, "a.db");
      await closedStore(path);
      const read = await readAsOther(dir, path, {
        folder: "writable by all",
        during: async () => {
          const owner = new SqliteStore(path, { readOnly: true });
          await owner.init();
          assert.deepEqual(await owner.counts("exp"), { exposures: 100, events: 30 });
          await owner.close();
          assert.equal(statSync(`${path}-wal`).size, 0, "the owner's read left an empty -wal");
        },
      });
      assert.equal(read.error, undefined, read.error);
      assert.deepEqual(read.counts, { exposures: 100, events: 30 });
    });

    it("a store read as immutable that a gateway starts on meanwhile: an error to read it again, not a mix of old and new pages", { skip: otherSkip }, async () => {
      const dir = fresh();
      const path = join(dir, "a.db");
      await closedStore(path);
      let gateway: SqliteStore | undefined;
      try {
        const read = await readAsOther(dir, path, {
          folder: "writable by all",
          during: async () => {
            gateway = new SqliteStore(path, { checkpointIntervalMs: 0 });
            await gateway.init();
            await gateway.writeExposures(exposures(100, 50));
          },
        });
        assert.equal(read.name, "StoreError");
        assert.match(read.error!, /changed while it was read \(it was written, replaced or removed\): read it again/);
      } finally {
        await gateway?.close();
      }
    });

    it("with the -wal and -shm of a live store: reads its WAL's commits too, and changes neither file", { skip }, async () => {
      const dir = fresh();
      const live = await liveStore(join(dir, "live.db"));
      const copy = fresh();
      try {
        for (const suffix of ["", "-wal", "-shm"]) copyFileSync(join(dir, `live.db${suffix}`), join(copy, `a.db${suffix}`));
      } finally {
        await live.close();
      }
      const before = snapshot(copy);
      const read = await readAsOther(copy, join(copy, "a.db"));
      assert.equal(read.error, undefined, read.error);
      assert.deepEqual(read.counts, { exposures: 150, events: 40 });
      assert.deepEqual(snapshot(copy), before);
    });

    it("with a -wal that holds commits but no -shm: a StoreError that says what to copy, and nothing created", { skip }, async () => {
      const dir = fresh();
      const live = await liveStore(join(dir, "live.db"));
      const copy = fresh();
      try {
        for (const suffix of ["", "-wal"]) copyFileSync(join(dir, `live.db${suffix}`), join(copy, `a.db${suffix}`));
      } finally {
        await live.close();
      }
      const before = snapshot(copy);
      const read = await readAsOther(copy, join(copy, "a.db"), { owner: "the child" });
      assert.equal(read.name, "StoreError");
      assert.match(read.error!, /its -wal holds commits not yet in the file, which SQLite reads only through a -shm file, and .*a\.db-shm is missing, which SQLite must not make \(.* is not writable\)\. Copy the store with its -wal to a writable folder and read it there/);
      assert.deepEqual(snapshot(copy), before);
      assert.equal(existsSync(join(copy, "a.db-shm")), false);
    });
  });
});
