import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer, type Socket } from "node:net";
import { Balancer, type HealthView, type Replica } from "./balancer.ts";
import { seededRandom, type RandomSource } from "../clock.ts";
import type { Endpoint } from "../engines/types.ts";

const POOL = { connectTimeoutMs: 1000, responseTimeoutMs: 1000 };

/** Health as a plain set of healthy ids; reports are recorded. */
class FakeHealth implements HealthView {
  readonly healthy: Set<string>;
  readonly reports: string[] = [];
  constructor(ids: string[]) {
    this.healthy = new Set(ids);
  }
  isHealthy(id: string): boolean {
    return this.healthy.has(id);
  }
  reportSuccess(id: string): void {
    this.reports.push(`ok:${id}`);
  }
  reportFailure(id: string): void {
    this.reports.push(`fail:${id}`);
  }
}

function ep(variant: string, replica: number, port = 40000 + replica): Endpoint {
  return { id: `${variant}-${replica}`, variant, replica, host: "127.0.0.1", port };
}

const ENDPOINTS = [ep("control", 0), ep("control", 1), ep("control", 2), ep("treatment", 0), ep("treatment", 1)];

function setup(random: RandomSource = seededRandom(1), endpoints = ENDPOINTS) {
  const health = new FakeHealth(endpoints.map((e) => e.id));
  const balancer = new Balancer(["control", "treatment"], random, POOL, health);
  balancer.setEndpoints(endpoints);
  return { balancer, health };
}

function counts(balancer: Balancer, variant: string, n: number, exclude?: Replica[]): Map<string, number> {
  const out = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const r = balancer.pick(variant, exclude);
    const k = r?.id ?? "none";
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}

describe("Balancer.pick", () => {
  it("picks among the replicas of the asked variant, each about equally often when all are idle", () => {
    const { balancer } = setup(seededRandom(42));
    const c = counts(balancer, "control", 30_000);
    assert.deepEqual([...c.keys()].sort(), ["control-0", "control-1", "control-2"]);
    // ties keep the first drawn replica, which is uniform: 10 000 each, sd ≈ 82
    for (const n of c.values()) assert.ok(Math.abs(n - 10_000) < 500, `count ${n}`);
  });

  it("never picks an unhealthy replica, and follows health changes after refreshHealth", () => {
    const { balancer, health } = setup(seededRandom(2));
    health.healthy.delete("control-1");
    balancer.refreshHealth();
    const c = counts(balancer, "control", 2000);
    assert.equal(c.get("control-1"), undefined);
    assert.ok(c.get("control-0")! > 0 && c.get("control-2")! > 0);

    health.healthy.delete("control-0");
    health.healthy.delete("control-2");
    balancer.refreshHealth();
    assert.equal(balancer.hasHealthy("control"), false);
    assert.equal(balancer.pick("control"), undefined);
    assert.equal(balancer.hasHealthy("treatment"), true);

    health.healthy.add("control-1");
    balancer.refreshHealth();
    assert.equal(balancer.pick("control")?.id, "control-1");
  });

  it("honours the exclude list", () => {
    const { balancer } = setup(seededRandom(3));
    const [c0, c1, c2] = balancer.replicas("control");
    const once = counts(balancer, "control", 2000, [c0]);
    assert.deepEqual([...once.keys()].sort(), ["control-1", "control-2"]);
    assert.deepEqual([...counts(balancer, "control", 100, [c0, c2]).keys()], ["control-1"]);
    assert.equal(balancer.pick("control", [c0, c1, c2]), undefined);
    assert.equal(balancer.pick("control", []) !== undefined, true);
  });

  it("is undefined for an unknown variant", () => {
    const { balancer } = setup();
    assert.equal(balancer.pick("nope"), undefined);
    assert.equal(balancer.hasHealthy("nope"), false);
    assert.deepEqual(balancer.replicas("nope"), []);
  });

  it("with two replicas, always the one with fewer outstanding requests", () => {
    const { balancer } = setup(seededRandom(4));
    const [t0, t1] = balancer.replicas("treatment");
    t0.outstanding = 50;
    assert.deepEqual([...counts(balancer, "treatment", 1000).entries()], [["treatment-1", 1000]]);
    t0.outstanding = 0;
    t1.outstanding = 1;
    assert.deepEqual([...counts(balancer, "treatment", 1000).entries()], [["treatment-0", 1000]]);
  });

  it("a loaded replica loses every draw it takes part in (power of two choices)", () => {
    const { balancer } = setup(seededRandom(5));
    const [c0, c1, c2] = balancer.replicas("control");
    c0.outstanding = 100;
    c1.outstanding = 0;
    c2.outstanding = 3;
    const c = counts(balancer, "control", 30_000);
    // two distinct replicas are drawn: c0 never wins; c1 wins whenever drawn (pairs {0,1},{1,2}: 2/3);
    // c2 only in pair {0,2} (1/3)
    assert.equal(c.get("control-0"), undefined);
    assert.ok(Math.abs(c.get("control-1")! - 20_000) < 500, `control-1 ${c.get("control-1")}`);
    assert.ok(Math.abs(c.get("control-2")! - 10_000) < 500, `control-2 ${c.get("control-2")}`);
  });

  it("always draws two distinct replicas, whatever the random source returns", () => {
    for (const [x, y] of [
      [0, 0],
      [0, 0.999],
      [0.999, 0.999],
      [0.999, 0],
      [0.5, 0.5],
      [0.34, 0.34],
    ]) {
      const values = [x, y];
      const { balancer } = setup(() => values.shift()!);
      const list = balancer.replicas("control");
      // make each replica distinguishable: the picked one must be the less loaded of two *different* ones
      list[0].outstanding = 1;
      list[1].outstanding = 2;
      list[2].outstanding = 3;
      const i = Math.floor(x * 3);
      const picked = balancer.pick("control")!;
      assert.equal(values.length, 0, "exactly two random numbers per pick");
      assert.ok(list.includes(picked));
      // the first draw only wins when the second is more loaded, so the pick is never a replica drawn twice
      assert.ok(picked.outstanding <= list[i].outstanding, `x=${x} y=${y}`);
      assert.notEqual(picked.outstanding, 3, "the most loaded replica never wins a draw of two distinct ones");
    }
  });

  it("takes no random number when only one replica is eligible", () => {
    let calls = 0;
    const { balancer } = setup(() => {
      calls++;
      return 0.5;
    });
    const [t0] = balancer.replicas("treatment");
    assert.equal(balancer.pick("treatment", [t0])?.id, "treatment-1");
    assert.equal(calls, 0);
  });
});

