import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBackend } from "./helpers/backends.ts";
import { runCli, startCli } from "./helpers/cli.ts";
import { openStore } from "../src/store/index.ts";
import { SqliteStore } from "../src/store/sqlite/index.ts";
import type { OutcomeEvent } from "../src/store/types.ts";
import { admin, selectFromStore, testGateway } from "./helpers/gateway.ts";

function writeConfig(dir: string, body: string): string {
  const file = join(dir, "abgate.yaml");
  writeFileSync(file, body);
  return file;
}

const ready = /proxy (http:\/\/[^,]+), admin (http:\/\/\S+)/;

test("abgate validate: a good file says ok; a bad one names every key and exits 2", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  const good = writeConfig(dir, "experiment: demo\nengine: static\nvariants:\n  - { name: control, url: 'http://127.0.0.1:9' }\n");
  const ok = await runCli(["validate", "-c", good]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /^ok: experiment demo, engine static/);
  const bad = writeConfig(dir, "experiment: Demo\nengine: kubernetes\nlisten: nowhere\nvariants:\n  - { name: control, weight: -2, url: 'http://127.0.0.1:9', colour: red }\nmetrics:\n  - { name: w, kind: conversion }\n");
  const res = await runCli(["validate", "-c", bad]);
  assert.equal(res.code, 2);
  for (const key of ["experiment:", "engine:", "listen:", "variants[0].weight:", "variants[0].colour: unknown key", "metrics[0].event:"]) assert.ok(res.stderr.includes(key), `${key} in:\n${res.stderr}`);
  const missing = await runCli(["validate", "-c", join(dir, "nope.yaml")]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /cannot read config file/);
  const usage = await runCli(["frobnicate"]);
  assert.equal(usage.code, 2);
  const env = writeConfig(dir, "experiment: ${EXP_NAME}\nengine: static\nvariants:\n  - { name: control, url: '${BACKEND:-http://127.0.0.1:9}' }\n");
  const expanded = await runCli(["validate", "-c", env], { env: { EXP_NAME: "from-env" } });
  assert.match(expanded.stdout, /experiment from-env/);
});

test("SIGTERM drains: in-flight requests finish, exposures are flushed, exit 0", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  const slow = await startBackend("slow", (req, res) => setTimeout(() => res.end("done"), 800));
  const file = writeConfig(
    dir,
    `experiment: drain\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nengine: static\nlogLevel: warn\nvariants:\n  - { name: control, url: '${slow.url}' }\n`,
  );
  const cli = await startCli(["serve", "-c", file], ready);
  const proxyUrl = ready.exec(cli.stdout())![1];
  const inflight = Array.from({ length: 5 }, (_, i) => fetch(`${proxyUrl}/x`, { headers: { "x-user-id": `u${i}` } }).then(async (r) => [r.status, await r.text()]));
  await new Promise((r) => setTimeout(r, 200));
  cli.child.kill("SIGTERM");
  const results = await Promise.all(inflight);
  assert.deepEqual(results, Array.from({ length: 5 }, () => [200, "done"]));
  assert.equal(await cli.exited, 0);
  await assert.rejects(fetch(`${proxyUrl}/x`), "no longer accepting");
  const store = openStore(`sqlite:${join(dir, "a.db")}`);
  await store.init();
  assert.equal((await store.counts("drain")).exposures, 5);
  await store.close();
  await slow.close();
});

test("a second SIGTERM during the drain exits 1 at once, and says what it gave up", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  const slow = await startBackend("slow", (req, res) => setTimeout(() => res.end("done"), 10_000));
  const file = writeConfig(
    dir,
    `experiment: twice\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nengine: static\nlogLevel: warn\nvariants:\n  - { name: control, url: '${slow.url}' }\n`,
  );
  const cli = await startCli(["serve", "-c", file], ready);
  const proxyUrl = ready.exec(cli.stdout())![1];
  const inflight = fetch(`${proxyUrl}/x`, { headers: { "x-user-id": "u" } }).catch(() => "cut");
  await new Promise((r) => setTimeout(r, 300));
  cli.child.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 300));
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exited, 1);
  assert.match(cli.stderr() + cli.stdout(), /second signal: exiting now, without finishing the drain/);
  assert.equal(await inflight, "cut");
  await slow.close();
  rmSync(dir, { recursive: true, force: true });
});

