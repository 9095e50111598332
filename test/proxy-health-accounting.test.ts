// Passive health across both ways a request reaches a replica (plain and upgrade), and how long a connection that
// never sends a request is kept.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer as createHttpServer, type Server } from "node:http";
import { connect, createServer as createTcpServer } from "node:net";
import { startUnacceptingListener } from "./helpers/backends.ts";
import { selectFromStore, testGateway } from "./helpers/gateway.ts";

/** A free port on 127.0.0.1: listened on, then closed, so that connecting to it is refused until it is reused. */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createTcpServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** The first variant's replicas, as GET /v1/experiment shows them. */
async function replicasOf(gw: { adminUrl: string }): Promise<{ health: string; outstanding: number }[]> {
  const body = (await (await fetch(`${gw.adminUrl}/v1/experiment`)).json()) as { variants: { replicas: { health: string; outstanding: number }[] }[] };
  return body.variants[0]!.replicas;
}

/** An upgrade's answer: its status line, or with `whole`, its head. */
function upgrade(url: string, unit = "u", whole = false): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const s = connect(Number(u.port), u.hostname);
    let got = "";
    s.on("data", (c) => (got += c.toString("latin1")));
    s.on("close", () => resolve(whole ? got.split("\r\n\r\n")[0]! : got.split("\r\n")[0]!));
    s.on("error", () => {});
    s.write(`GET /ws HTTP/1.1\r\nhost: x\r\nx-user-id: ${unit}\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n`);
  });
}

