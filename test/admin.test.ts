import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { gzipSync } from "node:zlib";
import { rmSync } from "node:fs";
import { startBackend, type Backend } from "./helpers/backends.ts";
import { admin, testConfig, testGateway } from "./helpers/gateway.ts";
import { openStore } from "../src/store/index.ts";

let a: Backend;
let b: Backend;
let gw: Awaited<ReturnType<typeof testGateway>>;

before(async () => {
  a = await startBackend("a");
  b = await startBackend("b");
  gw = await testGateway({
    admin: { listen: "127.0.0.1:0", token: "test-admin-token", ingestToken: "ingest-token" },
    variants: [
      { name: "control", weight: 50, url: a.url },
      { name: "treatment", weight: 50, url: b.url },
    ],
    metrics: [
      { name: "watched", kind: "conversion", event: "watched" },
      { name: "minutes", kind: "mean", event: "watched" },
      { name: "latency", kind: "latency", guardrail: { maxRelativeIncrease: 0.5 } },
    ],
  });
});

after(async () => {
  await gw.close();
  await a.close();
  await b.close();
});

const unitIds = (n: number, prefix = "") => Array.from({ length: n }, (_, i) => `${prefix}${(i * 2654435761) % 1000003}-${i}`);

async function variantOf(unit: string): Promise<string> {
  const res = await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": unit } });
  await res.arrayBuffer();
  return res.headers.get("x-abgate-variant")!;
}

test("changes need the admin token: 401 without it or with a wrong one, 403 with the ingest token", async () => {
  for (const token of [null, "wrong"]) {
    const res = await admin(gw, "PUT", "/v1/weights", { control: 1, treatment: 1 }, token);
    assert.equal(res.status, 401, String(token));
    assert.match(res.headers.get("www-authenticate") ?? "", /Bearer/);
  }
  assert.equal((await admin(gw, "POST", "/v1/promote", { variant: "treatment" }, null)).status, 401);
  assert.equal((await admin(gw, "POST", "/v1/rollback", undefined, null)).status, 401);
  // The ingest token is known, only not for changes (RFC 6750's insufficient_scope): a 401 would say it is not.
  for (const [method, path, body] of [["PUT", "/v1/weights", { control: 1, treatment: 1 }], ["POST", "/v1/promote", { variant: "treatment" }], ["POST", "/v1/rollback", undefined]] as const) {
    const res = await admin(gw, method, path, body, "ingest-token");
    assert.equal(res.status, 403, path);
    assert.deepEqual(await res.json(), { error: "the ingest token may only post events; this change needs the admin token", code: "ABGATE_ERR_FORBIDDEN" });
  }
  const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { weight: number }[] };
  assert.deepEqual(view.variants.map((v) => v.weight), [50, 50], "nothing changed");
});

test("two Authorization headers are refused (400), whichever of them holds the token", async () => {
  // (a raw request: fetch and http.request join or refuse repeated headers)
  const { connect } = await import("node:net");
  const port = Number(new URL(gw.adminUrl).port);
  const send = (authorizations: string[]) =>
    new Promise<{ status: number; body: string }>((resolve, reject) => {
      const body = JSON.stringify({ control: 1, treatment: 99 });
      const socket = connect(port, "127.0.0.1");
      let text = "";
      socket.setEncoding("latin1").on("data", (d: string) => (text += d)).on("error", reject);
      socket.on("end", () => resolve({ status: Number(text.slice(9, 12)), body: text.slice(text.indexOf("\r\n\r\n") + 4) }));
      socket.write(`PUT /v1/weights HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\n${authorizations.map((a) => `authorization: ${a}\r\n`).join("")}\r\n${body}`);
    });
  for (const pair of [["Bearer test-admin-token", "Bearer wrong"], ["Bearer wrong", "Bearer test-admin-token"]]) {
    const res = await send(pair);
    assert.equal(res.status, 400, pair.join(" / "));
    assert.match(res.body, /more than one Authorization header/);
  }
  const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { weight: number }[] };
  assert.deepEqual(view.variants.map((v) => v.weight), [50, 50], "nothing changed");
  assert.equal((await send(["Bearer test-admin-token"])).status, 200, "one is fine");
  assert.equal((await admin(gw, "PUT", "/v1/weights", { control: 50, treatment: 50 })).status, 200);
});

test("events: a compressed body is a 415 that names the coding, a body that is not UTF-8 a 400; neither stores anything", async () => {
  const before = (await gw.store.counts("test")).events;
  const json = JSON.stringify({ unit: "gz", event: "watched" });
  const post = (body: Buffer | string, headers: Record<string, string> = {}) =>
    fetch(`${gw.adminUrl}/v1/events`, { method: "POST", headers: { "content-type": "application/json", authorization: "Bearer ingest-token", ...headers }, body: typeof body === "string" ? body : new Uint8Array(body) });
  const gzipped = await post(gzipSync(json), { "content-encoding": "gzip" });
  assert.equal(gzipped.status, 415);
  assert.equal(gzipped.headers.get("accept-encoding"), "identity");
  assert.deepEqual(await gzipped.json(), { error: 'content-encoding "gzip" is not accepted: send the body uncompressed', code: "ABGATE_ERR_MEDIA_TYPE" });
  assert.equal((await post(json, { "content-encoding": "identity" })).status, 200, "identity is no coding");
  // 0xFF is no UTF-8: decoded leniently, "u\xFF" and "u\xFE" were both stored as "u\uFFFD", one unit
  for (const bad of [0xff, 0xfe, 0xc0]) {
    const bytes = Buffer.concat([Buffer.from('{"unit":"u'), Buffer.from([bad]), Buffer.from('","event":"watched"}')]);
    const res = await post(bytes);
    assert.equal(res.status, 400);
    assert.deepEqual(await res.json(), { error: "body is not valid UTF-8 (RFC 8259 §8.1: JSON is UTF-8)", code: "ABGATE_ERR_BAD_JSON" });
  }
  const withBom = await post(Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify({ unit: "bom", event: "watched" }))]));
  assert.equal(withBom.status, 200, "a byte order mark is allowed");
  assert.equal((await post(JSON.stringify({ unit: "ü-ñ-日本", event: "watched" }))).status, 200);
  assert.equal((await gw.store.counts("test")).events, before + 3);
});

