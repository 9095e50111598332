// The admin API while its store cannot be used: the store here is a real SQLite file, closed under the gateway.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createServer } from "node:http";
import { SqliteStore } from "../src/store/index.ts";
import { admin, testGateway } from "./helpers/gateway.ts";

test("with the store gone: events get 503 with retry-after, a weight change is refused and not applied, the experiment view still answers", async () => {
  const dir = mkdtempSync(join(tmpdir(), "abgate-outage-"));
  const store = new SqliteStore(join(dir, "outage.db"));
  const backend = createServer((_req, res) => res.end("x"));
  await new Promise<void>((r) => backend.listen(0, "127.0.0.1", () => r()));
  const url = `http://127.0.0.1:${(backend.address() as { port: number }).port}`;
  const gw = await testGateway(
    { variants: [{ name: "control", weight: 1, url }, { name: "treatment", weight: 1, url }] },
    { store },
  );
  try {
    assert.equal((await admin(gw, "POST", "/v1/events", [{ unit: "u1", event: "watched" }])).status, 200);
    const before = (await (await admin(gw, "GET", "/v1/experiment")).json()) as { counts: { events: number } };
    assert.equal(before.counts.events, 1);

    await store.close();
    const events = await admin(gw, "POST", "/v1/events", [{ unit: "u2", event: "watched" }]);
    assert.equal(events.status, 503);
    assert.equal(events.headers.get("retry-after"), "5");
    assert.equal(((await events.json()) as { code: string }).code, "ABGATE_ERR_STORE");

    const weights = await admin(gw, "PUT", "/v1/weights", { control: 0, treatment: 100 });
    assert.equal(weights.status, 503);
    const view = (await (await admin(gw, "GET", "/v1/experiment")).json()) as {
      variants: { name: string; weight: number }[];
      counts: { events: number; storeError?: string };
    };
    assert.deepEqual(
      view.variants.map((v) => v.weight),
      [1, 1],
      "a change the store could not save is not applied",
    );
    assert.equal(view.counts.events, 1, "the counts read last");
    assert.match(view.counts.storeError ?? "", /closed/);
    // Assignment still follows the unchanged weights: both variants keep getting units.
    const served = new Set<string>();
    for (let i = 0; i < 40; i++) served.add((await fetch(`${gw.proxyUrl}/`, { headers: { "x-user-id": `unit-${i}` } })).headers.get("x-abgate-variant")!);
    assert.deepEqual([...served].sort(), ["control", "treatment"]);
  } finally {
    await gw.close();
    await new Promise<void>((r) => backend.close(() => r()));
    rmSync(dir, { recursive: true, force: true });
  }
});
