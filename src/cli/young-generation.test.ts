import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { describe, it } from "node:test";
import { capYoungGeneration } from "./young-generation.ts";

const MiB = 2 ** 20;

/**
 * A process that keeps 300,000 small objects, made 1,000 per turn of the event loop, as connections arriving in a
 * burst are: what V8 grows its young generation for. It prints the sizes the young generation went through.
 */
function burst(capBytes: number | null, nodeFlags: string[] = [], workerAtRound = -1): { what: string; sizes: number[] } {
  const script = [
    `import { setImmediate as turn } from "node:timers/promises";`,
    `import { Worker } from "node:worker_threads";`,
    `import { capYoungGeneration, youngGenerationBytes } from ${JSON.stringify(new URL("./young-generation.ts", import.meta.url).href)};`,
    `const what = ${capBytes === null ? `"none"` : `capYoungGeneration(${capBytes})`};`,
    `const keep = [];`,
    `const sizes = new Set([youngGenerationBytes()]);`,
    `for (let round = 0; round < 300; round++) {`,
    `  if (round === ${workerAtRound}) new Worker("setTimeout(() => {}, 500)", { eval: true });`,
    `  for (let i = 0; i < 1000; i++) keep.push({ id: i, name: "connection-" + round + "-" + i, parts: [i] });`,
    `  sizes.add(youngGenerationBytes());`,
    `  await turn();`,
    `}`,
    `console.log(JSON.stringify({ what, sizes: [...sizes], kept: keep.length }));`,
  ].join("\n");
  const out = execFileSync(process.execPath, [...nodeFlags, "--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8", timeout: 30_000 });
  return JSON.parse(out) as { what: string; sizes: number[] };
}

describe("capYoungGeneration", () => {
  it("the burst grows an uncapped young generation past 16 MiB (what the cap is for)", () => {
    const { sizes } = burst(null);
    assert.ok(Math.max(...sizes) > 16 * MiB, `sizes ${sizes.map((s) => s / MiB).join(", ")} MiB`);
  });

  it("a capped one stops growing at the cap, and the process exits by itself while it watches", () => {
    const { what, sizes } = burst(8 * MiB);
    assert.equal(what, "watching");
    assert.ok(Math.max(...sizes) <= 8 * MiB, `sizes ${sizes.map((s) => s / MiB).join(", ")} MiB`);
    assert.ok(sizes.includes(8 * MiB), `it grew up to the cap: sizes ${sizes.map((s) => s / MiB).join(", ")} MiB`);
  });

  it("a young generation already at the cap grows no more (V8 may still shrink it)", () => {
    const { what, sizes } = burst(MiB);
    assert.equal(what, "watching");
    assert.ok(Math.max(...sizes) <= sizes[0]!, `sizes ${sizes.map((s) => s / MiB).join(", ")} MiB`);
  });

  it("a worker thread started after the cap was reached does not lift it (a new isolate sets V8's growth factor back to 2)", () => {
    // One step past the cap may be taken by a collection that comes between the worker's start and the factor's
    // setting again; without that setting, the space grows on to Node's maximum (32 MiB).
    const { sizes } = burst(4 * MiB, [], 100);
    assert.ok(Math.max(...sizes) <= 8 * MiB, `sizes ${sizes.map((s) => s / MiB).join(", ")} MiB`);
  });

  it("watches once per process, however often it is called (the demo runs twice in one test process)", () => {
    const script = [
      `import { capYoungGeneration } from ${JSON.stringify(new URL("./young-generation.ts", import.meta.url).href)};`,
      `const said = [capYoungGeneration(), capYoungGeneration(), capYoungGeneration()];`,
      `console.log(JSON.stringify({ said, workerListeners: process.listenerCount("worker") }));`,
    ].join("\n");
    const out = execFileSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], { encoding: "utf8", timeout: 30_000 });
    assert.deepEqual(JSON.parse(out), { said: ["watching", "watching", "watching"], workerListeners: 1 });
  });

  it("leaves the young generation alone when node was given flags that size it", () => {
    assert.equal(capYoungGeneration(MiB, "--max-semi-space-size=64"), "user-sized");
    assert.equal(capYoungGeneration(MiB, "--inspect --min_semi_space_size=4"), "user-sized");
    assert.equal(capYoungGeneration(MiB, "--semi-space-growth-factor=4"), "user-sized");
    // The flag on the command line, not only in the function's argument: a user's 64 MB stands.
    const { what, sizes } = burst(4 * MiB, ["--max-semi-space-size=64"]);
    assert.equal(what, "user-sized");
    assert.ok(Math.max(...sizes) > 4 * MiB, `sizes ${sizes.map((s) => s / MiB).join(", ")} MiB`);
  });
});