test("GET /v1/experiment shows variants, weights, replicas with health, ranges and counts", async () => {
  const res = await admin(gw, "GET", "/v1/experiment", undefined, null);
  assert.equal(res.status, 200);
  const view = (await res.json()) as { variants: { name: string; weight: number; replicas: { id: string; health: string }[] }[]; ranges: { variant: string; from: number; to: number }[]; counts: object };
  assert.deepEqual(view.variants.map((v) => [v.name, v.weight]), [["control", 50], ["treatment", 50]]);
  assert.equal(view.variants[0].replicas[0].id, "control-0");
  assert.equal(view.variants[0].replicas[0].health, "healthy");
  assert.deepEqual(view.ranges, [{ variant: "control", from: 0, to: 0.5 }, { variant: "treatment", from: 0.5, to: 1 }]);
  assert.ok("exposures" in view.counts && "events" in view.counts);
});

test("a weight change moves only the units it must, and survives a restart", async () => {
  const units = unitIds(300, "w");
  const before = await Promise.all(units.map(variantOf));
  const changedAt = Date.now();
  const res = await admin(gw, "PUT", "/v1/weights", { control: 20, treatment: 80 });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), { weights: { control: 20, treatment: 80 } }, "a map, as the request and promote's answer are");
  // when, for the report's sample-ratio check
  const recorded = JSON.parse((await gw.store.getState("test", "report-weights"))!) as { shares: Record<string, number>; since: number };
  assert.deepEqual(recorded.shares, { control: 0.2, treatment: 0.8 });
  assert.ok(recorded.since >= changedAt && recorded.since <= Date.now());
  const after = await Promise.all(units.map(variantOf));
  let moved = 0;
  for (let i = 0; i < units.length; i++) {
    if (before[i] !== after[i]) {
      moved++;
      assert.equal(before[i], "control", "units only move from the shrinking variant");
      assert.equal(after[i], "treatment");
    }
  }
  const wasControl = before.filter((v) => v === "control").length;
  assert.ok(moved > 0 && moved < wasControl, `moved ${moved} of ${wasControl}`);
  const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { ranges: { variant: string; from: number; to: number }[] };
  const share = (v: string) => view.ranges.filter((r) => r.variant === v).reduce((s, r) => s + r.to - r.from, 0);
  assert.ok(Math.abs(share("treatment") - 0.8) < 1e-12);

  // restart on the same store: same ranges, same assignment
  const { startGateway } = await import("../src/gateway.ts");
  const { silentLogger } = await import("../src/log/index.ts");
  await gw.stop();
  const again = await startGateway(gw.config, { log: silentLogger });
  Object.assign(gw, again);
  const view2 = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { ranges: unknown };
  assert.deepEqual(view2.ranges, view.ranges);
  const afterRestart = await Promise.all(units.map(variantOf));
  assert.deepEqual(afterRestart, after);
});

test("bad weight changes are refused with the reason and change nothing", async () => {
  const cases: [unknown, RegExp][] = [
    [{ control: 1, nope: 1 }, /unknown variant "nope"/],
    [{ control: 0, treatment: 0 }, /sum to a positive number/],
    [{ control: -1 }, /control/],
    [{ control: "ten" }, /finite number/],
    [[1, 2], /object of weights/],
  ];
  for (const [body, re] of cases) {
    const res = await admin(gw, "PUT", "/v1/weights", body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.match(((await res.json()) as { error: string }).error, re);
  }
  const bad = await admin(gw, "PUT", "/v1/weights", "{not json");
  assert.equal(bad.status, 400);
  const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { weight: number }[] };
  assert.deepEqual(view.variants.map((v) => v.weight), [20, 80]);
});

test("promote sends every unit to the variant, rollback to the control", async () => {
  assert.equal((await admin(gw, "POST", "/v1/promote", { variant: "nope" })).status, 400);
  // Whatever the value, a 400 that names the key, not a 500 (stringifying 20,000 nested arrays overflowed the stack).
  for (const [body, got] of [
    [`{"variant":${"[".repeat(20_000)}${"]".repeat(20_000)}}`, "an array"],
    [JSON.stringify({ variant: "x".repeat(1000) }), `"${"x".repeat(60)}…"`],
    [JSON.stringify({ variant: { a: 1 } }), "an object"],
    ["{}", "nothing"],
  ]) {
    const res = await admin(gw, "POST", "/v1/promote", body);
    assert.equal(res.status, 400);
    const { error } = (await res.json()) as { error: string };
    assert.ok(error.startsWith("variant: one of control, treatment") && error.endsWith(`(got ${got})`), error);
  }
  assert.equal((await admin(gw, "POST", "/v1/promote", { variant: "treatment" })).status, 200);
  for (const u of unitIds(30, "p")) assert.equal(await variantOf(u), "treatment");
  assert.equal((await admin(gw, "POST", "/v1/rollback")).status, 200);
  for (const u of unitIds(30, "p")) assert.equal(await variantOf(u), "control");
});

