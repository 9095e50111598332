import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, request, type IncomingHttpHeaders, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { gunzipSync } from "node:zlib";
import type { AdminContext, ExperimentView } from "../admin/context.ts";
import { ManualClock } from "../clock.ts";
import { StoreError } from "../errors.ts";
import { validateConfig } from "../config/index.ts";
import type { MinuteBucket, Store } from "../store/types.ts";
import { createDashboardHandler, type DashboardHandler } from "./routes.ts";

const T0 = Date.UTC(2026, 10, 28, 12, 0);
const config = validateConfig({
  experiment: "exp",
  engine: "static",
  admin: { token: "s3cret" },
  variants: [
    { name: "control", url: "http://127.0.0.1:1" },
    { name: "treatment", url: "http://127.0.0.1:2" },
  ],
  metrics: [{ name: "watched", kind: "conversion", event: "watched" }],
});

// The store is another engineer's part; the handler uses only `minutes`, so the rest refuses loudly.
const minutesCalls: number[] = [];
const buckets: MinuteBucket[] = [
  { minute: T0, variant: "control", requests: 600, errors: 0, latencySumMs: 6000, latencyCount: 600, newUnits: 50, conversions: { watched: 5 } },
  { minute: T0 + 120_000, variant: "treatment", requests: 700, errors: 7, latencySumMs: 7700, latencyCount: 700, newUnits: 60, conversions: { watched: 9 } },
];
const store = new Proxy({} as Store, {
  get(_t, key) {
    if (key === "minutes") {
      return async (experiment: string, _metrics: unknown, sinceMs: number) => {
        assert.equal(experiment, "exp");
        minutesCalls.push(sinceMs);
        if (minutesFail !== null) throw minutesFail;
        return buckets.filter((b) => b.minute >= Math.floor(sinceMs / 60_000) * 60_000);
      };
    }
    if (key === "totalsBefore") {
      return async (experiment: string, _metrics: unknown, beforeMs: number) => {
        assert.equal(experiment, "exp");
        return { control: { newUnits: 40, conversions: { watched: 3 } }, at: beforeMs };
      };
    }
    if (key === "then") return undefined;
    throw new Error(`the dashboard must not call store.${String(key)}`);
  },
});

/** what store.minutes throws, when set */
let minutesFail: Error | null = null;
let reportCalls = 0;
let reportFails = false;
const view: ExperimentView = {
  experiment: "exp",
  engine: "static",
  strategy: "sticky",
  control: "control",
  fallback: "control",
  allowForce: false,
  listen: "127.0.0.1:0",
  startedAt: new Date(T0).toISOString(),
  variants: [
    { name: "control", weight: 50, replicas: [], requests: 1, healthyReplicas: 0 },
    { name: "treatment", weight: 50, replicas: [], requests: 2, healthyReplicas: 0 },
  ],
  counts: { exposures: 3, events: 0, requests: 3, readAt: new Date(T0).toISOString() },
  metrics: [{ name: "watched", kind: "conversion" }],
};
const ctx: AdminContext = {
  config,
  store,
  experimentView: async () => view,
  liveStats: () => [{ variant: "control", requestsPerSecond: 1, fallbackPerSecond: 0, p50Ms: 2, p99Ms: 3, errorRate: 0, requests: 1 }],
  report: async () => {
    reportCalls++;
    if (reportFails) throw new Error("analysis exploded");
    return { experiment: "exp", n: reportCalls };
  },
  setWeights: async () => {},
  isAdmin: (authorization) => authorization === "Bearer s3cret",
};

let assetDir: string;
let server: Server;
let base: string;
let handler: DashboardHandler;
const clock = new ManualClock(T0 + 300_000);