test("SIGKILL right after {accepted: N}: all N events are in the store on restart", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  const backend = await startBackend("b");
  const file = writeConfig(
    dir,
    `experiment: durable\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nengine: static\nlogLevel: warn\nvariants:\n  - { name: control, url: '${backend.url}' }\nmetrics:\n  - { name: watched, kind: conversion, event: watched }\n`,
  );
  const cli = await startCli(["serve", "-c", file], ready);
  const adminUrl = ready.exec(cli.stdout())![2];
  let accepted = 0;
  for (let batch = 0; batch < 5; batch++) {
    const events = Array.from({ length: 1000 }, (_, i) => ({ unit: `u${batch}-${i}`, event: "watched", value: i }));
    const res = await fetch(`${adminUrl}/v1/events`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(events) });
    accepted += ((await res.json()) as { accepted: number }).accepted;
  }
  cli.child.kill("SIGKILL");
  await cli.exited;
  assert.equal(accepted, 5000);
  const store = openStore(`sqlite:${join(dir, "a.db")}`);
  await store.init();
  assert.equal((await store.counts("durable")).events, 5000);
  await store.close();
  await backend.close();
});

for (const [what, port, kill] of [
  ["abgate alone", 23210, (pid: number) => process.kill(pid, "SIGKILL")],
  // as a supervisor or a cancelled CI job does: the reaper must not die with abgate
  ["abgate's whole process group", 23220, (pid: number) => process.kill(-pid, "SIGKILL")],
] as const) {
  test(`SIGKILL of ${what}: its process replicas, and what their commands started, stop too`, async () => {
    const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
    // The server runs under a shell, as npm scripts and `sh -c` commands do: a grandchild of abgate.
    writeFileSync(
      join(dir, "server.js"),
      `require("node:fs").writeFileSync(__dirname + "/pid-" + process.env.PORT, String(process.pid));
       require("node:http").createServer((q, s) => s.end("ok")).listen(Number(process.env.PORT), "127.0.0.1");`,
    );
    const file = writeConfig(
      dir,
      `experiment: orphans\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nengine: process\nlogLevel: warn\nports: { base: ${port} }\n` +
        `variants:\n  - { name: control, command: [sh, -c, "node server.js & wait"], replicas: 2 }\n`,
    );
    const cli = await startCli(["serve", "-c", file], ready, { detached: true });
    const { readFileSync, existsSync } = await import("node:fs");
    const { alive, until } = await import("./helpers/processes.ts");
    const pids = await until("both replicas' pids", () => {
      const files = [port, port + 1].map((p) => join(dir, `pid-${p}`));
      return files.every((f) => existsSync(f) && readFileSync(f, "utf8") !== "") ? files.map((f) => Number(readFileSync(f, "utf8"))) : undefined;
    });
    assert.ok(pids.every(alive));
    kill(cli.child.pid!);
    await cli.exited;
    try {
      await until("the replicas' end", () => (pids.some(alive) ? undefined : true), 8000);
    } finally {
      for (const pid of pids) if (alive(pid)) process.kill(pid, "SIGKILL");
    }
    rmSync(dir, { recursive: true, force: true });
  });
}