test("events: all or nothing, named index and field, accepted only with the ingest or admin token", async () => {
  const post = (body: unknown, token: string | null = "ingest-token") => admin(gw, "POST", "/v1/events", body, token);
  assert.equal((await post({ unit: "u1", event: "watched" }, null)).status, 401);
  const before = await gw.store.counts("test");
  const invalid: [unknown, RegExp][] = [
    [[{ unit: "u1", event: "watched" }, { unit: "", event: "watched" }], /events\[1\]\.unit/],
    [[{ unit: "u1", event: "watched", value: "x" }], /events\[0\]\.value: a finite number/],
    [[{ unit: "u1", event: "clicked" }], /events\[0\]\.event: unknown event "clicked"/],
    [[{ unit: "u1", event: "watched", ts: "yesterday" }], /events\[0\]\.ts/],
    // Date.parse would store these as March 2, the next day, and noon in the server's own zone
    [[{ unit: "u1", event: "watched" }, { unit: "u2", event: "watched", ts: "2026-02-30T00:00:00Z" }], /^events\[1\]\.ts: a valid time/],
    [[{ unit: "u1", event: "watched", ts: "2026-11-28T24:00:00Z" }], /^events\[0\]\.ts: a valid time/],
    [[{ unit: "u1", event: "watched", ts: "2026-11-28T12:00:00" }], /^events\[0\]\.ts: an ISO 8601 time with a zone/],
    [[{ unit: "u1", event: "watched", requestId: "r".repeat(513) }], /^events\[0\]\.requestId: at most 512 characters/],
    [[{ unit: "u1", event: "watched", extra: 1 }], /events\[0\]\.extra: unknown field/],
    [[], /no events/],
    [JSON.stringify("not an object"), /expected an object/],
  ];
  for (const [body, re] of invalid) {
    const res = await post(body);
    assert.equal(res.status, 400, JSON.stringify(body));
    const answer = (await res.json()) as { error: string; code: string };
    assert.match(answer.error, re);
    assert.equal(answer.code, "ABGATE_ERR_EVENT_INVALID");
  }
  // What the client sent is echoed cut short: a 15 MB field name or event name gave a 15 MB answer and log line.
  for (const body of [{ unit: "u1", event: "watched", ["k".repeat(1_000_000)]: 1 }, { unit: "u1", event: "w".repeat(1_000_000) }]) {
    const res = await post(body);
    assert.equal(res.status, 400);
    const text = await res.text();
    assert.ok(text.length < 400, `a ${text.length}-character answer`);
  }
  const longWeight = await admin(gw, "PUT", "/v1/weights", { ["v".repeat(1_000_000)]: 1 });
  assert.equal(longWeight.status, 400);
  assert.ok((await longWeight.text()).length < 400);
  const tooMany = await post(Array.from({ length: 10_001 }, () => ({ unit: "u", event: "watched" })));
  assert.equal(tooMany.status, 413);
  assert.match(((await tooMany.json()) as { error: string }).error, /^more than 10000 events in one request/, "refused before parsing");
  // (exposures of earlier requests may still be flushing; only events matter here)
  assert.equal((await gw.store.counts("test")).events, before.events, "nothing was stored");

  const ok = await post([{ unit: "u1", event: "watched", value: 42.5, ts: "2026-11-28T12:00:00Z", requestId: "r1" }, { unit: "u2", event: "watched" }]);
  assert.equal(ok.status, 200);
  assert.deepEqual(await ok.json(), { accepted: 2 });
  assert.deepEqual(await (await admin(gw, "POST", "/v1/events", { unit: "u3", event: "watched" })).json(), { accepted: 1 }, "the admin token may post events too");
  assert.equal((await gw.store.counts("test")).events, before.events + 3);
});

test("GET /metrics is Prometheus text with requests by variant and status, latency, health and events", async () => {
  const res = await admin(gw, "GET", "/metrics", undefined, null);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /text\/plain/);
  const text = await res.text();
  assert.match(text, /abgate_requests_total\{variant="control",status="200",experiment="test"\} \d+/);
  assert.match(text, /abgate_request_duration_seconds_bucket\{le="0.005",variant="control",experiment="test"\} \d+/);
  assert.match(text, /abgate_replica_healthy\{variant="treatment",replica="treatment-0",experiment="test"\} 1/);
  assert.match(text, /abgate_events_ingested_total\{event="watched",experiment="test"\} 3/);
  assert.match(text, /abgate_exposures_dropped_total\{experiment="test"\} 0/);
  assert.match(text, /abgate_log_lines_dropped_total\{experiment="test"\} 0/);
});

test("GET /v1/report has the spec's shape", async () => {
  const res = await admin(gw, "GET", "/v1/report", undefined, null);
  assert.equal(res.status, 200);
  const text = await res.text();
  assert.doesNotMatch(text, /NaN|Infinity/);
  const report = JSON.parse(text) as Record<string, unknown>;
  for (const key of ["experiment", "generatedAt", "variants", "srm", "metrics", "guardrails", "decision"]) assert.ok(key in report, key);
});

test("GET /v1/report counts the units that sent events without ever being exposed, and says so", async () => {
  type Quality = { unexposedEventUnits: Record<string, number>; notes: string[] };
  const quality = async () => ((await (await admin(gw, "GET", "/v1/report", undefined, null)).json()) as { dataQuality: Quality }).dataQuality;
  const before = await quality();
  const sent = await admin(gw, "POST", "/v1/events", [{ unit: "nobody-exposed-me", event: "watched" }, { unit: "nobody-exposed-me", event: "watched" }]);
  assert.deepEqual(await sent.json(), { accepted: 2 });
  const after = await quality();
  assert.equal(after.unexposedEventUnits.watched, (before.unexposedEventUnits.watched ?? 0) + 1, "one unit, however many events");
  assert.ok(after.notes.some((n) => /sent "watched" events but (was|were) never exposed/.test(n)), after.notes.join("\n"));
});