/** A replica that answers "ok" to requests and accepts every upgrade (and closes: the tests only need the answer). */
async function upgradingReplica(): Promise<{ url: string; close(): void }> {
  const server = createHttpServer((_req, res) => res.end("ok"));
  server.on("upgrade", (_req, s: import("node:net").Socket) => {
    s.on("error", () => {});
    s.end("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as { port: number }).port}`,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

test("failed upgrades count toward ejection like failed requests, and a success resets the streak", async () => {
  const port = await freePort();
  const gw = await testGateway({
    variants: [{ name: "control", weight: 1, url: `http://127.0.0.1:${port}` }],
    limits: { ejectAfterFailures: 3, ejectionMs: 60_000 },
  });
  let backend: Server | undefined;
  try {
    // Two upgrades refused while the replica is down: a streak of 2.
    assert.match(await upgrade(gw.proxyUrl), /^HTTP\/1\.1 502/);
    assert.match(await upgrade(gw.proxyUrl), /^HTTP\/1\.1 502/);
    backend = createHttpServer((req, res) => {
      res.statusCode = req.url === "/fail" ? 500 : 200;
      res.end("x");
    });
    await new Promise<void>((r) => backend!.listen(port, "127.0.0.1", () => r()));
    for (let i = 0; i < 5; i++) assert.equal((await fetch(`${gw.proxyUrl}/ok`, { headers: { "x-user-id": "u" } })).status, 200);
    // The successes reset the streak: one 500 is not three in a row.
    assert.equal((await fetch(`${gw.proxyUrl}/fail`, { headers: { "x-user-id": "u" } })).status, 500);
    assert.equal((await fetch(`${gw.proxyUrl}/ok`, { headers: { "x-user-id": "u" } })).status, 200);
  } finally {
    await gw.close();
    backend?.closeAllConnections();
    await new Promise<void>((r) => (backend ? backend.close(() => r()) : r()));
  }
});

test("a connection that sends nothing is closed after headersTimeoutMs, not the longer idleTimeoutMs", async () => {
  const backend = createHttpServer((_req, res) => res.end("x"));
  await new Promise<void>((r) => backend.listen(0, "127.0.0.1", () => r()));
  const gw = await testGateway({
    variants: [{ name: "control", weight: 1, url: `http://127.0.0.1:${(backend.address() as { port: number }).port}` }],
    limits: { headersTimeoutMs: 300, idleTimeoutMs: 20_000 },
  });
  try {
    const u = new URL(gw.proxyUrl);
    const started = Date.now();
    const closedAfterMs = await new Promise<number>((resolve) => {
      const s = connect(Number(u.port), u.hostname);
      s.on("error", () => {});
      s.on("close", () => resolve(Date.now() - started));
      s.resume();
    });
    assert.ok(closedAfterMs >= 290 && closedAfterMs < 2_000, `closed after ${closedAfterMs} ms`);
  } finally {
    await gw.close();
    await new Promise<void>((r) => backend.close(() => r()));
  }
});

test("an open WebSocket tunnel counts as outstanding on its replica until it closes, so new ones go to the other replica", async () => {
  // Two replicas that accept every upgrade and keep the tunnel open; each tells which one it is in a header.
  const replicas = [0, 1].map((i) =>
    createTcpServer((s) => {
      s.on("error", () => {});
      s.once("data", () => s.write(`HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nx-replica: ${i}\r\n\r\n`));
    }),
  );
  const ports = await Promise.all(replicas.map((r) => new Promise<number>((resolve) => r.listen(0, "127.0.0.1", () => resolve((r.address() as { port: number }).port)))));
  const gw = await testGateway({ variants: [{ name: "control", weight: 1, urls: ports.map((p) => `http://127.0.0.1:${p}`) }] });
  const open: ReturnType<typeof connect>[] = [];
  const tunnel = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const u = new URL(gw.proxyUrl);
      const s = connect(Number(u.port), u.hostname);
      open.push(s);
      s.on("error", reject);
      let got = "";
      s.on("data", (c) => {
        got += c.toString("latin1");
        const m = /x-replica: (\d)/.exec(got);
        if (got.includes("\r\n\r\n") && m) resolve(m[1]!);
      });
      s.write("GET /ws HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
    });
  const outstanding = async () => (await replicasOf(gw)).map((r) => r.outstanding);
  try {
    // With one tunnel open on a replica, two choices among two always pick the other one: the tunnels alternate.
    const got: string[] = [];
    for (let i = 0; i < 6; i++) got.push(await tunnel());
    assert.deepEqual([...got.slice(0, 2)].sort(), ["0", "1"]);
    assert.deepEqual(await outstanding(), [3, 3]);
    for (const s of open) s.destroy();
    const deadline = Date.now() + 5_000;
    while ((await outstanding()).some((n) => n !== 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await outstanding(), [0, 0], "closed tunnels no longer count");
  } finally {
    for (const s of open) s.destroy();
    await gw.close();
    for (const r of replicas) await new Promise<void>((resolve) => r.close(() => resolve()));
  }
});

test("a request head that arrived in time is served, not 408'd, when the event loop was held up past the deadline", async () => {
  const backend = createHttpServer((_req, res) => res.end("served"));
  await new Promise<void>((r) => backend.listen(0, "127.0.0.1", () => r()));
  const headersTimeoutMs = 200;
  const gw = await testGateway({
    variants: [{ name: "control", weight: 1, url: `http://127.0.0.1:${(backend.address() as { port: number }).port}` }],
    limits: { headersTimeoutMs, idleTimeoutMs: 20_000 },
  });
  try {
    const u = new URL(gw.proxyUrl);
    const answer = await new Promise<string>((resolve, reject) => {
      const s = connect(Number(u.port), u.hostname);
      let got = "";
      s.on("error", reject);
      s.on("data", (c) => {
        got += c.toString("latin1");
        if (got.includes("served") || got.includes("\r\n\r\n{")) (s.destroy(), resolve(got));
      });
      s.on("close", () => resolve(got));
      s.write("GET / HTTP/1.1\r\nhost: x\r\n");
      setTimeout(() => {
        // The rest of the head, 100 ms in: in time. Then the loop is held up (a long GC, a busy core) past the
        // deadline, so the sweeper's timer is overdue when the loop turns and runs before the socket is read.
        // (written and stalled in the check phase, after this turn's reads: the next turn starts with its timers)
        setImmediate(() => {
          s.write("x-user-id: u\r\n\r\n");
          const until = Date.now() + headersTimeoutMs * 2;
          while (Date.now() < until);
        });
      }, 100);
    });
    assert.match(answer, /^HTTP\/1\.1 200 /);
  } finally {
    await gw.close();
    await new Promise<void>((r) => backend.close(() => r()));
  }
});

test("a replica whose answers are not HTTP, or are cut short, is ejected like one answering 5xx; an answer only an HTTP/1.0 client cannot take is not held against it", async () => {
  const { rawRequest } = await import("./helpers/raw.ts");
  // A raw replica: what it answers depends on the path.
  const replica = createTcpServer((socket) => {
    socket.on("error", () => {});
    socket.once("data", (d) => {
      const path = /^\S+ (\S+)/.exec(d.toString("latin1"))?.[1];
      if (path === "/garbage") socket.end("NOT HTTP AT ALL\r\n\r\n");
      else if (path === "/cut") socket.write("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b", () => socket.destroy());
      else if (path === "/503-cut") socket.write("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 100\r\n\r\nbusy", () => socket.destroy());
      else if (path === "/gzip") socket.end("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\nconnection: close\r\n\r\n2\r\nzz\r\n0\r\n\r\n");
      else socket.end("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    });
  });
  await new Promise<void>((r) => replica.listen(0, "127.0.0.1", () => r()));
  const url = `http://127.0.0.1:${(replica.address() as { port: number }).port}`;
  const healthOf = async (gw: { adminUrl: string }) => (await replicasOf(gw))[0]!.health;
  try {
    for (const path of ["/garbage", "/cut"]) {
      const gw = await testGateway({ variants: [{ name: "control", url }], limits: { ejectAfterFailures: 3, ejectionMs: 60_000 } });
      try {
        for (let i = 0; i < 3; i++) {
          assert.equal(await healthOf(gw), "healthy", `${path}: healthy after ${i} failures`);
          const res = await rawRequest(gw.proxyUrl, `GET ${path} HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\n\r\n`, 300);
          // garbage: a 502; cut short: the client's connection is cut after the head (the only honest signal left)
          if (path === "/garbage") assert.match(res, /^HTTP\/1\.1 502/);
          else assert.match(res, /^HTTP\/1\.1 200[^]*only ten b$/);
        }
        assert.equal(await healthOf(gw), "ejected", `${path}: three in a row eject it`);
      } finally {
        await gw.close();
      }
    }
    const gw = await testGateway({ variants: [{ name: "control", url }], limits: { ejectAfterFailures: 1, ejectionMs: 60_000 } });
    try {
      assert.match(await rawRequest(gw.proxyUrl, "GET /gzip HTTP/1.0\r\nhost: x\r\nx-user-id: u\r\n\r\n", 300), /^HTTP\/1\.1 502/);
      assert.equal(await healthOf(gw), "healthy", "with ejection at the first failure: still healthy");
      assert.equal((await fetch(`${gw.proxyUrl}/gzip`, { headers: { "x-user-id": "u" } })).headers.get("transfer-encoding"), "gzip, chunked");
    } finally {
      await gw.close();
    }
    // A 5xx whose body is then cut off is one failure, not two.
    const twice = await testGateway({ variants: [{ name: "control", url }], limits: { ejectAfterFailures: 2, ejectionMs: 60_000 } });
    try {
      await rawRequest(twice.proxyUrl, "GET /503-cut HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\n\r\n", 300);
      assert.equal(await healthOf(twice), "healthy", "one failure of two allowed");
      await rawRequest(twice.proxyUrl, "GET /503-cut HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\n\r\n", 300);
      assert.equal(await healthOf(twice), "ejected", "the second ejects it");
    } finally {
      await twice.close();
    }
  } finally {
    await new Promise<void>((r) => replica.close(() => r()));
  }
});

test("an upgrade whose replica refuses the connection is retried on another replica of the variant, as a plain request is", async () => {
  const dead = await freePort();
  const live = createTcpServer((s) => {
    s.on("error", () => {});
    s.once("data", () => s.end("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"));
  });
  await new Promise<void>((r) => live.listen(0, "127.0.0.1", () => r()));
  const livePort = (live.address() as { port: number }).port;
  const gw = await testGateway({
    variants: [{ name: "control", urls: [`http://127.0.0.1:${dead}`, `http://127.0.0.1:${livePort}`] }],
    limits: { ejectAfterFailures: 100 },
  });
  const outstanding = async () => (await replicasOf(gw)).map((r) => r.outstanding);
  try {
    // Power of two choices sends about half of them to the dead replica first.
    for (let i = 0; i < 12; i++) assert.match(await upgrade(gw.proxyUrl), /^HTTP\/1\.1 101/, `upgrade ${i}`);
    const deadline = Date.now() + 5_000;
    while ((await outstanding()).some((n) => n !== 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await outstanding(), [0, 0], "the failed attempts hold nothing");
    // With the live one gone too, the retry fails as the first attempt did: one 502.
    await new Promise<void>((r) => live.close(() => r()));
    assert.match(await upgrade(gw.proxyUrl), /^HTTP\/1\.1 502/);
  } finally {
    await gw.close();
    live.close();
  }
});

test("a connection not made within connectTimeoutMs is retried on another replica, for a request and for an upgrade", async () => {
  const stuck = await startUnacceptingListener();
  const live = await upgradingReplica();
  const gw = await testGateway({
    variants: [{ name: "control", urls: [stuck.url, live.url] }],
    limits: { ejectAfterFailures: 1000, connectTimeoutMs: 150 },
  });
  try {
    // Power of two choices sends about half of them to the stuck replica first: each of those waits 150 ms.
    for (let i = 0; i < 8; i++) assert.match(await upgrade(gw.proxyUrl, `u${i}`), /^HTTP\/1\.1 101/, `upgrade ${i}`);
    for (let i = 0; i < 8; i++) {
      const res = await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": `u${i}` } });
      assert.equal(res.status, 200, `request ${i}`);
      assert.equal(await res.text(), "ok");
    }
  } finally {
    await gw.close();
    stuck.close();
    live.close();
  }
});

test("an upgrade that no replica of its variant takes goes to the fallback variant, as a request does", async () => {
  const live = await upgradingReplica();
  const dead = await freePort();
  const gw = await testGateway({
    fallback: "control",
    variants: [
      { name: "control", weight: 0, url: live.url },
      { name: "treatment", weight: 1, url: `http://127.0.0.1:${dead}` },
    ],
    limits: { ejectAfterFailures: 1000 },
  });
  try {
    const head = await upgrade(gw.proxyUrl, "u1", true);
    assert.match(head, /^HTTP\/1\.1 101/);
    assert.match(head, /\r\nx-abgate-variant: control\r\n/);
    // counted where plain requests are (the view's live counts, by served variant)
    const view = (await (await fetch(`${gw.adminUrl}/v1/experiment`)).json()) as { counts: { requests: number } };
    assert.equal(view.counts.requests, 1);
  } finally {
    await gw.stop();
    live.close();
  }
  const rows = selectFromStore(gw, "SELECT assigned, served, replica, status FROM exposures");
  await gw.close();
  assert.deepEqual(rows, [{ assigned: "treatment", served: "control", replica: "control-0", status: 101 }]);
});