test("validate and up name a variant whose build context, Dockerfile or cwd is missing (exit 2), before anything runs", async () => {
  const { mkdirSync } = await import("node:fs");
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  mkdirSync(join(dir, "no-dockerfile"));
  const file = writeConfig(
    dir,
    "experiment: ctx\nengine: docker\nvariants:\n  - { name: control, build: ./no-dockerfile }\n  - { name: treatment, build: ./missing }\n",
  );
  for (const command of ["validate", "up"]) {
    const res = await runCli([command, "-c", file]);
    assert.equal(res.code, 2, `${command}: ${res.stdout}${res.stderr}`);
    assert.match(res.stderr, /variants\[0\]\.build: a Dockerfile in .*no-dockerfile; there is none/);
    assert.match(res.stderr, /variants\[1\]\.build: a folder with a Dockerfile; .*missing does not exist/);
  }
  // A process replica's cwd: spawn said "spawn node ENOENT", as if node were missing. A command that cannot run:
  // up waited out its whole health timeout.
  const procs = writeConfig(
    dir,
    "experiment: ctx\nengine: process\nvariants:\n  - { name: control, command: [node, s.js], cwd: ./nowhere }\n" +
      "  - { name: treatment, command: [/nonexistent/model-server] }\n  - { name: other, command: [no-such-model-server, --port, '1'] }\n  - { name: fine, command: [node, s.js] }\n",
  );
  for (const command of ["validate", "up", "serve"]) {
    const res = await runCli([command, "-c", procs]);
    assert.equal(res.code, 2, `${command}: ${res.stdout}${res.stderr}`);
    assert.match(res.stderr, /variants\[0\]\.cwd: an existing folder; .*nowhere is not one/);
    assert.match(res.stderr, /variants\[1\]\.command: a command that can run; there is no executable file \/nonexistent\/model-server \(from /);
    assert.match(res.stderr, /variants\[2\]\.command: a command that can run; there is no executable no-such-model-server in PATH/);
    assert.doesNotMatch(res.stderr, /variants\[3\]/);
  }
  rmSync(dir, { recursive: true, force: true });
});

test("numeric options are checked before anything runs: a bad --tail or --wait-timeout is a usage error (exit 2)", async () => {
  for (const [args, re] of [
    [["logs", "control", "--tail", "abc"], /option '--tail <n>' argument 'abc' is invalid\. expected a whole number from 0 to 2147483647 or "all", got "abc"/],
    [["logs", "control", "--tail", "-2"], /argument '-2' is invalid/],
    [["up", "--wait-timeout", "abc"], /option '--wait-timeout <ms>' argument 'abc' is invalid\. expected a whole number from 1 to 2147483647/],
    [["up", "--wait-timeout", "3000000000"], /argument '3000000000' is invalid/], // a timer fires such a delay after 1 ms
    [["up", "--wait-timeout", "0"], /argument '0' is invalid/],
  ] as const) {
    const res = await runCli([...args, "-c", "/nonexistent/abgate.yaml"]);
    assert.equal(res.code, 2, `${args.join(" ")}: ${res.stderr}`);
    assert.match(res.stderr, re);
  }
});

test("engine process: replicas get their PORT, a crashed one is restarted and rejoins, all stop on SIGTERM", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  writeFileSync(
    join(dir, "server.js"),
    `const http = require("node:http");
     http.createServer((req, res) => {
       if (req.url === "/crash") { res.end("bye"); setTimeout(() => process.exit(3), 10); return; }
       res.end(JSON.stringify({ variant: process.env.ABGATE_VARIANT, port: process.env.PORT, pid: process.pid }));
     }).listen(Number(process.env.PORT), "127.0.0.1");`,
  );
  const file = writeConfig(
    dir,
    `experiment: procs\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nengine: process\nlogLevel: warn\nports: { base: 23100 }\n` +
      `allowForce: true\nvariants:\n  - { name: control, command: [node, server.js], replicas: 2, health: { path: /, intervalMs: 100, timeoutMs: 500, rise: 1, fall: 1 } }\n` +
      `  - { name: treatment, command: [node, server.js], replicas: 1, health: { path: /, intervalMs: 100, timeoutMs: 500, rise: 1, fall: 1 } }\n`,
  );
  const cli = await startCli(["up", "-c", file], ready);
  const proxyUrl = ready.exec(cli.stdout())![1];
  const ask = async (variant: string) => (await (await fetch(`${proxyUrl}/`, { headers: { "x-user-id": "u", "x-abgate-force-variant": variant } })).json()) as { variant: string; port: string; pid: number };
  const first = await ask("treatment");
  assert.equal(first.variant, "treatment");
  assert.equal(first.port, "23102");
  await (await fetch(`${proxyUrl}/crash`, { headers: { "x-user-id": "u", "x-abgate-force-variant": "treatment" } })).text();
  let again: { pid: number } | undefined;
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    const res = await fetch(`${proxyUrl}/`, { headers: { "x-user-id": "u", "x-abgate-force-variant": "treatment" } });
    if (res.status === 200) {
      again = (await res.json()) as { pid: number };
      break;
    }
    await res.arrayBuffer();
  }
  assert.ok(again, "the crashed replica came back");
  assert.notEqual(again.pid, first.pid);
  cli.child.kill("SIGTERM");
  assert.equal(await cli.exited, 0);
  await assert.rejects(fetch(`http://127.0.0.1:${first.port}/`), "replica processes are gone");
});