describe("Balancer.setEndpoints", () => {
  it("keeps Replica objects (and pools) of unchanged endpoints, replaces moved ones, drops removed ones", () => {
    const { balancer } = setup();
    const before = new Map(balancer.replicas().map((r) => [r.id, r]));
    before.get("control-0")!.outstanding = 7;
    balancer.setEndpoints([ep("control", 0), ep("control", 1, 41111), ep("treatment", 0), ep("treatment", 5), ep("other", 0)]);
    const after = new Map(balancer.replicas().map((r) => [r.id, r]));
    assert.deepEqual([...after.keys()].sort(), ["control-0", "control-1", "treatment-0", "treatment-5"]);
    assert.equal(after.get("control-0"), before.get("control-0"));
    assert.equal(after.get("control-0")!.pool, before.get("control-0")!.pool);
    assert.equal(after.get("control-0")!.outstanding, 7);
    assert.equal(after.get("treatment-0"), before.get("treatment-0"));
    assert.notEqual(after.get("control-1"), before.get("control-1"), "a new port is a new replica");
    assert.equal(after.get("control-1")!.pool.port, 41111);
    assert.deepEqual(balancer.replicas("control").map((r) => r.id), ["control-0", "control-1"]);
    assert.deepEqual(balancer.replicas("other"), [], "endpoints of unknown variants are ignored");
  });

  it("applies health to new endpoints", () => {
    const { balancer, health } = setup();
    health.healthy.add("treatment-9");
    balancer.setEndpoints([ep("treatment", 8), ep("treatment", 9)]);
    assert.deepEqual([...counts(balancer, "treatment", 50).keys()], ["treatment-9"]);
    assert.equal(balancer.hasHealthy("control"), false);
  });

  it("closes the pools of removed replicas (their idle sockets are destroyed) and keeps the others warm", async () => {
    const sockets = new Set<Socket>();
    const server = createServer((s) => {
      sockets.add(s);
      s.on("error", () => {});
      s.on("data", () => s.write("HTTP/1.1 204 No Content\r\n\r\n"));
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const port = (server.address() as { port: number }).port;
    try {
      const endpoints = [ep("control", 0, port), ep("control", 1, port)];
      const { balancer } = setup(seededRandom(9), endpoints);
      const [c0, c1] = balancer.replicas("control");
      // warm one idle keep-alive socket in each pool through a real exchange
      const conns = await Promise.all(
        [c0, c1].map(
          (r) =>
            new Promise<ReturnType<typeof r.pool.acquire>>((resolve, reject) => {
              const conn = r.pool.acquire();
              conn.send("GET / HTTP/1.1\r\nhost: x\r\n\r\n", { onHead() {}, onData: () => true, onEnd: () => resolve(conn), onError: reject }, false, true);
            }),
        ),
      );
      assert.equal(c0.pool.idleCount, 1);
      assert.equal(c1.pool.idleCount, 1);

      balancer.setEndpoints([ep("control", 0, port)]);
      assert.equal(c1.pool.idleCount, 0);
      assert.equal(conns[1].socket.destroyed, true);
      assert.equal(c0.pool.idleCount, 1);
      assert.equal(conns[0].socket.destroyed, false);
      assert.equal(balancer.pick("control"), c0);

      balancer.close();
      assert.equal(c0.pool.idleCount, 0);
      assert.equal(conns[0].socket.destroyed, true);
    } finally {
      await new Promise<void>((r) => {
        server.close(() => r());
        for (const s of sockets) s.destroy();
      });
    }
  });
});
