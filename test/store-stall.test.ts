// A stalled disk under a running gateway: its SQLite file on a filesystem frozen with fsfreeze, so that every write
// to it blocks in the kernel until it is thawed. Requests must go on; what waits for the disk waits; nothing is lost.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { join } from "node:path";
import { admin, testGateway } from "./helpers/gateway.ts";
import { freezableFolder } from "./helpers/freezable.ts";

test("with the store's disk frozen, requests are answered at once, events wait for it, and every row lands once it thaws", async (t) => {
  const disk = freezableFolder();
  if (disk === undefined) return t.skip("needs root and a loop device (set ABGATE_REQUIRE_FREEZE=1 to fail instead)");
  const backend = createServer((_req, res) => res.end("x"));
  await new Promise<void>((r) => backend.listen(0, "127.0.0.1", () => r()));
  const url = `http://127.0.0.1:${(backend.address() as { port: number }).port}`;
  const gw = await testGateway(
    { store: `sqlite:${join(disk.dir, "abgate.db")}`, variants: [{ name: "control", weight: 1, url }, { name: "treatment", weight: 1, url }] },
    { sqliteWriter: "thread" },
  );
  try {
    const counts = async () => ((await (await admin(gw, "GET", "/v1/experiment")).json()) as { counts: { exposures: number; events: number } }).counts;
    for (let i = 0; i < 20; i++) assert.equal((await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": `before-${i}` } })).status, 200);
    assert.equal((await admin(gw, "POST", "/v1/events", [{ unit: "before-0", event: "watched" }])).status, 200);
    for (let i = 0; i < 100 && (await counts()).exposures < 20; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal((await counts()).exposures, 20);

    disk.freeze();
    const eventPost = admin(gw, "POST", "/v1/events", [{ unit: "during-0", event: "watched" }]);
    let eventAnswered = false;
    void eventPost.then(() => (eventAnswered = true));
    // Long enough for the batcher to try its writes (every 100 ms) many times over.
    const started = performance.now();
    let slowestMs = 0;
    let requests = 0;
    while (performance.now() - started < 1500) {
      const t0 = performance.now();
      const res = await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": `during-${requests}` } });
      assert.equal(res.status, 200);
      await res.text();
      slowestMs = Math.max(slowestMs, performance.now() - t0);
      requests++;
    }
    assert.ok(slowestMs < 500, `the slowest request while the disk was frozen took ${slowestMs.toFixed(0)} ms`);
    assert.ok(requests > 50, `only ${requests} requests in 1.5 s`);
    assert.equal(eventAnswered, false, "events are answered only once durable, which a frozen disk cannot make them");
    // Reads go on too, on a thread of their own: the counts are read afresh, not the last ones shown.
    const t0 = performance.now();
    const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { counts: { exposures: number; readAt: string } };
    const viewMs = performance.now() - t0;
    assert.ok(viewMs < 1000, `GET /v1/experiment took ${viewMs.toFixed(0)} ms while the disk was frozen`);
    assert.ok(Date.parse(view.counts.readAt) >= Date.now() - 1000, `counts read at ${view.counts.readAt}`);
    assert.equal(view.counts.exposures, 20);

    disk.thaw();
    const answer = await eventPost;
    assert.equal(answer.status, 200);
    assert.deepEqual(await answer.json(), { accepted: 1 });
    for (let i = 0; i < 200 && (await counts()).exposures < 20 + requests; i++) await new Promise((r) => setTimeout(r, 50));
    const after = await counts();
    assert.deepEqual([after.exposures, after.events], [20 + requests, 2]);
    t.diagnostic(`${requests} requests in 1.5 s of frozen disk, the slowest ${slowestMs.toFixed(1)} ms`);
  } finally {
    disk.thaw();
    await gw.close();
    backend.close();
    disk.dispose();
  }
});
