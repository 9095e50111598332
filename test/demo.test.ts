import { after, test } from "node:test";
import assert from "node:assert/strict";
import { demo } from "../src/cli/demo.ts";
import { listExperimentContainers } from "../src/engines/docker/index.ts";
import { removeTestImages, requireDocker, uniqueExperiment } from "../src/engines/docker/testing.ts";

after(removeTestImages);

function checkStory(result: Awaited<ReturnType<typeof demo>>, lines: string[]): void {
  const { simulation: sim } = result;
  assert.equal(sim.failed, 0, sim.failures.join("\n"));
  assert.deepEqual(Object.keys(sim.byVariant).sort(), ["control", "treatment"]);
  const conv = (v: string) => sim.byVariant[v].convertedUnits / sim.byVariant[v].units;
  // the item-kNN model knows the hidden tastes better: more of its users watch something
  assert.ok(conv("treatment") > conv("control") + 0.05, `${conv("control")} vs ${conv("treatment")}`);
  assert.equal(result.winner, "treatment", JSON.stringify((result.report as { decision?: unknown }).decision));
  const text = lines.join("\n");
  assert.match(text, /== 1\./);
  assert.match(text, /winner: treatment/);
  assert.match(text, /== 4\. clean up/);
}

test("abgate demo on docker: builds, serves 2 x 2 replicas, finds the better model, removes its containers", async (t) => {
  const docker = await requireDocker(t);
  if (!docker) return;
  const experiment = uniqueExperiment("demo");
  const lines: string[] = [];
  const result = await demo({ engine: "docker", experiment, users: 3000, requests: 7500, durationMs: 60_000, portBase: 19500, out: (l) => lines.push(l) });
  assert.equal(result.engine, "docker");
  checkStory(result, lines);
  assert.match(lines.join("\n"), /\[treatment-1\] started abgate-demo-/);
  assert.ok(result.elapsedMs < 180_000, `took ${result.elapsedMs} ms`);
  assert.equal((await listExperimentContainers(docker, { experiment })).length, 0);
});

test("abgate demo on the process engine (the fallback without Docker) tells the same story", async () => {
  const lines: string[] = [];
  const result = await demo({ engine: "process", users: 3000, requests: 7500, durationMs: 60_000, portBase: 19550, out: (l) => lines.push(l) });
  assert.equal(result.engine, "process");
  checkStory(result, lines);
});