test("up waits for every replica of the config: a variant whose command cannot start fails the wait, named", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  writeFileSync(join(dir, "server.js"), `require("node:http").createServer((q, s) => s.end("ok")).listen(Number(process.env.PORT), "127.0.0.1");`);
  const file = writeConfig(
    dir,
    `experiment: missing\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nengine: process\nlogLevel: error\nports: { base: 23160 }\n` +
      `variants:\n  - { name: control, command: [node, server.js], replicas: 2 }\n  - { name: treatment, command: [node, -e, "console.error('fatal: cannot load model'); process.exit(3)"], replicas: 2 }\n`,
  );
  const res = await runCli(["up", "-c", file, "--wait-timeout", "3000"], { timeoutMs: 30_000 });
  assert.equal(res.code, 1, res.stdout + res.stderr);
  assert.match(res.stdout, /waiting for 4 replicas to become healthy/);
  assert.match(res.stderr, /not healthy after 3000 ms: .*treatment-0 \(not running: it exited, or never started\), treatment-1 \(not running/);
  // and how they ended, with their last words
  assert.match(res.stderr, /\n {2}treatment-0: exited with code 3 after \d+\.\d s; last output: fatal: cannot load model\n/);
  assert.match(res.stderr, /\n {2}treatment-1: exited with code 3 after/);
  assert.doesNotMatch(res.stderr, /control-0:/);
  rmSync(dir, { recursive: true, force: true });
});

test("up says at once that a replica crash-loops, and stops waiting 30 s into the wait if it is still not healthy (not after --wait-timeout)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  writeFileSync(join(dir, "server.js"), `require("node:http").createServer((q, s) => s.end("ok")).listen(Number(process.env.PORT), "127.0.0.1");`);
  const file = writeConfig(
    dir,
    `experiment: looping\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nengine: process\nlogLevel: error\nports: { base: 23170 }\n` +
      `variants:\n  - { name: control, command: [node, server.js] }\n  - { name: treatment, command: [node, -e, "console.error('fatal: cannot load model'); process.exit(3)"] }\n`,
  );
  const t0 = Date.now();
  const res = await runCli(["up", "-c", file, "--wait-timeout", "120000"], { timeoutMs: 60_000 });
  const tookMs = Date.now() - t0;
  assert.equal(res.code, 1, res.stdout + res.stderr);
  assert.ok(tookMs < 50_000, `exited after ${tookMs} ms (30 s of grace into the wait)`);
  assert.match(res.stdout, /replica treatment-0 is crash-looping: 5 quick exits in a row/, "said at once");
  assert.match(res.stderr, /replica treatment-0 is crash-looping and not healthy 3\d s into the health wait: \d+ quick exits in a row, the last exited with code 3 after \d+\.\d s; last output:\n(.*\n)*fatal: cannot load model/);
  rmSync(dir, { recursive: true, force: true });
});