before(async () => {
  assetDir = mkdtempSync(join(tmpdir(), "abgate-dash-"));
  writeFileSync(join(assetDir, "manifest.json"), JSON.stringify({ js: "app-ABC.js", css: "app-DEF.css" }));
  writeFileSync(join(assetDir, "app-ABC.js"), "console.log('dashboard');\n".repeat(200));
  writeFileSync(join(assetDir, "app-DEF.css"), "body{margin:0}");
  handler = createDashboardHandler(ctx, { clock, assetDirs: [join(assetDir, "missing"), assetDir] });
  server = createServer((req, res) => {
    void handler(req, res).then((handled) => {
      if (!handled) {
        res.writeHead(404, { "x-fallthrough": "1" });
        res.end();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  handler.close();
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  rmSync(assetDir, { recursive: true, force: true });
});

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

function get(path: string, headers: Record<string, string> = {}, method = "GET"): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}${path}`, { method, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("GET / serves the page naming the hashed bundle, with a strict CSP and no caching", async () => {
  const r = await get("/");
  assert.equal(r.status, 200);
  assert.match(String(r.headers["content-type"]), /^text\/html/);
  assert.equal(r.headers["cache-control"], "no-cache");
  assert.match(String(r.headers["content-security-policy"]), /script-src 'self'/);
  const html = r.body.toString();
  assert.match(html, /<script type="module" src="\/assets\/app-ABC\.js"><\/script>/);
  assert.match(html, /href="\/assets\/app-DEF\.css"/);
  assert.match(html, /<title>abgate · exp<\/title>/);
});

test("routes the dashboard does not own fall through to the admin server", async () => {
  for (const path of ["/v1/experiment", "/v1/report", "/v1/weights", "/metrics", "/v1/streams"]) {
    const r = await get(path);
    assert.equal(r.headers["x-fallthrough"], "1", path);
  }
  const r = await get("/", {}, "POST");
  assert.equal(r.status, 405);
  assert.equal(r.headers.allow, "GET, HEAD");
});

test("assets are immutable, gzip-encoded when accepted, and revalidate by ETag", async () => {
  const plain = await get("/assets/app-ABC.js");
  assert.equal(plain.status, 200);
  assert.equal(plain.headers["content-encoding"], undefined);
  assert.equal(plain.headers["cache-control"], "public, max-age=31536000, immutable");
  assert.equal(plain.headers.vary, "accept-encoding");
  assert.match(String(plain.headers["content-type"]), /^text\/javascript/);
  const etag = String(plain.headers.etag);
  assert.match(etag, /^"[\w-]{22}"$/);

  const zipped = await get("/assets/app-ABC.js", { "accept-encoding": "br;q=1, gzip;q=0.8" });
  assert.equal(zipped.headers["content-encoding"], "gzip");
  assert.ok(zipped.body.length < plain.body.length / 10);
  assert.deepEqual(gunzipSync(zipped.body), plain.body);
  assert.equal(zipped.headers.etag, etag);

  const refused = await get("/assets/app-ABC.js", { "accept-encoding": "gzip;q=0" });
  assert.equal(refused.headers["content-encoding"], undefined);

  const revalidated = await get("/assets/app-ABC.js", { "if-none-match": `W/"nope", ${etag}` });
  assert.equal(revalidated.status, 304);
  assert.equal(revalidated.body.length, 0);

  assert.equal((await get("/assets/app-OLD.js")).status, 404);
  assert.equal((await get("/assets/..%2Fmanifest.json")).status, 404);
  assert.equal((await get("/assets/%E0%A4%A")).status, 404);
  const head = await get("/assets/app-DEF.css", {}, "HEAD");
  assert.equal(head.status, 200);
  assert.equal(head.headers["content-length"], "14");
  assert.equal(head.body.length, 0);
});

test("GET /v1/series answers dense columns from store.minutes and validates sinceMs", async () => {
  const r = await get(`/v1/series?sinceMs=${T0}`);
  assert.equal(r.status, 200);
  const body = JSON.parse(r.body.toString());
  // up to the injected clock's minute (T0 + 5 min): the minutes since the last bucket had no traffic
  assert.deepEqual(body.minutes, [0, 1, 2, 3, 4, 5].map((m) => T0 + m * 60_000));
  assert.equal(Math.floor(clock.now() / 60_000) * 60_000, T0 + 5 * 60_000);
  assert.deepEqual(body.variants.map((v: { name: string; requests: number[] }) => [v.name, v.requests]), [
    ["control", [600, 0, 0, 0, 0, 0]],
    ["treatment", [0, 0, 700, 0, 0, 0]],
  ]);
  assert.deepEqual(body.variants[1].conversions, { watched: [0, 0, 9, 0, 0, 0] });
  assert.equal(minutesCalls.at(-1), T0);
  assert.equal(body.carried, undefined, "only when asked for");
  // a page's first fetch asks for what came before too
  const first = JSON.parse((await get(`/v1/series?sinceMs=${T0}&carried=1`)).body.toString());
  assert.deepEqual(first.carried, { control: { newUnits: 40, conversions: { watched: 3 } }, at: T0 });

  // without sinceMs: the last week, by the injected clock
  await get("/v1/series");
  assert.equal(minutesCalls.at(-1), clock.now() - 7 * 24 * 3600_000);

  for (const bad of ["", "-1", "1.5", "soon"]) {
    const e = await get(`/v1/series?sinceMs=${bad}`);
    assert.equal(e.status, 400, bad);
    assert.match(JSON.parse(e.body.toString()).error, /sinceMs must be a non-negative integer/);
  }

  // a store that cannot answer is a 503, as for the report; another failure a 500
  minutesFail = new StoreError("PostgreSQL query failed on postgres://x: connection refused");
  assert.equal((await get(`/v1/series?sinceMs=${T0}`)).status, 503);
  minutesFail = new Error("a bug");
  assert.equal((await get(`/v1/series?sinceMs=${T0}`)).status, 500);
  minutesFail = null;
});

test("GET /v1/dashboard/session says whether the bearer token is the admin token", async () => {
  assert.deepEqual(JSON.parse((await get("/v1/dashboard/session")).body.toString()), { admin: false });
  assert.deepEqual(JSON.parse((await get("/v1/dashboard/session", { authorization: "Bearer nope" })).body.toString()), { admin: false });
  assert.deepEqual(JSON.parse((await get("/v1/dashboard/session", { authorization: "Bearer s3cret" })).body.toString()), { admin: true });
});

/** An open event stream whose parsed events and comments accumulate as they arrive. */
function openStream(): Promise<{ events: { event: string; data: unknown }[]; comments: string[]; next: (n: number) => Promise<void>; close: () => void }> {
  return new Promise((resolve, reject) => {
    const req = request(`${base}/v1/stream`, (res) => {
      assert.equal(res.statusCode, 200);
      assert.match(String(res.headers["content-type"]), /^text\/event-stream/);
      const events: { event: string; data: unknown }[] = [];
      const comments: string[] = [];
      let buffer = "";
      const waiters: (() => void)[] = [];
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => {
        buffer += chunk;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (block.startsWith(":")) comments.push(block);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event && data) events.push({ event, data: JSON.parse(data) });
        }
        waiters.splice(0).forEach((w) => w());
      });
      const next = async (n: number) => {
        while (events.length + comments.length < n) await new Promise<void>((r) => waiters.push(r));
      };
      resolve({ events, comments, next, close: () => req.destroy() });
    });
    req.on("error", reject);
    req.end();
  });
}

test("GET /v1/stream sends meta, live every second, the report every five, heartbeats, and stops when closed", async () => {
  const s = await openStream();
  // meta at once, then a first live and report without waiting an interval
  await s.next(3);
  assert.equal(s.events[0]!.event, "meta");
  assert.deepEqual((s.events[0]!.data as { variants: string[] }).variants, ["control", "treatment"]);
  assert.equal((s.events[0]!.data as { alpha: number }).alpha, 0.05);
  assert.deepEqual(s.events.slice(1).map((e) => e.event).sort(), ["live", "report"]);
  assert.equal(handler.streams(), 1);

  // Time moves a second at a time, as it does for the real clock: every tick's event arrives before the next.
  const seconds = async (n: number) => {
    for (let i = 0; i < n; i++) {
      const lives = s.events.filter((e) => e.event === "live").length;
      clock.advance(1000);
      while (s.events.filter((e) => e.event === "live").length === lives) await s.next(s.events.length + s.comments.length + 1);
    }
  };
  const count = (event: string) => s.events.filter((e) => e.event === event).length;

  const reportsBefore = reportCalls;
  await seconds(1);
  assert.equal(s.events[3]!.event, "live");
  assert.deepEqual((s.events[3]!.data as { experiment: ExperimentView }).experiment.variants.map((v) => v.name), ["control", "treatment"]);
  assert.equal(reportCalls, reportsBefore);

  await seconds(4);
  assert.equal(count("live"), 6);
  while (count("report") < 2) await s.next(s.events.length + s.comments.length + 1);
  assert.equal(reportCalls, reportsBefore + 1);

  reportFails = true;
  await seconds(5);
  while (count("failure") < 1) await s.next(s.events.length + s.comments.length + 1);
  assert.deepEqual(s.events.find((e) => e.event === "failure")?.data, { source: "report", message: "analysis exploded" });
  reportFails = false;

  await seconds(5);
  while (s.comments.length < 1) await s.next(s.events.length + s.comments.length + 1);
  assert.match(s.comments[0]!, /^: heartbeat/);
  assert.equal(count("live"), 16);

  // a second page gets the latest numbers at once and shares the timers
  const second = await openStream();
  await second.next(3);
  assert.deepEqual(second.events.map((e) => e.event), ["meta", "live", "report"]);
  assert.equal(handler.streams(), 2);
  const calls = reportCalls;
  for (let i = 0; i < 5; i++) {
    clock.advance(1000);
    await second.next(3 + i + 1);
  }
  await second.next(3 + 5 + 1);
  assert.equal(reportCalls, calls + 1);
  assert.equal(second.events.filter((e) => e.event === "report").length, 2);

  s.close();
  second.close();
  while (handler.streams() > 0) await new Promise((r) => setImmediate(r));
  assert.equal(clock.pendingTimers(), 0);
});

test("close() ends open streams so that the admin server can shut down", async () => {
  const s = await openStream();
  await s.next(3);
  handler.close();
  assert.equal(handler.streams(), 0);
  assert.equal(clock.pendingTimers(), 0);
});

test("GET / without a built bundle answers 503 with how to build it", async () => {
  const bare = createDashboardHandler(ctx, { clock, assetDirs: [join(assetDir, "missing")] });
  const srv = createServer((req, res) => void bare(req, res));
  await new Promise<void>((resolve) => srv.listen(0, "127.0.0.1", resolve));
  const r = await new Promise<{ status: number; body: string }>((resolve) => {
    request(`http://127.0.0.1:${(srv.address() as AddressInfo).port}/`, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => resolve({ status: res.statusCode!, body }));
    }).end();
  });
  await new Promise((resolve) => srv.close(resolve));
  assert.equal(r.status, 503);
  assert.match(r.body, /node scripts\/build-dashboard\.mjs/);
});
