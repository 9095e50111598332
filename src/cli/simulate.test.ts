import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { createServer as createTcpServer, type AddressInfo } from "node:net";
import { runCli } from "../../test/helpers/cli.ts";
import { generate } from "../../examples/recommender/data/synth.js";
import { InvalidArgumentError } from "../errors.ts";
import { simulate } from "./simulate.ts";

const data = generate();

/**
 * A real HTTP server standing in for the proxy (answers /recommend with the movies best matching the user's
 * hidden taste for users of "good", the worst for "bad") and the admin API (records POST /v1/events).
 */
async function fakeAbgate(opts: { failEvery?: number } = {}) {
  const users = new Map(data.users.map((u) => [u.id, u]));
  const posted: { auth?: string; events: { unit: string; event: string; value: number; requestId?: string }[] }[] = [];
  let n = 0;
  const server: Server = createServer((req, res) => {
    const url = new URL(req.url!, "http://x");
    if (req.method === "POST" && url.pathname === "/v1/events") {
      let body = "";
      req.on("data", (c) => (body += c));
      req.on("end", () => {
        const events = JSON.parse(body);
        posted.push({ auth: req.headers.authorization, events });
        res.end(JSON.stringify({ accepted: events.length }));
      });
      return;
    }
    if (req.url!.split("?")[0] !== "/recommend") return void res.writeHead(404).end(`no ${req.url}`);
    n++;
    if (opts.failEvery && n % opts.failEvery === 0) {
      res.writeHead(502).end("bad gateway");
      return;
    }
    const user = users.get(String(req.headers["x-user-id"]))!;
    assert.equal(url.searchParams.get("user"), user.id);
    const variant = Number.parseInt(user.id.slice(1), 36) % 2 === 0 ? "good" : "bad";
    const score = (m: (typeof data.movies)[number]) => m.genres.reduce((s, g, i) => s + g * user.taste[i], 0);
    const ranked = [...data.movies].sort((a, b) => (variant === "good" ? score(b) - score(a) : score(a) - score(b)));
    res.setHeader("x-abgate-variant", variant);
    res.setHeader("x-abgate-request-id", `r${n}`);
    res.end(JSON.stringify({ items: ranked.slice(0, Number(url.searchParams.get("k"))).map((m) => ({ id: m.id })) }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, posted, requests: () => n, close: () => new Promise<void>((r) => server.close(() => r())) };
}

test("simulate: bounded requests, per-variant counts, watched events posted in batches with the token", async (t) => {
  const fake = await fakeAbgate();
  t.after(fake.close);
  const progress: number[] = [];
  const r = await simulate({
    proxyUrl: fake.url,
    adminUrl: fake.url,
    token: "tok",
    users: 400,
    requests: 1200,
    durationMs: 60_000,
    concurrency: 8,
    seed: 3,
    batchSize: 50,
    onProgress: (p) => progress.push(p.requests),
  });
  assert.equal(r.requests, 1200);
  assert.equal(r.ok, 1200);
  assert.equal(r.failed, 0);
  assert.equal(r.byVariant.good.requests + r.byVariant.bad.requests, 1200);
  assert.ok(r.byVariant.good.units + r.byVariant.bad.units <= 400);
  // taste decides: the well-matched lists are watched more often
  const rate = (v: string) => r.byVariant[v].watched / r.byVariant[v].requests;
  assert.ok(rate("good") > rate("bad") * 1.3, `${rate("good")} vs ${rate("bad")}`);
  const events = fake.posted.flatMap((p) => p.events);
  assert.equal(events.length, r.watched);
  assert.equal(r.eventsPosted, r.watched);
  assert.ok(fake.posted.every((p) => p.auth === "Bearer tok" && p.events.length <= 50));
  assert.ok(events.every((e) => e.event === "watched" && e.value > 0 && /^r\d+$/.test(e.requestId!)));
  assert.equal(progress.at(-1), 1200);
});

test("simulate: failed requests are counted, not thrown; the time bound stops it", async (t) => {
  const fake = await fakeAbgate({ failEvery: 10 });
  t.after(fake.close);
  const r = await simulate({ proxyUrl: fake.url, adminUrl: fake.url, users: 50, requests: 300, durationMs: 60_000, concurrency: 4, seed: 1 });
  assert.equal(r.failed, 30);
  assert.equal(r.ok, 270);
  assert.match(r.failures[0], /502/);
  const timed = await simulate({ proxyUrl: fake.url, adminUrl: fake.url, users: 50, requests: 10_000_000, durationMs: 300, concurrency: 2, seed: 1 });
  assert.ok(timed.requests < 10_000_000 && timed.elapsedMs < 5_000, `${timed.requests} in ${timed.elapsedMs} ms`);
});

test("simulate: another service's answers (not a recommender's JSON) are successes without events", async (t) => {
  let posted = 0;
  let answered = 0;
  const server: Server = createServer((req, res) => {
    if (req.method === "POST") {
      posted++;
      return void res.end('{"accepted":0}');
    }
    // plain text, JSON of another shape, JSON with items that are not movies
    const n = answered++ % 3;
    res.end(n === 0 ? "hello from a model" : n === 1 ? '{"prediction": 0.7}' : '{"items": [1, null, {"id": 7}]}');
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const r = await simulate({ proxyUrl: url, adminUrl: url, users: 30, requests: 60, durationMs: 60_000, concurrency: 2, seed: 1 });
  assert.equal(r.failed, 0, r.failures[0]);
  assert.equal(r.ok, 60);
  assert.equal(r.watched, 0);
  assert.equal(posted, 0);
});

test("simulate: a --proxy ending in / asks for /recommend, not //recommend", async (t) => {
  const fake = await fakeAbgate();
  t.after(fake.close);
  const r = await simulate({ proxyUrl: `${fake.url}/`, adminUrl: fake.url, users: 20, requests: 40, durationMs: 60_000, concurrency: 2, seed: 1 });
  assert.equal(r.failed, 0, r.failures[0]);
  assert.equal(r.ok, 40);
});

test("simulate: more users than the data set knows is an InvalidArgumentError", async () => {
  await assert.rejects(
    simulate({ proxyUrl: "http://127.0.0.1:1", adminUrl: "http://127.0.0.1:1", users: data.users.length + 1, durationMs: 10, concurrency: 1, seed: 1 }),
    InvalidArgumentError,
  );
});

test("simulate: concurrency below 1, or not whole, is an InvalidArgumentError, before any request", async (t) => {
  const fake = await fakeAbgate();
  t.after(fake.close);
  for (const concurrency of [0, -1, 1.5]) {
    await assert.rejects(
      simulate({ proxyUrl: fake.url, adminUrl: fake.url, users: 5, requests: 5, durationMs: 1_000, concurrency, seed: 1 }),
      (err: Error) => err instanceof InvalidArgumentError && err.message === `concurrency must be a positive integer (got ${concurrency})`,
    );
  }
  assert.equal(fake.requests(), 0);
});

test("abgate simulate --concurrency 0 is a usage error (exit 2), like --users 0, and sends nothing", async (t) => {
  const fake = await fakeAbgate();
  t.after(fake.close);
  for (const [option, name] of [["--concurrency", "concurrency"], ["--users", "users"]]) {
    const res = await runCli(["simulate", "--proxy", fake.url, "--admin", fake.url, "--users", "5", "--requests", "10", "--duration", "10", option, "0"]);
    assert.equal(res.code, 2, `${option} 0: ${res.stdout}\n${res.stderr}`);
    assert.equal(res.stdout, "", "nothing ran");
    assert.equal(fake.requests(), 0);
    assert.match(res.stderr, new RegExp(`^abgate: ${name} must be a positive integer \\(got 0\\)`), res.stderr);
  }
});

test("abgate simulate: --proxy or --admin that is not an http(s) URL is a usage error (exit 2) naming it, as for the admin commands", async (t) => {
  const fake = await fakeAbgate();
  t.after(fake.close);
  // (not "": the command reads an empty --proxy as not given, and takes the config's address instead)
  for (const bad of ["nonsense", "ftp://127.0.0.1:8080", "http://"]) {
    for (const [option, of] of [["--proxy", "abgate's proxy"], ["--admin", "abgate's admin API"]]) {
      const urls = { "--proxy": fake.url, "--admin": fake.url, [option]: bad };
      const res = await runCli(["simulate", "--proxy", urls["--proxy"], "--admin", urls["--admin"], "--users", "5", "--requests", "10", "--duration", "10"]);
      assert.equal(res.code, 2, `${option} ${JSON.stringify(bad)}: ${res.stdout}\n${res.stderr}`);
      assert.equal(res.stdout, "", "nothing ran");
      assert.equal(res.stderr, `abgate: ${option} ${JSON.stringify(bad)}: expected an http(s) URL of ${of}, e.g. http://127.0.0.1:${option === "--proxy" ? 8080 : 8081}\n`);
    }
  }
  assert.equal(fake.requests(), 0);
});

test("abgate simulate: exit 1, saying why, when no request succeeded", async () => {
  // A port that was just free: nothing listens there, so every request is refused.
  const probe = createTcpServer();
  await new Promise<void>((r) => probe.listen(0, "127.0.0.1", r));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
  const url = `http://127.0.0.1:${port}`;
  const res = await runCli(["simulate", "--proxy", url, "--admin", url, "--users", "5", "--requests", "10", "--duration", "10", "--concurrency", "2"]);
  assert.equal(res.code, 1, `${res.stdout}\n${res.stderr}`);
  assert.match(res.stdout, /0 ok, 10 failed/);
  assert.match(res.stderr, new RegExp(`^abgate: simulate: no request succeeded \\(all 10 requests to ${url} failed; first failure: `, "m"), res.stderr);
});

test("abgate simulate: exit 0 when requests got through, even if some failed", async (t) => {
  const fake = await fakeAbgate({ failEvery: 4 });
  t.after(fake.close);
  const res = await runCli(["simulate", "--proxy", fake.url, "--admin", fake.url, "--users", "5", "--requests", "20", "--duration", "10", "--concurrency", "1"]);
  assert.equal(res.code, 0, `${res.stdout}\n${res.stderr}`);
  assert.match(res.stdout, /15 ok, 5 failed/);
});

test("abgate simulate: a blank token variable does not hide the config's ingest token", async (t) => {
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  // Two fakes, as the proxy and the admin listener must be two addresses: requests go to one, events to the other.
  const proxy = await fakeAbgate();
  const fake = await fakeAbgate();
  t.after(proxy.close);
  t.after(fake.close);
  const dir = mkdtempSync(join(tmpdir(), "abgate-sim-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, "abgate.yaml");
  writeFileSync(file, `experiment: sim\nengine: static\nlisten: ${new URL(proxy.url).host}\nadmin: { listen: ${new URL(fake.url).host}, ingestToken: ingest-tok }\nvariants:\n  - { name: control, url: 'http://127.0.0.1:9' }\n`);
  for (const args of [["-c", file], ["-c", file, "--proxy", proxy.url]]) {
    const res = await runCli(["simulate", ...args, "--users", "5", "--requests", "20", "--duration", "10", "--concurrency", "1"], { env: { ABGATE_INGEST_TOKEN: "", ABGATE_ADMIN_TOKEN: "" } });
    assert.equal(res.code, 0, `${res.stdout}\n${res.stderr}`);
    assert.ok(fake.posted.length > 0 && fake.posted.every((p) => p.auth === "Bearer ingest-tok"), JSON.stringify(fake.posted.map((p) => p.auth)));
    fake.posted.length = 0;
  }
});