test("serve refuses a listen address in use before it starts any process replica", async () => {
  const { createServer } = await import("node:net");
  const { existsSync } = await import("node:fs");
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen({ host: "127.0.0.1", port: 0 }, resolve));
  const port = (busy.address() as { port: number }).port;
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  try {
    writeFileSync(join(dir, "server.js"), `require("node:fs").writeFileSync(__dirname + "/started", "yes");`);
    const file = writeConfig(dir, `experiment: busy\nlisten: 127.0.0.1:${port}\nadmin: { listen: 127.0.0.1:0 }\nstore: sqlite:./a.db\nengine: process\nports: { base: 23190 }\nvariants:\n  - { name: control, command: [node, server.js] }\n`);
    const res = await runCli(["serve", "-c", file]);
    assert.equal(res.code, 1, res.stderr);
    assert.match(res.stderr, new RegExp(`listen 127\\.0\\.0\\.1:${port} is in use: is this experiment already running`));
    assert.equal(existsSync(join(dir, "started")), false, "no replica was started");
  } finally {
    busy.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("engine process without health: `up` waits until the replica accepts connections, and its first request is served", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  // A model that loads for 1.5 s before it listens.
  writeFileSync(
    join(dir, "server.js"),
    `setTimeout(() => require("node:http").createServer((req, res) => res.end("ok " + process.env.PORT)).listen(Number(process.env.PORT), "127.0.0.1"), 1500);`,
  );
  const file = writeConfig(
    dir,
    `experiment: late\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: t }\nstore: sqlite:./a.db\nengine: process\nlogLevel: warn\nports: { base: 23140 }\n` +
      `variants:\n  - { name: control, command: [node, server.js] }\n`,
  );
  const started = Date.now();
  const cli = await startCli(["up", "-c", file], ready);
  const readyAfterMs = Date.now() - started;
  try {
    assert.match(cli.stdout(), /waiting for 1 replicas to become healthy\.\.\.\n0\/1 replicas healthy\nall 1 replicas healthy/, "progress while waiting");
    assert.ok(readyAfterMs >= 1500, `ready after ${readyAfterMs} ms, before the replica listened`);
    const res = await fetch(`${ready.exec(cli.stdout())![1]}/`, { headers: { "x-user-id": "u" } });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), "ok 23140");
  } finally {
    cli.child.kill("SIGTERM");
    assert.equal(await cli.exited, 0);
  }
});