test("GET /v1/report counts the units whose events came before their first exposure (a client clock behind the server's), and says so", async () => {
  type Quality = { earlyEventUnits: Record<string, number>; notes: string[] };
  const quality = async () => ((await (await admin(gw, "GET", "/v1/report", undefined, null)).json()) as { dataQuality: Quality }).dataQuality;
  const before = await quality();
  await (await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": "skewed-clock" } })).arrayBuffer();
  // (the exposure is written within 100 ms)
  await new Promise((r) => setTimeout(r, 300));
  const sent = await admin(gw, "POST", "/v1/events", [{ unit: "skewed-clock", event: "watched", ts: Date.now() - 5000 }]);
  assert.deepEqual(await sent.json(), { accepted: 1 });
  const after = await quality();
  assert.equal(after.earlyEventUnits.watched, (before.earlyEventUnits.watched ?? 0) + 1);
  assert.ok(after.notes.some((n) => /sent "watched" events before (its|their) first exposure; those events count nowhere/.test(n)), after.notes.join("\n"));
});

test("unknown routes give 404, wrong methods 405, both as JSON", async () => {
  assert.equal((await admin(gw, "GET", "/v1/nope")).status, 404);
  const res = await admin(gw, "DELETE", "/v1/experiment");
  assert.equal(res.status, 405);
  assert.equal(res.headers.get("allow"), "GET, HEAD", "RFC 9110: a 405 names the allowed methods");
  assert.match(((await res.json()) as { error: string }).error, /allowed: GET, HEAD/);
  const post = await admin(gw, "POST", "/metrics");
  assert.equal(post.status, 405);
  assert.equal(post.headers.get("allow"), "GET, HEAD");
  const weights = await admin(gw, "DELETE", "/v1/weights");
  assert.equal(weights.headers.get("allow"), "PUT, POST");
  const health = await admin(gw, "POST", "/healthz");
  assert.equal(health.status, 405, "/healthz too");
  assert.equal(health.headers.get("allow"), "GET, HEAD");
  const head = await fetch(`${gw.adminUrl}/metrics`, { method: "HEAD" });
  assert.equal(head.status, 200, "HEAD where GET is");
  assert.equal(await head.text(), "");
});

/** POST a body of `size` bytes to the admin listener, chunked or with content-length, reading the answer and noting whether the server closed the connection afterwards. */
function postLarge(path: string, size: number, chunked: boolean): Promise<{ status: number; headers: IncomingHttpHeaders; body: string; closed: boolean }> {
  const body = Buffer.alloc(size, " ");
  body.write('[{"unit": "u", "event": "watched"}');
  body.write("]", size - 1);
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${gw.adminUrl}${path}`, {
      method: "POST",
      agent: false,
      headers: { "content-type": "application/json", authorization: "Bearer ingest-token", ...(chunked ? {} : { "content-length": String(size) }) },
    });
    req.on("error", reject);
    req.on("response", (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => (text += c));
      res.on("end", () => {
        const done = (closed: boolean) => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text, closed });
        if (req.socket?.destroyed) return done(true);
        const timer = setTimeout(() => done(false), 5_000);
        req.socket?.once("close", () => {
          clearTimeout(timer);
          done(true);
        });
      });
    });
    const step = 64 * 1024;
    let i = 0;
    const pump = () => {
      while (i < body.length) {
        const ok = req.write(body.subarray(i, (i += step)));
        if (!ok) return void req.once("drain", pump);
      }
      req.end();
    };
    pump();
  });
}

test("an oversized body gets a JSON 413 and then a closed connection, chunked or with content-length", async () => {
  const before = await gw.store.counts("test");
  for (const chunked of [true, false]) {
    const res = await postLarge("/v1/events", 17 * 1024 * 1024, chunked);
    assert.equal(res.status, 413, `chunked=${chunked}`);
    assert.equal(res.headers.connection, "close");
    assert.equal((JSON.parse(res.body) as { code: string }).code, "ABGATE_ERR_BODY_TOO_LARGE");
    assert.ok(res.closed, "the connection is closed after the answer");
  }
  assert.equal((await gw.store.counts("test")).events, before.events, "nothing was stored");
  assert.equal((await admin(gw, "GET", "/healthz")).status, 200, "the listener still answers");
});

test("weights: __proto__, constructor and any other key that is not a variant get the same 400 and change nothing", async () => {
  const before = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { weight: number }[] };
  const answers: { status: number; code: string; error: string }[] = [];
  for (const body of ['{"zz": 5}', '{"__proto__": 5}', '{"constructor": 5}', '{"toString": 5, "control": 1}', '{"hasOwnProperty": 5}']) {
    const res = await admin(gw, "PUT", "/v1/weights", body);
    const { code, error } = (await res.json()) as { code: string; error: string };
    answers.push({ status: res.status, code, error });
    assert.equal(res.status, 400, body);
    assert.match(error, /unknown variant "\w+" in weights \(known: control, treatment\)/, body);
  }
  assert.equal(new Set(answers.map((a) => a.code)).size, 1, "one code for every unknown key");
  const after = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { weight: number }[] };
  assert.deepEqual(after.variants.map((v) => v.weight), before.variants.map((v) => v.weight));
});

test("events: a value beyond ±1e150, a ts before 1970, in seconds, or over an hour ahead is refused with its index and field, and nothing is stored", async () => {
  const post = (body: unknown) => admin(gw, "POST", "/v1/events", body, "ingest-token");
  const ok = { unit: "u1", event: "watched" };
  const before = await gw.store.counts("test");
  const invalid: [unknown, RegExp][] = [
    [[ok, { ...ok, value: 1e200 }], /events\[1\]\.value: at most 1e\+150/],
    [[{ ...ok, value: -1e151 }], /events\[0\]\.value/],
    [`[${JSON.stringify(ok)}, {"unit": "u1", "event": "watched", "value": 1e300}]`, /events\[1\]\.value/],
    [[ok, ok, { ...ok, ts: 8.7e15 }], /events\[2\]\.ts/],
    [`[{"unit": "u1", "event": "watched", "ts": 1764331200000000000}]`, /events\[0\]\.ts: .*8640000000000000/],
    [`[{"unit": "u1", "event": "watched", "ts": 1e300}]`, /events\[0\]\.ts/],
    [[{ ...ok, ts: -1 }], /events\[0\]\.ts/],
    [[{ ...ok, ts: "1969-12-31T23:59:59Z" }], /events\[0\]\.ts/],
    [{ ...ok, ts: 8.64e15 + 1 }, /^ts: /],
    [[ok, { ...ok, ts: Math.floor(Date.now() / 1000) }], /events\[1\]\.ts: milliseconds since the epoch: .*seconds instead of milliseconds\?/],
    [[ok, { ...ok, ts: Date.now() + 2 * 3_600_000 }], /events\[1\]\.ts: a time at most an hour ahead of the server's clock/],
  ];
  for (const [body, re] of invalid) {
    const res = await post(body);
    assert.equal(res.status, 400, JSON.stringify(body));
    const { error, code } = (await res.json()) as { error: string; code: string };
    assert.match(error, re);
    assert.equal(code, "ABGATE_ERR_EVENT_INVALID");
  }
  assert.equal((await gw.store.counts("test")).events, before.events, "nothing was stored");
  const edges = await post([{ ...ok, value: 1e150 }, { ...ok, value: -1e150 }, { ...ok, ts: "1970-01-01T00:00:00Z" }, { ...ok, ts: Date.now() + 3_500_000 }, { ...ok, ts: 1764331200000.5 }]);
  assert.equal(edges.status, 200);
  assert.deepEqual(await edges.json(), { accepted: 5 });
});

test("bandit: units seen before a restart keep their variant when the weights then move", async () => {
  const { startGateway } = await import("../src/gateway.ts");
  const { validateConfig } = await import("../src/config/index.ts");
  const { silentLogger } = await import("../src/log/index.ts");
  const backends = await Promise.all([startBackend("control"), startBackend("treatment")]);
  // burnInUnits out of reach: the weights in force are the configured ones, which the second run edits to 1/99
  const raw = (control: number, treatment: number) => ({
    experiment: "bandit",
    strategy: { kind: "bandit", burnInUnits: 1_000_000 },
    variants: [{ name: "control", weight: control, url: backends[0]!.url }, { name: "treatment", weight: treatment, url: backends[1]!.url }],
  });
  const first = await testGateway(raw(50, 50));
  const variantOf = async (gw: { proxyUrl: string }, unit: string) => {
    const res = await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": unit } });
    await res.arrayBuffer();
    return res.headers.get("x-abgate-variant")!;
  };
  const units = Array.from({ length: 300 }, (_, i) => `user-${i}`);
  try {
    const before: string[] = [];
    for (const u of units) before.push(await variantOf(first, u));
    assert.ok(before.filter((v) => v === "control").length > 100);
    await first.stop(); // flushes the exposures: the store now knows these units
    const again = { listen: "127.0.0.1:0", admin: { listen: "127.0.0.1:0", token: "t" }, store: first.config.store, engine: "static", logLevel: "silent" };
    const metrics = [{ name: "watched", kind: "conversion", event: "watched" }];
    const second = await startGateway(validateConfig({ ...again, metrics, ...raw(1, 99) }, first.dir), { log: silentLogger });
    try {
      const after: string[] = [];
      for (const u of units) after.push(await variantOf(second, u));
      assert.deepEqual(after, before, "no seen unit moved");
      const fresh: string[] = [];
      for (let i = 0; i < 200; i++) fresh.push(await variantOf(second, `new-${i}`));
      assert.ok(fresh.filter((v) => v === "control").length < 20, "new units follow the new weights");
    } finally {
      await second.stop();
    }
  } finally {
    for (const b of backends) await b.close();
    const { rmSync } = await import("node:fs");
    rmSync(first.dir, { recursive: true, force: true });
  }
});

test("a change posted by a page of another site (Origin, Sec-Fetch-Site) is refused with 403 and stores nothing; programs and the listener's own pages are not affected", async () => {
  const adminHost = new URL(gw.adminUrl).host;
  const before = await gw.store.counts("test");
  const weightsBefore = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { name: string; weight: number }[] };
  // As a browser sends them cross-site without a preflight: no content type ("simple" request), no token needed.
  const send = (path: string, headers: Record<string, string>, token: string | null = null) =>
    fetch(`${gw.adminUrl}${path}`, {
      method: path === "/v1/weights" ? "PUT" : "POST",
      headers: { ...headers, ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: new Blob([path === "/v1/weights" ? '{"control":1,"treatment":99}' : '{"unit":"csrf","event":"watched"}']),
    });
  const events = (headers: Record<string, string>) =>
    fetch(`${gw.adminUrl}/v1/events`, { method: "POST", headers, body: new Blob(['{"unit":"csrf","event":"watched"}']) });
  for (const headers of <Record<string, string>[]>[
    { origin: "http://evil.example" },
    { origin: "null" },
    { origin: `http://127.0.0.1:1` },
    { "sec-fetch-site": "cross-site" },
    { "sec-fetch-site": "same-site" },
    // Sec-Fetch-Site decides when a browser sends it, whatever the Origin says
    { "sec-fetch-site": "cross-site", origin: `http://${adminHost}` },
  ]) {
    const res = await events(headers);
    assert.equal(res.status, 403, JSON.stringify(headers));
    assert.equal(((await res.json()) as { code: string }).code, "ABGATE_ERR_CROSS_SITE");
  }
  // With a token the request is not a simple one (a browser asks first, and no other origin is allowed): not checked.
  assert.equal((await send("/v1/weights", { origin: "http://evil.example" }, "test-admin-token")).status, 200);
  assert.equal((await send("/v1/weights", { origin: "http://evil.example" })).status, 403, "without one it is");
  await admin(gw, "PUT", "/v1/weights", Object.fromEntries(weightsBefore.variants.map((v) => [v.name, v.weight])));
  assert.equal((await gw.store.counts("test")).events, before.events, "nothing was stored");
  const weightsAfter = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { weight: number }[] };
  assert.deepEqual(weightsAfter.variants.map((v) => v.weight), weightsBefore.variants.map((v) => v.weight));
  // The listener's own origin (case aside), a same-origin fetch (behind a proxy that rewrote Host too), and a program
  // that sends no Origin are accepted.
  for (const headers of <Record<string, string>[]>[
    { origin: `http://${adminHost}` },
    { origin: `HTTP://${adminHost.toUpperCase()}` },
    { "sec-fetch-site": "same-origin", origin: "https://abgate.example.com" },
    {},
  ]) {
    assert.equal((await send("/v1/events", headers, "ingest-token")).status, 200, JSON.stringify(headers));
    assert.equal((await events(headers)).status, 401, `${JSON.stringify(headers)}: not refused as cross-site (the ingest token is what is missing)`);
  }
  // Reads stay open to any origin.
  assert.equal((await fetch(`${gw.adminUrl}/v1/experiment`, { headers: { origin: "http://evil.example" } })).status, 200);
});

