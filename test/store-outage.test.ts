// The admin API while its store cannot be used: the store here is a real SQLite file, closed under the gateway.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StoreError } from "../src/errors.ts";
import { SqliteStore } from "../src/store/index.ts";
import { startBackend } from "./helpers/backends.ts";
import { admin, testGateway } from "./helpers/gateway.ts";

/** `target` with one method replaced (the others bound to it): a store that hangs or fails in one way only. */
function overriding<T extends object, K extends keyof T>(target: T, key: K, replacement: T[K]): T {
  return new Proxy(target, {
    get(t, k) {
      if (k === key) return replacement;
      const value = Reflect.get(t, k, t) as unknown;
      return typeof value === "function" ? (value as (...a: unknown[]) => unknown).bind(t) : value;
    },
  });
}

test("with the store gone: events get 503 with retry-after, a weight change is refused and not applied, the experiment view still answers", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-outage-"));
  const store = new SqliteStore(join(dir, "outage.db"));
  const backend = await startBackend("x", (_req, res) => res.end("x"));
  const url = backend.url;
  const gw = await testGateway(
    { variants: [{ name: "control", weight: 1, url }, { name: "treatment", weight: 1, url }] },
    { store },
  );
  try {
    assert.equal((await admin(gw, "POST", "/v1/events", [{ unit: "u1", event: "watched" }])).status, 200);
    const before = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { counts: { events: number; readAt: string | null } };
    assert.equal(before.counts.events, 1);
    assert.ok(before.counts.readAt !== null && !Number.isNaN(Date.parse(before.counts.readAt)), `readAt: ${before.counts.readAt}`);

    await store.close();
    const events = await admin(gw, "POST", "/v1/events", [{ unit: "u2", event: "watched" }]);
    assert.equal(events.status, 503);
    assert.equal(events.headers.get("retry-after"), "5");
    assert.equal(((await events.json()) as { code: string }).code, "ABGATE_ERR_STORE");

    const weights = await admin(gw, "PUT", "/v1/weights", { control: 0, treatment: 100 });
    assert.equal(weights.status, 503);
    const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as {
      variants: { name: string; weight: number }[];
      counts: { events: number; readAt: string | null; storeError?: string };
    };
    assert.deepEqual(
      view.variants.map((v) => v.weight),
      [1, 1],
      "a change the store could not save is not applied",
    );
    assert.equal(view.counts.events, 1, "the counts read last");
    assert.equal(view.counts.readAt, before.counts.readAt, "and when they were read");
    assert.match(view.counts.storeError ?? "", /closed/);
    // Assignment still follows the unchanged weights: both variants keep getting units.
    const served = new Set<string>();
    for (let i = 0; i < 40; i++) served.add((await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": `unit-${i}` } })).headers.get("x-abgate-variant")!);
    assert.deepEqual([...served].sort(), ["control", "treatment"]);
    // /metrics shows the outage before anything is dropped: exposures held, writes failing
    let text = "";
    for (let i = 0; i < 50 && !/abgate_store_write_failures\{experiment="test"\} [1-9]/.test(text); i++) {
      await new Promise((r) => setTimeout(r, 100));
      text = await (await admin(gw, "GET", "/metrics", undefined, null)).text();
    }
    assert.match(text, /abgate_store_write_failures\{experiment="test"\} [1-9]/);
    const buffered = Number(/abgate_exposures_buffered\{experiment="test"\} (\d+)/.exec(text)?.[1]);
    assert.ok(buffered >= 40, `buffered ${buffered}`);
    assert.match(text, /abgate_exposures_dropped_total\{experiment="test"\} 0/);
  } finally {
    await gw.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("with the store hanging: the experiment view answers within 3 s with the counts read last, and one query waits, not one per view", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-outage-"));
  const real = new SqliteStore(join(dir, "hang.db"));
  // A database that stopped answering (SIGSTOP, a partition): counts() neither resolves nor fails until released.
  let hang = false;
  let asked = 0;
  const released: (() => void)[] = [];
  const store = overriding(real, "counts", async (experiment: string) => {
    if (!hang) return real.counts(experiment);
    asked++;
    await new Promise<void>((r) => released.push(r));
    return real.counts(experiment);
  });
  const backend = await startBackend("x", (_req, res) => res.end("x"));
  const url = backend.url;
  const gw = await testGateway({ variants: [{ name: "control", weight: 1, url }] }, { store });
  try {
    assert.equal((await admin(gw, "POST", "/v1/events", [{ unit: "u1", event: "watched" }])).status, 200);
    const fresh = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { counts: { events: number; readAt: string } };
    assert.equal(fresh.counts.events, 1);
    hang = true;
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: unknown[]; counts: { events: number; readAt: string; storeError?: string } };
      const ms = performance.now() - t0;
      assert.ok(ms >= 2900 && ms < 4500, `answered after ${ms.toFixed(0)} ms`);
      assert.equal(view.counts.events, 1, "the counts read last");
      assert.equal(view.counts.storeError, "the store did not answer within 3000 ms");
      assert.equal(view.counts.readAt, fresh.counts.readAt, "as old as the last answer");
      assert.equal(view.variants.length, 1, "replicas and health are shown");
    }
    assert.equal(asked, 1, "the views share the one query in flight");
    hang = false;
    for (const r of released) r();
    await new Promise((r) => setTimeout(r, 50));
    const after = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { counts: { events: number; readAt: string; storeError?: string } };
    assert.equal(after.counts.storeError, undefined, "answering again, the view is current again");
    assert.ok(Date.parse(after.counts.readAt) > Date.parse(fresh.counts.readAt), "read again");
  } finally {
    for (const r of released) r();
    await gw.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("with the store's file deleted under the gateway: events get 503 saying so (not accepted and lost), and the view says why", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-outage-"));
  const backend = await startBackend("x", (_req, res) => res.end("x"));
  const url = backend.url;
  const path = join(dir, "gone.db");
  const gw = await testGateway({ store: `sqlite:${path}`, variants: [{ name: "control", weight: 1, url }] });
  try {
    assert.equal((await admin(gw, "POST", "/v1/events", [{ unit: "u1", event: "watched" }])).status, 200);
    for (const f of ["gone.db", "gone.db-wal", "gone.db-shm"]) rmSync(join(dir, f), { force: true });
    const events = await admin(gw, "POST", "/v1/events", [{ unit: "u2", event: "watched" }]);
    const body = (await events.json()) as { error: string };
    assert.equal(events.status, 503, JSON.stringify(body));
    assert.match(body.error, /gone\.db was deleted while abgate had it open/);
    for (let i = 0; i < 5; i++) assert.equal((await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": `unit-${i}` } })).status, 200);
    let view = { counts: { storeError: undefined as string | undefined } };
    for (let i = 0; i < 50 && !/while abgate had it open/.test(view.counts.storeError ?? ""); i++) {
      await new Promise((r) => setTimeout(r, 100));
      view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as typeof view;
    }
    // the counts cannot be read either (the reader sees another file); both say why
    assert.match(view.counts.storeError ?? "", /^cannot read the store: the SQLite store .*gone\.db was (deleted|replaced by another file) while abgate had it open/);
    assert.match((await (await admin(gw, "GET", "/metrics", undefined, null)).text()), /abgate_store_write_failures\{experiment="test"\} [1-9]/);
  } finally {
    await gw.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("with writes failing but reads answering (a full disk): the view's storeError says exposure writes fail, with the rows buffered", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-outage-"));
  const real = new SqliteStore(join(dir, "full.db"));
  let full = false;
  // (both ways a batch of exposures may come: as objects, or as a block)
  const diskFull = () => {
    if (full) throw new Error("cannot write exposures: database or disk is full");
  };
  const store = overriding(
    overriding(real, "writeExposures", async (rows: Parameters<SqliteStore["writeExposures"]>[0]) => {
      diskFull();
      return real.writeExposures(rows);
    }),
    "writeExposureBlock",
    async (block: Parameters<SqliteStore["writeExposureBlock"]>[0]) => {
      diskFull();
      return real.writeExposureBlock(block);
    },
  );
  const backend = await startBackend("x", (_req, res) => res.end("x"));
  const url = backend.url;
  const gw = await testGateway({ variants: [{ name: "control", weight: 1, url }] }, { store });
  try {
    const before = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { counts: { storeError?: string } };
    assert.equal(before.counts.storeError, undefined);
    full = true;
    for (let i = 0; i < 3; i++) assert.equal((await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": `unit-${i}` } })).status, 200);
    let view = { counts: { storeError: undefined as string | undefined } };
    for (let i = 0; i < 50 && view.counts.storeError === undefined; i++) {
      await new Promise((r) => setTimeout(r, 100));
      view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as typeof view;
    }
    assert.equal(view.counts.storeError, "exposure writes are failing (3 buffered, 0 dropped): cannot write exposures: database or disk is full");
    full = false;
  } finally {
    await gw.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("an events write whose commit answer was lost: 500 saying the events may be stored, no retry-after (a resend counted them twice)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-outage-"));
  const real = new SqliteStore(join(dir, "unknown.db"));
  // The events are stored, then the answer is lost, as when a PostgreSQL COMMIT's reply never comes
  const store = overriding(real, "writeEvents", async (rows: Parameters<SqliteStore["writeEvents"]>[0]) => {
    await real.writeEvents(rows);
    throw new StoreError("the answer to COMMIT was lost and its outcome could not be learnt", { code: "ABGATE_ERR_STORE_OUTCOME_UNKNOWN" });
  });
  const backend = await startBackend("x", (_req, res) => res.end("x"));
  const url = backend.url;
  const gw = await testGateway({ variants: [{ name: "control", weight: 1, url }] }, { store });
  try {
    const events = await admin(gw, "POST", "/v1/events", [{ unit: "u1", event: "watched" }]);
    assert.equal(events.status, 500);
    assert.equal(events.headers.get("retry-after"), null);
    const body = (await events.json()) as { code: string; error: string };
    assert.equal(body.code, "ABGATE_ERR_STORE_OUTCOME_UNKNOWN");
    assert.match(body.error, /outcome could not be learnt/);
    assert.equal((await real.counts("test")).events, 1);
  } finally {
    await gw.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bandit: an update whose weights cannot be saved still records their period for the report (they are in force)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-outage-"));
  const real = new SqliteStore(join(dir, "bandit.db"));
  // the strategy's state cannot be saved (one key refused); everything else works
  const store = overriding(real, "setState", async (experiment: string, key: string, value: string) => {
    if (key === "strategy") throw new StoreError("disk full");
    return real.setState(experiment, key, value);
  });
  const backend = await startBackend("x", (_req, res) => res.end("x"));
  const url = backend.url;
  const { pino } = await import("pino");
  const lines: { msg: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  // (the gateway saves the state once at start too: that save may go through)
  let started = false;
  const startingStore = overriding(store, "setState", async (experiment: string, key: string, value: string) => (started ? store.setState(experiment, key, value) : real.setState(experiment, key, value)));
  const gw = await testGateway({ strategy: { kind: "bandit", updateIntervalMs: 100 }, variants: [{ name: "control", weight: 1, url }, { name: "treatment", weight: 1, url }] }, { store: startingStore, log });
  started = true;
  try {
    await new Promise((r) => setTimeout(r, 400));
    assert.ok(lines.some((l) => l.msg === "bandit update failed"), "the save failed");
    const periods = JSON.parse((await real.getState("test", "bandit-periods")) ?? "[]") as unknown[];
    assert.equal(periods.length, 1, "its period recorded all the same");
  } finally {
    await gw.close();
    await backend.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