test("up opens the proxy only once its replicas are healthy: no client is answered 503 (and recorded) while they start", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  writeFileSync(
    join(dir, "server.js"),
    `setTimeout(() => require("node:http").createServer((req, res) => res.end("ok")).listen(Number(process.env.PORT), "127.0.0.1"), 1500);`,
  );
  const file = writeConfig(
    dir,
    `experiment: late\nlisten: 127.0.0.1:23150\nadmin: { listen: 127.0.0.1:23151, token: t }\nstore: sqlite:./a.db\nengine: process\nlogLevel: warn\nports: { base: 23152 }\n` +
      `variants:\n  - { name: control, command: [node, server.js] }\n`,
  );
  // A client that keeps trying while abgate starts: before the replica is healthy it must find no proxy at all.
  const answers: (number | string)[] = [];
  let polling = true;
  const poll = (async () => {
    while (polling) {
      try {
        answers.push((await fetch("http://127.0.0.1:23150/", { headers: { "x-user-id": "u" } })).status);
      } catch (err) {
        answers.push(((err as Error).cause as NodeJS.ErrnoException | undefined)?.code ?? "error");
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  const cli = await startCli(["up", "-c", file], ready);
  polling = false;
  await poll;
  try {
    assert.ok(answers.length >= 5, `polled ${answers.length} times during the start`);
    assert.deepEqual([...new Set(answers.filter((a) => a !== 200))], ["ECONNREFUSED"], `what the client got while abgate started: ${answers.join(",")}`);
    const res = await fetch("http://127.0.0.1:23150/", { headers: { "x-user-id": "u" } });
    assert.equal(res.status, 200);
  } finally {
    cli.child.kill("SIGTERM");
    assert.equal(await cli.exited, 0);
  }
  const statuses = selectFromStore({ config: { store: `sqlite:${join(dir, "a.db")}` } } as never, "SELECT status, count(*) AS n FROM exposures GROUP BY status");
  // (the poller's last request may have met the proxy just opened, before the ready line stopped it: answered 200;
  // never one before a refusal)
  const servedToPoller = answers.filter((a) => a === 200).length;
  assert.ok(answers.slice(answers.length - servedToPoller).every((a) => a === 200), `200s only at the end: ${answers.join(",")}`);
  assert.deepEqual(statuses, [{ status: 200, n: 1 + servedToPoller }], "an exposure for each request served after the start, none before");
  rmSync(dir, { recursive: true, force: true });
});

/** A real SQLite store whose event writes wait for `release()`: `started` resolves once one is in flight. */
function heldEventsStore(path: string): { store: SqliteStore; started: Promise<void>; release: () => void } {
  let writeStarted!: () => void;
  const started = new Promise<void>((r) => (writeStarted = r));
  let release!: () => void;
  const go = new Promise<void>((r) => (release = r));
  class HeldStore extends SqliteStore {
    override async writeEvents(rows: OutcomeEvent[]): Promise<void> {
      writeStarted();
      await go;
      return super.writeEvents(rows);
    }
  }
  return { store: new HeldStore(path), started, release };
}

test("stop drains the admin listener: a POST /v1/events whose write is in flight gets its {accepted: N}, stored once", async () => {
  const backend = await startBackend("b");
  const dir = mkdtempSync(join(tmpdir(), "abgate-drain-"));
  const { store, started, release } = heldEventsStore(join(dir, "held.db"));
  const gw = await testGateway({ limits: { drainTimeoutMs: 10_000 }, variants: [{ name: "control", url: backend.url }] }, { store });
  const events = Array.from({ length: 250 }, (_, i) => ({ unit: `u${i}`, event: "watched", value: i }));
  const answer = admin(gw, "POST", "/v1/events", events).then(
    async (r) => [r.status, await r.json()] as const,
    (err: Error & { cause?: { code?: string } }) => ["client error", err.cause?.code ?? err.message] as const,
  );
  await started;
  const stopped = gw.stop();
  let stoppedEarly = false;
  void stopped.then(() => (stoppedEarly = true));
  // Long enough for a stop that cuts connections to have done so.
  await new Promise((r) => setTimeout(r, 200));
  await assert.rejects(fetch(`${gw.adminUrl}/healthz`), "no new admin connections while draining");
  assert.equal(stoppedEarly, false, "stop waits for the in-flight request");
  release();
  assert.deepEqual(await answer, [200, { accepted: 250 }]);
  await stopped;
  assert.equal((await store.counts("test")).events, 250);
  await store.close();
  await gw.close();
  rmSync(dir, { recursive: true, force: true });
  await backend.close();
});

test("stop waits for admin requests no longer than the drain deadline", async () => {
  const backend = await startBackend("b");
  const dir = mkdtempSync(join(tmpdir(), "abgate-drain-"));
  const { store, started, release } = heldEventsStore(join(dir, "held.db"));
  const gw = await testGateway({ limits: { drainTimeoutMs: 300 }, variants: [{ name: "control", url: backend.url }] }, { store });
  const answer = admin(gw, "POST", "/v1/events", [{ unit: "u", event: "watched" }]).then(
    (r) => r.status,
    () => "cut off",
  );
  await started;
  const t0 = Date.now();
  await gw.stop();
  const tookMs = Date.now() - t0;
  assert.ok(tookMs >= 250 && tookMs < 3_000, `stop took ${tookMs} ms`);
  assert.equal(await answer, "cut off");
  release();
  await store.close();
  await gw.close();
  rmSync(dir, { recursive: true, force: true });
  await backend.close();
});

test("an answer still coming at the drain deadline is cut with a reset, so an HTTP/1.0 client cannot take it for a whole one", async () => {
  const { createServer, connect } = await import("node:net");
  // A replica that begins a chunked answer and stops: an HTTP/1.0 client gets it close-delimited.
  const replica = createServer((s) => {
    s.on("error", () => {});
    s.once("data", () => s.write("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"));
  });
  await new Promise<void>((r) => replica.listen(0, "127.0.0.1", () => r()));
  const gw = await testGateway({ limits: { drainTimeoutMs: 300 }, variants: [{ name: "control", url: `http://127.0.0.1:${(replica.address() as { port: number }).port}` }] });
  const u = new URL(gw.proxyUrl);
  const client = connect(Number(u.port), u.hostname);
  let got = "";
  client.on("data", (c) => (got += c.toString("latin1")));
  const ended = new Promise<string>((resolve) => {
    client.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    client.on("end", () => resolve("FIN"));
  });
  client.write("GET / HTTP/1.0\r\nhost: x\r\nx-user-id: u\r\n\r\n");
  const deadline = Date.now() + 5_000;
  while (!got.includes("hello") && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.match(got, /^HTTP\/1\.1 200 [^]*\r\n\r\nhello$/);
  const stopping = Date.now();
  await gw.stop();
  assert.ok(Date.now() - stopping < 5_000, `drained in ${Date.now() - stopping} ms: limits.drainTimeoutMs (300) from the config, not 30 s`);
  assert.equal(await ended, "ECONNRESET");
  client.destroy();
  replica.close();
  await gw.close();
});

test("requests and handshakes still waiting at the drain deadline are drained first, then cut, and each is recorded", async () => {
  const { createServer, connect } = await import("node:net");
  // A replica that reads requests and never answers.
  const held = new Set<import("node:net").Socket>();
  const replica = createServer((s) => {
    held.add(s);
    s.on("error", () => {});
  });
  await new Promise<void>((r) => replica.listen(0, "127.0.0.1", () => r()));
  const gw = await testGateway({ variants: [{ name: "control", url: `http://127.0.0.1:${(replica.address() as { port: number }).port}` }], limits: { responseTimeoutMs: 60_000, drainTimeoutMs: 300 } });
  const u = new URL(gw.proxyUrl);
  const send = (text: string) => {
    const c = connect(Number(u.port), u.hostname);
    c.on("error", () => {});
    c.write(text);
    return c;
  };
  const clients = [
    send("GET /slow HTTP/1.1\r\nhost: x\r\nx-user-id: plain\r\n\r\n"),
    send("GET /ws HTTP/1.1\r\nhost: x\r\nx-user-id: socket\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"),
  ];
  const deadline = Date.now() + 5_000;
  while (held.size < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(held.size, 2, "both reached the replica");
  const t0 = Date.now();
  await gw.stop();
  assert.ok(Date.now() - t0 >= 250, `the handshake was waited for too (stop took ${Date.now() - t0} ms)`);
  for (const c of clients) c.destroy();
  for (const s of held) s.destroy();
  replica.close();
  const rows = selectFromStore(gw, "SELECT unit, status FROM exposures ORDER BY unit");
  await gw.close();
  // abgate cut them, not their clients: not nginx's 499 "client closed request", but 503
  assert.deepEqual(rows, [
    { unit: "plain", status: 503 },
    { unit: "socket", status: 503 },
  ]);
});

test("a closed stdout (abgate up | head -1) does not crash abgate: it serves on and drains on SIGTERM", async () => {
  const { spawn } = await import("node:child_process");
  const { CLI } = await import("./helpers/cli.ts");
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  const backend = await startBackend("b");
  const file = writeConfig(
    dir,
    `experiment: piped\nlisten: 127.0.0.1:23240\nadmin: { listen: 127.0.0.1:23241, token: t }\nstore: sqlite:./a.db\nengine: static\nlogLevel: info\nvariants:\n  - { name: control, url: '${backend.url}' }\n`,
  );
  const child = spawn(process.execPath, ["--import", "tsx", CLI, "serve", "-c", file], { stdio: ["ignore", "pipe", "pipe"] });
  // the reader goes away at once, as `head -1` does after its line
  child.stdout.destroy();
  let stderr = "";
  child.stderr.on("data", (c) => (stderr += c));
  const exited = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  let served = false;
  const deadline = Date.now() + 20_000;
  while (!served && Date.now() < deadline) {
    served = await fetch("http://127.0.0.1:23240/x", { headers: { "x-user-id": "u" } }).then((r) => r.status === 200, () => false);
    if (!served) await new Promise((r) => setTimeout(r, 100));
  }
  assert.ok(served, `abgate served after its stdout closed\n${stderr}`);
  child.kill("SIGTERM");
  assert.equal(await exited, 0, stderr);
  assert.doesNotMatch(stderr, /EPIPE|unexpected exception/);
  await backend.close();
  rmSync(dir, { recursive: true, force: true });
});

test("report: a store that does not exist is an error, not a new empty one; an existing one is reported", async () => {
  const { existsSync } = await import("node:fs");
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  const file = writeConfig(dir, "experiment: rep\nengine: static\nstore: sqlite:./typo/abgate.db\nvariants:\n  - { name: control, url: 'http://127.0.0.1:9' }\n");
  const missing = await runCli(["report", "-c", file]);
  assert.equal(missing.code, 1, missing.stderr);
  assert.match(missing.stderr, /^abgate: no SQLite store at .*typo\/abgate\.db: abgate up or serve creates it when it starts \(is the config's store: right\?\)/);
  assert.equal(existsSync(join(dir, "typo")), false, "nothing was created");
  const store = openStore(`sqlite:${join(dir, "typo", "abgate.db")}`);
  await store.init();
  await store.close();
  const empty = await runCli(["report", "-c", file]);
  assert.equal(empty.code, 0, empty.stderr);
  assert.match(empty.stdout, /rep/);
  rmSync(dir, { recursive: true, force: true });
});

test("up and serve open the store before they start anything: a store that is not a database starts no replica", async () => {
  const { existsSync } = await import("node:fs");
  const dir = mkdtempSync(join(tmpdir(), "abgate-cli-"));
  writeFileSync(join(dir, "server.js"), `require("node:fs").writeFileSync(__dirname + "/started", "yes");`);
  writeFileSync(join(dir, "not-a-db"), "these are my notes, not a database ".repeat(100));
  const file = writeConfig(dir, `experiment: badstore\nlisten: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nstore: sqlite:./not-a-db\nengine: process\nports: { base: 23250 }\nvariants:\n  - { name: control, command: [node, server.js] }\n`);
  for (const command of ["up", "serve"]) {
    const res = await runCli([command, "-c", file]);
    assert.equal(res.code, 1, `${command}: ${res.stdout}${res.stderr}`);
    assert.match(res.stderr, /not-a-db.*(file is not a database|not a database)/, res.stderr);
    assert.equal(existsSync(join(dir, "started")), false, `${command} started no replica`);
    assert.doesNotMatch(res.stdout, /control-0: started/, `${command} started no replica`);
  }
  rmSync(dir, { recursive: true, force: true });
});

test("stop says when it waits for a report reading the store, so that a pause of seconds does not look hung", async () => {
  const { pino } = await import("pino");
  const { default: Database } = await import("better-sqlite3");
  const lines: { level: number; msg: string; waitMs?: number }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const backend = await startBackend("control");
  const gw = await testGateway({ variants: [{ name: "control", url: backend.url }] }, { log });
  const path = gw.config.store.slice("sqlite:".length);
  let sent = 0;
  /** n more requests, and until the store holds their exposures */
  const exposures = async (n: number) => {
    for (let i = 0; i < n; i++) await (await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": `u${sent++}` } })).arrayBuffer();
    for (;;) {
      const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { counts: { exposures: number } };
      if (view.counts.exposures >= sent) return;
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  let report: InstanceType<typeof Database> | null = null;
  try {
    await exposures(5);
    // abgate report, in the middle of a read of an older snapshot when the gateway stops
    report = new Database(path, { readonly: true });
    report.exec("BEGIN");
    report.prepare("SELECT COUNT(*) FROM units").get();
    await exposures(5);
    const reader = report;
    setTimeout(() => reader.exec("COMMIT"), 300);
    await gw.close();
    const said = lines.filter((l) => /another reader has the store open/.test(l.msg));
    assert.equal(said.length, 1, JSON.stringify(lines.map((l) => l.msg)));
    assert.equal(said[0]!.level, 30, "info: waiting is normal");
    assert.equal(said[0]!.waitMs, 3000);
    assert.deepEqual(lines.filter((l) => /still in its -wal/.test(l.msg)), [], "the read ended in time: nothing left behind");
  } finally {
    if (report?.inTransaction) report.exec("COMMIT");
    report?.close();
    await backend.close();
  }
});
