import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import { ManualClock } from "../clock.ts";
import type { Endpoint } from "../engines/types.ts";
import { check, connectCheck, httpCheck, httpProbe } from "./probe.ts";
import { CONNECT_CHECK, HealthTracker } from "./tracker.ts";

function endpoint(port: number, id = "control-0"): Endpoint {
  return { id, variant: id.split("-")[0], replica: 0, host: "127.0.0.1", port };
}

function listen(server: http.Server): Promise<number> {
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve((server.address() as AddressInfo).port)));
}

function close(server: http.Server): Promise<void> {
  server.closeAllConnections?.();
  return new Promise((resolve) => server.close(() => resolve()));
}

describe("httpProbe / httpCheck against real servers", () => {
  let status = 200;
  const seen: { path?: string; connection?: string }[] = [];
  const server = http.createServer((req, res) => {
    seen.push({ path: req.url, connection: req.headers.connection });
    res.writeHead(status, status >= 300 && status < 400 ? { location: "/elsewhere" } : {});
    res.end("body");
  });
  // accepts connections and never answers
  const silent = http.createServer(() => {});
  let port = 0;
  let silentPort = 0;
  let closedPort = 0;

  before(async () => {
    port = await listen(server);
    silentPort = await listen(silent);
    const tmp = http.createServer();
    closedPort = await listen(tmp);
    await close(tmp);
  });
  after(async () => {
    await close(server);
    await close(silent);
  });

  for (const [code, ok] of [[200, true], [204, true], [302, true], [404, false], [500, false], [503, false]] as const) {
    test(`status ${code} -> ${ok}`, async () => {
      status = code;
      assert.equal(await httpProbe(endpoint(port), "/health", 1000), ok);
    });
  }

  test("GETs the configured path on a fresh connection", async () => {
    status = 200;
    seen.length = 0;
    await httpProbe(endpoint(port), "/ready?deep=1", 1000);
    assert.deepEqual(seen, [{ path: "/ready?deep=1", connection: "close" }]);
  });

  test("a failure says why: status, connection refused", async () => {
    status = 500;
    assert.deepEqual(await httpCheck(endpoint(port), "/health", 1000), { ok: false, error: "status 500" });
    assert.deepEqual(await httpCheck(endpoint(closedPort), "/health", 1000), { ok: false, error: "ECONNREFUSED" });
    assert.equal(await httpProbe(endpoint(closedPort), "/health", 1000), false);
  });

  test("a server that never answers fails after the timeout (real time), without throwing", async () => {
    const started = Date.now();
    assert.deepEqual(await httpCheck(endpoint(silentPort), "/health", 150), { ok: false, error: "timeout after 150 ms" });
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 140 && elapsed < 2000, `elapsed ${elapsed}`);
  });

  test("the tracker with the real probe: fast first check, fall on 500s, refused port unhealthy", async () => {
    status = 200;
    const clock = new ManualClock();
    const tracker = new HealthTracker({ clock, ejectAfterFailures: 5, ejectionMs: 1000 });
    const states: string[] = [];
    const changed = () => new Promise<void>((resolve) => {
      const off = tracker.onChange(() => {
        off();
        resolve();
      });
    });
    tracker.onChange((c) => states.push(`${c.id}:${c.from}->${c.to}`));
    const health = { path: "/health", intervalMs: 1000, timeoutMs: 1000, rise: 1, fall: 2 };
    const bothSettled = Promise.all([changed(), tracker.waitHealthy(["control-0"], 10_000)]);
    // fall 1 for the refused port: a replica never healthy is called unhealthy after `fall` failures
    tracker.setEndpoints([endpoint(port, "control-0"), endpoint(closedPort, "treatment-0")], { control: health, treatment: { ...health, fall: 1 } });
    await bothSettled;
    // the refused port's first check may land before or after; wait for it
    while (tracker.state("treatment-0") === "unknown") await changed();
    assert.equal(tracker.state("control-0"), "healthy");
    assert.equal(tracker.state("treatment-0"), "unhealthy");
    assert.equal(tracker.snapshot().find((s) => s.id === "treatment-0")!.lastError, "ECONNREFUSED");

    status = 500;
    const checked = () => new Promise<void>((resolve) => {
      const poll = () => (tracker.snapshot()[0].lastCheckMs === clock.now() ? resolve() : setTimeout(poll, 5));
      poll();
    });
    clock.advance(1000);
    await checked();
    assert.equal(tracker.state("control-0"), "healthy", "one failure of fall=2");
    clock.advance(1000);
    await checked();
    assert.equal(tracker.state("control-0"), "unhealthy");
    tracker.stop();
    assert.equal(clock.pendingTimers(), 0);
    assert.ok(states.includes("control-0:healthy->unhealthy"));
  });
});

describe("connectCheck: a TCP connect, for replicas whose variant names no health path", () => {
  test("ok while the port accepts connections, ECONNREFUSED once nothing listens; no request is sent", async () => {
    const requests: string[] = [];
    const server = http.createServer((req, res) => {
      requests.push(req.url ?? "");
      res.end();
    });
    const port = await listen(server);
    assert.deepEqual(await connectCheck(endpoint(port), 1000), { ok: true });
    assert.deepEqual(await check(endpoint(port), null, 1000), { ok: true }, "the default probe connects when the path is null");
    await close(server);
    assert.deepEqual(await connectCheck(endpoint(port), 1000), { ok: false, error: "ECONNREFUSED" });
    assert.deepEqual(requests, []);
  });

  test("the tracker with CONNECT_CHECK: unknown until the replica listens, then healthy", async () => {
    const server = http.createServer((_req, res) => res.end());
    const port = await listen(server);
    await close(server); // nothing listens there yet
    const clock = new ManualClock();
    const tracker = new HealthTracker({ clock, ejectAfterFailures: 5, ejectionMs: 1000 });
    tracker.setEndpoints([endpoint(port)], { control: CONNECT_CHECK });
    assert.equal(tracker.state("control-0"), "unknown", "not healthy before its first check");
    while (tracker.snapshot()[0]!.lastCheckMs === null) await new Promise((r) => setTimeout(r, 5));
    assert.equal(tracker.state("control-0"), "unknown", "a refused connect while starting: still unknown, not healthy");
    const healthy = tracker.waitHealthy(["control-0"], 60_000);
    await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", () => resolve()));
    // the next check, a real connect: never healthy before, so one success is enough
    clock.advance(CONNECT_CHECK.intervalMs);
    await healthy;
    assert.equal(tracker.state("control-0"), "healthy");
    tracker.stop();
    await close(server);
  });
});
