import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer as createNetServer, type AddressInfo } from "node:net";
import { createServer } from "node:http";
import { startBackend } from "./helpers/backends.ts";
import { admin, selectFromStore, testGateway } from "./helpers/gateway.ts";
import { rawRequest } from "./helpers/raw.ts";

/**
 * A URL nothing listens on. Port 1: below the ephemeral range, so no test server (port 0) and no outgoing
 * connection's local port can take it while the test runs, as could happen to a port just closed.
 */
async function closedPortUrl(): Promise<string> {
  return "http://127.0.0.1:1";
}

/** A TCP server that answers each connection with `reply` (or nothing, when null; "" closes it unanswered). */
async function rawServer(reply: string | null): Promise<{ url: string; connections(): number; close(): Promise<void> }> {
  const sockets = new Set<import("node:net").Socket>();
  let connections = 0;
  const srv = createNetServer((s) => {
    connections++;
    sockets.add(s);
    s.on("error", () => {});
    s.once("data", () => {
      if (reply !== null) s.end(reply);
    });
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  return {
    url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`,
    connections: () => connections,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        srv.close(() => r());
      }),
  };
}

test("a replica that refuses connections: requests are retried on another replica and none fails", async () => {
  const good = await startBackend("good");
  const dead = await closedPortUrl();
  const gw = await testGateway({ variants: [{ name: "control", urls: [dead, good.url] }], limits: { ejectAfterFailures: 3 } });
  try {
    for (let i = 0; i < 40; i++) {
      const res = await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": `u${i}` } });
      assert.equal(res.status, 200);
      await res.arrayBuffer();
    }
    assert.equal(good.requests.length, 40);
    assert.equal(gw.health.state("control-0"), "ejected");
  } finally {
    await gw.close();
    await good.close();
  }
});

test("a replica that closes connections unanswered: bodiless idempotent requests are retried elsewhere, others get 502", async () => {
  const good = await startBackend("good");
  const dropper = await rawServer("");
  // never ejected, so that it keeps being chosen
  const gw = await testGateway({ variants: [{ name: "control", urls: [dropper.url, good.url] }], limits: { ejectAfterFailures: 1000 } });
  const only = await testGateway({ variants: [{ name: "control", url: dropper.url }], limits: { ejectAfterFailures: 1000 } });
  try {
    for (const method of ["GET", "HEAD", "DELETE", "OPTIONS"]) {
      for (let i = 0; i < 10; i++) {
        const res = await fetch(`${gw.proxyUrl}/x`, { method, headers: { "x-user-id": `u${i}` } });
        assert.equal(res.status, 200, `${method} ${i}`);
        await res.arrayBuffer();
      }
    }
    assert.equal(good.requests.length, 40);
    assert.ok(dropper.connections() > 0, "the dropping replica was tried");

    // A body was streamed to the replica and is gone: no retry.
    const before = dropper.connections();
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) {
      const res = await fetch(`${gw.proxyUrl}/x`, { method: "POST", body: "payload", headers: { "x-user-id": `p${i}` } });
      statuses.push(res.status);
      await res.arrayBuffer();
    }
    const dropped = dropper.connections() - before;
    assert.ok(dropped > 0, "some POSTs went to the dropping replica");
    assert.equal(statuses.filter((s) => s === 502).length, dropped, statuses.join(","));
    assert.equal(statuses.filter((s) => s === 200).length, 20 - dropped);
    // A bodiless GET that no replica answers ends with 502 once the retries are spent, not a loop.
    const res = await fetch(`${only.proxyUrl}/x`, { headers: { "x-user-id": "u" } });
    assert.equal(res.status, 502);
    await res.arrayBuffer();
  } finally {
    await gw.close();
    await only.close();
    await good.close();
    await dropper.close();
  }
});

test("no reachable replica: the fallback variant answers and the exposure records both variants", async () => {
  const control = await startBackend("control");
  const dead = await closedPortUrl();
  const gw = await testGateway({
    variants: [
      { name: "control", weight: 0, url: control.url },
      { name: "treatment", weight: 1, url: dead },
    ],
  });
  try {
    for (let i = 0; i < 10; i++) {
      const res = await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": `u${i}` } });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get("x-abgate-variant"), "control");
      await res.arrayBuffer();
    }
    // The dashboard's live table: served by control, and the treatment's own row says where its requests went.
    // (Its rates cover the whole seconds before the current one: the stream is read until a frame made after the
    // second of the last request, which then has them all.)
    const lastSecond = Math.floor(Date.now() / 1000);
    const stream = await fetch(`${gw.adminUrl}/v1/stream`);
    const reader = stream.body!.getReader();
    let text = "";
    let live: { variant: string; requestsPerSecond: number; fallbackPerSecond: number }[] = [];
    const deadline = Date.now() + 5_000;
    for (let ts = 0; Math.floor(ts / 1000) <= lastSecond && Date.now() < deadline; ) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString();
      const frames = [...text.matchAll(/event: live\ndata: (.*)\n/g)];
      if (frames.length > 0) ({ ts, live } = JSON.parse(frames.at(-1)![1]!));
    }
    await reader.cancel();
    const byVariant = new Map(live.map((s) => [s.variant, s]));
    assert.equal(byVariant.get("treatment")?.fallbackPerSecond, 10 / 9, JSON.stringify(live));
    assert.equal(byVariant.get("treatment")?.requestsPerSecond, 0);
    assert.equal(byVariant.get("control")?.requestsPerSecond, 10 / 9);
    assert.equal(byVariant.get("control")?.fallbackPerSecond, 0);
  } catch (err) {
    await control.close(); // (else its server keeps the test process alive)
    throw err;
  } finally {
    await gw.stop();
  }
  const { openStore } = await import("../src/store/index.ts");
  const store = openStore(gw.config.store);
  await store.init();
  const agg = await store.aggregate("test", ["control", "treatment"], []);
  await store.close();
  await control.close();
  const t = agg.variants.find((v) => v.variant === "treatment")!;
  assert.equal(t.requests, 10);
  assert.equal(t.units, 10, "units stay with the variant they were assigned (intention to treat)");
  assert.equal(t.fallbackRequests, 10);
});

test("a request the variant's replica got and dropped is that variant's 502, not served again by the fallback", async () => {
  const control = await startBackend("control");
  // A treatment that crashes on one input: it reads the request, then drops the connection unanswered.
  const crashy = createNetServer((s) => {
    s.on("error", () => {});
    s.on("data", (d) => (String(d).includes("item=bad") ? s.destroy() : s.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")));
  });
  await new Promise<void>((r) => crashy.listen(0, "127.0.0.1", r));
  const treatment = `http://127.0.0.1:${(crashy.address() as AddressInfo).port}`;
  const gw = await testGateway({
    fallback: "control",
    variants: [
      { name: "control", weight: 0, url: control.url },
      { name: "treatment", weight: 1, url: treatment },
    ],
    limits: { ejectAfterFailures: 1000 },
  });
  try {
    const ask = async (item: string) => {
      const res = await fetch(`${gw.proxyUrl}/rec?item=${item}`, { headers: { "x-user-id": "u1" } });
      await res.arrayBuffer();
      return [res.status, res.headers.get("x-abgate-variant")];
    };
    assert.deepEqual(await ask("ok"), [200, "treatment"]);
    assert.deepEqual(await ask("bad"), [502, "treatment"]);
    assert.equal(control.requests.length, 0, "the control never ran the treatment's request");
  } finally {
    await gw.stop();
    await control.close();
    crashy.close();
  }
  const rows = selectFromStore(gw, "SELECT assigned, served, status FROM exposures ORDER BY ts");
  assert.deepEqual(rows, [
    { assigned: "treatment", served: "treatment", status: 200 },
    { assigned: "treatment", served: "treatment", status: 502 },
  ]);
});

test("fallback: reject gives 503 when a variant has no healthy replica", async () => {
  const dead = await closedPortUrl();
  const gw = await testGateway({ fallback: "reject", variants: [{ name: "control", url: dead }], limits: { ejectAfterFailures: 1 } });
  try {
    const first = await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": "u" } });
    assert.equal(first.status, 502, "connect failure on the only replica");
    const second = await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": "u" } });
    assert.equal(second.status, 503, "the replica is now ejected: no healthy replica");
    const body = (await second.json()) as { code: string };
    assert.equal(body.code, "ABGATE_ERR_UPSTREAM_NO_REPLICA");
  } finally {
    await gw.close();
  }
});

test("a replica that hangs gets 504 after the response timeout, one that answers garbage 502", async () => {
  const hang = await rawServer(null);
  const garbage = await rawServer("SSH-2.0-OpenSSH_9.2\r\n\r\n");
  const gw = await testGateway({
    allowForce: true,
    variants: [
      { name: "control", url: hang.url },
      { name: "treatment", url: garbage.url },
    ],
    limits: { responseTimeoutMs: 300 },
  });
  try {
    const t0 = Date.now();
    const res = await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": "u", "x-abgate-force-variant": "control" } });
    assert.equal(res.status, 504);
    assert.ok(Date.now() - t0 < 3000);
    const bad = await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": "u", "x-abgate-force-variant": "treatment" } });
    assert.equal(bad.status, 502);
    assert.match(((await bad.json()) as { error: string }).error, /did not answer HTTP/);
  } finally {
    await gw.close();
    await hang.close();
    await garbage.close();
  }
});

test("a replica that dies mid-response: the client's connection is cut, not left hanging", async () => {
  const srv = createServer((req, res) => {
    res.writeHead(200, { "content-length": "1000" });
    res.write("partial");
    setTimeout(() => res.socket?.destroy(), 20);
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const gw = await testGateway({ variants: [{ name: "control", url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}` }] });
  try {
    const res = await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": "u" } });
    assert.equal(res.status, 200);
    await assert.rejects(res.text());
  } finally {
    await gw.stop();
    srv.close();
  }
  // recorded as the failure it was, for the error rate, not as the 200 it began with
  assert.deepEqual(selectFromStore(gw, "SELECT status FROM exposures"), [{ status: 502 }]);
  await gw.close();
});

test("an active health check takes a failing replica out of rotation", async () => {
  let sick = false;
  const flaky = await startBackend("flaky", (req, res) => {
    res.writeHead(sick && req.url === "/health" ? 503 : 200, { "content-length": "2" });
    res.end("ok");
  });
  const other = await startBackend("other");
  const health = { path: "/health", intervalMs: 50, timeoutMs: 200, rise: 1, fall: 1 };
  const gw = await testGateway({ variants: [{ name: "control", urls: [flaky.url, other.url], health }] });
  try {
    await gw.health.waitHealthy(["control-0", "control-1"], 5000);
    sick = true;
    const deadline = Date.now() + 5000;
    while (gw.health.state("control-0") !== "unhealthy" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(gw.health.state("control-0"), "unhealthy");
    const before = flaky.requests.filter((r) => r.url !== "/health").length;
    for (let i = 0; i < 20; i++) await (await fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": `u${i}` } })).arrayBuffer();
    assert.equal(flaky.requests.filter((r) => r.url !== "/health").length, before);
  } finally {
    await gw.close();
    await flaky.close();
    await other.close();
  }
});

test("WebSocket upgrade is proxied and bytes flow both ways", async () => {
  const srv = createServer();
  const upgraded = new Set<import("node:stream").Duplex>();
  srv.on("upgrade", (req, socket, head: Buffer) => {
    upgraded.add(socket);
    socket.write("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n");
    if (head.length) socket.write(Buffer.concat([Buffer.from("echo:"), head]));
    socket.on("data", (d: Buffer) => socket.write(Buffer.concat([Buffer.from("echo:"), d])));
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const gw = await testGateway({ variants: [{ name: "control", url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}` }] });
  try {
    const reply = await rawRequest(
      gw.proxyUrl,
      "GET /ws HTTP/1.1\r\nhost: x\r\nx-user-id: w\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nhello",
      300,
    );
    assert.match(reply, /^HTTP\/1\.1 101 Switching Protocols\r\n/);
    assert.match(reply, /x-abgate-variant: control\r\n/);
    assert.match(reply, /echo:hello$/);
  } finally {
    await gw.close();
    for (const s of upgraded) s.destroy();
    srv.close();
  }
});

test("slow clients: a request whose headers never finish is cut after headersTimeoutMs", async () => {
  const good = await startBackend("good");
  const gw = await testGateway({ variants: [{ name: "control", url: good.url }], limits: { headersTimeoutMs: 500 } });
  try {
    const t0 = Date.now();
    const reply = await rawRequest(gw.proxyUrl, "GET / HTTP/1.1\r\nhost: x\r\nx-user-id: slow\r\n", 5000);
    const elapsed = Date.now() - t0;
    assert.match(reply, /^HTTP\/1\.1 408 /);
    assert.ok(elapsed >= 400 && elapsed < 3000, `cut after ${elapsed} ms`);
    const res = await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": "fast" } });
    assert.equal(res.status, 200, "other clients are unaffected");
  } finally {
    await gw.close();
    await good.close();
  }
});

test("a client that leaves before the answer: the exchange is abandoned and recorded as 499", async () => {
  let sawClose = false;
  const slow = await startBackend("slow", (req, res) => {
    res.on("close", () => (sawClose = true));
    setTimeout(() => res.end("late"), 1500);
  });
  const gw = await testGateway({ variants: [{ name: "control", url: slow.url }] });
  try {
    const ac = new AbortController();
    const pending = fetch(`${gw.proxyUrl}/x`, { headers: { "x-user-id": "gone" }, signal: ac.signal });
    await new Promise((r) => setTimeout(r, 200));
    ac.abort();
    await assert.rejects(pending);
    const deadline = Date.now() + 3000;
    let text = "";
    while (Date.now() < deadline) {
      text = await (await fetch(`${gw.adminUrl}/metrics`)).text();
      if (/status="499"/.test(text)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.match(text, /abgate_requests_total\{variant="control",status="499",experiment="test"\} 1/);
    assert.ok(sawClose, "the replica's connection was closed, not left to finish");
  } finally {
    await gw.close();
    await slow.close();
  }
});

/** Each replica of the experiment as "id health outstanding", from the admin API. */
async function replicaStates(gw: { adminUrl: string }): Promise<string[]> {
  const body = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { variants: { replicas: { id: string; health: string; outstanding: number }[] }[] };
  return body.variants.flatMap((v) => v.replicas.map((r) => `${r.id} ${r.health} ${r.outstanding}`));
}

test("a client that pauses mid-upload longer than the response timeout: the replica, still waiting for the body, is not blamed", async () => {
  // Answers once the whole 10-byte body is in, as any replica must.
  const replica = createNetServer((s) => {
    s.on("error", () => {});
    let got = "";
    s.on("data", (d: Buffer) => {
      got += d.toString("latin1");
      const end = got.indexOf("\r\n\r\n");
      if (end >= 0 && got.length - end - 4 >= 10) s.write("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    });
  });
  await new Promise<void>((r) => replica.listen(0, "127.0.0.1", r));
  const gw = await testGateway({
    variants: [{ name: "control", url: `http://127.0.0.1:${(replica.address() as AddressInfo).port}` }],
    limits: { responseTimeoutMs: 300, ejectAfterFailures: 2, ejectionMs: 60_000 },
  });
  try {
    for (let k = 0; k < 2; k++) {
      const u = new URL(gw.proxyUrl);
      const sock = (await import("node:net")).connect(Number(u.port), u.hostname);
      const reply = new Promise<string>((resolve) => {
        let text = "";
        sock.on("data", (d: Buffer) => {
          text += d.toString("latin1");
          if (text.endsWith("ok")) resolve(text);
        });
        sock.on("close", () => resolve(text));
        sock.on("error", () => {});
      });
      sock.write("POST /up HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\ncontent-length: 10\r\n\r\n12345");
      // Four response timeouts, and the sweeper's ticks, pass while the client is silent.
      await new Promise((r) => setTimeout(r, 1200));
      sock.write("67890");
      assert.match(await reply, /^HTTP\/1\.1 200 /, `upload ${k}`);
      sock.destroy();
    }
    assert.deepEqual(await replicaStates(gw), ["control-0 healthy 0"]);
  } finally {
    await gw.close();
    await new Promise((r) => replica.close(r));
  }
});

test("a client that stops reading its response is cut after idleTimeoutMs, and the replica's connection is freed", async () => {
  const big = 16 * 1024 * 1024;
  let replicaClosed = false;
  const replica = createNetServer((s) => {
    s.on("error", () => {});
    s.on("close", () => (replicaClosed = true));
    s.once("data", () => {
      s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${big}\r\n\r\n`);
      s.write(Buffer.alloc(big, 97));
    });
  });
  await new Promise<void>((r) => replica.listen(0, "127.0.0.1", r));
  const gw = await testGateway({
    variants: [{ name: "control", url: `http://127.0.0.1:${(replica.address() as AddressInfo).port}` }],
    limits: { responseTimeoutMs: 300, idleTimeoutMs: 800 },
  });
  try {
    const u = new URL(gw.proxyUrl);
    const sock = (await import("node:net")).connect(Number(u.port), u.hostname);
    sock.on("error", () => {});
    const t0 = Date.now();
    sock.on("connect", () => {
      sock.write("GET /big HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\n\r\n");
      sock.pause(); // and never read
    });
    await new Promise((r) => setTimeout(r, 400));
    assert.deepEqual(await replicaStates(gw), ["control-0 healthy 1"], "the response is under way");
    const deadline = Date.now() + 3000;
    while (!replicaClosed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const elapsed = Date.now() - t0;
    assert.ok(replicaClosed, "the replica's connection was closed, not left paused");
    // idleTimeoutMs after the client's buffer filled, plus up to a sweeper tick (a quarter of it)
    assert.ok(elapsed >= 700, `cut after ${elapsed} ms`);
    // The client, reading again, finds its connection ended before the whole body.
    let received = 0;
    sock.on("data", (d: Buffer) => (received += d.length));
    sock.resume();
    await new Promise((resolve) => sock.on("close", resolve));
    assert.ok(received < big, `the client got ${received} bytes of ${big}`);
    assert.deepEqual(await replicaStates(gw), ["control-0 healthy 0"], "the replica is healthy, nothing outstanding");
  } finally {
    await gw.close();
    await new Promise((r) => replica.close(r));
  }
});

test("fallback is logged once when a variant loses its last healthy replica, and once when it has one again", async () => {
  const { pino } = await import("pino");
  const lines: { level: number; msg: string; variant?: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const control = await startBackend("control");
  const treatment = createServer((_req, res) => res.end("treatment"));
  await new Promise<void>((r) => treatment.listen(0, "127.0.0.1", () => r()));
  const port = (treatment.address() as AddressInfo).port;
  const health = { path: "/", intervalMs: 30, timeoutMs: 500, rise: 1, fall: 1 };
  const gw = await testGateway(
    { fallback: "control", allowForce: true, variants: [{ name: "control", url: control.url }, { name: "treatment", url: `http://127.0.0.1:${port}`, health }] },
    { log },
  );
  const until = (what: RegExp) => logLines(lines, what, 5_000);
  try {
    await until(/replica treatment-0 is healthy/);
    assert.deepEqual(lines.filter((l) => /no healthy replica/.test(l.msg)), [], "not called down while starting");
    treatment.closeAllConnections();
    await new Promise<void>((r) => treatment.close(() => r()));
    const down = await until(/variant treatment has no healthy replica/);
    assert.equal(down.length, 1);
    assert.equal(down[0]!.level, 40, "a warning");
    assert.match(down[0]!.msg, /served by control \(fallback\)/);
    // A forced request asks for that variant: no fallback, a 503 that says why (and the unforced ones fall back).
    const res = await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": "u", "x-abgate-force-variant": "treatment" } });
    assert.equal(res.status, 503);
    assert.match(((await res.json()) as { error: string }).error, /no healthy replica of variant treatment \(forced: no fallback\)/);
    await new Promise((r) => setTimeout(r, 150)); // several failed checks more: still one line
    assert.equal(lines.filter((l) => /variant treatment has no healthy replica/.test(l.msg)).length, 1);
    await new Promise<void>((r) => treatment.listen(port, "127.0.0.1", () => r()));
    assert.equal((await until(/variant treatment has a healthy replica again/)).length, 1);
  } finally {
    await gw.close();
    await control.close();
    treatment.close();
  }
});

test("a refused request is not assigned: it takes no turn of round-robin and leaves nothing in the bandit's memory", async () => {
  const a = await startBackend("a");
  const b = await startBackend("b");
  const gw = await testGateway({ strategy: { kind: "round-robin" }, variants: [{ name: "a", url: a.url }, { name: "b", url: b.url }] });
  const variantOf = async (unit: string) => {
    const res = await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": unit } });
    await res.arrayBuffer();
    return [res.status, res.headers.get("x-abgate-variant")] as const;
  };
  try {
    assert.deepEqual(await variantOf("u1"), [200, "a"]);
    const [status, variant] = await variantOf("x".repeat(600)); // longer than a unit may be
    assert.deepEqual([status, variant], [400, null], "refused, and no variant named");
    assert.deepEqual(await variantOf("u2"), [200, "b"], "the refused request took no turn");
  } finally {
    await gw.close();
    await a.close();
    await b.close();
  }
});

test("a variant whose replicas all crash shows them as not running (0/2), not as no replicas at all", async () => {
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const dir = mkdtempSync(join(tmpdir(), "abgate-dead-"));
  writeFileSync(join(dir, "ok.js"), `require("node:http").createServer((q, s) => s.end("ok")).listen(Number(process.env.PORT), "127.0.0.1");`);
  const gw = await testGateway({
    engine: "process",
    ports: { base: 23180 },
    variants: [
      { name: "control", command: ["node", "ok.js"], cwd: dir },
      { name: "treatment", command: ["node", "-e", "process.exit(3)"], cwd: dir, replicas: 2 },
    ],
  });
  try {
    type View = { variants: { name: string; healthyReplicas: number; replicas: { id: string; health: string; address: string }[] }[] };
    // Once both have exited (the engine restarts them with backoff, and they exit again).
    let view: View;
    const deadline = Date.now() + 10_000;
    for (;;) {
      view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as View;
      const t = view.variants.find((v) => v.name === "treatment")!;
      if (t.replicas.length !== 2 || t.replicas.every((r) => r.health === "not running") || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    const treatment = view.variants.find((v) => v.name === "treatment")!;
    assert.deepEqual(treatment.replicas.map((r) => [r.id, r.health, r.address]), [["treatment-0", "not running", ""], ["treatment-1", "not running", ""]]);
    assert.equal(treatment.healthyReplicas, 0);
    assert.deepEqual(view.variants.find((v) => v.name === "control")!.replicas.map((r) => r.id), ["control-0"]);
    // The health metric has them too, at 0: an alert on 0 must fire for replicas that do not run.
    const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text();
    for (const id of ["treatment-0", "treatment-1"]) assert.match(metrics, new RegExp(`abgate_replica_healthy\\{[^}]*replica="${id}"[^}]*\\} 0`), metrics);
  } finally {
    await gw.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test("fallback is logged when the engine removes a variant's only replica (a crashed process), and when it is back", async () => {
  const { pino } = await import("pino");
  const { mkdtempSync, writeFileSync, rmSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const { join } = await import("node:path");
  const lines: { level: number; msg: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const dir = mkdtempSync(join(tmpdir(), "abgate-crash-"));
  writeFileSync(
    join(dir, "server.js"),
    `require("node:http").createServer((req, res) => { res.end(process.env.ABGATE_VARIANT); if (req.url === "/crash") setTimeout(() => process.exit(3), 10); }).listen(Number(process.env.PORT), "127.0.0.1");`,
  );
  const gw = await testGateway(
    {
      engine: "process",
      ports: { base: 23170 },
      fallback: "control",
      allowForce: true,
      variants: [
        { name: "control", command: ["node", "server.js"], cwd: dir, health: { path: "/", intervalMs: 100, timeoutMs: 500, rise: 1, fall: 5 } },
        { name: "treatment", command: ["node", "server.js"], cwd: dir, health: { path: "/", intervalMs: 100, timeoutMs: 500, rise: 1, fall: 5 } },
      ],
    },
    { log },
  );
  const until = (what: RegExp) => logLines(lines, what, 10_000);
  try {
    await gw.health.waitHealthy(gw.engine.endpoints().map((e) => e.id), 10_000);
    const res = await fetch(`${gw.proxyUrl}/crash`, { headers: { "x-user-id": "u", "x-abgate-force-variant": "treatment" } });
    assert.equal(await res.text(), "treatment");
    const down = await until(/variant treatment has no healthy replica/);
    assert.equal(down.length, 1);
    assert.match(down[0]!.msg, /served by control \(fallback\)/);
    assert.equal((await until(/variant treatment has a healthy replica again/)).length, 1, "restarted by the engine, and healthy");
  } finally {
    await gw.close();
    rmSync(dir, { recursive: true, force: true });
  }
  assert.equal(lines.filter((l) => /no healthy replica/.test(l.msg)).length, 1, "nothing more, not even while stopping");
});

/** The captured log lines matching `what`, once there is one (or after `withinMs`). */
async function logLines<L extends { msg: string }>(lines: L[], what: RegExp, withinMs: number): Promise<L[]> {
  const deadline = Date.now() + withinMs;
  while (!lines.some((l) => what.test(l.msg)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  return lines.filter((l) => what.test(l.msg));
}

test("a request without a unit that abgate answers itself (a dead replica) still gets its cookie, so its retry is the same unit", async () => {
  const gw = await testGateway({ variants: [{ name: "control", url: await closedPortUrl() }] });
  try {
    const plain = await rawRequest(gw.proxyUrl, "GET / HTTP/1.1\r\nhost: x\r\n\r\n", 300);
    const upgrade = await rawRequest(gw.proxyUrl, "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n", 300);
    const units: string[] = [];
    for (const [what, res] of [["request", plain], ["upgrade", upgrade]] as const) {
      assert.match(res, /^HTTP\/1\.1 502 /, what);
      const unit = /\r\nset-cookie: abgate_uid=([0-9a-f-]{36});/i.exec(res)?.[1];
      assert.ok(unit, `${what}: a cookie with the unit in\n${res}`);
      units.push(unit);
    }
    // ...the unit its exposure was recorded under
    for (let i = 0; ; i++) {
      const seen = (await gw.store.recentUnits("test", 10)).map(([unit]) => unit);
      if (units.every((u) => seen.includes(u))) break;
      assert.ok(i < 100, `exposures under ${units.join(", ")}; the store has ${seen.join(", ")}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const refused = await rawRequest(gw.proxyUrl, "GET / HTTP/1.1\r\nhost: x\r\nx-abgate-force-variant: nope\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n", 300);
    assert.match(refused, /^HTTP\/1\.1 400 /);
    assert.doesNotMatch(refused, /set-cookie/i, "a refused request is not assigned: no unit to keep");
  } finally {
    await gw.close();
  }
});

test("a dead variant under load logs a burst of lines a second and counts the rest, instead of a line per request", async () => {
  const { pino } = await import("pino");
  const lines: { level: number; msg: string; suppressed?: number; code?: string; variant?: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const gw = await testGateway({ variants: [{ name: "control", url: await closedPortUrl() }] }, { log });
  const started = Date.now();
  const requests = 400;
  try {
    let failed = 0;
    for (let i = 0; i < requests / 20; i++) {
      const answers = await Promise.all(Array.from({ length: 20 }, (_, j) => fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": `u${i}-${j}` } })));
      for (const res of answers) {
        await res.arrayBuffer();
        if (res.status >= 500) failed++;
      }
    }
    assert.equal(failed, requests);
    // Invalid events: refused one by one, logged the same way.
    for (let i = 0; i < 40; i++) assert.equal((await admin(gw, "POST", "/v1/events", [{ unit: "", event: "x" }])).status, 400);
  } finally {
    await gw.close();
  }
  const seconds = Math.ceil((Date.now() - started) / 1000);
  const failures = lines.filter((l) => l.code?.startsWith("ABGATE_ERR_UPSTREAM_"));
  const inFull = failures.filter((l) => l.suppressed === undefined);
  const counted = failures.reduce((n, l) => n + (l.suppressed ?? 0), 0);
  assert.equal(inFull.length + counted, requests, "every failure is a line or is counted in one (the stop logs the counts still due)");
  assert.ok(inFull.length <= 10 * 2 * (seconds + 1), `${inFull.length} lines in full over ${seconds} s`);
  assert.ok(failures.some((l) => l.suppressed !== undefined && /and \d+ more like it within 1 s/.test(l.msg)));
  const refusedEvents = lines.filter((l) => (l as { status?: number }).status === 400);
  assert.equal(refusedEvents.filter((l) => l.suppressed === undefined).length + refusedEvents.reduce((n, l) => n + (l.suppressed ?? 0), 0), 40);
  assert.ok(refusedEvents.length < 40);
});

test("a down variant's line waits for its fallback's first check, and a new line says when the fallback goes down or comes back", async () => {
  const { pino } = await import("pino");
  const lines: { level: number; msg: string; variant?: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  // The control's first check is slow to answer (a replica starting); the treatment's replica is not there at all.
  let controlUp = true;
  let firstCheck = true;
  const control = createServer((req, res) => {
    if (!controlUp) return void res.writeHead(500).end();
    if (req.url === "/health" && firstCheck) {
      firstCheck = false;
      return void setTimeout(() => res.end("ok"), 300);
    }
    res.end("control");
  });
  await new Promise<void>((r) => control.listen(0, "127.0.0.1", () => r()));
  const health = { path: "/health", intervalMs: 30, timeoutMs: 1000, rise: 1, fall: 1 };
  const gw = await testGateway(
    {
      fallback: "control",
      variants: [
        { name: "control", url: `http://127.0.0.1:${(control.address() as AddressInfo).port}`, health },
        { name: "treatment", url: await closedPortUrl(), health },
      ],
    },
    { log },
  );
  const down = () => lines.filter((l) => /variant treatment (still )?has no healthy replica/.test(l.msg)).map((l) => l.msg.replace(/ \(fallback\).*/, ""));
  try {
    await logLines(lines, /variant treatment has no healthy replica/, 5_000);
    assert.deepEqual(down(), ["variant treatment has no healthy replica: its requests are served by control"]);
    controlUp = false;
    await logLines(lines, /still has no healthy replica: its requests get 503/, 5_000);
    controlUp = true;
    const deadline = Date.now() + 5_000;
    while (down().length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(down(), [
      "variant treatment has no healthy replica: its requests are served by control",
      "variant treatment still has no healthy replica: its requests get 503 (the fallback control has no healthy replica either)",
      "variant treatment still has no healthy replica: its requests are served by control",
    ]);
  } finally {
    await gw.close();
    control.closeAllConnections();
    control.close();
  }
});

test("each health change is one line, saying why a replica is out: its failed requests, or its failed check", async () => {
  const { pino } = await import("pino");
  const lines: { level: number; msg: string; lastError?: string }[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  let checksFail = false;
  const replica = createServer((req, res) => {
    if (req.url === "/health") return void res.writeHead(checksFail ? 503 : 200).end();
    res.writeHead(req.url === "/boom" ? 500 : 200).end("x");
  });
  await new Promise<void>((r) => replica.listen(0, "127.0.0.1", () => r()));
  const health = { path: "/health", intervalMs: 30, timeoutMs: 1000, rise: 1, fall: 1 };
  const gw = await testGateway(
    { variants: [{ name: "control", url: `http://127.0.0.1:${(replica.address() as AddressInfo).port}`, health }], limits: { ejectAfterFailures: 2, ejectionMs: 1000 } },
    { log },
  );
  const about = () => lines.filter((l) => /replica/.test(l.msg) && !/variant/.test(l.msg)).map((l) => [l.level, l.msg]);
  try {
    await logLines(lines, /replica control-0 is healthy/, 5_000);
    for (let i = 0; i < 2; i++) await (await fetch(`${gw.proxyUrl}/boom`, { headers: { "x-user-id": "u" } })).arrayBuffer();
    const waitFor = async (n: number) => {
      const deadline = Date.now() + 5_000;
      while (about().length < n && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    };
    await waitFor(3);
    // Failing again soon after it came back (within ejectionMs, however slow this machine): out for longer.
    for (let i = 0; i < 2; i++) await (await fetch(`${gw.proxyUrl}/boom`, { headers: { "x-user-id": "u" } })).arrayBuffer();
    await waitFor(5);
    checksFail = true;
    await logLines(lines, /is unhealthy/, 5_000);
    assert.deepEqual(about(), [
      [30, "replica control-0 is healthy"],
      [40, "replica control-0 is ejected for 1000 ms, after 2 failed requests in a row: answered 500"],
      [30, "replica control-0 is healthy"],
      [40, "replica control-0 is ejected for 2000 ms (ejection 2 in a row: each lasts longer), after 2 failed requests in a row: answered 500"],
      [30, "replica control-0 is healthy"],
      [40, "replica control-0 is unhealthy: status 503"],
    ]);
  } finally {
    await gw.close();
    replica.closeAllConnections();
    replica.close();
  }
});