test("a client that closes the connection in the middle of its body is logged at info as a client abort, not as a server error", async () => {
  const { pino } = await import("pino");
  const lines: { level: number; msg: string; code?: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const own = await testGateway({ admin: { listen: "127.0.0.1:0", token: "test-admin-token" }, variants: [{ name: "control", url: a.url }], metrics: [{ name: "watched", kind: "conversion", event: "watched" }] }, { log });
  try {
    const { port } = new URL(own.adminUrl);
    const { connect } = await import("node:net");
    const socket = connect(Number(port), "127.0.0.1");
    await new Promise<void>((r) => socket.once("connect", () => r()));
    socket.write("POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[{\"unit\":");
    await new Promise((r) => setTimeout(r, 100));
    socket.destroy();
    const deadline = Date.now() + 3000;
    while (!lines.some((l) => /closed the connection/.test(l.msg)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const abort = lines.find((l) => /closed the connection/.test(l.msg));
    assert.ok(abort, JSON.stringify(lines));
    assert.equal(abort.level, 30);
    assert.ok(!lines.some((l) => l.level >= 50), JSON.stringify(lines.filter((l) => l.level >= 50)));
  } finally {
    await own.close();
  }
});

test("GET /v1/report is answered while another process holds the store's write lock: only what it records for later reports waits, with a warning", async () => {
  const { pino } = await import("pino");
  const { default: Database } = await import("better-sqlite3");
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const own = await testGateway({ variants: [{ name: "control", url: a.url }, { name: "treatment", url: b.url }] }, { log });
  const locker = new Database(own.config.store.slice("sqlite:".length));
  try {
    await (await fetch(`${own.proxyUrl}/x`, { headers: { "x-user-id": "r1" } })).arrayBuffer();
    locker.exec("BEGIN IMMEDIATE");
    const res = await admin(own, "GET", "/v1/report");
    assert.equal(res.status, 200, await res.clone().text());
    assert.equal(((await res.json()) as { experiment: string }).experiment, "test");
    assert.ok(lines.some((l) => l.level === 40 && /could not be saved/.test(l.msg)), JSON.stringify(lines.slice(-3)));
    locker.exec("ROLLBACK");
    assert.equal((await admin(own, "GET", "/v1/report")).status, 200);
  } finally {
    locker.close();
    await own.close();
  }
});

test("a run with a strategy that has no range table (random, round-robin) keeps the sticky table for the next sticky run", async () => {
  const { startGateway } = await import("../src/gateway.ts");
  const { silentLogger } = await import("../src/log/index.ts");
  const { testConfig } = await import("./helpers/gateway.ts");
  const variants = [
    { name: "control", weight: 50, url: a.url },
    { name: "treatment", weight: 50, url: b.url },
  ];
  const { config } = testConfig({ variants, strategy: { kind: "sticky" } });
  const ranges = async (g: { adminUrl: string }) => ((await (await admin(g, "GET", "/v1/experiment")).json()) as { ranges?: unknown }).ranges;
  let g = await startGateway(config, { log: silentLogger });
  // 50/50 -> 20/80 -> 60/40 leaves treatment two ranges: a table the configured weights alone would not rebuild
  for (const w of [{ control: 20, treatment: 80 }, { control: 60, treatment: 40 }]) assert.equal((await admin(g, "PUT", "/v1/weights", w)).status, 200);
  const table = await ranges(g);
  assert.ok(Array.isArray(table) && table.length > 2, JSON.stringify(table));
  await g.stop();
  for (const kind of ["random", "round-robin"]) {
    g = await startGateway({ ...config, strategy: { ...config.strategy, kind: kind as "random" } }, { log: silentLogger });
    await g.stop();
  }
  g = await startGateway(config, { log: silentLogger });
  try {
    assert.deepEqual(await ranges(g), table);
  } finally {
    await g.stop();
  }
});

test("Expect: 100-continue: a request without the token is answered 401 at once, without the 100, so its body is never sent; one with it gets the 100", async () => {
  const { connect } = await import("node:net");
  const { port } = new URL(gw.adminUrl);
  const open = async (head: string) => {
    const socket = connect(Number(port), "127.0.0.1");
    await new Promise<void>((r) => socket.once("connect", () => r()));
    const got = { text: "" };
    socket.setEncoding("latin1");
    socket.on("data", (d: string) => (got.text += d));
    socket.write(head);
    return { socket, got };
  };
  const answer = async (got: { text: string }) => {
    const deadline = Date.now() + 3000;
    while (!got.text.includes("\r\n\r\n") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    const text = got.text;
    got.text = "";
    return text;
  };
  const body = JSON.stringify({ control: 50, treatment: 50 });
  const head = (auth: string) => `PUT /v1/weights HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: ${body.length}\r\nexpect: 100-continue\r\n${auth}\r\n`;
  const refused = await open(head(""));
  const refusedText = await answer(refused.got);
  assert.match(refusedText, /^HTTP\/1\.1 401 /, refusedText);
  assert.match(refusedText, /connection: close/i);
  refused.socket.destroy();
  const events = await open(`POST /v1/events HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 40\r\nexpect: 100-continue\r\n\r\n`);
  assert.match(await answer(events.got), /^HTTP\/1\.1 401 /, "events need the ingest token here");
  events.socket.destroy();
  // Two Authorization headers, the first one the token: refused at once too, not after the body came.
  const twice = await open(head("authorization: Bearer test-admin-token\r\nauthorization: Bearer other\r\n"));
  const twiceText = await answer(twice.got);
  assert.match(twiceText, /^HTTP\/1\.1 400 /, twiceText);
  assert.doesNotMatch(twiceText, /100 Continue/);
  twice.socket.destroy();
  const allowed = await open(head("authorization: Bearer test-admin-token\r\n"));
  assert.match(await answer(allowed.got), /^HTTP\/1\.1 100 Continue\r\n\r\n/);
  allowed.socket.write(body);
  assert.match(await answer(allowed.got), /^HTTP\/1\.1 200 /);
  allowed.socket.destroy();
});

test("bandit: the first update runs at start, and a stop right after waits for it instead of failing it on the closed store", async () => {
  const { pino } = await import("pino");
  for (let i = 0; i < 3; i++) {
    const lines: { level: number; msg: string }[] = [];
    const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const own = await testGateway({ experiment: "bandit-stop", strategy: { kind: "bandit" }, variants: [{ name: "control", url: a.url }, { name: "treatment", url: b.url }] }, { log });
    await own.stop();
    assert.deepEqual(lines.filter((l) => /bandit update failed|cannot record the bandit/.test(l.msg)), []);
    // the update recorded its weights, the first period of the report's comparisons
    const store = openStore(own.config.store);
    await store.init();
    const periods = JSON.parse((await store.getState("bandit-stop", "bandit-periods")) ?? "[]") as { shares: Record<string, number> }[];
    await store.close();
    rmSync(own.dir, { recursive: true, force: true });
    assert.deepEqual(periods.map((p) => p.shares), [{ control: 0.5, treatment: 0.5 }]);
  }
});

test("a salt or hash changed between runs is warned about at start (every sticky unit gets a new bucket); an unchanged one is not", async () => {
  const { pino } = await import("pino");
  const { startGateway } = await import("../src/gateway.ts");
  const variants = [{ name: "control", url: a.url }, { name: "treatment", url: b.url }];
  const first = await testGateway({ strategy: { kind: "sticky", salt: "one" }, variants });
  const store = first.config.store;
  await first.stop();
  const runWith = async (strategy: Record<string, unknown>) => {
    const lines: { level: number; msg: string }[] = [];
    const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const { config, dir } = testConfig({ store, strategy, variants });
    const gw = await startGateway(config, { log });
    await gw.stop();
    rmSync(dir, { recursive: true, force: true });
    return lines.filter((l) => l.level === 40 && /since the last run: every unit gets a new bucket/.test(l.msg)).map((l) => l.msg);
  };
  try {
    assert.deepEqual(await runWith({ kind: "sticky", salt: "one" }), []);
    const salt = await runWith({ kind: "sticky", salt: "two" });
    assert.equal(salt.length, 1);
    assert.match(salt[0]!, /^strategy\.salt "one" -> "two" since the last run/);
    // a run with random keeps the hashing it found, so that a switch back is still compared with it
    assert.deepEqual(await runWith({ kind: "random" }), []);
    const hash = await runWith({ kind: "sticky", salt: "two", hash: "fnv1a32-fmix" });
    assert.match(hash[0]!, /^strategy\.hash fnv1a32 -> fnv1a32-fmix since the last run/);
  } finally {
    rmSync(first.dir, { recursive: true, force: true });
  }
});

test("an empty strategy.salt is the experiment's name, and the gateway says so at start (units of a run with an empty salt move)", async () => {
  const { pino } = await import("pino");
  const lines: { level: number; msg: string; salt?: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const own = await testGateway({ strategy: { kind: "sticky", salt: "" }, variants: [{ name: "control", url: a.url }, { name: "treatment", url: b.url }] }, { log });
  try {
    assert.equal(own.config.salt, "test");
    const warning = lines.find((l) => l.level === 40 && /strategy\.salt is empty/.test(l.msg));
    assert.ok(warning, JSON.stringify(lines.slice(0, 5)));
    assert.equal(warning.salt, "test");
  } finally {
    await own.close();
  }
});

test("a Host that is no name of the admin listener is refused (DNS rebinding), reads and events too; IPs, localhost and admin.allowedHosts pass", async () => {
  const ask = (g: { adminUrl: string }, method: string, path: string, host: string, body?: string) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = httpRequest(`${g.adminUrl}${path}`, { method, agent: false, headers: { host, ...(body ? { "content-type": "application/json" } : {}) } });
      req.on("error", reject);
      req.on("response", (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c: string) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      });
      req.end(body);
    });
  const port = new URL(gw.adminUrl).port;
  const evil = await ask(gw, "GET", "/v1/report", `evil.example:${port}`);
  assert.equal(evil.status, 403);
  assert.match(JSON.parse(evil.text).error, /^Host "evil\.example:\d+" is not a name of this listener .*DNS rebinding/);
  assert.equal((await ask(gw, "GET", "/", `evil.example:${port}`)).status, 403, "nor the dashboard");
  const event = JSON.stringify({ unit: "rebind", event: "watched" });
  assert.equal((await ask(gw, "POST", "/v1/events", `evil.example:${port}`, event)).status, 403, "nor events");
  for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`, `app.localhost:${port}`, `[::1]:${port}`, `localhost.:${port}`]) {
    assert.equal((await ask(gw, "GET", "/v1/experiment", host)).status, 200, host);
  }
  // A request with the token is no rebinding page's (such a page cannot know it): any name
  const withToken = await new Promise<number>((resolve, reject) => {
    const req = httpRequest(`${gw.adminUrl}/v1/experiment`, { agent: false, headers: { host: `gw.internal:${port}`, authorization: "Bearer test-admin-token" } });
    req.on("error", reject);
    req.on("response", (res) => (res.resume(), resolve(res.statusCode ?? 0)));
    req.end();
  });
  assert.equal(withToken, 200);
  // A listener on all addresses is meant to be reached by name: not checked unless names are given
  const wide = await testGateway({ admin: { listen: "0.0.0.0:0", token: "test-admin-token" }, variants: [{ name: "control", url: a.url }, { name: "treatment", url: b.url }] });
  try {
    const wideUrl = { adminUrl: `http://127.0.0.1:${new URL(wide.adminUrl).port}` };
    assert.equal((await ask(wideUrl, "POST", "/v1/events", "abgate-service:8081", JSON.stringify({ unit: "u", event: "watched" }))).status, 200);
  } finally {
    await wide.close();
  }
  const own = await testGateway({ admin: { listen: "127.0.0.1:0", token: "test-admin-token", allowedHosts: ["abgate.example", ".corp.example"] }, variants: [{ name: "control", url: a.url }, { name: "treatment", url: b.url }] });
  try {
    for (const host of ["abgate.example", "ABGATE.example:80", "abgate.example.", "dash.corp.example", "corp.example"]) assert.equal((await ask(own, "GET", "/v1/experiment", host)).status, 200, host);
    assert.equal((await ask(own, "GET", "/v1/experiment", "other.example")).status, 403);
  } finally {
    await own.close();
  }
});

test("a second gateway of the experiment on the same store says so at start (their weights would drift apart); a restart after a clean stop does not", async () => {
  const { pino } = await import("pino");
  const { startGateway } = await import("../src/gateway.ts");
  const variants = [{ name: "control", url: a.url }, { name: "treatment", url: b.url }];
  const first = await testGateway({ experiment: "shared", variants });
  const warnings = async () => {
    const lines: { level: number; msg: string; otherAdmin?: string }[] = [];
    const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
    const { config, dir } = testConfig({ experiment: "shared", store: first.config.store, variants });
    const gw = await startGateway(config, { log });
    await gw.stop();
    rmSync(dir, { recursive: true, force: true });
    return lines.filter((l) => l.level === 40 && /^another abgate serves this experiment on this store/.test(l.msg));
  };
  try {
    const second = await warnings();
    assert.equal(second.length, 1);
    assert.equal(second[0]!.otherAdmin, first.adminUrl);
  } finally {
    await first.close();
  }
  // (the first stopped cleanly, and so did the second: nothing to warn of)
  const { config, dir } = testConfig({ experiment: "shared", variants });
  rmSync(dir, { recursive: true, force: true });
  void config;
});

test("a gateway killed on this host (its note recent, its process gone, or its pid another process's) is not taken for a second one at the restart; a live one still is", async () => {
  const { pino } = await import("pino");
  const { startGateway } = await import("../src/gateway.ts");
  const { hostname } = await import("node:os");
  const { spawnSync } = await import("node:child_process");
  const { ownerLabel } = await import("../src/owner.ts");
  const variants = [{ name: "control", url: a.url }, { name: "treatment", url: b.url }];
  const { config, dir } = testConfig({ experiment: "killed", variants });
  const deadPid = spawnSync(process.execPath, ["-e", ""]).pid!;
  const warned = async (note: Record<string, unknown>) => {
    const store = openStore(config.store);
    await store.init();
    await store.setState("killed", "gateway", JSON.stringify({ id: "earlier", admin: "http://127.0.0.1:1", at: Date.now() - 5_000, ...note }));
    await store.close();
    const lines: { level: number; msg: string }[] = [];
    const gw = await startGateway(config, { log: pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) }) });
    await gw.stop();
    return lines.some((l) => l.level === 40 && /^another abgate serves this experiment/.test(l.msg));
  };
  try {
    const [, , ticks] = ownerLabel().split("/");
    assert.equal(await warned({ owner: `${hostname()}/${deadPid}/1` }), false, "killed here: no warning");
    // a container's restart: pid 1 (here this process's pid) again, but started later
    assert.equal(await warned({ owner: `${hostname()}/${process.pid}/${Number(ticks) - 1}` }), false, "its pid is now another process");
    assert.equal(await warned({ owner: ownerLabel() }), true, "its process runs: a second gateway");
    assert.equal(await warned({ owner: `another-host/${deadPid}/1` }), true, "on another host its pid says nothing");
    assert.equal(await warned({ pid: deadPid, host: hostname() }), false, "the version before's note (host and pid): killed here");
    assert.equal(await warned({ pid: deadPid }), true, "a note without a host: warned as before");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("bandit: a weight change saves the weights in force, not the configured ones (a restart then resumes them)", async () => {
  const { startGateway } = await import("../src/gateway.ts");
  const variants = [{ name: "control", url: a.url }, { name: "treatment", url: b.url }];
  const { config, dir } = testConfig({ experiment: "bandit-put", strategy: { kind: "bandit", burnInUnits: 10 }, variants, metrics: [{ name: "watched", kind: "conversion", event: "watched" }] });
  // the history the first update reads: treatment converts 10 times as often
  const store = openStore(config.store);
  await store.init();
  const T = Date.now() - 60_000;
  const rows = Array.from({ length: 1000 }, (_, i) => {
    const v = i % 2 ? "treatment" : "control";
    return { experiment: "bandit-put", ts: T + i, requestId: `r${i}`, unit: `u${i}`, assigned: v, served: v, replica: `${v}-0`, status: 200, latencyMs: 1, forced: false };
  });
  await store.writeExposures(rows);
  await store.writeEvents(rows.filter((r, i) => (r.assigned === "treatment" ? i % 5 === 1 : i % 50 === 0)).map((r) => ({ experiment: "bandit-put", unit: r.unit, event: "watched", value: null, ts: T + 30_000, requestId: null })));
  await store.close();
  const gw = await startGateway(config, { log: (await import("../src/log/index.ts")).silentLogger });
  try {
    const live = async () => ((await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { name: string; weight: number }[] }).variants;
    let before: { name: string; weight: number }[] = [];
    // the first update (at start) moved the split towards treatment; the configured weights are 1 and 1
    const moved = (vs: { name: string; weight: number }[]) => (vs.find((v) => v.name === "control")?.weight ?? 1) < 0.1;
    for (let i = 0; i < 100 && !moved(before); i++) {
      before = await live();
      if (!moved(before)) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(moved(before), JSON.stringify(before));
    // a change of nothing: the configured weights again
    assert.equal((await admin(gw, "PUT", "/v1/weights", { control: 1, treatment: 1 })).status, 200);
    assert.deepEqual(await live(), before, "the split in force stays");
    const saved = JSON.parse((await gw.store.getState("bandit-put", "strategy"))!) as { weights: Record<string, number> };
    // before: { control: 1, treatment: 1 }, which a restart then put in force until the first update
    assert.deepEqual(saved.weights, Object.fromEntries(before.map((v) => [v.name, v.weight])));
  } finally {
    await gw.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
