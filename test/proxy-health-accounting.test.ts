// Passive health across both ways a request reaches a replica (plain and upgrade), and how long a connection that
// never sends a request is kept.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer as createHttpServer, type Server } from "node:http";
import { connect, createServer as createTcpServer } from "node:net";
import { testGateway } from "./helpers/gateway.ts";

/** A free port on 127.0.0.1: listened on, then closed, so that connecting to it is refused until it is reused. */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createTcpServer().listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function upgrade(url: string): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve) => {
    const s = connect(Number(u.port), u.hostname);
    let got = "";
    s.on("data", (c) => (got += c.toString("latin1")));
    s.on("close", () => resolve(got.split("\r\n")[0]!));
    s.on("error", () => {});
    s.write("GET /ws HTTP/1.1\r\nhost: x\r\nx-user-id: u\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
  });
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
